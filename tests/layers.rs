//! The library's top-level modules form a chain of layers, with no import cycle: each module
//! may use only modules of lower layers. Checked on the source text, every `crate::x` path of
//! every file under src/ (use lines and inline paths alike).

use std::path::Path;

/// Lowest first. Modules of one layer are independent of each other.
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "resample", "wide"],
    &["io", "tensor"],
    &["trace"],
    &["data"],
    &["backend", "eval", "convert"],
    &["backbone"],
    &["patchcore"],
    &["render"],
    &["cli", "ffi"],
];

/// The crate root's re-exports, by the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Error", "error"),
    ("Result", "error"),
    ("Tensor", "tensor"),
    ("PatchCore", "patchcore"),
    ("FitOptions", "patchcore"),
    ("AnyBackend", "backend"),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `crate::name` in `text`: the top-level module (or root re-export) each path starts with.
fn crate_paths(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            rest[..end].to_string()
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut modules_seen = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.components().next().unwrap().as_os_str().to_string_lossy();
        let module = top.trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer_of(module).unwrap_or_else(|| panic!("src/{top}: a top-level module missing from LAYERS"));
        modules_seen += 1;
        for used in crate_paths(&std::fs::read_to_string(file).unwrap()) {
            let target = ROOT_REEXPORTS.iter().find(|(name, _)| *name == used).map_or(used.as_str(), |(_, m)| *m);
            if target == module {
                continue;
            }
            match layer_of(target) {
                Some(layer) if layer < own => {}
                Some(_) => violations
                    .push(format!("{}: uses crate::{used} ({target}), not below {module}", relative.display())),
                None => violations.push(format!("{}: crate::{used} is in no layer", relative.display())),
            }
        }
    }
    assert!(modules_seen > 20, "only {modules_seen} files read: is src/ where it was?");
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

/// The checker itself finds a backward import (so a passing run means something).
#[test]
fn a_backward_import_is_found() {
    let paths = crate_paths("use crate::patchcore::PatchCore;\nlet x = crate::Error::option(a, b);");
    assert_eq!(paths, ["patchcore", "Error"]);
    assert!(layer_of("patchcore") > layer_of("eval"), "eval using patchcore would be a violation");
}
