//! What can go wrong opening, appending to, reading and checkpointing the log.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Lsn;

/// Errors from [`Wal::open`](crate::Wal::open).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// An I/O error on a file or directory of the log.
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A record or segment fails verification and is not a torn tail.
    #[error("WAL corrupt: {} at offset {offset} (record LSN {lsn}): {reason}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad record (or 0 for the segment header).
        offset: u64,
        /// The LSN the record there should have had.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// The last segment ends inside a record while it is shorter than the space reserved for it
    /// when it was created: the file was truncated (by a person, a tool, a copy), not torn by a
    /// crash, and the records from `lsn` on, acknowledged or not, are missing. Nothing was
    /// changed; restore the file, or open with [`WalOptions::cut_truncated_tail`](crate::WalOptions::cut_truncated_tail) to cut them.
    #[error(
        "WAL truncated: {} is {len} bytes, short of the {reserved} reserved when it was created, and ends inside the record at offset {offset}: records from LSN {lsn} on are missing (restore the file, or open with the option to cut a truncated WAL tail, losing them)",
        segment.display()
    )]
    Truncated {
        /// The segment file.
        segment: PathBuf,
        /// Where the cut-off record starts.
        offset: u64,
        /// The first LSN at stake: the cut-off record's.
        lsn: Lsn,
        /// The file's length.
        len: u64,
        /// The bytes reserved for it at creation.
        reserved: u64,
    },
    /// The options are unusable.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
}

/// Errors from appending.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// A write or `fdatasync` failed; the log refuses appends until it is reopened. Records not
    /// acknowledged before the failure may or may not be in the log after reopening.
    #[error("the WAL failed and refuses appends until reopened: {0}")]
    Failed(#[source] Arc<io::Error>),
    /// The log was closed.
    #[error("the WAL is closed")]
    Closed,
    /// The payload is over [`WalOptions::max_record_bytes`](crate::WalOptions::max_record_bytes).
    #[error("record payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// zstd failed to compress the payload (nothing was logged).
    #[error("compressing the record failed: {0}")]
    Compress(Arc<io::Error>),
}

/// Errors from [`Wal::replay`](crate::Wal::replay).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// An I/O error reading a segment.
    #[error("WAL I/O error reading {}: {source}", path.display())]
    Io {
        /// The segment.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A record fails verification (it verified at open: the file changed underneath).
    #[error("WAL corrupt: {} at offset {offset} (record LSN {lsn}): {reason}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The LSN expected there.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
    /// The requested LSN was dropped by [`Wal::truncate_before`](crate::Wal::truncate_before).
    #[error("LSN {requested} was dropped by a checkpoint; the log starts at LSN {first}")]
    Truncated {
        /// What was asked for.
        requested: Lsn,
        /// The first LSN still in the log.
        first: Lsn,
    },
}

/// Errors from [`Wal::truncate_before`](crate::Wal::truncate_before).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Removing a segment or syncing the directory failed. Segments before the failing one are
    /// gone; the log is still whole from the first remaining segment.
    #[error("WAL checkpoint I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The log is poisoned.
    #[error("the WAL failed and refuses work until reopened: {0}")]
    Failed(#[source] Arc<io::Error>),
}
