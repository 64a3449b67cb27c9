use crate::convert::{convert, ConvertOptions};
use crate::error::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The PyTorch checkpoint (e.g. resnet18-f37072fd.pth).
    input: PathBuf,
    /// The safetensors file to write.
    output: PathBuf,
    /// Store f32 tensors as f16 (half the size).
    #[arg(long)]
    f16: bool,
    /// Keep only tensors whose names start with one of these prefixes (repeatable).
    #[arg(long = "keep", value_name = "PREFIX")]
    keep: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let options = ConvertOptions { keep_prefixes: args.keep, to_f16: args.f16 };
    let summary = convert(&args.input, &args.output, &options)?;
    println!(
        "wrote {} ({} tensors, {} bytes; {} non-tensor entries skipped)",
        args.output.display(),
        summary.tensors,
        summary.bytes,
        summary.skipped_non_tensor
    );
    Ok(())
}
