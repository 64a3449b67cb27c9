//! Argument groups shared by several subcommands.

use crate::backbone::weights::SafetensorsFile;
use crate::backbone::Architecture;
use crate::backend::{AnyBackend, DeviceChoice, Precision};
use crate::error::{Error, Result};
use crate::patchcore::{FitOptions, PatchCore};
use std::path::PathBuf;

/// `--batch` of the commands that score a model: 1 to 1024 images per forward pass, checked by
/// clap so that eval and predict refuse the same values the same way.
fn batch_size(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("`{s}`: expected 1 to 1024")),
    }
}

/// `--trace FILE`: a Chrome trace-event JSON file of the command's spans (open it in Perfetto
/// or chrome://tracing), written when the command ends, whether it succeeded or not.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Write a Chrome trace (Perfetto, chrome://tracing) of every stage to this file.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

/// How much of the test set the report shows, for the commands that write one.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ReportArgs {
    /// Example images per category in report.html, worst cases first: the highest-scoring good
    /// images and the lowest-scoring defects, then the clearest of each kind. Overlays of every
    /// image are written regardless.
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub examples: usize,
}

/// Where to run, for the commands that take a model or fit one.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto (CUDA when usable, else the CPU with a notice).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Arithmetic: f32 (the default: exact on the GPU, matching the CPU to 1e-4; on a CPU with
    /// AMX, convolutions of split bf16 products within a few f32 roundings); on the GPU tf32 or
    /// f16 (tensor cores, faster, looser); on a CPU with AMX-BF16 or AVX512-BF16 bf16
    /// (convolutions in bf16, about 1.5x faster again on AMX, scores within about 2%; the kNN
    /// stays exact).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

/// `--backbone`: the architectures' own names, listed by `--help`.
fn architecture() -> impl clap::builder::TypedValueParser<Value = Architecture> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Architecture::ALL.map(Architecture::name))
        .try_map(|name| name.parse::<Architecture>())
}

/// The model a command scores with, and how: shared by eval and predict.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The model file written by `patchcore fit`.
    #[arg(long)]
    pub model: PathBuf,
    /// Images per forward pass (1 to 1024).
    #[arg(long, default_value_t = 8, value_parser = batch_size)]
    pub batch: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    pub fn load(&self) -> Result<PatchCore<AnyBackend>> {
        PatchCore::load(super::backend_for(self.device)?, &self.model)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BackboneArgs {
    /// The backbone; efficientnet_lite0 is bundled (ImageNet weights, no download needed).
    #[arg(long, value_parser = architecture(), default_value = "efficientnet_lite0")]
    pub backbone: Architecture,
    /// Backbone weights as safetensors with torchvision / efficientnet_pytorch names
    /// (`patchcore convert` makes them). Optional for the bundled backbone.
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

impl BackboneArgs {
    pub fn source(&self) -> Result<SafetensorsFile> {
        match (&self.weights, self.backbone) {
            (Some(path), _) => SafetensorsFile::open(path),
            (None, Architecture::EfficientnetLite0) => Ok(SafetensorsFile::bundled_efficientnet_lite0()),
            (None, other) => Err(Error::option(
                "--weights",
                format!("{other} has no bundled weights: convert torchvision's checkpoint with `patchcore convert` and pass it"),
            )),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct FitArgs {
    /// Images are resized to this square side.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Center crop after resizing (224 with --size 256 is the paper's setting).
    #[arg(long)]
    pub crop: Option<usize>,
    /// Fraction of patch embeddings kept in the memory bank, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    pub ratio: f64,
    /// Seed of the coreset's random projection and start point.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Neighbours in the image score's reweighting (paper Eq. 7); 1 gives the plain maximum.
    #[arg(long, default_value_t = 9)]
    pub num_neighbors: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

impl FitArgs {
    /// The options, checked, for `arch`'s input normalisation.
    pub fn options(&self, arch: Architecture) -> Result<FitOptions> {
        let options = FitOptions {
            preprocess: arch.preprocess(self.size, self.crop)?,
            ratio: self.ratio,
            seed: self.seed,
            num_neighbors: self.num_neighbors,
            batch: self.batch,
        };
        options.validate()?;
        Ok(options)
    }
}
