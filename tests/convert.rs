//! `patchcore::convert` against checkpoints torch itself wrote (tests/fixtures, made by
//! scripts/make_fixtures.py): both container formats, a nested training checkpoint, shared and
//! non-contiguous storages, conversion to safetensors, and damaged files.

mod common;

use common::{fixture_path, TempDir};
use patchcore::convert::{convert, read_checkpoint, CheckpointTensor, ConvertOptions};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// name -> (dtype, shape, bytes) of a safetensors file.
fn load_safetensors(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

fn expected() -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    load_safetensors(&fixture_path("checkpoint_expected.safetensors"))
}

/// BatchNorm's step counters, which `convert` drops.
fn is_counter(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

fn assert_matches_expected(tensors: &[CheckpointTensor]) {
    let expected = expected();
    assert_eq!(tensors.len(), expected.len(), "tensor count");
    for t in tensors {
        let (dtype, shape, data) = expected.get(&t.name).unwrap_or_else(|| panic!("unexpected tensor `{}`", t.name));
        assert_eq!((&t.dtype, &t.shape), (dtype, shape), "`{}`", t.name);
        assert!(t.data == *data, "`{}`: bytes differ", t.name);
    }
}

#[test]
fn zip_and_legacy_checkpoints_match_expected() {
    let zip = read_checkpoint(&fixture_path("checkpoint_zip.pth")).unwrap();
    assert_matches_expected(&zip);
    let legacy = read_checkpoint(&fixture_path("checkpoint_legacy.pth")).unwrap();
    assert_matches_expected(&legacy);
    // Both come back in the dict's own order.
    assert_eq!(zip, legacy);
    assert_eq!(zip[0].name, "conv1.weight");
    // The fixture's awkward cases are really there.
    let get = |n: &str| zip.iter().find(|t| t.name == n).unwrap();
    assert_eq!((get("bn1.num_batches_tracked").dtype, get("bn1.num_batches_tracked").shape.len()), (Dtype::I64, 0));
    for (name, dtype) in [("extra.half", Dtype::F16), ("extra.double", Dtype::F64), ("extra.int", Dtype::I32)] {
        assert_eq!(get(name).dtype, dtype, "{name}");
    }
    assert_eq!(get("extra.transposed").shape, [6, 4]);
    assert!(get("extra.view").data.len() < get("extra.big").data.len());
}

#[test]
fn nested_checkpoint_strips_the_state_dict_level() {
    let nested = read_checkpoint(&fixture_path("checkpoint_nested.pth")).unwrap();
    assert_eq!(nested, read_checkpoint(&fixture_path("checkpoint_zip.pth")).unwrap());
    let dir = TempDir::new("nested");
    let out = dir.path().join("nested.safetensors");
    let summary = convert(&fixture_path("checkpoint_nested.pth"), &out, &ConvertOptions::default()).unwrap();
    let counters = expected().keys().filter(|n| is_counter(n)).count();
    assert!(counters > 0);
    // The counters and "epoch".
    assert_eq!(summary.skipped_non_tensor, counters + 1);
    assert_eq!(summary.tensors, expected().len() - counters);
}

#[test]
fn convert_writes_every_tensor_but_num_batches_tracked() {
    let dir = TempDir::new("convert");
    for input in ["checkpoint_zip.pth", "checkpoint_legacy.pth"] {
        let out = dir.path().join(input).with_extension("safetensors");
        let summary = convert(&fixture_path(input), &out, &ConvertOptions::default()).unwrap();
        let written = load_safetensors(&out);
        let all = expected();
        let expected: HashMap<_, _> = all.clone().into_iter().filter(|(n, _)| !is_counter(n)).collect();
        assert_eq!(written, expected, "{input}");
        assert_eq!((summary.tensors, summary.skipped_non_tensor), (expected.len(), all.len() - expected.len()));
        assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
    }
}

#[test]
fn convert_to_f16_and_keep_prefixes() {
    let dir = TempDir::new("f16");
    let out = dir.path().join("f16.safetensors");
    let options = ConvertOptions { keep_prefixes: vec!["layer1.".into(), "extra.".into()], to_f16: true };
    let summary = convert(&fixture_path("checkpoint_zip.pth"), &out, &options).unwrap();
    let written = load_safetensors(&out);
    let kept = |n: &str| (n.starts_with("layer1.") || n.starts_with("extra.")) && !is_counter(n);
    let expected: HashMap<_, _> = expected().into_iter().filter(|(n, _)| kept(n)).collect();
    assert_eq!(summary.tensors, expected.len());
    assert_eq!(written.len(), expected.len());
    for (name, (dtype, shape, data)) in &expected {
        let (got_dtype, got_shape, got) = &written[name];
        assert_eq!(got_shape, shape, "{name}");
        if *dtype == Dtype::F32 {
            assert_eq!(*got_dtype, Dtype::F16, "{name}");
            let want: Vec<u8> = data
                .chunks_exact(4)
                .flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
                .collect();
            assert!(*got == want, "{name}: f16 bytes differ");
        } else {
            assert_eq!((got_dtype, got), (dtype, data), "{name}");
        }
    }
}

#[test]
fn convert_refuses_when_no_tensor_is_kept() {
    let dir = TempDir::new("none");
    let out = dir.path().join("none.safetensors");
    let options = ConvertOptions { keep_prefixes: vec!["no_such.".into()], to_f16: false };
    assert!(convert(&fixture_path("checkpoint_zip.pth"), &out, &options).is_err());
    assert!(!out.exists());
}

/// Rewrites the zip fixture entry by entry, replacing the content of entries for which
/// `replace` returns some, with every entry compressed by `method`.
fn rezip(path: &Path, method: zip::CompressionMethod, replace: impl Fn(&str) -> Option<Vec<u8>>) {
    let mut src = zip::ZipArchive::new(std::fs::File::open(fixture_path("checkpoint_zip.pth")).unwrap()).unwrap();
    let mut dst = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for i in 0..src.len() {
        let mut entry = src.by_index(i).unwrap();
        let name = entry.name().to_string();
        let content = replace(&name).unwrap_or_else(|| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            bytes
        });
        dst.start_file(name, options).unwrap();
        dst.write_all(&content).unwrap();
    }
    dst.finish().unwrap();
}

#[test]
fn compressed_archives_read_the_same() {
    let dir = TempDir::new("deflated");
    let path = dir.path().join("deflated.pth");
    rezip(&path, zip::CompressionMethod::Deflated, |_| None);
    assert_matches_expected(&read_checkpoint(&path).unwrap());
}

#[test]
fn big_endian_archives_are_refused() {
    let dir = TempDir::new("big");
    let path = dir.path().join("big.pth");
    rezip(&path, zip::CompressionMethod::Stored, |name| name.ends_with("/byteorder").then(|| b"big".to_vec()));
    let err = read_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("little-endian"), "{err}");
}

#[test]
fn truncated_files_are_errors() {
    let dir = TempDir::new("truncated");
    for input in ["checkpoint_zip.pth", "checkpoint_legacy.pth"] {
        let bytes = std::fs::read(fixture_path(input)).unwrap();
        let path = dir.path().join(input);
        let step = bytes.len() / 97;
        for len in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let result = read_checkpoint(&path);
            assert!(result.is_err(), "{input} cut to {len} bytes was read");
        }
    }
}

#[test]
fn garbage_bytes_are_errors_not_panics() {
    let dir = TempDir::new("garbage");
    for input in ["checkpoint_zip.pth", "checkpoint_legacy.pth"] {
        let bytes = std::fs::read(fixture_path(input)).unwrap();
        let path = dir.path().join(input);
        // An unknown opcode where the object pickle starts: named with its offset.
        let (at, pickle_start) = if input == "checkpoint_zip.pth" {
            let at = bytes.windows(3).position(|w| w == b"\x80\x02c").unwrap() + 2;
            (at, at - 2)
        } else {
            // Legacy: magic (15 bytes) and protocol version (6) come first.
            assert_eq!(&bytes[21..24], b"\x80\x02}");
            (23, 0)
        };
        let mut bad = bytes.clone();
        bad[at] = 0xff;
        std::fs::write(&path, &bad).unwrap();
        let err = read_checkpoint(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("unknown pickle opcode 0xff at byte {}", at - pickle_start)), "{err}");

        // Every byte of the pickles (and, for the zip, of its directory at the end) in turn:
        // any result but a panic. The rest is tensor data, where garbage is just other values.
        let pickles = 0..bytes.len().min(2500);
        let directory = if input == "checkpoint_zip.pth" { bytes.len() - 3000..bytes.len() } else { 0..0 };
        // Patch one byte at a time in place: rewriting the whole file each time is slow.
        std::fs::write(&path, &bytes).unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut put = |i: usize, b: u8| {
            file.seek(SeekFrom::Start(i as u64)).unwrap();
            file.write_all(&[b]).unwrap();
        };
        for i in pickles.chain(directory) {
            put(i, if i % 2 == 0 { 0xff } else { 0x00 });
            let _ = read_checkpoint(&path);
            put(i, bytes[i]);
        }
    }
}

#[test]
fn non_checkpoints_are_errors() {
    let dir = TempDir::new("other");
    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    assert!(read_checkpoint(&empty).unwrap_err().to_string().contains("empty"));
    // A safetensors file is not a checkpoint.
    let err = read_checkpoint(&fixture_path("checkpoint_expected.safetensors")).unwrap_err().to_string();
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    assert!(read_checkpoint(&dir.path().join("missing.pth")).is_err());
}
