//! The model file: one safetensors file holding the memory bank, the folded backbone
//! convolutions it needs, and the [`ModelMeta`] as JSON under the `patchcore` metadata key.
//! Written atomically; read through a memory map.

use super::{ModelMeta, FORMAT_VERSION};
use crate::backbone::weights::{SafetensorsFile, WeightSource};
use crate::backbone::{Backbone, ConvOrigin};
use crate::backend::cpu::ClusterOrder;
use crate::backend::{Backend, ConvWeights};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::tensor::Tensor;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

const META_KEY: &str = "patchcore";
const BANK: &str = "memory_bank";
/// The bank's `ClusterOrder` (U32, one entry a row): optional, as files written before it have
/// none, and readers that do not know it ignore it.
const BANK_ORDER: &str = "memory_bank.cluster_order";
const BACKBONE_PREFIX: &str = "backbone.";

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the model, with the bank's `ClusterOrder` found here, once, for every load to reuse.
pub fn save(path: &Path, meta: &ModelMeta, bank: &Tensor, convs: &[(String, ConvWeights)]) -> Result<()> {
    let [m, d] = bank.dims2()?;
    let order = ClusterOrder::of(&bank.data, d);
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (BANK.into(), Dtype::F32, bank.shape.clone(), f32_bytes(&bank.data)),
        (BANK_ORDER.into(), Dtype::U32, vec![m], order.as_slice().iter().flat_map(|i| i.to_le_bytes()).collect()),
    ];
    for (name, conv) in convs {
        let prefix = format!("{BACKBONE_PREFIX}{name}");
        let weight = f32_bytes(&conv.weight);
        tensors.push((format!("{prefix}.weight"), Dtype::F32, conv.spec.weight_shape().to_vec(), weight));
        tensors.push((format!("{prefix}.bias"), Dtype::F32, vec![conv.spec.out_channels], f32_bytes(&conv.bias)));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::model(path, format!("cannot encode tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string(meta).map_err(|e| Error::model(path, format!("cannot encode metadata: {e}")))?;
    let metadata = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::model(path, format!("cannot encode the model: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads and checks the metadata: present, of this format version, self-consistent.
pub fn read_meta(file: &SafetensorsFile, path: &Path) -> Result<ModelMeta> {
    let metadata = file.metadata();
    let json = metadata.get(META_KEY).ok_or_else(|| {
        Error::model(path, "not a patchcore model (no `patchcore` metadata): models are written by `patchcore fit`")
    })?;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::model(path, format!("metadata is not valid JSON: {e}")))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    if version != Some(FORMAT_VERSION as u64) {
        let found = version.map_or("no".to_string(), |v| v.to_string());
        return Err(Error::model(
            path,
            format!(
                "model format version {found}, but this build reads version {FORMAT_VERSION}: \
                 refit the model with this patchcore, or use the patchcore that wrote it"
            ),
        ));
    }
    let meta: ModelMeta =
        serde_json::from_value(value).map_err(|e| Error::model(path, format!("metadata is incomplete: {e}")))?;
    if meta.embedding_dim != meta.backbone.embedding_dim() || meta.bank_rows == 0 {
        return Err(Error::model(
            path,
            format!(
                "metadata says {} with {} dims and {} bank rows; {} has {} dims",
                meta.backbone,
                meta.embedding_dim,
                meta.bank_rows,
                meta.backbone,
                meta.backbone.embedding_dim()
            ),
        ));
    }
    if meta.num_neighbors == 0 || meta.num_neighbors > meta.bank_rows {
        return Err(Error::model(
            path,
            format!("num_neighbors {} is not in 1..={}", meta.num_neighbors, meta.bank_rows),
        ));
    }
    Ok(meta)
}

/// The model file's meta, backbone and memory bank, prepared for the backend (the bank keeps
/// its rows). The bank is read and prepared (the CPU's screening form: its clustering and
/// packing) as a task of the thread pool while the backbone loads: the load 87-98 -> 62-70 ms
/// (`PATCHCORE_TRACE`, the chip model, one image's predict, five runs each). The backbone loads
/// on the caller's thread (`in_place_scope`), as before, where a GPU backend made its cuDNN
/// handles; the bank's upload goes through cudarc's calls, which bind the context to whichever
/// thread runs them.
pub fn load<B: Backend>(backend: &B, path: &Path) -> Result<(ModelMeta, Backbone<B>, B::Bank)> {
    let file = SafetensorsFile::open(path)?;
    let meta = read_meta(&file, path)?;
    let mut bank = None;
    let backbone = rayon::in_place_scope(|scope| {
        scope.spawn(|_| bank = Some(read_bank(backend, &file, &meta)));
        Backbone::load(backend, meta.backbone, ConvOrigin::Folded(&file, BACKBONE_PREFIX))
    });
    let bank = bank.expect("the scope ran the bank's task");
    // The backbone's error first, as it comes first in the file's story (a model of another
    // architecture is missing its convolutions before its bank has the wrong width).
    let backbone = backbone?;
    Ok((meta, backbone, bank?))
}

/// The model file's memory bank, prepared for `backend` (which keeps its rows) in the file's
/// cluster order where it has one.
fn read_bank<B: Backend>(backend: &B, file: &SafetensorsFile, meta: &ModelMeta) -> Result<B::Bank> {
    let shape = vec![meta.bank_rows, meta.embedding_dim];
    let rows = Tensor::new(shape.clone(), file.tensor(BANK, &shape)?);
    match file.u32_values(BANK_ORDER, meta.bank_rows)? {
        None => backend.prepare_bank(rows),
        Some(order) => {
            let order = ClusterOrder::new(order, meta.bank_rows).map_err(|e| {
                Error::weights(file.origin(), BANK_ORDER, format!("not an order of the bank's rows: {e}"))
            })?;
            backend.prepare_clustered_bank(rows, order)
        }
    }
}
