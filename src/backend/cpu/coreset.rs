//! Placeholder brute force (replaced by the pruned kernel).
pub fn greedy_coreset(rows: &[f32], dim: usize, n_select: usize, start: usize) -> Vec<u32> {
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let c0 = &rows[start * dim..(start + 1) * dim];
    let mut d: Vec<f32> = rows.chunks(dim).map(|r| dist(r, c0)).collect();
    let mut out = Vec::new();
    for _ in 0..n_select {
        let mut best = 0;
        for i in 0..d.len() {
            if d[i] > d[best] {
                best = i;
            }
        }
        out.push(best as u32);
        d[best] = 0.0;
        let c = &rows[best * dim..(best + 1) * dim];
        for (i, r) in rows.chunks(dim).enumerate() {
            d[i] = d[i].min(dist(r, c));
        }
    }
    out
}
