use clap::Parser;
use patchcore::cli::{keep_freed_memory, run, Cli};

fn main() {
    keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
