//! What the log has done since it opened, for monitoring: groups written, records and bytes in
//! them, and how long each `fdatasync` took (a fixed-bucket histogram). Relaxed atomics bumped
//! by the flusher thread only; a reader sees each counter whole, not all of them at one instant.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the sync-latency histogram's buckets; a last bucket takes the rest.
pub const SYNC_BUCKETS: [f64; 12] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

/// The flusher's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    groups: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    /// Syncs per bucket of [`SYNC_BUCKETS`] (not cumulative), and one past the last bound.
    sync_buckets: [AtomicU64; SYNC_BUCKETS.len() + 1],
    direct_io: AtomicBool,
}

impl Counters {
    /// A group of `records` records, `bytes` bytes of payload, was written.
    pub(crate) fn group(&self, records: usize, bytes: usize) {
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// An `fdatasync` took `took`.
    pub(crate) fn sync(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let at = SYNC_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(SYNC_BUCKETS.len());
        self.sync_buckets[at].fetch_add(1, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The active segment is now written with direct I/O, or not.
    pub(crate) fn set_direct_io(&self, direct: bool) {
        self.direct_io.store(direct, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, queued_bytes: usize) -> WalStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WalStats {
            groups: load(&self.groups),
            records: load(&self.records),
            bytes: load(&self.bytes),
            syncs: load(&self.syncs),
            sync_seconds: load(&self.sync_nanos) as f64 / 1e9,
            sync_buckets: std::array::from_fn(|i| load(&self.sync_buckets[i])),
            queued_bytes: queued_bytes as u64,
            direct_io: self.direct_io.load(Ordering::Relaxed),
        }
    }
}

/// What the log has done since it opened ([`crate::Wal::stats`]).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WalStats {
    /// Groups written (one write, and a sync under [`crate::SyncPolicy::EveryGroup`], each).
    pub groups: u64,
    /// Records in them.
    pub records: u64,
    /// Payload bytes in them (as given to `append`, before compression).
    pub bytes: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Seconds they took in all.
    pub sync_seconds: f64,
    /// Syncs that took at most each bound of [`SYNC_BUCKETS`] and more than the one before it
    /// (not cumulative); the last entry counts the syncs over the last bound.
    pub sync_buckets: [u64; SYNC_BUCKETS.len() + 1],
    /// Bytes queued for the flusher at the moment asked.
    pub queued_bytes: u64,
    /// Whether the active segment is written with direct I/O ([`crate::WalOptions::direct_io`]
    /// asked for it and the file system has it).
    pub direct_io: bool,
}
