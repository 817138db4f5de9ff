//! # quiver-wal — the write-ahead log
//!
//! How Quiver never loses an acknowledged write. Callers append opaque payloads (the engine puts
//! Arrow IPC record batches and delete lists in them); each gets a sequence number (LSN) and is
//! acknowledged only once it is durable.
//!
//! - **Records** carry a length, a CRC32C of the payload, the LSN, a caller-chosen type byte, and
//!   the payload, optionally zstd-compressed (per record, only when it shrinks). Records live in
//!   segment files that rotate at [`WalOptions::segment_bytes`]. Format: `docs/format.md`.
//! - **Group commit**: any number of threads call [`Wal::append`] (blocking) or [`Wal::submit`]
//!   (returns a [`Pending`] that is both waitable and a `Future`). Appenders compress and checksum
//!   outside any lock, then hold the state lock only to take an LSN and enqueue. One flusher thread
//!   takes everything queued, writes it with one write and makes it durable with one `fdatasync`,
//!   then releases those appenders. No lock is held across I/O. The queue is bounded
//!   ([`WalOptions::max_queued_bytes`]): when ingest outruns the disk, appenders wait.
//! - **Sync policies** ([`SyncPolicy`]): every group (the default: an acknowledged record is
//!   durable), on an interval, or never. The latter two acknowledge once the record is written to
//!   the OS: it survives the process dying but **not** a power loss or kernel crash.
//! - **Recovery**: [`Wal::open`] scans every segment, cuts a torn tail (the remains of a write that
//!   never completed), and reports anything else that fails its checksum as
//!   [`OpenError::Corrupt`] with its file, offset and LSN. [`Wal::replay`] then streams the records.
//! - **Checkpoints**: [`Wal::truncate_before`] durably drops whole segments the caller no longer
//!   needs.
//! - **Failure**: after any write or `fdatasync` error the log is *poisoned*: everything not yet
//!   acknowledged fails with [`AppendError::Failed`], as does every later append, until the log is
//!   reopened. A failed `fdatasync` is never retried (the fsyncgate lesson).
//!
//! All I/O goes through the [`quiver_vfs`] seam, so tests run the same code over a simulated file
//! system that crashes, tears writes and fails operations.
//!
//! ```
//! use quiver_wal::{Wal, WalOptions};
//! # let dir = tempfile::tempdir().unwrap();
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! let lsn = wal.append(1, b"hello")?; // returns once durable
//! drop(wal);
//! let wal = Wal::open(dir.path(), WalOptions::default())?;
//! let records: Vec<_> = wal.replay(1)?.collect::<Result<_, _>>()?;
//! assert_eq!((records[0].lsn, records[0].payload.as_slice()), (lsn, &b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! May depend on: `quiver-vfs` only among Quiver crates; knows nothing of vectors.

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quiver_vfs::{OpenMode, OsVfs, Vfs, VfsFile};

pub mod format;
mod recovery;
mod replay;

pub use quiver_vfs as vfs;
pub use replay::{Record, Replay};

use format::{
    FLAG_ZSTD, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, align_up, segment_name,
};
use recovery::{SegmentFile, SegmentScan, all_zero, scan_segment};

/// A log sequence number. The first record of a new log has LSN 1; 0 means "none".
pub type Lsn = u64;

/// When the flusher calls `fdatasync`, and so when appenders are released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// One `fdatasync` per group; an appender returns once its record is durable. The default.
    #[default]
    EveryGroup,
    /// Appenders return once their record is written to the OS; `fdatasync` runs at most this
    /// often. Acknowledged records written since the last sync are lost on power loss.
    Interval(Duration),
    /// Appenders return once their record is written to the OS; `fdatasync` runs only at segment
    /// rotation, [`Wal::sync`] and close. Acknowledged records are lost on power loss.
    Never,
}

/// How payloads are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// As given. The default.
    #[default]
    None,
    /// zstd at this level (1 is fast; 3 is zstd's default), for payloads of at least
    /// [`WalOptions::compress_min_bytes`]; a record is stored compressed only if that is smaller.
    Zstd {
        /// zstd compression level.
        level: i32,
    },
}

/// Options for [`Wal::open`], builder style. Every field has a documented default.
#[derive(Clone)]
pub struct WalOptions {
    vfs: Arc<dyn Vfs>,
    segment_bytes: u64,
    sync: SyncPolicy,
    compression: Compression,
    compress_min_bytes: usize,
    max_record_bytes: usize,
    max_queued_bytes: usize,
    max_group_bytes: usize,
    pooled_buffers: usize,
    max_pooled_buffer_bytes: usize,
    cut_truncated_tail: bool,
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("vfs", &self.vfs)
            .field("segment_bytes", &self.segment_bytes)
            .field("sync", &self.sync)
            .field("compression", &self.compression)
            .field("compress_min_bytes", &self.compress_min_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("max_group_bytes", &self.max_group_bytes)
            .field("pooled_buffers", &self.pooled_buffers)
            .field("max_pooled_buffer_bytes", &self.max_pooled_buffer_bytes)
            .field("cut_truncated_tail", &self.cut_truncated_tail)
            .finish()
    }
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            vfs: Arc::new(OsVfs),
            segment_bytes: 64 << 20,
            sync: SyncPolicy::EveryGroup,
            compression: Compression::None,
            compress_min_bytes: 4096,
            max_record_bytes: 256 << 20,
            max_queued_bytes: 64 << 20,
            max_group_bytes: 1 << 20,
            pooled_buffers: 64,
            max_pooled_buffer_bytes: 4 << 20,
            cut_truncated_tail: false,
        }
    }
}

impl WalOptions {
    /// The file system to use. Default: the real one ([`OsVfs`]).
    #[must_use]
    pub fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = vfs;
        self
    }
    /// Start a new segment once the current one would pass this size. Default 64 MiB; at least
    /// 4 KiB. A single record larger than this gets a segment of its own.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }
    /// When to `fdatasync`. Default [`SyncPolicy::EveryGroup`].
    #[must_use]
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }
    /// Payload compression. Default [`Compression::None`].
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
    /// Payloads smaller than this are never compressed. Default 4 KiB (a single 128-d f32 row does
    /// not compress, and trying costs more than its write).
    #[must_use]
    pub fn compress_min_bytes(mut self, bytes: usize) -> Self {
        self.compress_min_bytes = bytes;
        self
    }
    /// The largest payload [`Wal::append`] accepts. Default 256 MiB; at most 2 GiB − 1.
    #[must_use]
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }
    /// Appenders wait while this many bytes are queued for the flusher (a record larger than the
    /// limit is let through alone). Default 64 MiB.
    #[must_use]
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }
    /// The flusher writes and syncs at most this many bytes per group (a larger record goes
    /// alone). Smaller groups release appenders sooner; on the measured disk, syncs of a few
    /// hundred KiB to 1 MiB gave the best bandwidth (see BENCHMARKS.md). Default 1 MiB.
    #[must_use]
    pub fn max_group_bytes(mut self, bytes: usize) -> Self {
        self.max_group_bytes = bytes;
        self
    }
    /// Payload buffers kept for reuse, and the largest buffer kept: together they bound the pool's
    /// memory (default 64 × 4 MiB). Larger buffers are freed after use.
    #[must_use]
    pub fn buffer_pool(mut self, buffers: usize, max_buffer_bytes: usize) -> Self {
        self.pooled_buffers = buffers;
        self.max_pooled_buffer_bytes = max_buffer_bytes;
        self
    }

    /// Whether opening cuts a *truncated* last segment ([`OpenError::Truncated`]: shorter than
    /// the space reserved for it and ending inside a record, which no crash of the log leaves)
    /// at its last whole record, losing the records from there on, some of which may have been
    /// acknowledged. Default `false`: opening refuses and touches nothing. Set it only after
    /// deciding the file cannot be restored.
    #[must_use]
    pub fn cut_truncated_tail(mut self, cut: bool) -> Self {
        self.cut_truncated_tail = cut;
        self
    }

    fn validate(&self) -> Result<(), OpenError> {
        let bad = |m: String| Err(OpenError::InvalidOptions(m));
        if self.segment_bytes < 4096 {
            return bad(format!(
                "segment_bytes {} is below the minimum of 4096",
                self.segment_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > format::MAX_PAYLOAD {
            return bad(format!(
                "max_record_bytes {} is not in 1..={}",
                self.max_record_bytes,
                format::MAX_PAYLOAD
            ));
        }
        if self.max_queued_bytes == 0 || self.max_group_bytes == 0 {
            return bad("max_queued_bytes and max_group_bytes must be positive".into());
        }
        if let SyncPolicy::Interval(d) = self.sync
            && d.is_zero()
        {
            return bad("a sync interval must be positive (use SyncPolicy::EveryGroup)".into());
        }
        if let Compression::Zstd { level } = self.compression
            && !zstd::compression_level_range().contains(&level)
        {
            return bad(format!("zstd level {level} is out of range"));
        }
        Ok(())
    }
}

/// Errors from [`Wal::open`].
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
    /// changed; restore the file, or open with [`WalOptions::cut_truncated_tail`] to cut them.
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
    /// The payload is over [`WalOptions::max_record_bytes`].
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

/// Errors from [`Wal::replay`].
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
    /// The requested LSN was dropped by [`Wal::truncate_before`].
    #[error("LSN {requested} was dropped by a checkpoint; the log starts at LSN {first}")]
    Truncated {
        /// What was asked for.
        requested: Lsn,
        /// The first LSN still in the log.
        first: Lsn,
    },
}

/// Errors from [`Wal::truncate_before`].
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

/// What [`Wal::open`] found and repaired (or, from [`Wal::scan`], will repair).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Whole records found.
    pub records: u64,
    /// The first LSN in the log.
    pub first_lsn: Lsn,
    /// The LSN the next append gets.
    pub next_lsn: Lsn,
    /// Bytes of torn tail cut from the last segment.
    pub torn_bytes_cut: u64,
    /// Whether the last segment's header had never been written and was rewritten.
    pub rewrote_segment_header: bool,
    /// Whether a truncated last segment was cut, as [`WalOptions::cut_truncated_tail`] allows.
    pub truncated_tail_cut: bool,
}

struct Queued {
    lsn: Lsn,
    /// Bytes the record takes in the segment (header, payload, padding).
    size: usize,
    kind: u8,
    flags: u8,
    raw_len: u32,
    payload_crc: u32,
    payload: Vec<u8>,
}

#[derive(Default)]
struct State {
    next_lsn: Lsn,
    queue: Vec<Queued>,
    queued_bytes: usize,
    /// Every record ≤ this has been released to its appender.
    acked_lsn: Lsn,
    /// Every record ≤ this is durable.
    durable_lsn: Lsn,
    /// The flusher must make at least this LSN durable.
    sync_wanted: Lsn,
    failed: Option<Arc<io::Error>>,
    closing: bool,
    flusher_done: bool,
    /// The flusher is waiting on `work` (appenders skip the wake-up syscall otherwise).
    flusher_idle: bool,
    wakers: BTreeMap<Lsn, Waker>,
}

struct Shared {
    dir: PathBuf,
    opts: WalOptions,
    state: Mutex<State>,
    /// The flusher waits here for work.
    work: Condvar,
    /// Appenders wait here for room in the queue.
    space: Condvar,
    /// Appenders and `sync` wait here for acknowledgement.
    acked: Condvar,
    buffers: (crossbeam_channel::Sender<Vec<u8>>, crossbeam_channel::Receiver<Vec<u8>>),
    compressors: (
        crossbeam_channel::Sender<zstd::bulk::Compressor<'static>>,
        crossbeam_channel::Receiver<zstd::bulk::Compressor<'static>>,
    ),
    segments: Mutex<Vec<SegmentFile>>,
    /// Serialises checkpoints (held across their I/O; the flusher never takes it).
    checkpoint: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panicking holder (every update is a plain assignment),
    // so a poisoned mutex is still usable; the log's own poisoning is `State::failed`.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn take_buffer(&self) -> Vec<u8> {
        self.buffers.1.try_recv().unwrap_or_default()
    }

    fn give_buffer(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= self.opts.max_pooled_buffer_bytes {
            buf.clear();
            // A full pool drops the buffer: the pool's memory stays bounded.
            let _ = self.buffers.0.try_send(buf);
        }
    }

    /// Marks the flusher gone and releases every waiter (each then sees why).
    fn finish(&self) {
        self.release_all(|st| st.flusher_done = true);
    }

    /// Poisons the log: records not yet acknowledged, and every later call, fail with `e`.
    fn fail(&self, e: io::Error) {
        tracing::error!(dir = %self.dir.display(), error = %e, "WAL write failed; refusing appends until reopened");
        self.release_all(|st| {
            if st.failed.is_none() {
                st.failed = Some(Arc::new(e));
            }
        });
    }

    /// Applies `update` under the lock, then wakes every waiter of every kind (each then re-checks
    /// the state and sees why it was released).
    fn release_all(&self, update: impl FnOnce(&mut State)) {
        let wakers = {
            let mut st = self.state();
            update(&mut st);
            std::mem::take(&mut st.wakers)
        };
        self.space.notify_all();
        self.acked.notify_all();
        for w in wakers.into_values() {
            w.wake();
        }
    }
}

/// The write-ahead log. `Send + Sync`: share it (e.g. in an `Arc`) between appending threads.
pub struct Wal {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    report: RecoveryReport,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.state();
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("next_lsn", &st.next_lsn)
            .field("durable_lsn", &st.durable_lsn)
            .field("failed", &st.failed)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.to_path_buf(), source }
}

/// Creates segment `first_lsn` durably: space reserved, header written and synced, directory
/// entry synced.
fn create_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    first_lsn: Lsn,
    segment_bytes: u64,
) -> io::Result<(Box<dyn VfsFile>, PathBuf)> {
    let path = dir.join(segment_name(first_lsn));
    let file = vfs.open(&path, OpenMode::CreateNew)?;
    write_segment_header(file.as_ref(), first_lsn, segment_bytes)?;
    file.sync_data()?;
    vfs.sync_dir(dir)?;
    Ok((file, path))
}

/// Reserves `segment_bytes` for an empty segment file and writes its header, which records the
/// reservation if the file system made one (not synced).
fn write_segment_header(file: &dyn VfsFile, first_lsn: Lsn, segment_bytes: u64) -> io::Result<()> {
    // Reserve the whole segment now: appends then write into allocated zeros instead of growing
    // the file (see `VfsFile::allocate`). Unwritten space reads as zeros, which recovery already
    // tells from records; a segment is cut to its records when it is sealed. The header records
    // the reservation so that recovery can tell a truncated file from a torn write.
    file.allocate(segment_bytes)?;
    let reserved = if file.len()? >= segment_bytes { segment_bytes } else { 0 };
    let header = format::SegmentHeader { first_lsn, reserved };
    file.write_all_at(&format::encode_segment_header(header), 0)
}

/// The log as [`Wal::scan`] found it, before any repair: its extent, and what opening will
/// change. Nothing on disk has been touched; [`Recovery::open`] repairs and starts the log.
#[derive(Debug)]
pub struct Recovery {
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<SegmentFile>,
    next_lsn: Lsn,
    repair: Repair,
    report: RecoveryReport,
}

/// What opening does to the last segment.
#[derive(Debug)]
enum Repair {
    /// No segment exists: create the first.
    Create,
    /// The last segment's header was never completed: write it again.
    RewriteHeader,
    /// The last segment is the active one from `offset`; `cut_to` sets its length (a torn tail
    /// cut, or padding cut inside restored) before its reservation (at least `reserved`) is
    /// made again.
    Tail { offset: u64, cut_to: Option<u64>, reserved: u64 },
}

impl Recovery {
    /// The LSN the first append after opening will get: one past the last whole record.
    #[must_use]
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The first LSN still in the log (1 for a new log).
    #[must_use]
    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(1, |s| s.first_lsn)
    }

    /// Whether the directory holds no segment at all (a new log).
    #[must_use]
    pub fn is_new(&self) -> bool {
        self.segments.is_empty()
    }

    /// What the scan found, and the repairs [`Recovery::open`] will make.
    #[must_use]
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Makes the repairs the scan decided (create the first segment, rewrite an unfinished
    /// header, or cut a torn tail), makes what it recovered durable, and starts the flusher.
    ///
    /// # Errors
    /// [`OpenError::Io`].
    pub fn open(self) -> Result<Wal, OpenError> {
        let Recovery { dir, options, mut segments, next_lsn, repair, report } = self;
        let vfs = Arc::clone(&options.vfs);
        vfs.create_dir_all(&dir).map_err(io_err(&dir))?;
        let (file, offset, reserved) = match repair {
            Repair::Create => {
                let (file, path) = create_segment(vfs.as_ref(), &dir, 1, options.segment_bytes)
                    .map_err(io_err(&dir))?;
                segments.push(SegmentFile { first_lsn: 1, path });
                (file, SEGMENT_HEADER_LEN as u64, 0)
            }
            Repair::RewriteHeader => {
                let last = &segments[segments.len() - 1];
                let file = vfs.open(&last.path, OpenMode::ReadWrite).map_err(io_err(&last.path))?;
                file.set_len(0).map_err(io_err(&last.path))?;
                write_segment_header(file.as_ref(), last.first_lsn, options.segment_bytes)
                    .map_err(io_err(&last.path))?;
                (file, SEGMENT_HEADER_LEN as u64, 0)
            }
            Repair::Tail { offset, cut_to, reserved } => {
                let last = &segments[segments.len() - 1];
                let file = vfs.open(&last.path, OpenMode::ReadWrite).map_err(io_err(&last.path))?;
                if let Some(len) = cut_to {
                    file.set_len(len).map_err(io_err(&last.path))?;
                }
                (file, offset, reserved)
            }
        };
        let last_path = segments[segments.len() - 1].path.clone();
        // The active segment is kept at least as long as its recorded reservation, so that a
        // later scan can still tell a truncation from a tear.
        file.allocate(options.segment_bytes.max(reserved)).map_err(io_err(&last_path))?;
        // What recovery returns must be durable before anything is written after it.
        file.sync_data().map_err(io_err(&last_path))?;
        // So must the names: a segment created just before a crash or a failed directory sync is
        // visible now but might not survive the next crash, taking acknowledged records with it.
        vfs.sync_dir(&dir).map_err(io_err(&dir))?;

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: Mutex::new(State {
                next_lsn,
                acked_lsn: next_lsn - 1,
                durable_lsn: next_lsn - 1,
                ..State::default()
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            acked: Condvar::new(),
            buffers: crossbeam_channel::bounded(options.pooled_buffers.max(1)),
            compressors: crossbeam_channel::bounded(64),
            segments: Mutex::new(segments),
            checkpoint: Mutex::new(()),
            opts: options,
        });
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            file,
            offset,
            durable: next_lsn - 1,
            written: next_lsn - 1,
            buf: Vec::new(),
            last_sync: Instant::now(),
            last_group: 0,
            sync_ewma: Duration::ZERO,
        };
        let handle = std::thread::Builder::new()
            .name("quiver-wal-flusher".into())
            .spawn(move || flusher.run())
            .map_err(io_err(&dir))?;
        Ok(Wal { shared, flusher: Some(handle), report })
    }
}

/// Maps a scan's verification failure in `segment` to the open error.
fn scan_error(segment: &Path, c: recovery::Corruption) -> OpenError {
    let segment = segment.to_path_buf();
    match c.damage {
        recovery::Damage::Corrupt(reason) => {
            OpenError::Corrupt { segment, offset: c.offset, lsn: c.lsn, reason }
        }
        recovery::Damage::Truncated { len, reserved } => {
            OpenError::Truncated { segment, offset: c.offset, lsn: c.lsn, len, reserved }
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the log in directory `dir`: scans every segment, cuts a torn
    /// tail, makes what it recovered durable, and starts the flusher. One process at a time may
    /// open a directory; the caller (the engine) holds the lock that ensures it. The same as
    /// [`Wal::scan`] followed by [`Recovery::open`].
    ///
    /// # Errors
    /// [`OpenError::Corrupt`] if a record fails verification and is not a torn tail (or segments do
    /// not chain); [`OpenError::Truncated`]; [`OpenError::Io`] on I/O errors;
    /// [`OpenError::InvalidOptions`].
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal, OpenError> {
        Wal::scan(dir, options)?.open()
    }

    /// Reads and verifies every segment of the log in `dir` without changing anything, and
    /// decides what opening would repair. A caller that must check the log's extent before
    /// committing to it (the engine checks it reaches its checkpoint) decides on the
    /// [`Recovery`], then calls [`Recovery::open`] or drops it. A missing directory is a new log.
    ///
    /// # Errors
    /// As [`Wal::open`], except that nothing is created or repaired.
    pub fn scan(dir: impl AsRef<Path>, options: WalOptions) -> Result<Recovery, OpenError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let vfs = Arc::clone(&options.vfs);
        let names = match vfs.list_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut segments: Vec<SegmentFile> = names
            .iter()
            .filter_map(|name| {
                format::parse_segment_name(name)
                    .map(|first_lsn| SegmentFile { first_lsn, path: dir.join(name) })
            })
            .collect();
        segments.sort_by_key(|s| s.first_lsn);
        let mut report = RecoveryReport { segments: segments.len(), ..RecoveryReport::default() };
        let Some(first) = segments.first() else {
            report.first_lsn = 1;
            report.next_lsn = 1;
            return Ok(Recovery {
                dir,
                options,
                segments,
                next_lsn: 1,
                repair: Repair::Create,
                report,
            });
        };
        let mut next_lsn = first.first_lsn;
        let mut repair = None;
        for (i, seg) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            if seg.first_lsn != next_lsn {
                return Err(OpenError::Corrupt {
                    segment: seg.path.clone(),
                    offset: 0,
                    lsn: next_lsn,
                    reason: format!(
                        "segment starts at LSN {}, but the log before it ends at LSN {}",
                        seg.first_lsn,
                        next_lsn - 1
                    ),
                });
            }
            let file = vfs.open(&seg.path, OpenMode::Read).map_err(io_err(&seg.path))?;
            let bytes = file.read_to_vec().map_err(io_err(&seg.path))?;
            let scan = match scan_segment(&bytes, seg.first_lsn, is_last, false) {
                Err(c)
                    if options.cut_truncated_tail
                        && matches!(c.damage, recovery::Damage::Truncated { .. }) =>
                {
                    tracing::error!(segment = %seg.path.display(), offset = c.offset, lsn = c.lsn, "WAL: the last segment was truncated inside a record; cutting it there as asked, losing the records from this LSN on");
                    report.truncated_tail_cut = true;
                    scan_segment(&bytes, seg.first_lsn, is_last, true)
                }
                other => other,
            }
            .map_err(|c| scan_error(&seg.path, c))?;
            match scan {
                SegmentScan::TornHeader => {
                    // Creation was cut short before the header was durable: write it again.
                    report.rewrote_segment_header = true;
                    repair = Some(Repair::RewriteHeader);
                }
                SegmentScan::Records { next_lsn: n, valid_len, records } => {
                    report.records += records;
                    next_lsn = n;
                    if is_last {
                        // Past the records: nothing, reserved zeros, or the remains of a write
                        // that never completed (cut, so the next record lands on zeros).
                        let tail = bytes.get(valid_len as usize..).unwrap_or_default();
                        let cut_to = if !all_zero(tail) {
                            report.torn_bytes_cut = tail.len() as u64;
                            tracing::warn!(segment = %seg.path.display(), offset = valid_len, bytes = report.torn_bytes_cut, "WAL: cutting a torn tail");
                            Some(valid_len)
                        } else if (bytes.len() as u64) < valid_len {
                            // Cut inside a record's padding: restore it.
                            Some(valid_len)
                        } else {
                            None
                        };
                        let reserved = bytes
                            .get(..SEGMENT_HEADER_LEN)
                            .and_then(|h| format::decode_segment_header(h.try_into().ok()?).ok())
                            .map_or(0, |h| h.reserved);
                        repair = Some(Repair::Tail { offset: valid_len, cut_to, reserved });
                    }
                }
            }
        }
        report.first_lsn = segments[0].first_lsn;
        report.next_lsn = next_lsn;
        let repair = repair.expect("the last segment is scanned");
        Ok(Recovery { dir, options, segments, next_lsn, repair, report })
    }

    /// What opening found and repaired.
    #[must_use]
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    /// Appends a record and returns its LSN once it is acknowledged — durable under the default
    /// [`SyncPolicy::EveryGroup`]. Blocks while the queue is full.
    ///
    /// # Errors
    /// See [`AppendError`]. After [`AppendError::Failed`] the record may or may not be in the log.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn, AppendError> {
        self.submit(kind, payload)?.wait()
    }

    /// Queues a record and returns at once (unless the queue is full, when it waits for room) with
    /// a [`Pending`] to wait on — by blocking ([`Pending::wait`]) or as a `Future`. Records are
    /// logged in the order of their LSNs; LSNs follow the order in which `submit` calls took the
    /// state lock.
    ///
    /// # Errors
    /// [`AppendError::TooLarge`], [`AppendError::Compress`], or — if the log is already poisoned
    /// or closed — [`AppendError::Failed`] / [`AppendError::Closed`].
    pub fn submit(&self, kind: u8, payload: &[u8]) -> Result<Pending, AppendError> {
        let max = self.shared.opts.max_record_bytes;
        if payload.len() > max {
            return Err(AppendError::TooLarge { len: payload.len(), max });
        }
        let mut buf = self.buffer();
        buf.extend_from_slice(payload);
        self.submit_owned(kind, buf)
    }

    /// An empty buffer to build a payload in for [`Wal::submit_owned`]: one the log used before
    /// when the pool has one (see [`WalOptions::buffer_pool`]), so large records do not fault
    /// in fresh memory each time.
    #[must_use]
    pub fn buffer(&self) -> Vec<u8> {
        self.shared.take_buffer()
    }

    /// [`Wal::submit`] of a payload the log takes over (no copy unless compressed); the buffer
    /// returns to the pool once the record is written.
    ///
    /// # Errors
    /// As [`Wal::submit`].
    pub fn submit_owned(&self, kind: u8, payload: Vec<u8>) -> Result<Pending, AppendError> {
        let max = self.shared.opts.max_record_bytes;
        if payload.len() > max {
            let len = payload.len();
            self.shared.give_buffer(payload);
            return Err(AppendError::TooLarge { len, max });
        }
        let raw_len = u32::try_from(payload.len()).expect("checked against max_record_bytes");
        let (stored, flags) = self.encode(payload)?;
        let payload_crc = crc32c::crc32c(&stored);
        let size = align_up(RECORD_HEADER_LEN + stored.len());
        let mut st = self.shared.state();
        loop {
            if let Some(e) = &st.failed {
                let e = AppendError::Failed(Arc::clone(e));
                drop(st);
                self.shared.give_buffer(stored);
                return Err(e);
            }
            if st.closing || st.flusher_done {
                return Err(AppendError::Closed);
            }
            if st.queued_bytes == 0 || st.queued_bytes + size <= self.shared.opts.max_queued_bytes {
                break;
            }
            st = self.shared.space.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        st.queued_bytes += size;
        st.queue.push(Queued { lsn, size, kind, flags, raw_len, payload_crc, payload: stored });
        let idle = st.flusher_idle;
        drop(st);
        if idle {
            self.shared.work.notify_one();
        }
        Ok(Pending { shared: Arc::clone(&self.shared), lsn })
    }

    /// The payload as stored: compressed into another buffer when that pays, else itself.
    fn encode(&self, payload: Vec<u8>) -> Result<(Vec<u8>, u8), AppendError> {
        if let Compression::Zstd { level } = self.shared.opts.compression
            && payload.len() >= self.shared.opts.compress_min_bytes
        {
            // On an error both buffers are dropped rather than pooled (a rare path).
            let compressor = match self.shared.compressors.1.try_recv() {
                Ok(c) => Ok(c),
                Err(_) => zstd::bulk::Compressor::new(level),
            };
            let mut compressor = compressor.map_err(|e| AppendError::Compress(Arc::new(e)))?;
            let mut buf = self.shared.take_buffer();
            buf.reserve(zstd::compress_bound(payload.len()));
            let result = compressor.compress_to_buffer(&payload, &mut buf);
            let _ = self.shared.compressors.0.try_send(compressor);
            result.map_err(|e| AppendError::Compress(Arc::new(e)))?;
            if buf.len() < payload.len() {
                self.shared.give_buffer(payload);
                return Ok((buf, FLAG_ZSTD));
            }
            self.shared.give_buffer(buf);
        }
        Ok((payload, 0))
    }

    /// Makes every record submitted so far durable (whatever the sync policy) and returns the
    /// durable LSN.
    ///
    /// # Errors
    /// [`AppendError::Failed`] if the log is or becomes poisoned; [`AppendError::Closed`].
    pub fn sync(&self) -> Result<Lsn, AppendError> {
        let mut st = self.shared.state();
        let target = st.next_lsn - 1;
        st.sync_wanted = st.sync_wanted.max(target);
        self.shared.work.notify_one();
        loop {
            if st.durable_lsn >= target {
                return Ok(st.durable_lsn);
            }
            if let Some(e) = &st.failed {
                return Err(AppendError::Failed(Arc::clone(e)));
            }
            if st.flusher_done {
                return Err(AppendError::Closed);
            }
            st = self.shared.acked.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The LSN the next record will get.
    #[must_use]
    pub fn next_lsn(&self) -> Lsn {
        self.shared.state().next_lsn
    }

    /// Every record up to and including this LSN is durable (0: none).
    #[must_use]
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.state().durable_lsn
    }

    /// The first LSN still in the log (records before it were dropped by checkpoints).
    #[must_use]
    pub fn first_lsn(&self) -> Lsn {
        lock(&self.shared.segments)[0].first_lsn
    }

    /// The error that poisoned the log, if any.
    #[must_use]
    pub fn failure(&self) -> Option<Arc<io::Error>> {
        self.shared.state().failed.clone()
    }

    /// How many segment files the log has.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        lock(&self.shared.segments).len()
    }

    /// Streams every acknowledged record with LSN ≥ `from`, in order, re-verifying each checksum.
    /// Records acknowledged after this call are not included.
    ///
    /// # Errors
    /// [`ReadError::Truncated`] if `from` is before [`Wal::first_lsn`]; the iterator yields
    /// [`ReadError`]s for I/O errors and corruption.
    pub fn replay(&self, from: Lsn) -> Result<Replay, ReadError> {
        let segments = lock(&self.shared.segments).clone();
        let first = segments[0].first_lsn;
        if from < first {
            return Err(ReadError::Truncated { requested: from, first });
        }
        let end = self.shared.state().acked_lsn;
        Ok(Replay::new(Arc::clone(&self.shared.opts.vfs), segments, from, end))
    }

    /// Drops, durably, every segment whose records all have LSNs below `lsn` — call it once what
    /// those records protected is safe elsewhere. The active segment is never dropped. Returns how
    /// many segments were removed.
    ///
    /// # Errors
    /// [`CheckpointError`]; on an error the log is still whole from its first remaining segment.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize, CheckpointError> {
        if let Some(e) = self.failure() {
            return Err(CheckpointError::Failed(e));
        }
        let _one_at_a_time = lock(&self.shared.checkpoint);
        let doomed: Vec<SegmentFile> = {
            let segs = lock(&self.shared.segments);
            segs.windows(2).take_while(|w| w[1].first_lsn <= lsn).map(|w| w[0].clone()).collect()
        };
        let vfs = &self.shared.opts.vfs;
        // Oldest first, so a crash part-way leaves a log that still chains.
        for seg in &doomed {
            vfs.remove_file(&seg.path)
                .map_err(|source| CheckpointError::Io { path: seg.path.clone(), source })?;
            lock(&self.shared.segments).remove(0);
        }
        if !doomed.is_empty() {
            vfs.sync_dir(&self.shared.dir)
                .map_err(|source| CheckpointError::Io { path: self.shared.dir.clone(), source })?;
        }
        Ok(doomed.len())
    }

    /// Writes and syncs everything queued, stops the flusher, and reports whether the log ended
    /// healthy.
    ///
    /// # Errors
    /// [`AppendError::Failed`] if the log was poisoned at any point.
    pub fn close(mut self) -> Result<(), AppendError> {
        self.stop();
        match self.failure() {
            Some(e) => Err(AppendError::Failed(e)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.state().closing = true;
        self.shared.work.notify_one();
        if let Some(h) = self.flusher.take()
            && h.join().is_err()
        {
            self.shared.fail(io::Error::other("the WAL flusher thread panicked"));
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A submitted record: wait for it with [`Pending::wait`], or `.await` it.
#[must_use = "a record is acknowledged only when its Pending is waited on"]
pub struct Pending {
    shared: Arc<Shared>,
    lsn: Lsn,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("lsn", &self.lsn).finish()
    }
}

impl Pending {
    /// The record's LSN (assigned at submission; the record is not yet acknowledged).
    #[must_use]
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn check(&self, st: &State) -> Option<Result<Lsn, AppendError>> {
        if st.acked_lsn >= self.lsn {
            Some(Ok(self.lsn))
        } else if let Some(e) = &st.failed {
            Some(Err(AppendError::Failed(Arc::clone(e))))
        } else if st.flusher_done {
            Some(Err(AppendError::Closed))
        } else {
            None
        }
    }

    /// Blocks until the record is acknowledged and returns its LSN.
    ///
    /// # Errors
    /// [`AppendError::Failed`] if the log was poisoned first; [`AppendError::Closed`].
    pub fn wait(self) -> Result<Lsn, AppendError> {
        // One condition variable for all blocking waiters: the flusher wakes them with a single
        // `notify_all` (measured faster than waking each acknowledged thread by itself, which puts
        // a syscall per record on the flusher's critical path).
        let mut st = self.shared.state();
        loop {
            if let Some(r) = self.check(&st) {
                return r;
            }
            st = self.shared.acked.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Future for Pending {
    type Output = Result<Lsn, AppendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.state();
        if let Some(r) = self.check(&st) {
            return Poll::Ready(r);
        }
        st.wakers.insert(self.lsn, cx.waker().clone());
        Poll::Pending
    }
}

/// The flusher thread's state: the only writer of segment files.
struct Flusher {
    shared: Arc<Shared>,
    file: Box<dyn VfsFile>,
    /// Where the next record goes in the active segment (8-byte aligned).
    offset: u64,
    durable: Lsn,
    written: Lsn,
    buf: Vec<u8>,
    last_sync: Instant,
    /// Records in the last group written (the gather target).
    last_group: usize,
    /// Moving average of `fdatasync` time (the gather window is half of it).
    sync_ewma: Duration,
}

/// The longest the flusher waits to gather a group.
const MAX_GATHER: Duration = Duration::from_micros(500);

impl Flusher {
    fn run(mut self) {
        let mut batch: Vec<Queued> = Vec::new();
        loop {
            let (closing, sync_wanted) = {
                let mut st = self.shared.state();
                loop {
                    if st.failed.is_some() {
                        drop(st);
                        self.shared.finish();
                        return;
                    }
                    if !st.queue.is_empty() || st.closing || st.sync_wanted > self.durable {
                        break;
                    }
                    match self.shared.opts.sync {
                        SyncPolicy::Interval(d) if self.written > self.durable => {
                            let left = d.saturating_sub(self.last_sync.elapsed());
                            if left.is_zero() {
                                break;
                            }
                            st.flusher_idle = true;
                            st = self
                                .shared
                                .work
                                .wait_timeout(st, left)
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .0;
                        }
                        _ => {
                            st.flusher_idle = true;
                            st = self
                                .shared
                                .work
                                .wait(st)
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                        }
                    }
                }
                // Gather: appenders released by the last group come back within microseconds;
                // waiting a fraction of a sync for them doubles small-record groups.
                if self.shared.opts.sync == SyncPolicy::EveryGroup && !st.closing {
                    let deadline = Instant::now() + (self.sync_ewma / 2).min(MAX_GATHER);
                    while st.queue.len() < self.last_group
                        && st.queued_bytes < self.shared.opts.max_group_bytes
                        && st.failed.is_none()
                        && !st.closing
                    {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        st.flusher_idle = true;
                        st = self
                            .shared
                            .work
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0;
                    }
                }
                st.flusher_idle = false;
                // Take at most `max_group_bytes` (at least one record).
                let mut take = 0;
                let mut bytes = 0;
                for q in &st.queue {
                    if take > 0 && bytes + q.size > self.shared.opts.max_group_bytes {
                        break;
                    }
                    bytes += q.size;
                    take += 1;
                }
                batch.extend(st.queue.drain(..take));
                st.queued_bytes -= bytes;
                (st.closing, st.sync_wanted)
            };
            self.shared.space.notify_all();
            let done = closing && batch.is_empty();
            if !batch.is_empty() {
                self.last_group = batch.len();
            }
            if let Err(e) = self.flush(&batch, closing, sync_wanted) {
                self.shared.fail(e);
            }
            for q in batch.drain(..) {
                self.shared.give_buffer(q.payload);
            }
            if done {
                self.shared.finish();
                return;
            }
        }
    }

    /// Writes `batch`, syncs as the policy says, and acknowledges.
    fn flush(&mut self, batch: &[Queued], closing: bool, sync_wanted: Lsn) -> io::Result<()> {
        self.write_batch(batch)?;
        let must_sync = match self.shared.opts.sync {
            SyncPolicy::EveryGroup => true,
            SyncPolicy::Interval(d) => {
                closing || sync_wanted > self.durable || self.last_sync.elapsed() >= d
            }
            SyncPolicy::Never => closing || sync_wanted > self.durable,
        };
        if must_sync && self.written > self.durable {
            self.sync()?;
        }
        let ack = match self.shared.opts.sync {
            SyncPolicy::EveryGroup => self.durable,
            _ => self.written,
        };
        let wakers = {
            let mut st = self.shared.state();
            st.durable_lsn = self.durable;
            st.acked_lsn = ack;
            let later = st.wakers.split_off(&(ack + 1));
            std::mem::replace(&mut st.wakers, later)
        };
        self.shared.acked.notify_all();
        for w in wakers.into_values() {
            w.wake();
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let start = Instant::now();
        self.file.sync_data()?;
        self.sync_ewma = (self.sync_ewma * 4 + start.elapsed()) / 5;
        self.durable = self.written;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_batch(&mut self, batch: &[Queued]) -> io::Result<()> {
        let segment_bytes = self.shared.opts.segment_bytes;
        self.buf.clear();
        let mut last_in_buf = self.written;
        for q in batch {
            let span = align_up(RECORD_HEADER_LEN + q.payload.len());
            let end = self.offset + self.buf.len() as u64 + span as u64;
            let segment_has_records =
                self.offset + self.buf.len() as u64 > SEGMENT_HEADER_LEN as u64;
            if end > segment_bytes && segment_has_records {
                self.write_buf(last_in_buf)?;
                self.rotate(q.lsn)?;
            }
            let header = RecordHeader {
                lsn: q.lsn,
                durable_lsn: self.durable,
                stored_len: u32::try_from(q.payload.len()).expect("bounded by max_record_bytes"),
                raw_len: q.raw_len,
                payload_crc: q.payload_crc,
                kind: q.kind,
                flags: q.flags,
            };
            debug_assert_eq!(q.lsn, last_in_buf + 1, "records reach the flusher in LSN order");
            self.buf.extend_from_slice(&header.encode());
            self.buf.extend_from_slice(&q.payload);
            self.buf.resize(align_up(self.buf.len()), 0);
            last_in_buf = q.lsn;
        }
        self.write_buf(last_in_buf)
    }

    fn write_buf(&mut self, last_lsn: Lsn) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        self.offset += self.buf.len() as u64;
        self.written = last_lsn;
        self.buf.clear();
        // The buffer grows to the largest group; do not keep a huge one after a burst.
        if self.buf.capacity() > 2 * self.shared.opts.max_queued_bytes {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Seals the active segment (synced) and starts a new one whose first record is `first_lsn`.
    fn rotate(&mut self, first_lsn: Lsn) -> io::Result<()> {
        debug_assert_eq!(first_lsn, self.written + 1);
        // A segment is durable, and cut to its records (the space reserved past them dropped),
        // before the next exists: recovery relies on sealed segments ending at their last record.
        self.file.set_len(self.offset)?;
        self.sync()?;
        let opts = &self.shared.opts;
        let (file, path) =
            create_segment(opts.vfs.as_ref(), &self.shared.dir, first_lsn, opts.segment_bytes)?;
        // Only now that the next segment is durable, the old one says so: recovery then tells
        // a log whose newest segment was deleted from one that ended here.
        self.file.write_all_at(&format::encode_seal(first_lsn), self.offset)?;
        self.file.sync_data()?;
        lock(&self.shared.segments).push(SegmentFile { first_lsn, path });
        self.file = file;
        self.offset = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }
}
