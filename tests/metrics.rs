//! The evaluation metrics against independent values (tests/fixtures/metrics.json, written by
//! scripts/make_metric_fixtures.py with sklearn and an MVTec-style AUPRO) and hand-built cases.

use patchcore::eval::metrics::{aupro, auroc, ImageResult, Metrics, AUPRO_FPR_LIMIT};
use patchcore::rng::SplitMix64;
use serde::Deserialize;
use std::time::Instant;

#[derive(Deserialize)]
struct F1Point {
    threshold: f32,
    f1: f64,
}

#[derive(Deserialize)]
struct AuproPoint {
    fpr_limit: f64,
    aupro: f64,
}

#[derive(Deserialize)]
struct ImageCase {
    scores: Vec<f32>,
    labels: Vec<u8>,
    auroc: f64,
    f1: Vec<F1Point>,
}

#[derive(Deserialize)]
struct PixelCase {
    width: usize,
    height: usize,
    maps: Vec<Vec<f32>>,
    masks: Vec<Vec<u8>>,
    auroc: f64,
    f1: Vec<F1Point>,
    aupro: Vec<AuproPoint>,
}

#[derive(Deserialize)]
struct Fixture {
    image: ImageCase,
    pixel: PixelCase,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    let text = std::fs::read_to_string(path).expect("fixture present (scripts/make_metric_fixtures.py writes it)");
    serde_json::from_str(&text).expect("fixture parses")
}

fn bools(v: &[u8]) -> Vec<bool> {
    v.iter().map(|&b| b != 0).collect()
}

fn assert_near(what: &str, got: Option<f64>, want: f64, tol: f64) {
    let got = got.unwrap_or_else(|| panic!("{what}: None, want {want}"));
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (diff {:e})", (got - want).abs());
}

#[test]
fn image_auroc_and_f1_match_sklearn() {
    let f = fixture().image;
    let labels = bools(&f.labels);
    assert_near("image auroc", auroc(&f.scores, &labels), f.auroc, 1e-9);
    let images: Vec<ImageResult> = f
        .scores
        .iter()
        .zip(&labels)
        .map(|(&score, &anomalous)| ImageResult { score, anomalous, map: None, mask: None })
        .collect();
    for p in &f.f1 {
        let m = Metrics::compute(&images, 0, 0, p.threshold, 0.0);
        assert_near(&format!("image f1 at {}", p.threshold), m.image_f1, p.f1, 1e-9);
        assert_near("image auroc through Metrics", m.image_auroc, f.auroc, 1e-9);
        assert_eq!((m.pixel_auroc, m.pixel_f1, m.aupro), (None, None, None), "no maps, no pixel metrics");
    }
}

#[test]
fn pixel_metrics_match_sklearn_and_the_mvtec_aupro() {
    let f = fixture().pixel;
    let masks: Vec<Vec<bool>> = f.masks.iter().map(|m| bools(m)).collect();
    let map_refs: Vec<&[f32]> = f.maps.iter().map(Vec::as_slice).collect();
    let mask_refs: Vec<&[bool]> = masks.iter().map(Vec::as_slice).collect();
    for p in &f.aupro {
        let got = aupro(&map_refs, &mask_refs, f.width, f.height, p.fpr_limit);
        assert_near(&format!("aupro at fpr {}", p.fpr_limit), got, p.aupro, 1e-6);
    }
    // Through Metrics, with the good images' masks left implicit.
    let images: Vec<ImageResult> = f
        .maps
        .iter()
        .zip(&masks)
        .map(|(map, mask)| {
            let anomalous = mask.contains(&true);
            let score = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ImageResult { score, anomalous, map: Some(map), mask: anomalous.then_some(mask.as_slice()) }
        })
        .collect();
    for p in &f.f1 {
        let m = Metrics::compute(&images, f.width, f.height, 0.0, p.threshold);
        assert_near(&format!("pixel f1 at {}", p.threshold), m.pixel_f1, p.f1, 1e-9);
        assert_near("pixel auroc", m.pixel_auroc, f.auroc, 1e-9);
        let want = f.aupro.iter().find(|a| a.fpr_limit == AUPRO_FPR_LIMIT).expect("fixture has AUPRO at 0.3");
        assert_near("aupro through Metrics", m.aupro, want.aupro, 1e-6);
        assert_eq!(m.skipped_masks, 0);
    }
}

#[test]
fn auroc_known_answers() {
    let labels = [false, false, true, true];
    assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &labels), Some(1.0));
    assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
    assert_eq!(auroc(&[0.5; 4], &labels), Some(0.5));
    // One tie across the classes counts half: pairs (n, p) ordered right 3 of 4, tied 1 of 4.
    assert_eq!(auroc(&[0.1, 0.3, 0.3, 0.4], &labels), Some(0.875));
    // -0.0 and 0.0 are the same score.
    assert_eq!(auroc(&[-0.0, 0.0], &[false, true]), Some(0.5));
    assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    assert_eq!(auroc(&[0.1, 0.2], &[false, false]), None);
    assert_eq!(auroc(&[], &[]), None);
    assert_eq!(auroc(&[0.1, f32::NAN], &[false, true]), None);
}

/// A `width x height` image with every pixel at `background` except the listed ones.
fn image_with(width: usize, height: usize, background: f32, pixels: &[(usize, usize, f32)]) -> Vec<f32> {
    let mut v = vec![background; width * height];
    for &(x, y, s) in pixels {
        v[y * width + x] = s;
    }
    v
}

fn mask_of(map: &[f32], at_least: f32) -> Vec<bool> {
    map.iter().map(|&s| s >= at_least).collect()
}

#[test]
fn aupro_of_a_perfect_map_is_one() {
    let map = image_with(8, 8, 0.0, &[(1, 1, 1.0), (2, 1, 1.0), (6, 6, 1.0)]);
    let mask = mask_of(&map, 1.0);
    let good = vec![0.5f32; 64];
    let got = aupro(&[&map, &good], &[&mask, &[false; 64]], 8, 8, 0.3);
    assert_eq!(got, Some(1.0));
}

#[test]
fn aupro_marking_one_of_two_equal_regions_first() {
    // 10 x 10: regions A and B of 4 pixels each, 92 normal pixels of which 23 (a quarter) score
    // between A and B. Curve: (0, 0) -> (0, 1/2) [A] -> (1/4, 1/2) -> (1/4, 1) [B] -> (1, 1).
    // Area to 0.3: 1/4 * 1/2 + 0.05 * 1 = 0.175; normalised 0.175 / 0.3.
    let mut pixels: Vec<(usize, usize, f32)> = Vec::new();
    for (x, y) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        pixels.push((x, y, 3.0));
    }
    for (x, y) in [(7, 7), (8, 7), (7, 8), (8, 8)] {
        pixels.push((x, y, 1.0));
    }
    let mut mask = vec![false; 100];
    for &(x, y, _) in &pixels {
        mask[y * 10 + x] = true;
    }
    let normal: Vec<usize> = (0..100).filter(|&p| !mask[p]).take(23).collect();
    for p in normal {
        pixels.push((p % 10, p / 10, 2.0));
    }
    let map = image_with(10, 10, 0.0, &pixels);
    assert_near("aupro", aupro(&[&map], &[&mask], 10, 10, 0.3), 0.175 / 0.3, 1e-12);
}

#[test]
fn aupro_averages_regions_not_pixels() {
    // A 20-pixel region fully found, a 1-pixel region not: PRO 1/2 at FPR 0 (20/21 if pooled),
    // then (1, 1). The PRO at 0.3 is interpolated to 0.65: area 0.3 * (0.5 + 0.65) / 2.
    let pixels: Vec<(usize, usize, f32)> = (0..20).map(|i| (i % 5, i / 5, 1.0)).collect();
    let map = image_with(10, 10, 0.0, &pixels);
    let mut mask = mask_of(&map, 1.0);
    mask[9 * 10 + 9] = true;
    assert_near("aupro", aupro(&[&map], &[&mask], 10, 10, 0.3), 0.5 * (0.5 + 0.65), 1e-12);
}

#[test]
fn aupro_regions_are_8_connected() {
    // (0,0) and (1,1) touch at a corner: one region, half found; (5,5) a second region, found.
    // PRO at FPR 0 is (1/2 + 1) / 2 = 3/4 (4-connectivity would give 2/3), then (1, 1).
    let map = image_with(8, 8, 0.0, &[(0, 0, 1.0), (5, 5, 1.0)]);
    let mut mask = mask_of(&map, 1.0);
    mask[8 + 1] = true;
    let y_limit = 0.75 + 0.25 * 0.3;
    assert_near("aupro", aupro(&[&map], &[&mask], 8, 8, 0.3), 0.5 * (0.75 + y_limit), 1e-12);
}

#[test]
fn aupro_undefined_without_regions_or_normal_pixels() {
    let map = [0.1f32, 0.2, 0.3, 0.4];
    assert_eq!(aupro(&[&map], &[&[false; 4]], 2, 2, 0.3), None);
    assert_eq!(aupro(&[&map], &[&[true; 4]], 2, 2, 0.3), None);
    assert_eq!(aupro(&[], &[], 2, 2, 0.3), None);
}

#[test]
fn pixel_metrics_skip_defects_without_masks() {
    let good_map = image_with(4, 4, 0.1, &[]);
    let defect_map = image_with(4, 4, 0.2, &[(1, 1, 0.9), (2, 1, 0.8)]);
    let defect_mask = mask_of(&defect_map, 0.8);
    // Its map would spoil the pixel AUROC (normal pixels at 0.95) if it were counted.
    let unmasked_map = image_with(4, 4, 0.95, &[]);
    let images = [
        ImageResult { score: 0.1, anomalous: false, map: Some(&good_map), mask: None },
        ImageResult { score: 0.9, anomalous: true, map: Some(&defect_map), mask: Some(&defect_mask) },
        ImageResult { score: 0.95, anomalous: true, map: Some(&unmasked_map), mask: None },
    ];
    let m = Metrics::compute(&images, 4, 4, 0.5, 0.5);
    assert_eq!(m.skipped_masks, 1);
    assert_eq!(m.image_auroc, Some(1.0));
    assert_eq!(m.image_f1, Some(1.0));
    assert_eq!(m.pixel_auroc, Some(1.0));
    assert_eq!(m.pixel_f1, Some(1.0));
    assert_eq!(m.aupro, Some(1.0));

    // Only good images: nothing anomalous to rank or to find.
    let m = Metrics::compute(&images[..1], 4, 4, 0.5, 0.5);
    assert_eq!(
        m,
        Metrics { image_auroc: None, pixel_auroc: None, image_f1: None, pixel_f1: None, aupro: None, skipped_masks: 0 }
    );
}

/// Timing on the size of an MVTec category at 256 px (50 images, 3.3M pixels), not asserted:
/// `cargo test --release --test metrics -- --ignored --nocapture`.
#[test]
#[ignore = "timing only"]
fn timing_on_three_million_pixels() {
    let (n, w, h) = (50, 256, 256);
    let mut rng = SplitMix64::new(3);
    let masks: Vec<Vec<bool>> = (0..n)
        .map(|i| {
            let (cx, cy, r) = (rng.below(200) as i64 + 28, rng.below(200) as i64 + 28, rng.below(25) as i64);
            (0..w * h)
                .map(|p| {
                    let (x, y) = ((p % w) as i64, (p / w) as i64);
                    i % 2 == 1 && (x - cx).pow(2) + (y - cy).pow(2) <= r * r
                })
                .collect()
        })
        .collect();
    let maps: Vec<Vec<f32>> =
        masks.iter().map(|m| m.iter().map(|&a| (rng.normal() + if a { 2.0 } else { 0.0 }) as f32).collect()).collect();
    let map_refs: Vec<&[f32]> = maps.iter().map(Vec::as_slice).collect();
    let mask_refs: Vec<&[bool]> = masks.iter().map(Vec::as_slice).collect();
    let (scores, labels) = (maps.concat(), masks.concat());

    let t = Instant::now();
    let a = auroc(&scores, &labels);
    let t_auroc = t.elapsed();
    let t = Instant::now();
    let p = aupro(&map_refs, &mask_refs, w, h, AUPRO_FPR_LIMIT);
    let t_aupro = t.elapsed();
    println!(
        "{} pixels: pixel auroc {a:?} in {t_auroc:?}, aupro {p:?} in {t_aupro:?} ({} threads)",
        scores.len(),
        rayon::current_num_threads()
    );
}
