use crate::data::synth::{generate, SynthOptions, CATEGORIES};
use crate::error::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the categories are written (<out>/<category>/train/good, ...).
    #[arg(long)]
    out: PathBuf,
    /// One category (default: all).
    #[arg(long)]
    category: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
}

pub fn run(args: Args) -> Result<()> {
    let options = SynthOptions { size: args.size, seed: args.seed, ..SynthOptions::default() };
    let names: Vec<String> = match args.category {
        Some(c) => vec![c],
        None => CATEGORIES.iter().map(|c| c.to_string()).collect(),
    };
    for name in names {
        let s = generate(&args.out, &name, &options)?;
        let defects: Vec<String> = s.defects.iter().map(|(d, n)| format!("{d} {n}")).collect();
        println!("{}: {} train, {} good test, defects: {}", s.root.display(), s.train, s.test_good, defects.join(", "));
    }
    Ok(())
}
