//! Sector-reading backends of a search: io_uring with registered, 4 KiB-aligned buffer slots
//! (several reads in flight, each waited for by slot), and `pread` (a read happens when it is
//! waited for). Both own their buffers, so no buffer is freed or reused while the kernel may
//! still write into it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use bytemuck::{Pod, Zeroable};

use crate::layout::SECTOR;

/// One 4 KiB-aligned page: `Vec<Page>` is a buffer `O_DIRECT` accepts, without `unsafe` allocation.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(4096))]
pub(super) struct Page([u8; SECTOR]);

/// Reads into a fixed set of buffer slots, several in flight at once, each waited for by slot.
///
/// The backend owns the buffers, so a buffer can never be freed or reused while the kernel may
/// still write into it: [`SectorIo::prepare`] and `Drop` wait for every read in flight first.
pub(super) trait SectorIo: Send {
    /// Makes `slots` buffers of `pages` 4 KiB pages each available, after waiting for (and
    /// discarding) any read still in flight from an earlier, abandoned search.
    fn prepare(&mut self, slots: usize, pages: usize) -> io::Result<()>;
    /// Starts filling slot `slot`'s buffer from byte `offset` of `file`. The slot must be idle.
    fn submit(&mut self, file: &File, slot: usize, offset: u64) -> io::Result<()>;
    /// Waits until slot `slot`'s read is complete (every byte, short reads resumed) and returns its
    /// buffer, or the read's error. The slot is idle again afterwards.
    fn wait(&mut self, file: &File, slot: usize) -> io::Result<&mut [u8]>;
}

/// `pread` backend: a submitted read happens when it is waited for.
#[derive(Default)]
pub(super) struct PreadIo {
    pub(super) bufs: Vec<Page>,
    pub(super) pages: usize,
    pub(super) offsets: Vec<Option<u64>>,
}

impl SectorIo for PreadIo {
    fn prepare(&mut self, slots: usize, pages: usize) -> io::Result<()> {
        if self.offsets.len() != slots || self.pages != pages {
            self.bufs = vec![Page([0; SECTOR]); slots * pages];
            self.pages = pages;
        }
        self.offsets = vec![None; slots];
        Ok(())
    }

    fn submit(&mut self, _file: &File, slot: usize, offset: u64) -> io::Result<()> {
        assert!(self.offsets[slot].replace(offset).is_none(), "slot {slot} submitted twice");
        Ok(())
    }

    fn wait(&mut self, file: &File, slot: usize) -> io::Result<&mut [u8]> {
        let offset = self.offsets[slot].take().expect("waited for a slot with no read");
        let buf: &mut [u8] =
            bytemuck::cast_slice_mut(&mut self.bufs[slot * self.pages..(slot + 1) * self.pages]);
        file.read_exact_at(buf, offset)?;
        Ok(buf)
    }
}

/// Where one slot's read stands.
#[derive(Debug)]
pub(super) enum SlotState {
    Idle,
    /// In the kernel's hands: `done` bytes of the slot have arrived from `offset` on.
    InFlight {
        offset: u64,
        done: usize,
    },
    Complete,
    Failed(io::Error),
}

/// io_uring backend: one ring per searcher (per thread), reads into slots it owns.
pub(super) struct UringIo {
    pub(super) ring: io_uring::IoUring,
    /// The slots' pages, `pages` per slot. Never reallocated while a read is in flight.
    pub(super) bufs: Box<[Page]>,
    pub(super) pages: usize,
    pub(super) state: Vec<SlotState>,
    pub(super) in_flight: usize,
    /// Entries pushed to the submission queue but not yet handed to the kernel.
    pub(super) unsubmitted: usize,
    /// Completions taken off the queue, (slot, result): scratch for `reap`.
    pub(super) reaped: Vec<(usize, i32)>,
    /// Whether `bufs` is registered with the ring (as fixed buffer 0), so reads are
    /// `READ_FIXED` and the kernel need not pin the pages on every read. Registration can be
    /// refused (e.g. by `RLIMIT_MEMLOCK`); plain reads are used then.
    pub(super) registered: bool,
}

impl UringIo {
    pub(super) fn new(entries: u32) -> io::Result<Self> {
        Ok(Self {
            ring: io_uring::IoUring::new(entries)?,
            bufs: Box::new([]),
            pages: 0,
            state: Vec::new(),
            in_flight: 0,
            unsubmitted: 0,
            reaped: Vec::new(),
            registered: false,
        })
    }

    /// Pushes a read of the rest of `slot` (from `done` bytes on) to the submission queue.
    pub(super) fn push(&mut self, fd: io_uring::types::Fd, slot: usize, offset: u64, done: usize) {
        let len = self.pages * SECTOR;
        let base = slot * self.pages;
        let rest =
            &mut bytemuck::cast_slice_mut::<Page, u8>(&mut self.bufs[base..base + self.pages])
                [done..];
        let (ptr, rest_len) = (rest.as_mut_ptr(), (len - done) as u32);
        let entry = if self.registered {
            io_uring::opcode::ReadFixed::new(fd, ptr, rest_len, 0)
                .offset(offset + done as u64)
                .build()
        } else {
            io_uring::opcode::Read::new(fd, ptr, rest_len).offset(offset + done as u64).build()
        }
        .user_data(slot as u64);
        assert!(self.in_flight < self.ring.params().sq_entries() as usize, "ring full");
        // SAFETY: the entry points into `self.bufs`, which this struct owns and which is neither
        // freed nor reallocated while a read is in flight: `prepare` (the only place that replaces
        // it) and `Drop` first call `drain`, which returns only once `in_flight` is 0, and a slot
        // is pushed only while idle or to resume its own short read, so no two reads share
        // bytes. A `READ_FIXED` entry's range lies inside `bufs`, the registered buffer 0. The
        // fd belongs to the index's `File`, which outlives its searchers (they borrow the
        // index); `drain` runs before a searcher is dropped. `in_flight` is below the ring's
        // capacity (asserted above), so the queue has room and the push cannot fail.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        assert!(pushed.is_ok(), "io_uring submission queue full despite in_flight < capacity");
        self.in_flight += 1;
        self.unsubmitted += 1;
    }

    /// Hands queued entries to the kernel and, if `wait`, blocks until one completion arrives.
    pub(super) fn enter(&mut self, wait: bool) {
        let res = if wait { self.ring.submit_and_wait(1) } else { self.ring.submit() };
        match res {
            Ok(n) => self.unsubmitted -= n.min(self.unsubmitted),
            // Retry later: the entries stay queued (or in flight) and are reaped as they finish.
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
            Err(e) => {
                // Reads may be in flight into our buffers: unwinding could free them under the
                // kernel, so there is no safe way on.
                tracing::error!(error = %e, "io_uring submit failed with reads possibly in flight");
                std::process::abort();
            }
        }
    }

    /// Reaps every completion available, resuming short reads.
    pub(super) fn reap(&mut self, fd: io_uring::types::Fd) {
        let len = self.pages * SECTOR;
        let mut cqes = std::mem::take(&mut self.reaped);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data() as usize, c.result())));
        for &(slot, res) in &cqes {
            self.in_flight -= 1;
            let SlotState::InFlight { offset, done } = self.state[slot] else {
                unreachable!("completion for slot {slot} with no read in flight")
            };
            self.state[slot] = match res {
                res if res < 0 => SlotState::Failed(io::Error::from_raw_os_error(-res)),
                0 => SlotState::Failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the index file",
                )),
                res => {
                    let done = done + res as usize;
                    if done < len {
                        self.push(fd, slot, offset, done);
                        SlotState::InFlight { offset, done }
                    } else {
                        SlotState::Complete
                    }
                }
            };
        }
        self.reaped = cqes;
    }

    /// Waits for every read in flight; their results are dropped.
    pub(super) fn drain(&mut self) {
        while self.in_flight > 0 {
            self.enter(true);
            // Short reads are not resumed: the fd is not needed to discard a result.
            self.in_flight -= self.ring.completion().count();
        }
        self.state.iter_mut().for_each(|s| *s = SlotState::Idle);
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        self.drain();
        if self.registered {
            // Before `bufs` is freed. Should this fail, the ring, the first field and so dropped
            // before `bufs`, releases the registration.
            let _ = self.ring.submitter().unregister_buffers();
        }
    }
}

impl SectorIo for UringIo {
    fn prepare(&mut self, slots: usize, pages: usize) -> io::Result<()> {
        self.drain();
        if self.state.len() != slots || self.pages != pages {
            if self.registered {
                // The kernel must let go of the old buffer before it is freed below.
                self.ring.submitter().unregister_buffers()?;
                self.registered = false;
            }
            self.bufs = vec![Page([0; SECTOR]); slots * pages].into_boxed_slice();
            self.pages = pages;
            self.state = (0..slots).map(|_| SlotState::Idle).collect();
            let iov = libc::iovec {
                iov_base: self.bufs.as_mut_ptr().cast(),
                iov_len: self.bufs.len() * SECTOR,
            };
            // SAFETY: `iov` covers exactly `self.bufs`, which stays allocated, unmoved (a boxed
            // slice is never reallocated in place) until it is replaced above or dropped, and
            // both happen only after `unregister_buffers` succeeded (here, or in `Drop`).
            let registered = unsafe { self.ring.submitter().register_buffers(&[iov]) };
            if let Err(e) = &registered {
                tracing::debug!(error = %e, "io_uring refused to register the read buffers; plain reads");
            }
            self.registered = registered.is_ok();
        }
        Ok(())
    }

    fn submit(&mut self, file: &File, slot: usize, offset: u64) -> io::Result<()> {
        assert!(matches!(self.state[slot], SlotState::Idle), "slot {slot} is busy");
        self.state[slot] = SlotState::InFlight { offset, done: 0 };
        self.push(io_uring::types::Fd(file.as_raw_fd()), slot, offset, 0);
        Ok(())
    }

    fn wait(&mut self, file: &File, slot: usize) -> io::Result<&mut [u8]> {
        let fd = io_uring::types::Fd(file.as_raw_fd());
        loop {
            match std::mem::replace(&mut self.state[slot], SlotState::Idle) {
                SlotState::Complete => break,
                SlotState::Failed(e) => return Err(e),
                SlotState::Idle => panic!("waited for slot {slot} with no read"),
                s @ SlotState::InFlight { .. } => {
                    self.state[slot] = s;
                    self.enter(true);
                    self.reap(fd);
                }
            }
        }
        // Reads queued behind this one must reach the kernel before the caller computes.
        if self.unsubmitted > 0 {
            self.enter(false);
        }
        let base = slot * self.pages;
        Ok(bytemuck::cast_slice_mut(&mut self.bufs[base..base + self.pages]))
    }
}

#[cfg(test)]
mod tests {
    use super::{PreadIo, SECTOR, SectorIo, UringIo};
    use std::io::Write;

    /// A file of `sectors` sectors, sector `i` filled with byte `i + 1`.
    pub(super) fn sectors_file(sectors: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for i in 0..sectors {
            f.write_all(&[(i + 1) as u8; SECTOR]).unwrap();
        }
        f.flush().unwrap();
        f
    }

    /// Both backends, several reads in flight over reused and re-sized slots: every waited
    /// slot holds exactly the sectors asked for, and a read past the end is an error, not stale
    /// bytes. On io_uring the slots are registered (fixed buffers) when the kernel allows it,
    /// which is checked too, so the `READ_FIXED` path is the one exercised.
    #[test]
    pub(super) fn slots_read_back_the_sectors_asked_for_on_both_backends_and_past_the_end_fails() {
        let f = sectors_file(9);
        let file = f.as_file();
        let mut backends: Vec<(&str, Box<dyn SectorIo>)> =
            vec![("pread", Box::new(PreadIo::default()))];
        if let Ok(u) = UringIo::new(8) {
            backends.push(("io_uring", Box::new(u)));
        }
        for (name, io) in &mut backends {
            for (slots, pages) in [(4usize, 1usize), (3, 2), (4, 1)] {
                io.prepare(slots, pages).unwrap();
                for round in 0..3u64 {
                    for slot in 0..slots {
                        io.submit(file, slot, ((slot as u64 + round) % 7) * SECTOR as u64).unwrap();
                    }
                    for slot in (0..slots).rev() {
                        let buf = io.wait(file, slot).unwrap();
                        assert_eq!(buf.len(), pages * SECTOR, "{name}");
                        for p in 0..pages {
                            let want = ((slot as u64 + round) % 7) as u8 + 1 + p as u8;
                            assert!(
                                buf[p * SECTOR..(p + 1) * SECTOR].iter().all(|&b| b == want),
                                "{name}: slot {slot} page {p} round {round}"
                            );
                        }
                    }
                }
                io.submit(file, 0, 9 * SECTOR as u64).unwrap();
                assert!(io.wait(file, 0).is_err(), "{name}: a read past the end succeeded");
            }
        }
        if let Ok(mut u) = UringIo::new(8) {
            u.prepare(2, 1).unwrap();
            assert!(u.registered, "io_uring refused to register two pages");
        }
    }
}
