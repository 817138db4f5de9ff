//! # quiver-engine — the embeddable database (being built; see ARCHITECTURE.md)
//!
//! Built so far, the pieces every later part stands on:
//! - [`manifest`]: the versioned, checksummed manifest, replaced atomically (write, sync, rename,
//!   sync the directory), with the commit protocol in `docs/durability.md`;
//! - [`names`]: collection-name validation (a name becomes a path: no traversal, no NUL, bounded);
//! - [`lock`]: one process per database directory.
//!
//! Still to come: collections with a schema, durable inserts and deletes through the WAL, search / get /
//! scan that see every acknowledged write, Parquet segments as the snapshot format, the atomically
//! replaced manifest, and background work that turns segments into disk indexes and merges them.
//!
//! May depend on: `quiver-wal`, `quiver-diskgraph` (and through it `quiver-simd`). Never on
//! `quiver-flight` or the `quiver` binary.

#![deny(missing_docs)]

pub mod lock;
pub mod manifest;
pub mod names;

/// The disk index crate, re-exported for users who tune it.
pub use quiver_diskgraph as diskgraph;
/// The write-ahead log crate.
pub use quiver_wal as wal;
