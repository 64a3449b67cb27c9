//! The two containers `torch.save` writes, and rebuilding tensors from their storages.
//!
//! * Zip (torch >= 1.6, the default): `<prefix>/data.pkl` is the pickled object and
//!   `<prefix>/data/<key>` holds each storage's raw little-endian bytes, stored uncompressed
//!   (so they are read straight from the memory map). A persistent id is
//!   `('storage', storage_type, key, location, numel)`.
//! * Legacy (`_use_new_zipfile_serialization=False`): consecutive pickles (magic number,
//!   protocol version, sys_info, the object, the sorted storage keys), then for each key an
//!   8-byte little-endian element count and the raw little-endian bytes. A persistent id is
//!   `('storage', storage_type, root_key, location, numel, view_metadata)`.
//!
//! Both formats pickle a tensor as `_rebuild_tensor_v2(storage, offset, size, stride, ...)`,
//! so tensors sharing a storage and non-contiguous views are rebuilt here by gathering the
//! elements the view addresses.

use super::pickle::{self, Global, Pickle, TensorArgs, Value};
use super::CheckpointTensor;
use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use zip::{CompressionMethod, ZipArchive};

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c) as pickle's little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// `torch.serialization.PROTOCOL_VERSION`: the only legacy layout there has been.
const LEGACY_PROTOCOL: i64 = 1001;

/// An opened checkpoint: its object graph and where each storage's bytes are.
pub struct TorchFile {
    path: PathBuf,
    map: Mmap,
    pub pickle: Pickle,
    records: HashMap<String, Record>,
}

/// A storage's bytes: a range of the memory map, or a decompressed copy for the rare archive
/// that someone re-zipped with compression.
enum Record {
    Mapped(Range<usize>),
    Owned(Vec<u8>),
}

impl TorchFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is only read. Another process truncating the file while we read it
        // could fault, the accepted trade-off of every memory-mapped reader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::checkpoint(path, reason);
        let (pickle, records) = if map.starts_with(b"PK\x03\x04") {
            read_zip(&map).map_err(bad)?
        } else if map.get(257..262) == Some(b"ustar") {
            return Err(bad("this is torch's oldest, tar-based checkpoint format, which is not supported: \
                 load it with torch and save it again"
                .into()));
        } else if map.first() == Some(&0x80) {
            read_legacy(&map).map_err(bad)?
        } else if map.is_empty() {
            return Err(bad("the file is empty".into()));
        } else {
            return Err(bad("not a PyTorch checkpoint: neither a torch.save zip archive nor a legacy pickle".into()));
        };
        Ok(TorchFile { path: path.to_path_buf(), map, pickle, records })
    }

    /// Materialises the tensor at arena index `id` as contiguous little-endian bytes.
    pub fn tensor(&self, name: String, id: usize) -> Result<CheckpointTensor> {
        let built = match self.pickle.tensor(id) {
            Some(args) => self.rebuild(args).map(|(dtype, data)| (dtype, args.size.clone(), data)),
            None => Err("not a tensor".into()),
        };
        match built {
            Ok((dtype, shape, data)) => Ok(CheckpointTensor { name, dtype, shape, data }),
            Err(reason) => Err(Error::checkpoint(&self.path, format!("tensor `{name}`: {reason}"))),
        }
    }

    fn rebuild(&self, args: &TensorArgs) -> Result<(Dtype, Vec<u8>), String> {
        let storage = StorageRef::parse(&self.pickle, args.storage)?;
        let record = self.records.get(storage.key).ok_or_else(|| {
            format!("its storage `{}` is missing from the file (truncated or corrupt checkpoint)", storage.key)
        })?;
        let mut bytes = record.bytes(&self.map);
        let el = element_size(storage.dtype);
        if let Some((offset, len)) = storage.view {
            // Old torch saved storage slices as views of a root storage, in elements.
            let range = offset.checked_mul(el).zip(offset.checked_add(len).and_then(|end| end.checked_mul(el)));
            bytes = range
                .and_then(|(start, end)| bytes.get(start..end))
                .ok_or_else(|| format!("its storage view [{offset}, +{len}) lies outside storage `{}`", storage.key))?;
        }
        let data = gather(bytes, el, args)?;
        Ok((storage.dtype, data))
    }
}

/// Bytes per element; every dtype a torch storage type maps to is whole bytes wide.
fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// A parsed persistent id.
struct StorageRef<'p> {
    key: &'p str,
    dtype: Dtype,
    /// Legacy view metadata: (offset, numel) in elements of the root storage.
    view: Option<(usize, usize)>,
}

impl<'p> StorageRef<'p> {
    fn parse(pickle: &'p Pickle, id: usize) -> Result<Self, String> {
        let items = pickle.seq(id);
        let (key, dtype) = match items {
            [Value::Str(tag), Value::Global(Global::StorageType(dtype)), Value::Str(key), _location, _numel, ..]
                if &**tag == "storage" =>
            {
                (&**key, *dtype)
            }
            _ => return Err("its persistent id is not a ('storage', type, key, location, numel) tuple".into()),
        };
        let view = match items.get(5) {
            None | Some(Value::None) => None,
            Some(&Value::Seq(v)) => match pickle.seq(v) {
                [_view_key, Value::Int(offset), Value::Int(len)] => {
                    let offset = usize::try_from(*offset).map_err(|_| "negative storage view offset")?;
                    let len = usize::try_from(*len).map_err(|_| "negative storage view size")?;
                    Some((offset, len))
                }
                _ => return Err("malformed storage view metadata".into()),
            },
            Some(other) => return Err(format!("storage view metadata is a {}", other.kind())),
        };
        Ok(StorageRef { key, dtype, view })
    }
}

/// Copies the elements a (size, stride, offset) view addresses in `storage` into contiguous
/// row-major order. Element positions are bounds-checked once, up front, against the
/// furthest element the view can reach, so the copy itself cannot go out of range.
fn gather(storage: &[u8], el: usize, args: &TensorArgs) -> Result<Vec<u8>, String> {
    let TensorArgs { offset, size, stride, .. } = args;
    let numel = size.iter().try_fold(1usize, |n, &s| n.checked_mul(s)).ok_or("its element count overflows")?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The furthest element the view reaches (strides are never negative in torch).
    let last = size.iter().zip(stride).try_fold(*offset, |at, (&n, &s)| at.checked_add((n - 1).checked_mul(s)?));
    let have = storage.len() / el;
    match last {
        Some(last) if last < have => {}
        _ => {
            let needed = last.and_then(|l| l.checked_add(1)).map_or("over 2^64".into(), |n| n.to_string());
            return Err(format!(
                "it needs {needed} elements of its storage but the storage holds {have} (truncated or corrupt checkpoint)"
            ));
        }
    }
    // Only overlapping strides (expand()'s stride 0) address more elements than the storage
    // holds; refusing them keeps a hostile file from asking for an unbounded allocation.
    if numel > have {
        return Err(format!(
            "it is a broadcast view of {numel} elements over a storage of {have}: \
             save it with `.contiguous()` first"
        ));
    }
    let contiguous = {
        let mut expect = 1;
        size.iter().zip(stride).rev().all(|(&n, &s)| {
            let ok = n == 1 || s == expect;
            expect *= n;
            ok
        })
    };
    let start = offset * el;
    let inner = size.split_last().zip(stride.last());
    let Some(((&inner_n, outer), &inner_s)) = inner.filter(|_| !contiguous) else {
        // Already in order (0-d tensors included): one copy.
        return Ok(storage[start..start + numel * el].to_vec());
    };
    let mut out = Vec::with_capacity(numel * el);
    // Odometer over the outer dimensions; each step copies one row of the innermost one.
    let mut index = vec![0; outer.len()];
    loop {
        let base = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        if inner_s == 1 {
            out.extend_from_slice(&storage[base * el..(base + inner_n) * el]);
        } else {
            for j in 0..inner_n {
                let at = (base + j * inner_s) * el;
                out.extend_from_slice(&storage[at..at + el]);
            }
        }
        let mut d = outer.len();
        loop {
            if d == 0 {
                return Ok(out);
            }
            d -= 1;
            index[d] += 1;
            if index[d] < outer[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

type Contents = (Pickle, HashMap<String, Record>);

fn read_zip(map: &[u8]) -> Result<Contents, String> {
    let mut zip = ZipArchive::new(Cursor::new(map))
        .map_err(|e| format!("not a readable zip archive ({e}): the file is truncated or corrupt"))?;
    // torch names the archive's single top folder after the file it first saved to, so take
    // whatever the first entry's folder is.
    let prefix = match zip.name_for_index(0).and_then(|n| n.split_once('/')) {
        Some((prefix, _)) => format!("{prefix}/"),
        None => return Err("the zip archive has no top folder: not a torch.save checkpoint".into()),
    };
    if zip.index_for_name(&format!("{prefix}constants.pkl")).is_some() {
        return Err("this is a TorchScript archive (torch.jit.save), not a state dict: \
             save the weights with torch.save(model.state_dict(), path)"
            .into());
    }
    if let Some(i) = zip.index_for_name(&format!("{prefix}byteorder")) {
        let order = read_entry(&mut zip, i, map)?;
        let order = order.bytes(map);
        if order != b"little" {
            return Err(format!(
                "the storages are in `{}` byte order, only little-endian is supported: \
                 load and save the checkpoint again on a little-endian machine (x86, ARM)",
                String::from_utf8_lossy(order)
            ));
        }
    }
    let pkl = zip
        .index_for_name(&format!("{prefix}data.pkl"))
        .ok_or_else(|| format!("the zip archive has no {prefix}data.pkl: not a torch.save checkpoint"))?;
    let pkl = read_entry(&mut zip, pkl, map)?;
    let pickle = pickle::load(pkl.bytes(map), &mut 0).map_err(|e| format!("data.pkl: {e}"))?;
    let data = format!("{prefix}data/");
    let mut records = HashMap::new();
    for i in 0..zip.len() {
        let key = match zip.name_for_index(i).and_then(|n| n.strip_prefix(&data)) {
            Some(key) => key.to_string(),
            None => continue,
        };
        records.insert(key, read_entry(&mut zip, i, map)?);
    }
    Ok((pickle, records))
}

/// One archive entry: located in the map when stored, as torch always writes it, else
/// decompressed.
fn read_entry(zip: &mut ZipArchive<Cursor<&[u8]>>, i: usize, map: &[u8]) -> Result<Record, String> {
    let corrupt = |e: zip::result::ZipError| format!("zip entry {i}: {e} (truncated or corrupt file)");
    let raw = zip.by_index_raw(i).map_err(corrupt)?;
    if raw.compression() == CompressionMethod::Stored {
        let start = usize::try_from(raw.data_start()).ok();
        let end = start.zip(usize::try_from(raw.compressed_size()).ok()).and_then(|(s, n)| s.checked_add(n));
        return match (start, end) {
            (Some(start), Some(end)) if end <= map.len() => Ok(Record::Mapped(start..end)),
            _ => Err(format!("zip entry `{}` runs past the end of the file (truncated file?)", raw.name())),
        };
    }
    drop(raw);
    let entry = zip.by_index(i).map_err(corrupt)?;
    let size = entry.size();
    let mut bytes = Vec::new();
    entry.take(size).read_to_end(&mut bytes).map_err(|e| format!("zip entry {i}: {e} (corrupt file?)"))?;
    Ok(Record::Owned(bytes))
}

impl Record {
    fn bytes<'a>(&'a self, map: &'a [u8]) -> &'a [u8] {
        match self {
            Record::Mapped(range) => map.get(range.clone()).unwrap_or_default(),
            Record::Owned(bytes) => bytes,
        }
    }
}

fn read_legacy(map: &[u8]) -> Result<Contents, String> {
    let mut pos = 0;
    let mut next = |what: &str| pickle::load(map, &mut pos).map_err(|e| format!("{what}: {e}"));
    let magic = next("magic number")?;
    if !matches!(&magic.root, Value::BigInt(b) if **b == LEGACY_MAGIC) {
        return Err("wrong magic number: not a torch.save checkpoint (or a corrupt one)".into());
    }
    match next("protocol version")?.root {
        Value::Int(LEGACY_PROTOCOL) => {}
        _ => {
            return Err(format!("not legacy protocol version {LEGACY_PROTOCOL}: a corrupt or unknown torch.save file"))
        }
    }
    let sys_info = next("sys_info")?;
    if let Value::Dict(d) = sys_info.root {
        let big_endian = sys_info
            .dict(d)
            .iter()
            .any(|(k, v)| matches!(k, Value::Str(k) if &**k == "little_endian") && matches!(v, Value::Bool(false)));
        if big_endian {
            return Err("saved on a big-endian machine, only little-endian is supported: \
                 load and save the checkpoint again on a little-endian machine (x86, ARM)"
                .into());
        }
    }
    let main = next("data pickle")?;
    let keys = next("storage key list")?;
    let Value::Seq(key_list) = keys.root else {
        return Err("the storage key list is not a list".into());
    };
    // The records carry element counts; the element size comes from the storage types the
    // object pickle gave each key.
    let mut sizes = HashMap::new();
    for &id in &main.persistent_ids {
        let storage = StorageRef::parse(&main, id)?;
        sizes.insert(storage.key, element_size(storage.dtype));
    }
    let mut records = HashMap::new();
    for key in keys.seq(key_list) {
        let Value::Str(key) = key else { return Err("a storage key is not a string".into()) };
        let el = *sizes
            .get(&**key)
            .ok_or_else(|| format!("storage `{key}` is listed but nothing uses it (corrupt file?)"))?;
        let truncated = || format!("storage `{key}` is cut off by the end of the file (truncated file?)");
        let count = map.get(pos..pos + 8).ok_or_else(truncated)?;
        let count = u64::from_le_bytes(count.try_into().map_err(|_| truncated())?);
        let start = pos + 8;
        let end = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(el))
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= map.len())
            .ok_or_else(truncated)?;
        records.insert(key.to_string(), Record::Mapped(start..end));
        pos = end;
    }
    Ok((main, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::read_checkpoint;

    /// A legacy-format file by hand: `{'w': tensor}` where the tensor is `[1:3]` of a view
    /// `[2:5]` of storage `0` holding 0.0..6.0, so it reads back as [3.0, 4.0].
    fn legacy_file(test: &str, magic: &[u8], little_endian: bool) -> PathBuf {
        let mut f = b"\x80\x02\x8a\x0a".to_vec();
        f.extend(magic);
        f.extend(b".\x80\x02M\xe9\x03.\x80\x02}X\x0d\x00\x00\x00little_endian");
        f.push(if little_endian { 0x88 } else { 0x89 });
        f.extend(b"s.\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage");
        f.extend(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06(X\x01\x00\x00\x001K\x02K\x03t");
        f.extend(b"tQK\x01K\x02\x85K\x01\x85\x89)tRs.\x80\x02]X\x01\x00\x00\x000a.");
        f.extend(6u64.to_le_bytes());
        f.extend((0..6).flat_map(|i| (i as f32).to_le_bytes()));
        let path = std::env::temp_dir().join(format!("patchcore-torch-file-{}-{test}.pth", std::process::id()));
        std::fs::write(&path, f).unwrap();
        path
    }

    #[test]
    fn reads_legacy_storage_views() {
        let path = legacy_file("view", &LEGACY_MAGIC, true);
        let tensors = read_checkpoint(&path).unwrap();
        let data: Vec<u8> = [3f32, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(tensors, [CheckpointTensor { name: "w".into(), dtype: Dtype::F32, shape: vec![2], data }]);
        // Cut anywhere, the file is an error.
        let bytes = std::fs::read(&path).unwrap();
        for n in 0..bytes.len() {
            std::fs::write(&path, &bytes[..n]).unwrap();
            assert!(read_checkpoint(&path).is_err(), "cut at {n}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn refuses_wrong_magic_and_big_endian() {
        let mut magic = LEGACY_MAGIC;
        magic[0] ^= 1;
        for (test, magic, little, expect) in
            [("magic", magic, true, "magic"), ("big", LEGACY_MAGIC, false, "big-endian")]
        {
            let path = legacy_file(test, &magic, little);
            let err = read_checkpoint(&path).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            std::fs::remove_file(path).unwrap();
        }
    }

    fn args(offset: usize, size: &[usize], stride: &[usize]) -> TensorArgs {
        TensorArgs { storage: 0, offset, size: size.to_vec(), stride: stride.to_vec() }
    }

    /// Storage of u16 elements 0..n, so gathered values read back as their storage positions.
    fn storage(n: u16) -> Vec<u8> {
        (0..n).flat_map(u16::to_le_bytes).collect()
    }

    fn values(bytes: &[u8]) -> Vec<u16> {
        bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
    }

    #[test]
    fn gathers_views() {
        let s = storage(12);
        // Contiguous with an offset, a transpose, a strided slice, a scalar.
        assert_eq!(values(&gather(&s, 2, &args(2, &[2, 3], &[3, 1])).unwrap()), [2, 3, 4, 5, 6, 7]);
        assert_eq!(values(&gather(&s, 2, &args(0, &[3, 2], &[1, 3])).unwrap()), [0, 3, 1, 4, 2, 5]);
        assert_eq!(values(&gather(&s, 2, &args(1, &[2, 2], &[6, 2])).unwrap()), [1, 3, 7, 9]);
        assert_eq!(values(&gather(&s, 2, &args(11, &[], &[])).unwrap()), [11]);
        assert!(gather(&s, 2, &args(5, &[0, 3], &[3, 1])).unwrap().is_empty());
    }

    #[test]
    fn refuses_views_outside_or_overlapping_their_storage() {
        let s = storage(12);
        let err = gather(&s, 2, &args(7, &[2, 3], &[3, 1])).unwrap_err();
        assert!(err.contains("needs 13 elements") && err.contains("holds 12"), "{err}");
        assert!(gather(&s, 2, &args(usize::MAX, &[2], &[1])).is_err());
        assert!(gather(&s, 2, &args(0, &[usize::MAX, 2], &[1, 1])).is_err());
        let err = gather(&s, 2, &args(0, &[1000, 12], &[0, 1])).unwrap_err();
        assert!(err.contains("broadcast"), "{err}");
    }
}
