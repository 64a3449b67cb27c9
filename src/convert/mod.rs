//! Reading PyTorch checkpoints (`torch.save` files, `.pth`/`.pt`) without Python, and
//! converting them to safetensors.
//!
//! Both of torch's containers are read: the zip archive torch >= 1.6 writes (what torchvision
//! ships) and the older single-stream format (`_use_new_zipfile_serialization=False`). The
//! pickled object is interpreted by a restricted unpickler that knows only the handful of torch
//! names a state dict uses and never executes anything: a checkpoint that refers to any other
//! Python object (a whole pickled `nn.Module`, an `argparse.Namespace`, ...) is refused with
//! the name of the offending global.
//!
//! The checkpoint must be a dict. Its tensors are named by their keys; nested dicts are
//! flattened with `.`, except that one wrapping `state_dict` (or else `model`) level of a
//! training checkpoint (`{"state_dict": {...}, "epoch": 3}`) is dropped so names match the
//! model's own. Non-tensor leaves (epochs, strings, hyper-parameters) are skipped and counted.

mod pickle;
mod torch_file;

use crate::error::{Error, Result};
use pickle::{Pickle, Value};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashSet;
use std::path::Path;
use torch_file::TorchFile;

/// One tensor of a checkpoint, materialised as contiguous row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads every tensor of a checkpoint, in file order, with its dtype as stored.
pub fn read_checkpoint(path: &Path) -> Result<Vec<CheckpointTensor>> {
    let file = TorchFile::open(path)?;
    let (names, _) = tensor_names(&file.pickle, path)?;
    names.into_iter().map(|(name, id)| file.tensor(name, id)).collect()
}

#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Keep only tensors whose name starts with one of these; empty keeps all.
    pub keep_prefixes: Vec<String>,
    /// Store f32 tensors as f16 (halves the file; other dtypes are kept).
    pub to_f16: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConvertSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Non-tensor leaves plus the dropped `num_batches_tracked` counters. Tensors left out by
    /// `keep_prefixes`, counters included, are not counted.
    pub skipped_non_tensor: usize,
    /// Size of the safetensors file written.
    pub bytes: u64,
}

/// Converts a checkpoint to a safetensors file, written atomically. BatchNorm's
/// `num_batches_tracked` counters are dropped: only training reads them.
pub fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<ConvertSummary> {
    let file = TorchFile::open(input)?;
    let (names, mut skipped) = tensor_names(&file.pickle, input)?;
    let mut tensors = Vec::new();
    for (name, id) in names {
        if !options.keep_prefixes.is_empty() && !options.keep_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        if name.rsplit('.').next() == Some("num_batches_tracked") {
            skipped += 1;
            continue;
        }
        let mut tensor = file.tensor(name, id)?;
        if options.to_f16 && tensor.dtype == Dtype::F32 {
            tensor.data = f32_to_f16(&tensor).map_err(|reason| Error::checkpoint(input, reason))?;
            tensor.dtype = Dtype::F16;
        }
        tensors.push(tensor);
    }
    if tensors.is_empty() {
        return Err(Error::checkpoint(input, "no tensors to write: check the keep prefixes"));
    }
    let views = tensors
        .iter()
        .map(|t| TensorView::new(t.dtype, t.shape.clone(), &t.data).map(|v| (t.name.as_str(), v)))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|views| safetensors::serialize(views, None));
    let bytes = views.map_err(|e| Error::checkpoint(output, format!("cannot write safetensors: {e}")))?;
    crate::io::write_atomic(output, &bytes)?;
    Ok(ConvertSummary { tensors: tensors.len(), skipped_non_tensor: skipped, bytes: bytes.len() as u64 })
}

/// Converts f32 data to f16, refusing values f16 cannot hold rather than turning them into
/// infinities the model would silently compute with.
fn f32_to_f16(tensor: &CheckpointTensor) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(tensor.data.len() / 2);
    for c in tensor.data.chunks_exact(4) {
        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let h = half::f16::from_f32(v);
        if h.is_infinite() && v.is_finite() {
            return Err(format!(
                "tensor `{}` holds {v}, beyond f16's range (±65504): convert it without f16",
                tensor.name
            ));
        }
        out.extend_from_slice(&h.to_le_bytes());
    }
    Ok(out)
}

/// Nesting deeper than this is refused: it also bounds dicts that contain themselves.
const MAX_DEPTH: usize = 32;
/// Dict entries visited again through a second reference to their dict. Each dict's first
/// visit is bounded by the file's size; without this cap, dicts listing another dict many
/// times, nested a few levels, would expand exponentially.
const MAX_REVISITED: usize = 1 << 20;

/// The checkpoint's tensors as (name, arena index) in file order, and the number of
/// non-tensor leaves skipped.
fn tensor_names(pickle: &Pickle, path: &Path) -> Result<(Vec<(String, usize)>, usize)> {
    let bad = |reason: String| Error::checkpoint(path, reason);
    let Value::Dict(root) = pickle.root else {
        return Err(bad(format!("the checkpoint holds a {}, not a dict of tensors", pickle.root.kind())));
    };
    let entries = pickle.dict(root);
    let is = |k: &Value, name: &str| matches!(k, Value::Str(k) if &**k == name);
    let wrapper = ["state_dict", "model"]
        .iter()
        .find_map(|w| entries.iter().position(|(k, v)| is(k, w) && matches!(v, Value::Dict(_))));
    let mut flat = Flat { pickle, names: Vec::new(), skipped: 0, seen: HashSet::new(), revisited: 0 };
    for (i, (key, value)) in entries.iter().enumerate() {
        let name = if Some(i) == wrapper { Some(String::new()) } else { key_name(key) };
        flat.add(name, value, 1).map_err(bad)?;
    }
    let mut seen = HashSet::new();
    if let Some((dup, _)) = flat.names.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(bad(format!("two tensors are named `{dup}` once nested dicts are flattened")));
    }
    Ok((flat.names, flat.skipped))
}

fn key_name(key: &Value) -> Option<String> {
    match key {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

struct Flat<'p> {
    pickle: &'p Pickle,
    names: Vec<(String, usize)>,
    skipped: usize,
    /// Dicts visited so far, and how many entries were visited again through shared ones.
    seen: HashSet<usize>,
    revisited: usize,
}

impl Flat<'_> {
    /// Adds `value` under `name`; None when some key on the way is neither a string nor an
    /// int, which is fine as long as no tensor lies below it.
    fn add(&mut self, name: Option<String>, value: &Value, depth: usize) -> Result<(), String> {
        match *value {
            Value::Tensor(id) => match name {
                Some(name) => self.names.push((name, id)),
                None => return Err("a tensor is stored under a dict key that is neither a string nor an int".into()),
            },
            Value::Dict(id) => {
                let entries = self.pickle.dict(id);
                if depth > MAX_DEPTH {
                    return Err(format!("dicts nest deeper than {MAX_DEPTH} levels (or contain themselves)"));
                }
                if !self.seen.insert(id) {
                    self.revisited += entries.len();
                    if self.revisited > MAX_REVISITED {
                        return Err("dicts refer to the same dicts too many times over to name their tensors".into());
                    }
                }
                for (key, value) in entries {
                    let child = name.as_ref().zip(key_name(key));
                    let child = child.map(|(n, k)| if n.is_empty() { k } else { format!("{n}.{k}") });
                    self.add(child, value, depth + 1)?;
                }
            }
            _ => self.skipped += 1,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(stream: &[u8]) -> Result<(Vec<(String, usize)>, usize)> {
        let pickle = pickle::load(stream, &mut 0).unwrap();
        tensor_names(&pickle, Path::new("test.pth"))
    }

    #[test]
    fn counts_non_tensor_leaves() {
        // {'epoch': 3, 'cfg': {'lr': None, 'name': 'x'}, 'hist': [1]}
        let stream = b"\x80\x02}(X\x05\x00\x00\x00epochK\x03X\x03\x00\x00\x00cfg}(X\x02\x00\x00\x00lrN\
            X\x04\x00\x00\x00nameX\x01\x00\x00\x00xuX\x04\x00\x00\x00hist]K\x01au.";
        let (tensors, skipped) = names(stream).unwrap();
        assert!(tensors.is_empty());
        assert_eq!(skipped, 4);
    }

    #[test]
    fn refuses_dicts_containing_themselves() {
        // d = {}; d['a'] = d
        let err = names(b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.").unwrap_err().to_string();
        assert!(err.contains("levels"), "{err}");
    }

    #[test]
    fn refuses_exponentially_shared_dicts() {
        // d0 = {'x': 1}; d1 = {i: d0 for i in range(1100)}; {i: d1 for i in range(1100)}
        let mut stream = b"\x80\x02}q\x00X\x01\x00\x00\x00xK\x01s".to_vec();
        for memo in [0u8, 1] {
            stream.extend([b'}', b'q', memo + 1, b'(']);
            for i in 0..1100u16 {
                stream.push(b'M');
                stream.extend(i.to_le_bytes());
                stream.extend([b'h', memo]);
            }
            stream.push(b'u');
        }
        stream.push(b'.');
        let err = names(&stream).unwrap_err().to_string();
        assert!(err.contains("too many times"), "{err}");
    }
}
