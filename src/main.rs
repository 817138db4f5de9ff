//! `quiver` — the command-line program of the Quiver vector storage engine.
//!
//! Today it reports what the machine offers (`quiver info`). Later issues add `build`, `search`,
//! `serve` and `bench`.

use clap::{Parser, Subcommand};
use quiver_simd::{Isa, Kernels, TIER_ENV, Tier};

#[derive(Debug, Parser)]
#[command(name = "quiver", version, about = "Quiver: an out-of-core vector storage engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version, the SIMD tiers this CPU supports and the one in use.
    Info,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => info(),
    }
}

fn info() {
    println!("quiver {}", env!("CARGO_PKG_VERSION"));
    let supported: Vec<String> = Isa::supported().into_iter().map(Isa::describe).collect();
    println!("simd tiers supported: {}", supported.join(", "));
    let cap = std::env::var(TIER_ENV).unwrap_or_else(|_| "unset".to_owned());
    println!("simd tier active:     {} ({TIER_ENV}={cap})", Isa::active().describe());
    // A one-line self-check: the active tier against the scalar reference on a small vector.
    let a: Vec<f32> = (0..96u8).map(f32::from).collect();
    let b: Vec<f32> = a.iter().rev().copied().collect();
    let (fast, slow) = (
        Isa::active().l2_sq_f32(&a, &b),
        Isa::for_tier(Tier::Scalar).map_or(0.0, |s| s.l2_sq_f32(&a, &b)),
    );
    println!("self-check l2(96):    {fast} (scalar {slow})");
}
