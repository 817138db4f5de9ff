//! # quiver-wal — the write-ahead log (being built; see ARCHITECTURE.md)
//!
//! Will hold: checksummed, sequence-numbered records in segmented log files; group commit (many
//! appenders, one flusher, one `fdatasync` per group); recovery to the last whole record with torn
//! tails truncated and mid-log corruption reported; checkpoint truncation; and the fault-injecting
//! file-system seam that the engine reuses for segments and the manifest.
//!
//! May depend on: no other Quiver crate. An `fdatasync` error poisons the writer.

#![deny(missing_docs)]
