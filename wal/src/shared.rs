//! The state appenders and the flusher share: the queue, the buffer pool, the poison flag.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;

use crate::recovery::SegmentFile;
use crate::{Lsn, WalOptions};

pub(crate) struct Queued {
    pub(crate) lsn: Lsn,
    /// Bytes the record takes in the segment (header, payload, padding).
    pub(crate) size: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) raw_len: u32,
    pub(crate) payload_crc: u32,
    pub(crate) payload: Payload,
}

/// A record's payload ([`crate::Wal::submit_payload`]), and a queued record's as stored.
#[derive(Debug)]
pub enum Payload {
    /// A buffer the log takes over ([`crate::Wal::submit_owned`]): back to its pool once
    /// written.
    Owned(Vec<u8>),
    /// Parts shared with the caller, stored one after another ([`crate::Wal::submit_parts`]).
    Parts(Vec<bytes::Bytes>),
}

impl Payload {
    /// Its bytes, all parts together.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Payload::Owned(v) => v.len(),
            Payload::Parts(parts) => parts.iter().map(bytes::Bytes::len).sum(),
        }
    }

    /// Whether it has no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every byte, in order, part by part.
    pub(crate) fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let (one, parts) = match self {
            Payload::Owned(v) => (Some(v.as_slice()), &[][..]),
            Payload::Parts(parts) => (None, parts.as_slice()),
        };
        one.into_iter().chain(parts.iter().map(|p| &p[..]))
    }

    /// The CRC32C of every byte.
    pub(crate) fn crc(&self) -> u32 {
        self.pieces().fold(0, crc32c::crc32c_append)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) next_lsn: Lsn,
    pub(crate) queue: Vec<Queued>,
    pub(crate) queued_bytes: usize,
    /// Every record ≤ this has been released to its appender.
    pub(crate) acked_lsn: Lsn,
    /// Every record ≤ this is durable.
    pub(crate) durable_lsn: Lsn,
    /// The flusher must make at least this LSN durable.
    pub(crate) sync_wanted: Lsn,
    pub(crate) failed: Option<Arc<io::Error>>,
    pub(crate) closing: bool,
    pub(crate) flusher_done: bool,
    /// The flusher is waiting on `work` (appenders skip the wake-up syscall otherwise).
    pub(crate) flusher_idle: bool,
    pub(crate) wakers: BTreeMap<Lsn, Waker>,
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) opts: WalOptions,
    pub(crate) state: Mutex<State>,
    /// The flusher waits here for work.
    pub(crate) work: Condvar,
    /// Appenders wait here for room in the queue.
    pub(crate) space: Condvar,
    /// Appenders and `sync` wait here for acknowledgement.
    pub(crate) acked: Condvar,
    pub(crate) buffers: (crossbeam_channel::Sender<Vec<u8>>, crossbeam_channel::Receiver<Vec<u8>>),
    pub(crate) compressors: (
        crossbeam_channel::Sender<zstd::bulk::Compressor<'static>>,
        crossbeam_channel::Receiver<zstd::bulk::Compressor<'static>>,
    ),
    pub(crate) segments: Mutex<Vec<SegmentFile>>,
    /// Serialises checkpoints (held across their I/O; the flusher never takes it).
    pub(crate) checkpoint: Mutex<()>,
    /// What the flusher has done, for [`crate::Wal::stats`].
    pub(crate) counters: crate::stats::Counters,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panicking holder (every update is a plain assignment),
    // so a poisoned mutex is still usable; the log's own poisoning is `State::failed`.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn take_buffer(&self) -> Vec<u8> {
        self.buffers.1.try_recv().unwrap_or_default()
    }

    /// Gives a written payload's buffer back to the pool (shared parts are just dropped).
    pub(crate) fn give_payload(&self, payload: Payload) {
        if let Payload::Owned(buf) = payload {
            self.give_buffer(buf);
        }
    }

    pub(crate) fn give_buffer(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= self.opts.max_pooled_buffer_bytes {
            buf.clear();
            // A full pool drops the buffer: the pool's memory stays bounded.
            let _ = self.buffers.0.try_send(buf);
        }
    }

    /// Marks the flusher gone and releases every waiter (each then sees why).
    pub(crate) fn finish(&self) {
        self.release_all(|st| st.flusher_done = true);
    }

    /// Poisons the log: records not yet acknowledged, and every later call, fail with `e`.
    pub(crate) fn fail(&self, e: io::Error) {
        tracing::error!(dir = %self.dir.display(), error = %e, "WAL write failed; refusing appends until reopened");
        self.release_all(|st| {
            if st.failed.is_none() {
                st.failed = Some(Arc::new(e));
            }
        });
    }

    /// Applies `update` under the lock, then wakes every waiter of every kind (each then re-checks
    /// the state and sees why it was released).
    pub(crate) fn release_all(&self, update: impl FnOnce(&mut State)) {
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
