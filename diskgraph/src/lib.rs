//! # quiver-diskgraph — the disk index
//!
//! The index whose full vectors and graph live on disk, read a 4 KiB sector at a time, while only
//! compact PQ codes stay in RAM (DiskANN's design):
//! - [`data`]: element types, metrics, 64-byte-aligned vector sets, and readers for `.fbin`,
//!   `.u8bin`, `.i8bin`, `.fvecs`, `.bvecs` and `.ivecs` files with clear errors.
//! - [`pq`]: product quantisation — k-means training (deterministic under a seed), encoding, and
//!   per-query distance tables for the `quiver-simd` PQ scorer.
//! - [`vamana`]: the Vamana graph build (one or two passes, graded RobustPrune, parallel) and an
//!   in-memory search used to test graph quality on its own.
//! - [`layout`]: the versioned, checksummed file of 4 KiB sectors (`docs/format.md`).
//! - [`pack`]: the order nodes are written in, so that a sector holds graph neighbours.
//! - [`search`]: beam search over the sectors through io_uring (or `pread`), steered by PQ codes.
//! - [`grow`]: a new index from an old one with rows dropped and rows added, in one pass over
//!   the old file (FreshDiskANN's streaming merge), without rebuilding the graph.
//! - [`index`]: builds all of it into an index directory, from vectors in RAM or, within a RAM
//!   budget, from a vector file ([`source`] reads it a piece at a time; [`plan`] chooses between
//!   the in-memory build and the partitioned one, which holds one partition at a time).
//!
//! May depend on: `quiver-simd` only among Quiver crates. Knows nothing of the WAL, Parquet or
//! Flight; `quiver-engine` drives it.

#![deny(missing_docs)]

pub mod cache;
pub mod codes;
pub mod data;
pub mod grow;
pub mod index;
pub mod layout;
pub mod pack;
mod partition;
pub mod plan;
pub mod pq;
pub mod search;
pub mod source;
pub mod vamana;
mod visited;

/// The kernels this crate scores with, re-exported so the engine need not name `quiver-simd`.
pub use quiver_simd as simd;

/// Sizes rayon's global thread pool (used by PQ training, encoding and the graph build). Only the
/// first call in a process takes effect.
///
/// # Errors
/// If the pool was already initialised.
pub fn rayon_global_pool(threads: usize) -> Result<(), String> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())
}
