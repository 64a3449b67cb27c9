//! The coreset on random rows: its covering radius against an exact greedy on the
//! unprojected rows, and reproducibility per seed.

mod common;

use common::covering_radius;
use patchcore::backend::{Backend, CpuBackend};
use patchcore::patchcore::coreset::select;
use patchcore::rng::SplitMix64;
use patchcore::Tensor;

fn gaussian_rows(n: usize, d: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    Tensor::new(vec![n, d], (0..n * d).map(|_| rng.normal() as f32).collect())
}

#[test]
fn projected_coreset_covers_within_ten_percent_of_exact_greedy() {
    let rows = gaussian_rows(3000, 384, 5);
    let ours = select(&CpuBackend::default(), &rows, 0.1, 42).unwrap();
    assert_eq!(ours.len(), 300);
    let exact = CpuBackend::default().coreset(&rows, 300, 0).unwrap();
    let (r_ours, r_exact) = (covering_radius(&rows, &ours), covering_radius(&rows, &exact));
    assert!(r_ours <= 1.10 * r_exact, "covering radius {r_ours} vs exact greedy {r_exact}");
}

#[test]
fn selection_is_reproducible_per_seed() {
    let rows = gaussian_rows(2000, 64, 9);
    let a = select(&CpuBackend::default(), &rows, 0.1, 7).unwrap();
    let b = select(&CpuBackend::default(), &rows, 0.1, 7).unwrap();
    let c = select(&CpuBackend::default(), &rows, 0.1, 8).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed starts elsewhere");
}

#[test]
fn ratio_outside_the_unit_interval_is_refused() {
    let rows = gaussian_rows(10, 4, 1);
    for ratio in [0.0, -0.1, 1.01, f64::NAN] {
        let err = select(&CpuBackend::default(), &rows, ratio, 1).unwrap_err().to_string();
        assert!(err.contains("--ratio") && err.contains("(0, 1]"), "{err}");
    }
    assert_eq!(select(&CpuBackend::default(), &rows, 1.0, 1).unwrap(), (0..10).collect::<Vec<u32>>());
}
