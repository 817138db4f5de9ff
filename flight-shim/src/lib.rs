//! # quiver-flight — the Arrow Flight shim (being built; see ARCHITECTURE.md)
//!
//! Will hold: a thin Arrow Flight service over `quiver-engine` (DoPut ingest with per-batch durable
//! acks, DoGet search / scan / get with adaptive chunking, DoAction, DoExchange), compatible with
//! Longbow's pyarrow clients.
//!
//! May depend on: `quiver-engine` only among Quiver crates. Holds no storage logic of its own.

#![deny(missing_docs)]

/// The engine this shim serves.
pub use quiver_engine as engine;
