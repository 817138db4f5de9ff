//! Beam search over a disk index: PQ codes in RAM steer, the graph file on disk is read a sector
//! at a time, and the full-precision vectors that come with those sectors rerank the result.
//!
//! The search is pipelined: it keeps `W` (beam width) reads in flight, each for the nearest
//! candidate by PQ distance not yet taken, through io_uring or `pread`, with `O_DIRECT` into
//! 4 KiB-aligned buffers. When the oldest read arrives (the oldest, not the first to finish, so
//! that results never depend on the device's timing), it verifies the sector's checksum, computes
//! the node's exact distance, scores its unvisited neighbours with one batched PQ call, merges them
//! into the candidate list of size `L`, and issues the next read. Then it uses the sector's other
//! nodes, which the builder chose to be the node's graph neighbours ([`crate::pack`]): each one the
//! list would take is expanded at once, without a read of its own, and each other one's exact
//! distance is offered to the result. The search stops when every candidate in the list has been
//! taken and no read is in flight. The top `k` by exact distance are returned, labelled with the
//! caller's ids and converted back to the user's metric.
//!
//! A [`DiskIndex`] is shared (`Sync`) by any number of threads. Each thread makes its own
//! [`Searcher`], which owns one io_uring ring, the visited set and the I/O buffers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use quiver_simd::{Isa, Kernels, PqTable};

use crate::cache::SectorCache;
use crate::data::{Metric, Row, distance};
use crate::index::{GRAPH_FILE, IndexError};
use crate::layout::{
    Header, IndexReader, LayoutError, NodeRef, SECTOR, node_from_sectors, node_label, parse_node,
};
use crate::pq::{CENTROIDS, CODES_FILE, PIVOTS_FILE, PqCodebook, read_codes};
use crate::visited::VisitedSet;

/// One 4 KiB-aligned page: `Vec<Page>` is a buffer `O_DIRECT` accepts, without `unsafe` allocation.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(4096))]
struct Page([u8; SECTOR]);

/// The largest beam width `W` a search accepts: reads in flight per search (and so buffer slots
/// and io_uring entries per searcher).
pub const MAX_BEAM_WIDTH: usize = 64;

/// How sectors are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring, falling back to `pread` (with a log line) if the kernel refuses a ring.
    Auto,
    /// io_uring only (an error if unavailable).
    IoUring,
    /// Positioned reads, one system call per request.
    Pread,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(Backend::IoUring),
            "pread" => Ok(Backend::Pread),
            _ => Err(format!("unknown I/O backend {s:?}: expected auto, io_uring or pread")),
        }
    }
}

/// Options for opening an index. `Default`: auto backend, `O_DIRECT`, no cache.
#[derive(Clone, Debug)]
pub struct OpenOptionsIndex {
    /// I/O backend.
    pub backend: Backend,
    /// Open the graph file with `O_DIRECT` (bypass the page cache, as a real out-of-core index
    /// must). If the file system refuses it, buffered I/O is used and a warning logged.
    pub direct: bool,
    /// Nodes to keep in RAM, chosen by BFS from the entry point (the most visited). Whole sectors
    /// are cached (a search uses every node of a sector it meets), until they hold at least this
    /// many nodes. Default 0.
    pub cache_nodes: usize,
    /// Nodes a search may start from: each query scores their PQ codes (held contiguously in
    /// RAM, `m` bytes each) and starts at the nearest, instead of always at the graph's entry
    /// point. `None` (the default): `⌈√n⌉`, at most [`MAX_START_CANDIDATES`]; `Some(1)`: the
    /// entry point alone. See [`DiskIndex::open`].
    pub start_candidates: Option<usize>,
    /// A cache the index's searches share with other indexes opened with the same one: each
    /// node read from disk, once verified, joins it, and later searches (of any thread) take
    /// it from RAM while CLOCK keeps it. Bounded in bytes by the cache's capacity. Default none.
    pub sector_cache: Option<Arc<SectorCache>>,
}

impl Default for OpenOptionsIndex {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            direct: true,
            cache_nodes: 0,
            start_candidates: None,
            sector_cache: None,
        }
    }
}

/// Most start candidates an index keeps (4096 PQ codes scored per query: a few microseconds).
pub const MAX_START_CANDIDATES: usize = 4096;

/// Nodes a search may start from, and their codes side by side so that one SIMD pass scores
/// them all.
///
/// Why: the entry point is one node, and from it a search spends its first hops crossing the
/// data to the query's region. Starting at the nearest (by PQ) of `√n` nodes spread evenly over
/// the file skips most of that crossing: on 1M SIFT, 1,000 candidates took reads per query at
/// L 20 from 31.1 to 23.9, for recall 0.9287 → 0.9274. A graph built a partition at a time,
/// whose long edges stay inside partitions, gains the most (35.7 → 24.9 reads). See
/// `BENCHMARKS.md`.
#[derive(Debug)]
struct Starts {
    /// Positions: the entry point first, then every `n / K`-th node.
    ids: Vec<u32>,
    /// Their PQ codes, in the same order.
    codes: Vec<u8>,
}

impl Starts {
    fn choose(header: &Header, codes: &[u8], m: usize, wanted: Option<usize>) -> Starts {
        let n = header.n as usize;
        let k = wanted
            .unwrap_or_else(|| (n as f64).sqrt().ceil() as usize)
            .clamp(1, MAX_START_CANDIDATES)
            .min(n);
        let mut ids = vec![header.entry];
        ids.extend(
            (0..k.saturating_sub(1)).map(|i| (i * n / k) as u32).filter(|&id| id != header.entry),
        );
        let codes = ids
            .iter()
            .flat_map(|&id| &codes[id as usize * m..(id as usize + 1) * m])
            .copied()
            .collect();
        Starts { ids, codes }
    }
}

/// Per-query counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueryStats {
    /// Sectors read from disk.
    pub ios: u64,
    /// Round trips: the longest chain of reads each issued only after the previous one arrived
    /// (with W reads in flight, about reads / W).
    pub hops: u64,
    /// Nodes whose sector was served from the RAM cache.
    pub cache_hits: u64,
    /// PQ distances computed.
    pub pq_distances: u64,
    /// Full-precision distances computed.
    pub exact_distances: u64,
    /// Wall time, microseconds.
    pub latency_us: f64,
}

/// One result: node id and distance under the user's metric (smaller is nearer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbour {
    /// Node id (row of the input file).
    pub id: u32,
    /// Distance: squared L2, negated inner product, or cosine distance.
    pub distance: f32,
}

/// An open index, shareable across threads.
#[derive(Debug)]
pub struct DiskIndex {
    path: PathBuf,
    header: Header,
    file: File,
    pq: PqCodebook,
    codes: Vec<u8>,
    /// Where searches may start.
    starts: Starts,
    /// Cached sectors by first sector number: the node's sectors as stored, verified at load.
    cache: HashMap<u64, Box<[u8]>>,
    /// The shared sector cache, with this index's key in it.
    shared: Option<(Arc<SectorCache>, u64)>,
    backend: Backend,
    /// Each label's position, made by one scan of the graph file the first time a search
    /// ranks given labels ([`Searcher::search_among`]); 4 bytes a node from then on.
    positions: std::sync::OnceLock<Vec<u32>>,
}

impl DiskIndex {
    /// Opens the index in `dir`: validates the graph header and length, loads and verifies the PQ
    /// files, checks they agree with the graph, and fills the node cache.
    ///
    /// # Errors
    /// [`IndexError`] for a missing, damaged or inconsistent index.
    pub fn open(dir: &Path, opts: OpenOptionsIndex) -> Result<Self, IndexError> {
        let path = dir.join(GRAPH_FILE);
        let reader = IndexReader::open(&path)?;
        let header = *reader.header();
        let pq = PqCodebook::read_from(&dir.join(PIVOTS_FILE))?;
        let (m, codes) = read_codes(&dir.join(CODES_FILE))?;
        if pq.dim() != header.dim as usize || pq.bytes() != m || pq.metric() != header.metric {
            return Err(IndexError::Mismatch(format!(
                "{}: PQ pivots (dim {}, {} bytes, {}) do not match the graph (dim {}, {})",
                dir.display(),
                pq.dim(),
                pq.bytes(),
                pq.metric(),
                header.dim,
                header.metric
            )));
        }
        if codes.len() as u64 != header.n * m as u64 {
            return Err(IndexError::Mismatch(format!(
                "{}: {} PQ codes for {} graph nodes",
                dir.display(),
                codes.len() / m,
                header.n
            )));
        }
        let buffered =
            || File::open(&path).map_err(|e| LayoutError::Io { path: path.clone(), source: e });
        let file = match opts
            .direct
            .then(|| OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path))
        {
            None => buffered()?,
            Some(Ok(f)) => f,
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused by the file system; using buffered reads");
                buffered()?
            }
            Some(Err(e)) => return Err(LayoutError::Io { path: path.clone(), source: e }.into()),
        };
        let backend = match opts.backend {
            Backend::Auto => match UringIo::new(8) {
                Ok(_) => Backend::IoUring,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; using pread");
                    Backend::Pread
                }
            },
            b => b,
        };
        let starts = Starts::choose(&header, &codes, m, opts.start_candidates);
        let shared = opts.sector_cache.map(|c| (c, SectorCache::next_index_key()));
        let cache = HashMap::new();
        let positions = std::sync::OnceLock::new();
        let mut index =
            Self { path, header, file, pq, codes, starts, cache, shared, backend, positions };
        index.fill_cache(&reader, opts.cache_nodes)?;
        Ok(index)
    }

    /// Caches the sectors of the nodes met in BFS order from the entry point, until they hold at
    /// least `count` nodes (or the whole graph).
    fn fill_cache(&mut self, reader: &IndexReader, count: usize) -> Result<(), IndexError> {
        let h = self.header;
        let count = count.min(h.n as usize);
        let mut held = 0usize;
        let mut queue = std::collections::VecDeque::from([h.entry]);
        let mut seen = std::collections::HashSet::from([h.entry]);
        let mut buf = Vec::new();
        while let Some(id) = queue.pop_front() {
            if held >= count {
                break;
            }
            let loc = h.locate(id);
            // Each sector is read once, kept as stored (a cached sector is processed like a read
            // one, which reassembles spanning nodes in place), and parsed from a copy.
            let raw = match self.cache.entry(loc.sector) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut raw = Vec::new();
                    reader.read_sectors(loc, &mut raw)?;
                    held += h.sector_mates(id).len();
                    e.insert(raw.into())
                }
            };
            buf.clear();
            buf.extend_from_slice(raw);
            let node = node_from_sectors(&h, reader.path(), id, loc, &mut buf)?;
            for &nb in &node.neighbours {
                if seen.insert(nb) {
                    queue.push_back(nb);
                }
            }
        }
        Ok(())
    }

    /// The graph header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The backend in use (after `Auto` resolved).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The PQ codebook the codes were made with.
    pub fn pq(&self) -> &PqCodebook {
        &self.pq
    }

    /// Every node's PQ code, `pq().bytes()` each, in position order.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The graph file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resident RAM of the index: PQ codes, pivots, the start candidates and the BFS node
    /// cache (not the per-thread buffers, nor a shared [`SectorCache`], which counts its own
    /// bytes).
    pub fn ram_bytes(&self) -> usize {
        self.codes.len()
            + 4 * (self.pq.center().len() + self.pq.centroids().len())
            + 4 * self.starts.ids.len()
            + self.starts.codes.len()
            + self.cache.values().map(|v| v.len() + 16).sum::<usize>()
            + self.positions.get().map_or(0, |p| 4 * p.capacity())
    }

    /// Copies the node sectors starting at `sector` into `into` if a cache holds them: the BFS
    /// cache first, then the shared cache. Whether one did.
    fn cached_sector(&self, sector: u64, into: &mut Vec<u8>) -> bool {
        if let Some(bytes) = self.cache.get(&sector) {
            into.clear();
            into.extend_from_slice(bytes);
            true
        } else if let Some((cache, key)) = &self.shared {
            cache.get(*key, sector, into)
        } else {
            false
        }
    }

    /// Each label's position in the graph file, made on first use by one sequential scan of
    /// it (then held: 4 bytes a node, counted by [`DiskIndex::ram_bytes`]).
    ///
    /// # Errors
    /// If the scan fails or finds a label twice or out of range.
    fn label_positions(&self) -> Result<&[u32], LayoutError> {
        if let Some(positions) = self.positions.get() {
            return Ok(positions);
        }
        let n = self.header.n as usize;
        let mut positions = vec![u32::MAX; n];
        let reader = IndexReader::open(&self.path)?;
        let corrupt = |reason: String| LayoutError::Corrupt { path: self.path.clone(), reason };
        reader.for_each_node::<LayoutError>(|p, node| {
            match positions.get_mut(node.label as usize) {
                Some(slot) if *slot == u32::MAX => *slot = p,
                _ => return Err(corrupt(format!("node {p}: label {} repeated", node.label))),
            }
            Ok(())
        })?;
        let _ = self.positions.set(positions);
        Ok(self.positions.get().expect("just set"))
    }

    /// A searcher for the calling thread, with a fresh [`SearchState`] (an io_uring ring and
    /// its registered buffers, for that backend). A caller that searches often keeps states and
    /// hands them to [`DiskIndex::searcher_with`] instead.
    ///
    /// # Errors
    /// If the io_uring backend was chosen and the ring cannot be created.
    pub fn searcher(&self) -> Result<Searcher<'_>, IndexError> {
        let state = SearchState::new(self.backend)
            .map_err(|e| LayoutError::Io { path: self.path.clone(), source: e })?;
        self.searcher_with(state)
    }

    /// A searcher that uses `state` (from an earlier [`Searcher::into_state`], of this index or
    /// any other): no ring is created and no buffer allocated when the state's backend is this
    /// index's.
    ///
    /// # Errors
    /// If the state is of another backend and an io_uring ring cannot be created.
    pub fn searcher_with(&self, mut state: SearchState) -> Result<Searcher<'_>, IndexError> {
        let uring = !matches!(self.backend, Backend::Pread);
        if state.uring != uring {
            state = SearchState::new(self.backend)
                .map_err(|e| LayoutError::Io { path: self.path.clone(), source: e })?;
        }
        state.table.resize(self.pq.bytes() * CENTROIDS, 0.0);
        Ok(Searcher { index: self, state })
    }
}

/// What a search works with besides the index: the I/O backend (for io_uring, the ring and its
/// registered buffer slots), the visited sets and scratch space. Creating one costs a ring and a
/// buffer registration; keeping one per thread and reusing it across searches and indexes
/// ([`DiskIndex::searcher_with`], [`Searcher::into_state`]) keeps that off the query path.
pub struct SearchState {
    uring: bool,
    io: Box<dyn SectorIo>,
    /// Positions seen (offered to the candidate list).
    visited: VisitedSet,
    /// Positions expanded (their exact distance taken and their neighbours seen).
    expanded: VisitedSet,
    /// A cached sector's copy, processed like a read one (verification reassembles in place).
    cached: Vec<u8>,
    /// A read node's sectors as read, admitted to the shared cache once they verified.
    admit: Vec<u8>,
    table: Vec<f32>,
    /// PQ distances of the start candidates.
    start_distances: Vec<f32>,
}

impl std::fmt::Debug for SearchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SearchState({})", if self.uring { "io_uring" } else { "pread" })
    }
}

impl SearchState {
    /// A state for `backend` (`Auto` and `IoUring` make a ring; `Pread` does not).
    ///
    /// # Errors
    /// If an io_uring ring cannot be created.
    pub fn new(backend: Backend) -> io::Result<SearchState> {
        let (uring, io): (bool, Box<dyn SectorIo>) = match backend {
            Backend::Pread => (false, Box::new(PreadIo::default())),
            _ => (true, Box::new(UringIo::new(MAX_BEAM_WIDTH as u32)?)),
        };
        Ok(SearchState {
            uring,
            io,
            visited: VisitedSet::new(),
            expanded: VisitedSet::new(),
            cached: Vec::new(),
            admit: Vec::new(),
            table: Vec::new(),
            start_distances: Vec::new(),
        })
    }
}

/// Reads into a fixed set of buffer slots, several in flight at once, each waited for by slot.
///
/// The backend owns the buffers, so a buffer can never be freed or reused while the kernel may
/// still write into it: [`SectorIo::prepare`] and `Drop` wait for every read in flight first.
trait SectorIo: Send {
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
struct PreadIo {
    bufs: Vec<Page>,
    pages: usize,
    offsets: Vec<Option<u64>>,
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
enum SlotState {
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
struct UringIo {
    ring: io_uring::IoUring,
    /// The slots' pages, `pages` per slot. Never reallocated while a read is in flight.
    bufs: Box<[Page]>,
    pages: usize,
    state: Vec<SlotState>,
    in_flight: usize,
    /// Entries pushed to the submission queue but not yet handed to the kernel.
    unsubmitted: usize,
    /// Completions taken off the queue, (slot, result): scratch for `reap`.
    reaped: Vec<(usize, i32)>,
    /// Whether `bufs` is registered with the ring (as fixed buffer 0), so reads are
    /// `READ_FIXED` and the kernel need not pin the pages on every read. Registration can be
    /// refused (e.g. by `RLIMIT_MEMLOCK`); plain reads are used then.
    registered: bool,
}

impl UringIo {
    fn new(entries: u32) -> io::Result<Self> {
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
    fn push(&mut self, fd: io_uring::types::Fd, slot: usize, offset: u64, done: usize) {
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
    fn enter(&mut self, wait: bool) {
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
    fn reap(&mut self, fd: io_uring::types::Fd) {
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
    fn drain(&mut self) {
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

/// A per-thread searcher: an index and the [`SearchState`] it searches with.
pub struct Searcher<'a> {
    index: &'a DiskIndex,
    state: SearchState,
}

impl std::fmt::Debug for Searcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Searcher({:?})", self.index.backend)
    }
}

/// Search parameters.
#[derive(Clone, Copy, Debug)]
pub struct SearchParams {
    /// Results wanted.
    pub k: usize,
    /// Candidate list size `L` (at least `k`).
    pub list_size: usize,
    /// Reads kept in flight (`W`, 1..=[`MAX_BEAM_WIDTH`]).
    pub beam_width: usize,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self { k: 10, list_size: 100, beam_width: 4 }
    }
}

/// Why a query does not fit an index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// k, the list size or the beam width is zero.
    #[error(
        "k, list size and beam width must be at least 1 (k {k}, list size {list_size}, beam width {beam_width})"
    )]
    Zero {
        /// Results asked for.
        k: usize,
        /// The search list's size.
        list_size: usize,
        /// Reads in flight.
        beam_width: usize,
    },
    /// The beam width is over [`MAX_BEAM_WIDTH`].
    #[error("beam width {0} exceeds the maximum {MAX_BEAM_WIDTH}")]
    BeamWidth(usize),
    /// A label asked for is not in the index.
    #[error("label {label} is not in the index (it has {n} nodes)")]
    Label {
        /// The label asked for.
        label: u32,
        /// The index's node count.
        n: u64,
    },
    /// The query's length is not the index's input dimension.
    #[error("dimension {got}, the index has {expected}")]
    Dimension {
        /// The index's input dimension.
        expected: usize,
        /// The query's length.
        got: usize,
    },
    /// The query holds a NaN or an infinity.
    #[error("non-finite value {0}")]
    NonFinite(f32),
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The query does not fit the index.
    #[error("query: {0}")]
    Query(#[from] QueryError),
    /// Reading the index failed or found corruption.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl Searcher<'_> {
    /// The state, to reuse for another search of this or another index.
    pub fn into_state(self) -> SearchState {
        self.state
    }

    /// Searches for the `params.k` nearest neighbours of `query` (in the input space: `dim` values of
    /// the index's element type, or `f32`).
    ///
    /// # Errors
    /// [`SearchError::Query`] for a query of the wrong dimension, type or with non-finite values;
    /// [`SearchError::Layout`] for I/O failure or corruption met on the way.
    pub fn search(
        &mut self,
        query: Row<'_>,
        params: SearchParams,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        self.search_accepting(query, params, &|_| true)
    }

    /// [`Searcher::search`] whose results are only nodes whose label `accept` takes. The others
    /// are still walked through: a rejected node (say, a deleted row) is read and expanded like
    /// any other, so the graph stays connected around it and the walk costs what it would
    /// without the rejection; it just never enters the result (as FreshDiskANN treats deleted
    /// points before they are consolidated). With many rejected nodes, a larger list size
    /// keeps `k` accepted results within reach.
    ///
    /// # Errors
    /// As [`Searcher::search`].
    pub fn search_accepting(
        &mut self,
        query: Row<'_>,
        params: SearchParams,
        accept: &dyn Fn(u32) -> bool,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        self.walk(query, params, accept, Report::Labels)
    }

    /// [`Searcher::search_accepting`] reporting each result's position in the index (its node
    /// id in neighbour lists) rather than its label: what an insertion into the graph links to.
    ///
    /// # Errors
    /// As [`Searcher::search`].
    pub fn search_positions(
        &mut self,
        query: Row<'_>,
        params: SearchParams,
        accept: &dyn Fn(u32) -> bool,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        self.walk(query, params, accept, Report::Positions)
    }

    /// The `params.k` nearest to `query` of the nodes labelled `labels`: all of them scored by
    /// their PQ codes (in RAM), the `params.list_size` nearest by PQ read from the index (a
    /// sector once however many of them it holds, from the caches when they hold it, else
    /// `params.beam_width` reads in flight) and ranked by exact distance. What a filtered search does when a small
    /// share of the rows pass: about as many reads as an unfiltered search with the same list,
    /// however few pass. A list at least as long as `labels` ranks them all exactly (a label
    /// given twice is ranked once, but may take two places of a shorter list). The first call
    /// on an index scans its graph file once to learn where each label lies.
    ///
    /// # Errors
    /// [`QueryError::Label`] for a label not in the index, and as [`Searcher::search`].
    pub fn search_among(
        &mut self,
        query: Row<'_>,
        labels: &[u32],
        params: SearchParams,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        let started = Instant::now();
        let ix = self.index;
        let h = ix.header;
        if params.k == 0 || params.beam_width == 0 {
            let SearchParams { k, list_size, beam_width } = params;
            return Err(QueryError::Zero { k, list_size, beam_width }.into());
        }
        if params.beam_width > MAX_BEAM_WIDTH {
            return Err(QueryError::BeamWidth(params.beam_width).into());
        }
        let (qf, native) = prepare_query(&h, query)?;
        let where_is = ix.label_positions()?;
        let mut wanted = Vec::with_capacity(labels.len());
        for &label in labels {
            let p = where_is.get(label as usize).ok_or(QueryError::Label { label, n: h.n })?;
            wanted.push(*p);
        }
        let kernels = Isa::active();
        let mut stats = QueryStats::default();
        let reread = params.list_size.max(params.k);
        if wanted.len() > reread {
            // The nearest `reread` by PQ distance, back in file order.
            ix.pq.query_table(&qf, &mut self.state.table);
            let table = PqTable::new(&self.state.table, ix.pq.bytes());
            let mut d = vec![0.0f32; wanted.len()];
            kernels.pq_score_ids(table, &ix.codes, &wanted, &mut d);
            stats.pq_distances += wanted.len() as u64;
            let mut order: Vec<u32> = (0..wanted.len() as u32).collect();
            order.select_nth_unstable_by(reread - 1, |&a, &b| {
                d[a as usize].total_cmp(&d[b as usize]).then(a.cmp(&b))
            });
            wanted = order[..reread].iter().map(|&i| wanted[i as usize]).collect();
        }
        // In file order, each node once (a label given twice may have been kept twice).
        wanted.sort_unstable();
        wanted.dedup();
        // One read per sector (or per node, for nodes that span sectors), in file order.
        let mut reads: Vec<(crate::layout::NodeLocation, std::ops::Range<usize>)> = Vec::new();
        for (at, &p) in wanted.iter().enumerate() {
            let loc = h.locate(p);
            match reads.last_mut() {
                Some((last, span)) if last.sector == loc.sector => span.end = at + 1,
                _ => reads.push((loc, at..at + 1)),
            }
        }
        let width = params.beam_width;
        self.state
            .io
            .prepare(width, h.sectors_per_node())
            .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;
        let mut found = Vec::with_capacity(wanted.len());
        // Ranks the wanted nodes of read `r`, whose sectors are in `buf` as stored.
        let mut rank = |r: usize, buf: &mut [u8], stats: &mut QueryStats| {
            let (loc, span) = (reads[r].0, reads[r].1.clone());
            // Verifies the read's sectors, and parses its first wanted node.
            let first = wanted[span.start];
            let node = node_from_sectors(&h, &ix.path, first, loc, buf)?;
            let mut take = |label: u32, vector: &[u8]| {
                stats.exact_distances += 1;
                let d = exact_distance(kernels, &h, native, query, &qf, vector);
                found.push(Neighbour { id: label, distance: d });
            };
            take(node.label, node.vector);
            let size = h.node_size();
            let mates = h.sector_mates(first);
            for &p in &wanted[span.start + 1..span.end] {
                let at = (p - mates.start) as usize * size;
                let node = parse_node(&h, p, &buf[at..at + size]).map_err(|e| {
                    let reason = format!("node {p} (sector {}): {e}", loc.sector);
                    LayoutError::Corrupt { path: ix.path.clone(), reason }
                })?;
                take(node.label, node.vector);
            }
            Ok::<(), LayoutError>(())
        };
        let mut flight = std::collections::VecDeque::with_capacity(width);
        let mut next = 0;
        while next < reads.len() || !flight.is_empty() {
            while next < reads.len() && flight.len() < width {
                let sector = reads[next].0.sector;
                // A cached sector is ranked from its copy at once.
                if ix.cached_sector(sector, &mut self.state.cached) {
                    stats.cache_hits += 1;
                    rank(next, &mut self.state.cached, &mut stats)?;
                    next += 1;
                    continue;
                }
                let slot = (0..width).find(|s| !flight.iter().any(|&(f, _)| f == *s));
                let slot = slot.expect("fewer reads in flight than slots");
                self.state
                    .io
                    .submit(&ix.file, slot, sector * SECTOR as u64)
                    .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;
                stats.ios += reads[next].0.sectors as u64;
                flight.push_back((slot, next));
                next += 1;
            }
            let Some((slot, r)) = flight.pop_front() else { continue };
            let buf = self
                .state
                .io
                .wait(&ix.file, slot)
                .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;
            stats.hops += 1;
            if ix.shared.is_some() {
                // As read: verification may reassemble a spanning node in place.
                self.state.admit.clear();
                self.state.admit.extend_from_slice(buf);
            }
            rank(r, buf, &mut stats)?;
            if let Some((cache, key)) = &ix.shared {
                // Verified: `rank` returned no error for these bytes.
                cache.insert(*key, reads[r].0.sector, &self.state.admit);
            }
        }
        found.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        found.truncate(params.k);
        stats.latency_us = started.elapsed().as_secs_f64() * 1e6;
        Ok((found, stats))
    }

    fn walk(
        &mut self,
        query: Row<'_>,
        params: SearchParams,
        accept: &dyn Fn(u32) -> bool,
        report: Report,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        let started = Instant::now();
        let ix = self.index;
        let h = ix.header;
        if params.k == 0 || params.list_size == 0 || params.beam_width == 0 {
            let SearchParams { k, list_size, beam_width } = params;
            return Err(QueryError::Zero { k, list_size, beam_width }.into());
        }
        if params.beam_width > MAX_BEAM_WIDTH {
            return Err(QueryError::BeamWidth(params.beam_width).into());
        }
        let (qf, native) = prepare_query(&h, query)?;
        let k = Isa::active();
        ix.pq.query_table(&qf, &mut self.state.table);
        let table = PqTable::new(&self.state.table, ix.pq.bytes());
        let l = params.list_size.max(params.k);
        let mut stats = QueryStats::default();

        self.state.visited.clear();
        let width = params.beam_width;
        let spn = h.sectors_per_node();
        self.state
            .io
            .prepare(width, spn)
            .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;

        self.state.expanded.clear();
        let mut walk = Walk {
            list: Vec::with_capacity(l + 1),
            l,
            first_new: 0,
            exact: Vec::new(),
            fresh: Vec::new(),
            fresh_d: Vec::new(),
            mates: Vec::new(),
            mates_d: Vec::new(),
        };
        let starts = &ix.starts;
        self.state.start_distances.resize(starts.ids.len(), 0.0);
        k.pq_score(table, &starts.codes, &mut self.state.start_distances);
        stats.pq_distances += starts.ids.len() as u64;
        let (nearest, &d) = self
            .state
            .start_distances
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("an index has at least its entry point");
        let start = starts.ids[nearest];
        self.state.visited.insert(start);
        walk.list.push(Cand { d, id: start, state: CandState::New });

        // Reads in flight, oldest first: (slot, node id, round trip it ends).
        let mut flight: std::collections::VecDeque<(usize, u32, u64)> =
            std::collections::VecDeque::with_capacity(width);
        let mut free: Vec<usize> = (0..width).rev().collect();
        // The round trip of the node last expanded: reads issued now end round trip `depth + 1`.
        let mut depth = 0u64;
        let ctx = Ctx { ix, h, k, table, query, qf: &qf, native, accept, report };
        loop {
            // Keep `width` reads in flight, each for the nearest candidate not yet taken.
            while !free.is_empty() {
                let Some(id) = walk.take_nearest_new() else { break };
                let loc = h.locate(id);
                if ix.cached_sector(loc.sector, &mut self.state.cached) {
                    stats.cache_hits += 1;
                    let (visited, expanded) = (&mut self.state.visited, &mut self.state.expanded);
                    ctx.process(
                        &mut walk,
                        visited,
                        expanded,
                        &mut stats,
                        id,
                        &mut self.state.cached,
                    )?;
                    continue;
                }
                let slot = free.pop().expect("a free slot");
                self.state
                    .io
                    .submit(&ix.file, slot, loc.sector * SECTOR as u64)
                    .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;
                stats.ios += spn as u64;
                flight.push_back((slot, id, depth + 1));
            }
            // Expand the oldest read (not whichever finishes first: the order of expansions, and
            // so the result, must not depend on the device's timing).
            let Some((slot, id, trip)) = flight.pop_front() else { break };
            let buf = self
                .state
                .io
                .wait(&ix.file, slot)
                .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;
            depth = trip;
            stats.hops = stats.hops.max(depth);
            if ix.shared.is_some() {
                // As read: verification may reassemble a spanning node in place.
                self.state.admit.clear();
                self.state.admit.extend_from_slice(buf);
            }
            ctx.process(
                &mut walk,
                &mut self.state.visited,
                &mut self.state.expanded,
                &mut stats,
                id,
                buf,
            )?;
            if let Some((cache, key)) = &ix.shared {
                // Verified: `process` returned no error for these bytes.
                cache.insert(*key, h.locate(id).sector, &self.state.admit);
            }
            free.push(slot);
        }
        let mut exact = walk.exact;
        exact.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        // A node met as a sector mate and later expanded is listed twice, at the same distance.
        exact.dedup_by_key(|n| n.id);
        exact.truncate(params.k);
        stats.latency_us = started.elapsed().as_secs_f64() * 1e6;
        Ok((exact, stats))
    }
}

/// What one search reads with: the index, the query in its forms, the PQ table, and which
/// labels may enter the result.
struct Ctx<'a, 'q> {
    ix: &'a DiskIndex,
    h: Header,
    k: Isa,
    table: PqTable<'a>,
    query: Row<'q>,
    qf: &'a [f32],
    native: bool,
    accept: &'a dyn Fn(u32) -> bool,
    report: Report,
}

/// What a result's id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Report {
    /// The node's label (the caller's id).
    Labels,
    /// The node's position in the index.
    Positions,
}

impl Report {
    fn id(self, label: u32, position: u32) -> u32 {
        match self {
            Report::Labels => label,
            Report::Positions => position,
        }
    }
}

impl Ctx<'_, '_> {
    /// Exact distance from the query to a stored vector.
    fn exact(&self, vector: &[u8]) -> f32 {
        exact_distance(self.k, &self.h, self.native, self.query, self.qf, vector)
    }

    fn corrupt(&self, id: u32, e: &str) -> LayoutError {
        let reason = format!("node {id} (sector {}): {e}", self.h.locate(id).sector);
        LayoutError::Corrupt { path: self.ix.path.clone(), reason }
    }

    /// Expands a node: its exact distance joins the result, its unseen neighbours the list.
    fn expand(
        &self,
        walk: &mut Walk,
        visited: &mut VisitedSet,
        stats: &mut QueryStats,
        position: u32,
        node: &NodeRef<'_>,
    ) {
        if (self.accept)(node.label) {
            let d = self.exact(node.vector);
            stats.exact_distances += 1;
            walk.exact.push(Neighbour { id: self.report.id(node.label, position), distance: d });
        }
        walk.fresh.clear();
        walk.fresh.extend(node.neighbours.iter().copied().filter(|&nb| visited.insert(nb)));
        walk.fresh_d.resize(walk.fresh.len(), 0.0);
        self.k.pq_score_ids(self.table, &self.ix.codes, &walk.fresh, &mut walk.fresh_d);
        stats.pq_distances += walk.fresh.len() as u64;
        walk.merge_fresh();
    }

    /// Handles the sectors of the node at position `id` (read or cached, unverified): verifies
    /// them, expands the node, and then uses its sector mates.
    ///
    /// The builder put the node's graph neighbours in its sector, and they came with the read.
    /// Each mate the list would take is expanded now, for free; each other one (not yet expanded)
    /// still has its exact distance offered to the result.
    fn process(
        &self,
        walk: &mut Walk,
        visited: &mut VisitedSet,
        expanded: &mut VisitedSet,
        stats: &mut QueryStats,
        id: u32,
        buf: &mut [u8],
    ) -> Result<(), LayoutError> {
        let h = &self.h;
        let node = node_from_sectors(h, &self.ix.path, id, h.locate(id), buf)?;
        expanded.insert(id);
        self.expand(walk, visited, stats, id, &node);
        let mates = h.sector_mates(id);
        walk.mates.clear();
        walk.mates.extend(mates.clone().filter(|&y| y != id && !expanded.contains(y)));
        walk.mates_d.resize(walk.mates.len(), 0.0);
        self.k.pq_score_ids(self.table, &self.ix.codes, &walk.mates, &mut walk.mates_d);
        stats.pq_distances += walk.mates.len() as u64;
        let size = h.node_size();
        for j in 0..walk.mates.len() {
            let (y, dy) = (walk.mates[j], walk.mates_d[j]);
            let at = (y - mates.start) as usize * size;
            let bytes = &buf[at..at + size];
            match walk.offer_mate(y, dy) {
                MateUse::Expand => {
                    visited.insert(y);
                    expanded.insert(y);
                    let node = parse_node(h, y, bytes).map_err(|e| self.corrupt(y, &e))?;
                    self.expand(walk, visited, stats, y, &node);
                }
                MateUse::Exact => {
                    let label = node_label(h, y, bytes).map_err(|e| self.corrupt(y, &e))?;
                    if (self.accept)(label) {
                        let d = self.exact(&bytes[..h.dim as usize * h.elem.size()]);
                        stats.exact_distances += 1;
                        walk.exact.push(Neighbour { id: self.report.id(label, y), distance: d });
                    }
                }
                MateUse::InFlight => {}
            }
        }
        Ok(())
    }
}

/// Where a candidate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CandState {
    /// Not yet read.
    New,
    /// Read requested or done.
    Taken,
}

/// One candidate: PQ distance, id, state.
#[derive(Clone, Copy, Debug)]
struct Cand {
    d: f32,
    id: u32,
    state: CandState,
}

/// What to do with a node that arrived in the same sector as the node read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MateUse {
    /// The list takes it: expand it now (it is marked taken).
    Expand,
    /// Its own read is in flight: leave it to that read.
    InFlight,
    /// The list would not take it: only offer its exact distance to the result.
    Exact,
}

/// The candidate list of one search and its scratch space.
struct Walk {
    /// Sorted by PQ distance, at most `l` long.
    list: Vec<Cand>,
    l: usize,
    /// No candidate before this position is `New`.
    first_new: usize,
    /// Every expanded node with its exact distance.
    exact: Vec<Neighbour>,
    fresh: Vec<u32>,
    fresh_d: Vec<f32>,
    /// The unexpanded sector mates of the node read, and their PQ distances.
    mates: Vec<u32>,
    mates_d: Vec<f32>,
}

impl Walk {
    /// Marks the nearest `New` candidate taken and returns it.
    fn take_nearest_new(&mut self) -> Option<u32> {
        while self.first_new < self.list.len() {
            let c = &mut self.list[self.first_new];
            self.first_new += 1;
            if c.state == CandState::New {
                c.state = CandState::Taken;
                return Some(c.id);
            }
        }
        None
    }

    /// Decides what to do with sector mate `id` (not expanded yet) at PQ distance `d`; if it is to
    /// be expanded, marks it taken in the list (inserting it if the list would take it).
    fn offer_mate(&mut self, id: u32, d: f32) -> MateUse {
        if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
            if c.state == CandState::New {
                c.state = CandState::Taken;
                return MateUse::Expand;
            }
            return MateUse::InFlight;
        }
        if self.insert(Cand { d, id, state: CandState::Taken }) {
            MateUse::Expand
        } else {
            MateUse::Exact
        }
    }

    /// Merges `fresh` (ids) scored `fresh_d` into the list, keeping the nearest `l`.
    fn merge_fresh(&mut self) {
        for i in 0..self.fresh.len() {
            let (id, d) = (self.fresh[i], self.fresh_d[i]);
            self.insert(Cand { d, id, state: CandState::New });
        }
    }

    /// Inserts `c` in distance order if the list is not full or `c` beats its last entry, keeping
    /// the nearest `l`; returns whether it was inserted.
    fn insert(&mut self, c: Cand) -> bool {
        if self.list.len() == self.l && self.list.last().is_some_and(|w| w.d <= c.d) {
            return false;
        }
        let at = self.list.partition_point(|x| x.d <= c.d);
        self.list.insert(at, c);
        self.list.truncate(self.l);
        self.first_new = self.first_new.min(at);
        true
    }
}

/// The query in the stored space as `f32` — validated, unit length for cosine, a 0 appended
/// for inner product — and whether exact distances may use the native integer kernel (the
/// query has the stored type).
fn prepare_query(h: &Header, query: Row<'_>) -> Result<(Vec<f32>, bool), QueryError> {
    let in_dim =
        if h.user_metric == Metric::InnerProduct { h.dim as usize - 1 } else { h.dim as usize };
    if query.len() != in_dim {
        return Err(QueryError::Dimension { expected: in_dim, got: query.len() });
    }
    let mut qf = query.to_f32();
    if let Some(bad) = qf.iter().find(|x| !x.is_finite()) {
        return Err(QueryError::NonFinite(*bad));
    }
    match h.user_metric {
        // A zero query stays zero: every cosine distance is then 1.
        Metric::Cosine => _ = crate::data::unit_length(&mut qf),
        Metric::InnerProduct => qf.push(0.0),
        Metric::L2 => {}
    }
    let native = matches!(
        (query, h.elem, h.user_metric),
        (Row::U8(_), crate::data::ElemType::U8, Metric::L2)
            | (Row::I8(_), crate::data::ElemType::I8, Metric::L2)
    );
    Ok((qf, native))
}

/// Exact distance from the query to a stored vector (raw bytes of the stored type).
fn exact_distance(k: Isa, h: &Header, native: bool, query: Row<'_>, qf: &[f32], v: &[u8]) -> f32 {
    use crate::data::ElemType;
    let stored = match h.elem {
        ElemType::F32 => Row::F32(bytemuck::cast_slice(v)),
        ElemType::U8 => Row::U8(v),
        ElemType::I8 => Row::I8(bytemuck::cast_slice(v)),
    };
    if native {
        return distance(k, h.metric, query, stored);
    }
    // Inner product is computed directly, not recovered from L2 on the transformed vectors: the
    // query's appended 0 meets the stored vector's extra coordinate, so `q′·x′ = q·x` exactly,
    // while `(‖q′ − x′‖² − ‖q‖² − M²) / 2` loses precision to cancellation.
    let metric =
        if h.user_metric == Metric::InnerProduct { Metric::InnerProduct } else { h.metric };
    match stored {
        Row::F32(x) => distance(k, metric, Row::F32(qf), Row::F32(x)),
        other => {
            let x = other.to_f32();
            distance(k, metric, Row::F32(qf), Row::F32(&x))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PreadIo, SECTOR, SectorIo, UringIo};
    use std::io::Write;

    /// A file of `sectors` sectors, sector `i` filled with byte `i + 1`.
    fn sectors_file(sectors: usize) -> tempfile::NamedTempFile {
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
    fn slots_read_back_the_sectors_asked_for_on_both_backends_and_past_the_end_fails() {
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
