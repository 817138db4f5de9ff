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

//!
//! Rooms: this file holds the index (`DiskIndex`), the per-thread `Searcher` and its
//! `SearchState`, and the search loop; `sector_io` the sector-reading backends (io_uring with
//! registered buffers, `pread`); `walk` the candidate list and the bookkeeping of one search.

mod among;
mod sector_io;
mod walk;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use quiver_simd::{Isa, Kernels, PqTable};

use crate::cache::SectorCache;
use crate::codes::Codes;
use crate::data::{Metric, Row, distance};
use crate::index::{GRAPH_FILE, IndexError};
use crate::layout::{
    Header, IndexReader, LayoutError, NodeRef, SECTOR, node_from_verified, node_label, parse_node,
    verify_sectors,
};
use crate::pq::{CENTROIDS, CODES_FILE, PIVOTS_FILE, PqCodebook};
use crate::visited::VisitedSet;
use sector_io::{PreadIo, SectorIo, UringIo};
use walk::{Cand, CandState, Ctx, Report, Walk};

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
    /// A codebook to share: when the index's own pivots are the same (an index built with
    /// [`crate::index::build_index_with`] and this codebook), the index holds this one instead
    /// of its own copy, so many indexes of one collection hold their pivots once (256 × dim × 4
    /// bytes each: 128 KiB at 128-d). Default none.
    pub pq: Option<Arc<PqCodebook>>,
    /// Codes to share: an index grown from another without dropping rows repeats its codes at
    /// the same positions, and holds the pieces of these that its file repeats (checked byte
    /// for byte as the file is read) instead of a copy ([`crate::codes`]). Default none.
    pub share_codes: Option<Codes>,
}

impl Default for OpenOptionsIndex {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            direct: true,
            cache_nodes: 0,
            start_candidates: None,
            sector_cache: None,
            pq: None,
            share_codes: None,
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
    fn choose(header: &Header, codes: &Codes, wanted: Option<usize>) -> Starts {
        let n = header.n as usize;
        let k = wanted
            .unwrap_or_else(|| (n as f64).sqrt().ceil() as usize)
            .clamp(1, MAX_START_CANDIDATES)
            .min(n);
        let mut ids = vec![header.entry];
        ids.extend(
            (0..k.saturating_sub(1)).map(|i| (i * n / k) as u32).filter(|&id| id != header.entry),
        );
        let codes = ids.iter().flat_map(|&id| codes.code(id)).copied().collect();
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
    /// Shared with other indexes of the same codebook ([`OpenOptionsIndex::pq`]).
    pq: Arc<PqCodebook>,
    codes: Codes,
    /// Where searches may start.
    starts: Starts,
    /// Cached sectors by first sector number: the node's sectors read at open, as
    /// [`verify_sectors`] left them.
    cache: HashMap<u64, Box<[u8]>>,
    /// The shared sector cache, with this index's key in it.
    shared: Option<(Arc<SectorCache>, u64)>,
    backend: Backend,
    /// Each label's position, made by one scan of the graph file the first time a search
    /// ranks given labels ([`Searcher::search_among`]); 4 bytes a node from then on.
    positions: std::sync::OnceLock<Vec<u32>>,
}

/// A node's verified sectors from a cache: the index's own (filled at open) or the shared one.
enum Cached<'a> {
    Own(&'a [u8]),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Cached<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Cached::Own(bytes) => bytes,
            Cached::Shared(bytes) => bytes,
        }
    }
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
        let own = PqCodebook::read_from(&dir.join(PIVOTS_FILE))?;
        let pq = match opts.pq {
            Some(shared) if *shared == own => shared,
            _ => Arc::new(own),
        };
        let (m, codes) = Codes::read_sharing(&dir.join(CODES_FILE), opts.share_codes.as_ref())?;
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
        if codes.len() as u64 != header.n {
            return Err(IndexError::Mismatch(format!(
                "{}: {} PQ codes for {} graph nodes",
                dir.display(),
                codes.len(),
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
        let starts = Starts::choose(&header, &codes, opts.start_candidates);
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
        while let Some(id) = queue.pop_front() {
            if held >= count {
                break;
            }
            let loc = h.locate(id);
            // Each sector is read once and kept verified (as the shared cache keeps them).
            let verified = match self.cache.entry(loc.sector) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut raw = Vec::new();
                    reader.read_sectors(loc, &mut raw)?;
                    verify_sectors(reader.path(), loc, &mut raw)?;
                    held += h.sector_mates(id).len();
                    e.insert(raw.into())
                }
            };
            let node = node_from_verified(&h, reader.path(), id, loc, verified)?;
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

    /// The codebook as held: shared with the other indexes opened with it
    /// ([`OpenOptionsIndex::pq`]), or this index's own.
    pub fn shared_pq(&self) -> &Arc<PqCodebook> {
        &self.pq
    }

    /// Holds `pq` instead of its own codebook if the two are the same (see
    /// [`OpenOptionsIndex::pq`]); returns whether it does now.
    pub fn share_pq(&mut self, pq: &Arc<PqCodebook>) -> bool {
        if Arc::ptr_eq(&self.pq, pq) || *self.pq == **pq {
            self.pq = Arc::clone(pq);
            return true;
        }
        false
    }

    /// Bytes of the codebook's pivots (counted once however many indexes share them).
    pub fn pq_ram_bytes(&self) -> usize {
        4 * (self.pq.center().len() + self.pq.centroids().len())
    }

    /// Every node's PQ code, `pq().bytes()` each, in position order.
    pub fn codes(&self) -> &Codes {
        &self.codes
    }

    /// The graph file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resident RAM of the index: PQ codes, pivots ([`DiskIndex::pq_ram_bytes`], whether
    /// shared or not), the start candidates and the BFS node cache (not the per-thread buffers,
    /// nor a shared [`SectorCache`], which counts its own bytes).
    pub fn ram_bytes(&self) -> usize {
        self.codes.bytes()
            + self.pq_ram_bytes()
            + 4 * self.starts.ids.len()
            + self.starts.codes.len()
            + self.cache.values().map(|v| v.len() + 16).sum::<usize>()
            + self.positions.get().map_or(0, |p| 4 * p.capacity())
    }

    /// The verified node sectors starting at `sector` if a cache holds them: the BFS cache
    /// first, then the shared cache. Not copied.
    fn cached_sector(&self, sector: u64) -> Option<Cached<'_>> {
        if let Some(bytes) = self.cache.get(&sector) {
            Some(Cached::Own(bytes))
        } else if let Some((cache, key)) = &self.shared {
            cache.get(*key, sector).map(Cached::Shared)
        } else {
            None
        }
    }

    /// Reads the index's node sectors front to back into the shared sector cache, each
    /// verified first, until every one is in or the cache had to evict; returns the node reads
    /// admitted. What a server does after a restart to answer from memory at once rather than
    /// after its searches have met every node (as PostgreSQL's `pg_prewarm`). Without a shared
    /// cache ([`OpenOptionsIndex::sector_cache`]), nothing.
    ///
    /// # Errors
    /// [`LayoutError`] if the file cannot be read or a sector fails its checksum.
    pub fn warm_shared_cache(&self) -> Result<usize, LayoutError> {
        let Some((cache, key)) = &self.shared else { return Ok(0) };
        let h = self.header;
        let reader = IndexReader::open(&self.path)?;
        let mut raw = Vec::new();
        let mut admitted = 0usize;
        let mut id = 0u32;
        let evicted = cache.evictions();
        while u64::from(id) < h.n && cache.evictions() == evicted {
            let loc = h.locate(id);
            reader.read_sectors(loc, &mut raw)?;
            verify_sectors(&self.path, loc, &mut raw)?;
            node_from_verified(&h, &self.path, id, loc, &raw)?;
            cache.insert(*key, loc.sector, &raw);
            admitted += 1;
            id = h.sector_mates(id).end;
        }
        Ok(admitted)
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
    table: Vec<f32>,
    /// The codebook and the query `table` was made for: a query searches every index of a
    /// collection, and indexes that share a codebook share the table too.
    table_for: Option<(Arc<PqCodebook>, Vec<f32>)>,
    /// `table` quantised to bytes, once a ranking asked for it.
    byte_table: among::ByteTable,
    /// PQ distances of the start candidates.
    start_distances: Vec<f32>,
    /// Scratch of [`Searcher::search_among`].
    among: among::AmongScratch,
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
            table: Vec::new(),
            table_for: None,
            byte_table: among::ByteTable::default(),
            start_distances: Vec::new(),
            among: among::AmongScratch::default(),
        })
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
    /// A position given to read is past the index, or out of ascending order.
    #[error("position {position} is past the index or out of order (it has {n} nodes)")]
    Position {
        /// The position given.
        position: u32,
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
    /// Makes the state's PQ table for the query `qf` through this index's codebook, unless it
    /// holds that table already (the same query searched another index of the same codebook
    /// just before). A new table drops the byte table made from the old one.
    fn fill_table(&mut self, qf: &[f32]) {
        let pq = &self.index.pq;
        let same_query = |q: &[f32]| {
            q.len() == qf.len() && q.iter().zip(qf).all(|(a, b)| a.to_bits() == b.to_bits())
        };
        if let Some((made_with, query)) = &self.state.table_for
            && Arc::ptr_eq(made_with, pq)
            && same_query(query)
        {
            return;
        }
        // Sized here, not when the state changes hands: a state passed through an index of
        // another code size without searching keeps its table whole for the next.
        self.state.table.resize(pq.bytes() * CENTROIDS, 0.0);
        pq.query_table(qf, &mut self.state.table);
        let mut query = self.state.table_for.take().map(|(_, q)| q).unwrap_or_default();
        query.clear();
        query.extend_from_slice(qf);
        self.state.table_for = Some((Arc::clone(pq), query));
        self.state.byte_table.forget();
    }

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
        self.fill_table(&qf);
        let table = PqTable::new(&self.state.table, ix.pq.bytes());
        let l = params.list_size.max(params.k);
        let mut stats = QueryStats::default();

        self.state.visited.clear_for(h.n as usize);
        let width = params.beam_width;
        let spn = h.sectors_per_node();
        self.state
            .io
            .prepare(width, spn)
            .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;

        self.state.expanded.clear_for(h.n as usize);
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
                if let Some(verified) = ix.cached_sector(loc.sector) {
                    stats.cache_hits += 1;
                    let (visited, expanded) = (&mut self.state.visited, &mut self.state.expanded);
                    ctx.process(&mut walk, visited, expanded, &mut stats, id, &verified)?;
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
            verify_sectors(&ix.path, h.locate(id), buf)?;
            ctx.process(
                &mut walk,
                &mut self.state.visited,
                &mut self.state.expanded,
                &mut stats,
                id,
                buf,
            )?;
            if let Some((cache, key)) = &ix.shared {
                // Verified, and `process` found the nodes well formed.
                cache.insert(*key, h.locate(id).sector, buf);
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
