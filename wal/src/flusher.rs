//! The flusher thread: gathers queued records, writes them in one write, syncs once, rotates segments.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_vfs::{AlignedBuf, DIRECT_IO_ALIGN, VfsFile};

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
    /// The group being written. With direct I/O it starts with `head` bytes already in the
    /// file (the part of the block `offset` falls in before `offset`), so that each group's
    /// write starts on a block.
    pub(crate) buf: AlignedBuf,
    pub(crate) head: usize,
    /// Whether the active segment is written with direct I/O ([`crate::WalOptions::direct_io`]).
    pub(crate) direct: bool,
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
                self.shared.give_payload(q.payload);
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

    /// Where the next record goes: past the records already in `buf`.
    fn end(&self) -> u64 {
        self.offset + (self.buf.len() - self.head) as u64
    }

    pub(crate) fn write_batch(&mut self, batch: &[Queued]) -> io::Result<()> {
        let segment_bytes = self.shared.opts.segment_bytes;
        debug_assert_eq!(self.buf.len(), self.head, "the buffer holds no unwritten records");
        let mut last_in_buf = self.written;
        for q in batch {
            let span = align_up(RECORD_HEADER_LEN + q.payload.len());
            let end = self.end() + span as u64;
            let segment_has_records = self.end() > SEGMENT_HEADER_LEN as u64;
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
            for piece in q.payload.pieces() {
                self.buf.extend_from_slice(piece);
            }
            // `buf` starts at a block (direct) or at `offset` (buffered), both 8-aligned in
            // the file, so aligning its length aligns the next record's place.
            self.buf.zero_extend(align_up(self.buf.len()));
            last_in_buf = q.lsn;
        }
        self.write_buf(last_in_buf)
    }

    /// Writes the records in `buf`. A direct write starts at the block `offset` falls in
    /// (rewriting that block's earlier bytes with the same values) and ends on a block with
    /// zeros, which is what a reserved segment holds past its records; the block it ends in
    /// stays in `buf` as the next group's head. The kernel writes a buffered write's pages
    /// whole too, so the rewrite puts earlier records at no risk a buffered write does not.
    pub(crate) fn write_buf(&mut self, last_lsn: Lsn) -> io::Result<()> {
        let fresh = self.buf.len() - self.head;
        if fresh == 0 {
            return Ok(());
        }
        if self.direct {
            let start = self.offset - self.head as u64;
            debug_assert_eq!(start % DIRECT_IO_ALIGN as u64, 0);
            self.file.write_all_at(self.buf.padded(), start)?;
        } else {
            self.file.write_all_at(self.buf.as_slice(), self.offset)?;
        }
        self.offset += fresh as u64;
        self.written = last_lsn;
        let head = if self.direct { self.block_offset() } else { 0 };
        self.buf.keep_from(self.buf.len() - head);
        self.head = head;
        // The buffer grows to the largest group; do not keep a huge one after a burst.
        self.buf.shrink_to(2 * self.shared.opts.max_queued_bytes);
        Ok(())
    }

    /// How far `offset` is into its block.
    fn block_offset(&self) -> usize {
        (self.offset % DIRECT_IO_ALIGN as u64) as usize
    }

    /// Switches the active segment to direct I/O if the options ask for it and its file system
    /// has it, first reading the bytes of `offset`'s block before `offset` into `buf`: the
    /// next group's write starts with them.
    pub(crate) fn enter_direct(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.head = 0;
        self.direct = false;
        if self.shared.opts.direct_io {
            let head = self.block_offset();
            let mut block = vec![0u8; head];
            self.file.read_exact_at(&mut block, self.offset - head as u64)?;
            if self.file.set_direct_io(true)? {
                self.buf.extend_from_slice(&block);
                self.head = head;
                self.direct = true;
            }
        }
        self.shared.counters.set_direct_io(self.direct);
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
        // a log whose newest segment was deleted from one that ended here. The seal is a small
        // write, made buffered.
        if self.direct {
            self.file.set_direct_io(false)?;
        }
        self.file.write_all_at(&format::encode_seal(first_lsn), self.offset)?;
        self.file.sync_data()?;
        lock(&self.shared.segments).push(SegmentFile { first_lsn, path });
        self.file = file;
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.enter_direct()
    }
}
