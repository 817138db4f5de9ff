//! The log's options: sync policy, compression, segment size, queue and buffer limits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use quiver_vfs::{OsVfs, Vfs};

use crate::{OpenError, format};

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
    /// rotation, [`Wal::sync`](crate::Wal::sync) and close. Acknowledged records are lost on power loss.
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

/// Options for [`Wal::open`](crate::Wal::open), builder style. Every field has a documented default.
#[derive(Clone)]
pub struct WalOptions {
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) segment_bytes: u64,
    pub(crate) sync: SyncPolicy,
    pub(crate) compression: Compression,
    pub(crate) compress_min_bytes: usize,
    pub(crate) max_record_bytes: usize,
    pub(crate) max_queued_bytes: usize,
    pub(crate) max_group_bytes: usize,
    pub(crate) pooled_buffers: usize,
    pub(crate) max_pooled_buffer_bytes: usize,
    pub(crate) cut_truncated_tail: bool,
    pub(crate) direct_io: bool,
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
            .field("direct_io", &self.direct_io)
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
            direct_io: true,
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
    /// The largest payload [`Wal::append`](crate::Wal::append) accepts. Default 256 MiB; at most 2 GiB − 1.
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

    /// Whether the active segment is written with direct I/O (`O_DIRECT`), from block-aligned
    /// group buffers, where its file system has it (elsewhere, and for the small writes of
    /// segment headers and seals, buffered). A direct write skips the copy into the page cache
    /// that a buffered `pwrite` makes: on the measured machine that copy was a fifth of the
    /// server's CPU time during ingest (see BENCHMARKS.md). Each group then writes whole 4 KiB
    /// blocks, rewriting the block the previous group ended in. Default `true`.
    #[must_use]
    pub fn direct_io(mut self, direct: bool) -> Self {
        self.direct_io = direct;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), OpenError> {
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
