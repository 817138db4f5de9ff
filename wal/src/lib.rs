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

use std::fmt;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

mod error;
mod flusher;
pub mod format;
mod open;
mod options;
mod pending;
mod recovery;
mod replay;
mod shared;
mod stats;

pub use error::{AppendError, CheckpointError, OpenError, ReadError};
pub use open::{Recovery, RecoveryReport};
pub use options::{Compression, SyncPolicy, WalOptions};
pub use pending::Pending;
pub use quiver_vfs as vfs;
pub use replay::{Record, Replay};
pub use shared::Payload;
pub use stats::{SYNC_BUCKETS, WalStats};

use format::{FLAG_ZSTD, RECORD_HEADER_LEN, align_up};
use recovery::SegmentFile;
use shared::{Queued, Shared, lock};

/// A log sequence number. The first record of a new log has LSN 1; 0 means "none".
pub type Lsn = u64;

/// The write-ahead log. `Send + Sync`: share it (e.g. in an `Arc`) between appending threads.
pub struct Wal {
    pub(crate) shared: Arc<Shared>,
    pub(crate) flusher: Option<JoinHandle<()>>,
    pub(crate) report: RecoveryReport,
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

impl Wal {
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
        self.enqueue(kind, flags, raw_len, Payload::Owned(stored))
    }

    /// [`Wal::submit`] of a payload made of `parts`, one after another: the log holds the
    /// parts (shared, not copied) until the record is written, and the flusher copies them
    /// straight into the write. A caller can so log bytes it keeps for itself without a copy
    /// of its own (the engine logs a received batch's message body, which its memtable holds).
    /// Under [`Compression::Zstd`], a payload worth compressing is first gathered into a
    /// buffer of the log's.
    ///
    /// # Errors
    /// As [`Wal::submit`].
    pub fn submit_parts(&self, kind: u8, parts: Vec<bytes::Bytes>) -> Result<Pending, AppendError> {
        let payload = Payload::Parts(parts);
        let len = payload.len();
        let max = self.shared.opts.max_record_bytes;
        if len > max {
            return Err(AppendError::TooLarge { len, max });
        }
        let raw_len = u32::try_from(len).expect("checked against max_record_bytes");
        if matches!(self.shared.opts.compression, Compression::Zstd { .. })
            && len >= self.shared.opts.compress_min_bytes
        {
            let mut whole = self.buffer();
            whole.reserve(len);
            for piece in payload.pieces() {
                whole.extend_from_slice(piece);
            }
            let (stored, flags) = self.encode(whole)?;
            return self.enqueue(kind, flags, raw_len, Payload::Owned(stored));
        }
        self.enqueue(kind, 0, raw_len, payload)
    }

    /// [`Wal::submit_owned`] or [`Wal::submit_parts`], as `payload` is.
    ///
    /// # Errors
    /// As [`Wal::submit`].
    pub fn submit_payload(&self, kind: u8, payload: Payload) -> Result<Pending, AppendError> {
        match payload {
            Payload::Owned(buffer) => self.submit_owned(kind, buffer),
            Payload::Parts(parts) => self.submit_parts(kind, parts),
        }
    }

    /// Queues a stored payload: waits for room, takes the next LSN, wakes the flusher.
    fn enqueue(
        &self,
        kind: u8,
        flags: u8,
        raw_len: u32,
        stored: Payload,
    ) -> Result<Pending, AppendError> {
        let payload_crc = stored.crc();
        let size = align_up(RECORD_HEADER_LEN + stored.len());
        let mut st = self.shared.state();
        loop {
            if let Some(e) = &st.failed {
                let e = AppendError::Failed(Arc::clone(e));
                drop(st);
                self.shared.give_payload(stored);
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

    /// What the log has done since it opened: groups, records, bytes, sync latencies, and the
    /// bytes queued now.
    #[must_use]
    pub fn stats(&self) -> WalStats {
        let queued = self.shared.state().queued_bytes;
        self.shared.counters.snapshot(queued)
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
