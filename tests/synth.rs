//! The synthetic dataset generator: the MVTec-AD layout, exact binary masks of sensible size,
//! and byte-for-byte determinism.

mod common;

use common::TempDir;
use patchcore::data::dataset::Category;
use patchcore::data::synth::*;
use std::path::Path;

fn small(seed: u64) -> SynthOptions {
    SynthOptions { size: 128, train: 3, test_good: 2, test_per_defect: 3, seed }
}

/// The names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file under `dir` (relative path, bytes), sorted by path.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_category_has_the_mvtec_layout() {
    let out = TempDir::new("synth-layout");
    let options = small(1);
    for &name in CATEGORIES {
        let summary = generate(out.path(), name, &options).unwrap();
        assert_eq!(summary.category, name);
        assert_eq!(summary.root, out.path().join(name));
        assert_eq!((summary.train, summary.test_good), (3, 2));
        assert!((2..=3).contains(&summary.defects.len()), "{name}: {:?}", summary.defects);
        let root = &summary.root;
        assert_eq!(names(&root.join("train/good")), ["000.png", "001.png", "002.png"]);
        assert_eq!(names(&root.join("test/good")), ["000.png", "001.png"]);
        let mut folders: Vec<String> = summary.defects.iter().map(|(d, _)| d.clone()).collect();
        folders.push("good".into());
        folders.sort();
        assert_eq!(names(&root.join("test")), folders);
        folders.retain(|f| f != "good");
        assert_eq!(names(&root.join("ground_truth")), folders, "{name}: masks only for defects");
        for (defect, count) in &summary.defects {
            assert_eq!(*count, 3);
            assert_eq!(names(&root.join("test").join(defect)), ["000.png", "001.png", "002.png"]);
            assert_eq!(
                names(&root.join("ground_truth").join(defect)),
                ["000_mask.png", "001_mask.png", "002_mask.png"]
            );
        }
        // The dataset reader accepts it and pairs every defect image with its mask.
        let category = Category::open(root).unwrap();
        assert_eq!(category.train.len(), 3);
        assert_eq!(category.test.len(), 2 + 3 * summary.defects.len());
        for sample in &category.test {
            assert_eq!(sample.anomalous, sample.mask.is_some(), "{}", sample.path.display());
        }
    }
}

#[test]
fn masks_are_binary_and_cover_a_small_part() {
    let out = TempDir::new("synth-masks");
    for &name in CATEGORIES {
        let summary = generate(out.path(), name, &small(2)).unwrap();
        for (defect, count) in &summary.defects {
            for k in 0..*count {
                let image = summary.root.join(format!("test/{defect}/{k:03}.png"));
                let mask = summary.root.join(format!("ground_truth/{defect}/{k:03}_mask.png"));
                let image = image::open(&image).unwrap();
                assert_eq!(image.color(), image::ColorType::Rgb8);
                let mask = image::open(&mask).unwrap();
                assert_eq!(mask.color(), image::ColorType::L8, "{}: single channel", defect);
                assert_eq!((mask.width(), mask.height()), (image.width(), image.height()));
                assert_eq!((mask.width(), mask.height()), (128, 128));
                let mask = mask.to_luma8();
                assert!(mask.pixels().all(|p| p[0] == 0 || p[0] == 255), "{name}/{defect}/{k}: not binary");
                let area = mask.pixels().filter(|p| p[0] == 255).count() as f64 / (128.0 * 128.0);
                assert!((0.003..=0.10).contains(&area), "{name}/{defect}/{k}: mask covers {:.2}%", area * 100.0);
            }
        }
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    let (a, b, c) = (TempDir::new("synth-a"), TempDir::new("synth-b"), TempDir::new("synth-c"));
    for &name in CATEGORIES {
        generate(a.path(), name, &small(5)).unwrap();
        // One thread instead of the pool: the bytes must not depend on the scheduling.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        pool.install(|| generate(b.path(), name, &small(5))).unwrap();
        generate(c.path(), name, &small(6)).unwrap();
    }
    let (ta, tb, tc) = (tree(a.path()), tree(b.path()), tree(c.path()));
    assert_eq!(ta.len(), tb.len());
    for (fa, fb) in ta.iter().zip(&tb) {
        assert!(fa == fb, "{} differs between two runs with the same seed", fa.0);
    }
    assert_eq!(ta.iter().map(|f| &f.0).collect::<Vec<_>>(), tc.iter().map(|f| &f.0).collect::<Vec<_>>());
    for (fa, fc) in ta.iter().zip(&tc) {
        assert_ne!(fa.1, fc.1, "{} is the same with another seed", fa.0);
    }
}

#[test]
fn images_of_a_split_differ() {
    let out = TempDir::new("synth-variation");
    for &name in CATEGORIES {
        let summary = generate(out.path(), name, &small(3)).unwrap();
        let read = |rel: &str| std::fs::read(summary.root.join(rel)).unwrap();
        assert_ne!(read("train/good/000.png"), read("train/good/001.png"), "{name}");
        assert_ne!(read("train/good/000.png"), read("test/good/000.png"), "{name}");
    }
}

#[test]
fn a_smaller_rerun_leaves_no_stale_images() {
    let out = TempDir::new("synth-rerun");
    generate(out.path(), "washer", &small(1)).unwrap();
    let fewer = SynthOptions { train: 1, test_good: 1, test_per_defect: 1, ..small(1) };
    let summary = generate(out.path(), "washer", &fewer).unwrap();
    assert_eq!(names(&summary.root.join("train/good")), ["000.png"]);
    for (defect, _) in &summary.defects {
        assert_eq!(names(&summary.root.join("ground_truth").join(defect)), ["000_mask.png"]);
    }
}

#[test]
fn unknown_category_names_the_valid_ones() {
    let out = TempDir::new("synth-unknown");
    let err = generate(out.path(), "carpet", &small(0)).unwrap_err().to_string();
    assert!(err.contains("--category") && err.contains("`carpet`"), "{err}");
    for &name in CATEGORIES {
        assert!(err.contains(name), "{err} does not name {name}");
    }
    assert!(!out.path().join("carpet").exists());
    let err = generate(out.path(), "woven", &SynthOptions { size: 16, ..small(0) }).unwrap_err().to_string();
    assert!(err.contains("--size"), "{err}");
}

#[test]
fn defaults_match_the_demo() {
    let o = SynthOptions::default();
    assert_eq!((o.size, o.train, o.test_good, o.test_per_defect, o.seed), (256, 40, 10, 5, 0));
    assert_eq!(CATEGORIES.len(), 5);
}
