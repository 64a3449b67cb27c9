//! The `patchcore` binary end to end: convert, fit, predict, overlays, exit codes and the
//! errors a user sees.

mod common;

use common::{fixture_path, patchcore, s, stderr, synthetic_category, write_hashed_weights, TempDir};
use patchcore::backbone::Architecture;
use std::path::Path;
use std::process::Output;

#[test]
fn convert_writes_loadable_safetensors() {
    let dir = TempDir::new("cli-convert");
    let out = dir.path().join("w.safetensors");
    let o = patchcore(&["convert", s(&fixture_path("checkpoint_zip.pth")), s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    assert!(names.contains(&"conv1.weight".to_string()));
    assert!(!names.iter().any(|n| n.ends_with("num_batches_tracked")));
}

#[test]
fn fit_then_predict_writes_json_lines_and_overlays() {
    let dir = TempDir::new("cli-e2e");
    let data = dir.path().join("cat");
    synthetic_category(&data, 64, 10, 3);
    let weights = dir.path().join("resnet18.safetensors");
    write_hashed_weights(Architecture::Resnet18, &weights);
    let model = dir.path().join("model.safetensors");
    let o = patchcore(&[
        "fit",
        "--backbone",
        "resnet18",
        "--weights",
        s(&weights),
        "--train",
        s(&data.join("train/good")),
        "--val",
        s(&data.join("test")),
        "--out",
        s(&model),
        "--size",
        "64",
        "--ratio",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("F1-adaptive"), "fit says how thresholds were set: {text}");

    let overlays = dir.path().join("overlays");
    let o = patchcore(&[
        "predict",
        "--model",
        s(&model),
        s(&data.join("test/good")),
        s(&data.join("test/square")),
        "--out",
        s(&overlays),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for line in &lines {
        let score = line["score"].as_f64().unwrap();
        let n = line["normalized"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&n));
        assert_eq!(line["label"] == "anomalous", n > 0.5, "{line}");
        if line["path"].as_str().unwrap().contains("square") {
            bad.push(score)
        } else {
            good.push(score)
        }
    }
    // A bright square on a texture is far from every training patch.
    let max_good = good.iter().cloned().fold(f64::MIN, f64::max);
    assert!(bad.iter().all(|&b| b > max_good), "good {good:?} vs defective {bad:?}");
    // Two inputs share each stem (000.png in both folders): names are kept apart.
    for name in ["000.png", "000-2.png", "002-2.png"] {
        let img = image::open(overlays.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }

    // An image that does not decode gets its own error line in its place among the scored ones
    // (images are decoded ahead of scoring, a batch at a time), and the exit status says so.
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"this is not an image").unwrap();
    let inputs =
        [data.join("test/good/000.png"), broken, data.join("test/square/000.png"), data.join("test/good/001.png")];
    let mut args = vec!["predict", "--model", s(&model), "--batch", "2"];
    args.extend(inputs.iter().map(|p| s(p)));
    let o = patchcore(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of 4 images could not be read"), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let paths: Vec<&str> = lines.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(paths, inputs.iter().map(|p| s(p)).collect::<Vec<_>>());
    assert!(lines[1]["error"].as_str().unwrap().contains("broken.png: corrupt or truncated image"), "{}", lines[1]);
    assert!([0, 2, 3].iter().all(|&i| lines[i]["score"].is_number()), "{lines:?}");

    // eval on the same category: metrics, overlays (original | overlay) and a report.
    let report = dir.path().join("report");
    let o = patchcore(&["eval", "--model", s(&model), "--data", s(&data), "--out", s(&report), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["metrics"]["image_auroc"].as_f64(), Some(1.0), "{result}");
    let pixel = result["metrics"]["pixel_auroc"].as_f64().unwrap();
    assert!(pixel > 0.8, "pixel AUROC {pixel}");
    let side = image::open(report.join("cat/square/000.png")).unwrap();
    assert_eq!((side.width(), side.height()), (64 + 4 + 64, 64));
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("cat/square/000.png") && html.contains("Image AUROC"));
}

#[test]
fn eval_and_benchmark_refuse_folders_that_are_not_mvtec_shaped() {
    let dir = TempDir::new("cli-layout");
    let data = dir.path().join("cat");
    synthetic_category(&data, 64, 2, 1);
    let weights = dir.path().join("w.safetensors");
    write_hashed_weights(Architecture::Resnet18, &weights);
    let bench = |root: &Path| {
        patchcore(&[
            "benchmark",
            "--data",
            s(root),
            "--backbone",
            "resnet18",
            "--weights",
            s(&weights),
            "--size",
            "64",
            "--out",
            s(&dir.path().join("bench")),
        ])
    };
    let o = bench(dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let tables = String::from_utf8_lossy(&o.stdout);
    assert!(tables.contains("### Image-Level AUC") && tables.contains("| PatchCore |"), "{tables}");
    let csv = std::fs::read_to_string(dir.path().join("bench/benchmark.csv")).unwrap();
    assert!(csv.starts_with("category,image_auroc") && csv.contains("\ncat,"), "{csv}");
    assert!(dir.path().join("bench/report.html").is_file());
    // A stray mask without its image.
    std::fs::copy(data.join("ground_truth/square/000_mask.png"), data.join("ground_truth/square/009_mask.png"))
        .unwrap();
    let o = bench(dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("009_mask.png: mask without an image"), "{}", stderr(&o));
    std::fs::remove_file(data.join("ground_truth/square/009_mask.png")).unwrap();
    // A mask of the wrong size.
    image::GrayImage::new(32, 32).save(data.join("ground_truth/square/000_mask.png")).unwrap();
    let o = bench(dir.path());
    assert!(stderr(&o).contains("000_mask.png: mask is 32x32 but its image is 64x64"), "{}", stderr(&o));
    // No train/good.
    std::fs::remove_dir_all(data.join("train")).unwrap();
    let o = patchcore(&["eval", "--model", s(&weights), "--data", s(&data)]);
    assert!(stderr(&o).contains("`train/good/` is missing"), "{}", stderr(&o));
    let o = bench(dir.path());
    assert!(stderr(&o).contains("no category folders here"), "{}", stderr(&o));
}

#[test]
fn bad_inputs_fail_with_the_file_named_and_exit_code_1() {
    let dir = TempDir::new("cli-errors");
    let weights = dir.path().join("w.safetensors");
    write_hashed_weights(Architecture::Resnet18, &weights);
    let train = dir.path().join("train");
    std::fs::create_dir_all(&train).unwrap();
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--backbone", "resnet18", "--weights", s(&weights), "--train", s(&train)];
        args.extend_from_slice(&["--out", "/nonexistent/never.safetensors", "--size", "64"]);
        args.extend_from_slice(extra);
        patchcore(&args)
    };
    let expect_error = |o: Output, needle: &str| {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "expected `{needle}` in: {}", stderr(&o));
    };
    expect_error(fit(&[]), "no PNG or JPEG images");
    // A folder to score without images (its images in subfolders, say) is an error too.
    std::fs::create_dir_all(train.join("sub")).unwrap();
    for command in ["predict", "profile"] {
        let o = patchcore(&[command, "--model", s(&weights), s(&train)]);
        expect_error(o, &format!("{}: no PNG or JPEG images in this folder (subfolders", s(&train)));
    }
    expect_error(fit(&["--ratio", "0"]), "--ratio");
    expect_error(fit(&["--ratio", "1.5"]), "--ratio");
    // Malformed arguments are usage errors: clap's exit code 2.
    let o = fit(&["--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected cpu, cuda, cuda:N or auto"), "{}", stderr(&o));
    for command in [
        &["predict", "--model", "m", "--batch", "0", "x"][..],
        &["eval", "--model", "m", "--data", "d", "--batch", "1025"],
    ] {
        let o = patchcore(command);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("expected 1 to 1024"), "{}", stderr(&o));
    }

    common::synthetic_image(64, 1, false).0.save(train.join("a.png")).unwrap();
    common::synthetic_image(48, 2, false).0.save(train.join("b.png")).unwrap();
    expect_error(fit(&[]), "b.png: 48x48 differs from 64x64");

    std::fs::remove_file(train.join("b.png")).unwrap();
    let bytes = std::fs::read(train.join("a.png")).unwrap();
    std::fs::write(train.join("c.png"), &bytes[..bytes.len() / 2]).unwrap();
    expect_error(fit(&[]), "c.png: corrupt or truncated image");

    std::fs::write(train.join("c.png"), b"this is not an image").unwrap();
    expect_error(fit(&[]), "c.png: not a PNG or JPEG");

    std::fs::remove_file(train.join("c.png")).unwrap();
    std::fs::write(train.join("d.bmp"), b"BM").unwrap();
    expect_error(fit(&[]), "d.bmp: .bmp images are not supported");
    std::fs::remove_file(train.join("d.bmp")).unwrap();

    // One 64 px image gives 64 patches; 1% of them is 1 row, fewer than the 9 neighbours.
    expect_error(fit(&["--ratio", "0.01"]), "exceeds the memory bank (1 rows)");

    let o = patchcore(&["predict", "--model", s(&weights), s(&train)]);
    expect_error(o, "not a patchcore model");
}

/// Without a usable GPU, `--device cuda` fails with the reason and `auto` says once why it
/// runs on the CPU, then does; a precision that does not exist is a usage error.
#[test]
fn an_unusable_gpu_is_explained_and_auto_falls_back_to_the_cpu() {
    let Err(reason) = patchcore::backend::cuda::probe(0) else {
        eprintln!("skipping: a GPU is usable here, so there is no fallback to explain");
        return;
    };
    let dir = TempDir::new("cli-device");
    let data = dir.path().join("cat");
    synthetic_category(&data, 64, 3, 1);
    let (train, model) = (data.join("train/good"), dir.path().join("m.patchcore"));
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--train", s(&train), "--out", s(&model), "--size", "64"];
        args.extend_from_slice(extra);
        patchcore(&args)
    };
    let o = fit(&["--device", "cuda"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&reason.to_string()), "{}", stderr(&o));
    let o = fit(&["--device", "auto", "--precision", "tf32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let note = format!("note: using the CPU ({reason})");
    assert_eq!(stderr(&o).matches(&note).count(), 1, "{}", stderr(&o));
    let o = fit(&["--precision", "f64"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected f32, tf32, f16 or bf16"), "{}", stderr(&o));
}

/// `PATCHCORE_BF16_PRODUCTS=off`, or a value it does not know, leaves no bf16 products: `--precision
/// bf16` is refused naming the variable, and the default still predicts (in f32).
#[test]
fn bf16_products_turned_off_by_the_environment_are_refused_by_name() {
    let dir = TempDir::new("cli-bf16-products");
    let (model, data) = common::fitted_model(&dir, 64);
    let predict = |products: &str, precision: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_patchcore"))
            .env("PATCHCORE_BF16_PRODUCTS", products)
            .args(["predict", "--model", s(&model), "--precision", precision, s(&data.join("test/square"))])
            .output()
            .expect("binary runs")
    };
    for (products, reason) in
        [("off", "PATCHCORE_BF16_PRODUCTS=off"), ("avx-512", "PATCHCORE_BF16_PRODUCTS is not amx, avx512 or off")]
    {
        let o = predict(products, "bf16");
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("bf16 needs AMX or AVX512-BF16 on the CPU: {reason}")), "{}", stderr(&o));
        let o = predict(products, "f32");
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    }
}

/// `--precision bf16` runs on a CPU with AMX-BF16 or AVX512-BF16 and is refused elsewhere, saying why.
#[test]
fn bf16_predicts_where_the_cpu_has_amx_and_is_refused_elsewhere() {
    let dir = TempDir::new("cli-bf16");
    let (model, data) = common::fitted_model(&dir, 64);
    let o = patchcore(&["predict", "--model", s(&model), "--precision", "bf16", s(&data.join("test/square"))]);
    match patchcore::backend::cpu::bf16_unavailable() {
        None => {
            assert!(o.status.success(), "{}", stderr(&o));
            assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
        }
        Some(reason) => {
            assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!("bf16 needs AMX or AVX512-BF16 on the CPU: {reason}")),
                "{}",
                stderr(&o)
            );
        }
    }
}
