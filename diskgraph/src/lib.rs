//! # quiver-diskgraph — the disk index (being built; see ARCHITECTURE.md)
//!
//! Will hold: PQ training and encoding, the Vamana graph build, the on-disk layout in 4 KiB aligned
//! sectors (each node's full vector next to its neighbour list), and beam search that reads sectors
//! through io_uring with `O_DIRECT` while steering with PQ codes held in RAM.
//!
//! May depend on: `quiver-simd` only (plus external crates). Knows nothing of the WAL, Parquet or
//! Flight; `quiver-engine` drives it.

#![deny(missing_docs)]

/// The kernels this crate scores with, re-exported so the engine need not name `quiver-simd`.
pub use quiver_simd as simd;
