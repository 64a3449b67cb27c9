//! Placeholder brute force (replaced by the tiled kernel).
pub fn squared_norms(rows: &[f32], d: usize) -> Vec<f32> {
    rows.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect()
}
pub fn knn_topk(queries: &[f32], bank: &[f32], bank_sq_norms: &[f32], d: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    let mut dist = Vec::new();
    let mut idx = Vec::new();
    for q in queries.chunks(d) {
        let qn: f32 = q.iter().map(|v| v * v).sum();
        let mut all: Vec<(f32, u32)> = bank
            .chunks(d)
            .enumerate()
            .map(|(j, m)| {
                let dot: f32 = q.iter().zip(m).map(|(a, b)| a * b).sum();
                ((qn - 2.0 * dot + bank_sq_norms[j]).max(0.0).sqrt(), j as u32)
            })
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for &(dd, j) in &all[..k] {
            dist.push(dd);
            idx.push(j);
        }
    }
    (dist, idx)
}
