//! The flusher thread: gathers queued records, writes them in one write, syncs once, rotates segments.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_vfs::VfsFile;

use crate::format::{RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, align_up};
use crate::open::create_segment;
use crate::recovery::SegmentFile;
use crate::shared::{Queued, Shared, lock};
use crate::{Lsn, SyncPolicy, format};

/// The flusher thread's state: the only writer of segment files.
pub(crate) struct Flusher {
    pub(crate) shared: Arc<Shared>,
    pub(crate) file: Box<dyn VfsFile>,
    /// Where the next record goes in the active segment (8-byte aligned).
    pub(crate) offset: u64,
    pub(crate) durable: Lsn,
    pub(crate) written: Lsn,
    pub(crate) buf: Vec<u8>,
    pub(crate) last_sync: Instant,
    /// Records in the last group written (the gather target).
    pub(crate) last_group: usize,
    /// Moving average of `fdatasync` time (the gather window is half of it).
    pub(crate) sync_ewma: Duration,
}

/// The longest the flusher waits to gather a group.
pub(crate) const MAX_GATHER: Duration = Duration::from_micros(500);

impl Flusher {
    pub(crate) fn run(mut self) {
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
                if take > 0 {
                    let payload: usize = batch.iter().map(|q| q.raw_len as usize).sum();
                    self.shared.counters.group(take, payload);
                }
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
    pub(crate) fn flush(
        &mut self,
        batch: &[Queued],
        closing: bool,
        sync_wanted: Lsn,
    ) -> io::Result<()> {
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

    pub(crate) fn sync(&mut self) -> io::Result<()> {
        let start = Instant::now();
        self.file.sync_data()?;
        let took = start.elapsed();
        self.shared.counters.sync(took);
        self.sync_ewma = (self.sync_ewma * 4 + took) / 5;
        self.durable = self.written;
        self.last_sync = Instant::now();
        Ok(())
    }

    pub(crate) fn write_batch(&mut self, batch: &[Queued]) -> io::Result<()> {
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

    pub(crate) fn write_buf(&mut self, last_lsn: Lsn) -> io::Result<()> {
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
    pub(crate) fn rotate(&mut self, first_lsn: Lsn) -> io::Result<()> {
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
