//! Beam search over a disk index: PQ codes in RAM steer, the graph file on disk is read a few
//! sectors per hop, and the full-precision vectors that come with those sectors rerank the result.
//!
//! Each hop takes the `W` (beam width) nearest unexpanded candidates by PQ distance. It reads their
//! sectors in one batch, through io_uring or `pread`, with `O_DIRECT` into 4 KiB-aligned buffers,
//! and verifies each sector's checksum. It computes the exact distance of every node it reads, then
//! scores the unvisited neighbours with one batched PQ call and merges them into the candidate list
//! of size `L`. The search stops when every candidate in the list has been expanded. The top `k` by
//! exact distance are returned, converted back to the user's metric.
//!
//! A [`DiskIndex`] is shared (`Sync`) by any number of threads. Each thread makes its own
//! [`Searcher`], which owns one io_uring ring, the visited set and the I/O buffers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use quiver_simd::{Isa, Kernels, PqTable};

use crate::data::{Metric, Row, distance};
use crate::index::{GRAPH_FILE, IndexError};
use crate::layout::{
    Header, IndexReader, LayoutError, NodeRef, SECTOR, node_from_sectors, parse_node,
};
use crate::pq::{CENTROIDS, CODES_FILE, PIVOTS_FILE, PqCodebook, read_codes};
use crate::visited::VisitedSet;

/// One 4 KiB-aligned page: `Vec<Page>` is a buffer `O_DIRECT` accepts, without `unsafe` allocation.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(4096))]
struct Page([u8; SECTOR]);

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
#[derive(Clone, Copy, Debug)]
pub struct OpenOptionsIndex {
    /// I/O backend.
    pub backend: Backend,
    /// Open the graph file with `O_DIRECT` (bypass the page cache, as a real out-of-core index
    /// must). If the file system refuses it, buffered I/O is used and a warning logged.
    pub direct: bool,
    /// Nodes to keep in RAM, chosen by BFS from the entry point (the most visited). Default 0.
    pub cache_nodes: usize,
}

impl Default for OpenOptionsIndex {
    fn default() -> Self {
        Self { backend: Backend::Auto, direct: true, cache_nodes: 0 }
    }
}

/// Per-query counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueryStats {
    /// Sectors read from disk.
    pub ios: u64,
    /// Beam iterations.
    pub hops: u64,
    /// Nodes served from the RAM cache.
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
    cache: HashMap<u32, Box<[u8]>>,
    backend: Backend,
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
        let mut index = Self { path, header, file, pq, codes, cache: HashMap::new(), backend };
        index.fill_cache(&reader, opts.cache_nodes)?;
        Ok(index)
    }

    /// Loads up to `count` nodes, in BFS order from the entry point, into the RAM cache.
    fn fill_cache(&mut self, reader: &IndexReader, count: usize) -> Result<(), IndexError> {
        let count = count.min(self.header.n as usize);
        if count == 0 {
            return Ok(());
        }
        let mut queue = std::collections::VecDeque::from([self.header.entry]);
        let mut seen = std::collections::HashSet::from([self.header.entry]);
        let mut buf = Vec::new();
        while let Some(id) = queue.pop_front() {
            if self.cache.len() >= count {
                break;
            }
            let node = reader.read_node(id, &mut buf)?;
            for &nb in &node.neighbours {
                if seen.insert(nb) {
                    queue.push_back(nb);
                }
            }
            self.cache.insert(id, node.raw.into());
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

    /// Resident RAM of the index: PQ codes, pivots and the node cache (not the per-thread buffers).
    pub fn ram_bytes(&self) -> usize {
        self.codes.len()
            + 4 * (self.pq.center().len() + self.pq.centroids().len())
            + self.cache.values().map(|v| v.len() + 16).sum::<usize>()
    }

    /// A searcher for the calling thread.
    ///
    /// # Errors
    /// If the io_uring backend was chosen and the ring cannot be created.
    pub fn searcher(&self) -> Result<Searcher<'_>, IndexError> {
        let io: Box<dyn SectorIo> = match self.backend {
            Backend::Pread => Box::new(PreadIo),
            _ => Box::new(
                UringIo::new(64)
                    .map_err(|e| LayoutError::Io { path: self.path.clone(), source: e })?,
            ),
        };
        Ok(Searcher {
            index: self,
            io,
            visited: VisitedSet::new(),
            table: vec![0.0; self.pq.bytes() * CENTROIDS],
            bufs: Vec::new(),
            misses: Vec::new(),
        })
    }
}

/// A batch of sector reads: each request fills its buffer (a whole number of pages) from `offset`.
trait SectorIo: Send {
    /// Reads every request completely, or fails.
    fn read_batch(&mut self, file: &File, reqs: &mut [ReadReq<'_>]) -> io::Result<()>;
}

/// One read: `buf.len()` bytes at byte `offset`.
struct ReadReq<'a> {
    offset: u64,
    buf: &'a mut [u8],
}

/// `pread` backend.
struct PreadIo;

impl SectorIo for PreadIo {
    fn read_batch(&mut self, file: &File, reqs: &mut [ReadReq<'_>]) -> io::Result<()> {
        for r in reqs.iter_mut() {
            file.read_exact_at(r.buf, r.offset)?;
        }
        Ok(())
    }
}

/// io_uring backend: one ring per searcher (per thread).
struct UringIo {
    ring: io_uring::IoUring,
}

impl UringIo {
    fn new(entries: u32) -> io::Result<Self> {
        Ok(Self { ring: io_uring::IoUring::new(entries)? })
    }
}

impl SectorIo for UringIo {
    fn read_batch(&mut self, file: &File, reqs: &mut [ReadReq<'_>]) -> io::Result<()> {
        use io_uring::{opcode, types};
        let fd = types::Fd(file.as_raw_fd());
        let cap = self.ring.params().sq_entries() as usize;
        // Bytes already read per request: a short read is requeued for its remainder.
        let mut done = vec![0usize; reqs.len()];
        let mut pending: std::collections::VecDeque<usize> = (0..reqs.len()).collect();
        let mut in_flight = 0usize;
        let mut first_error: Option<io::Error> = None;
        loop {
            while first_error.is_none() && in_flight < cap {
                let Some(i) = pending.pop_front() else { break };
                let rest = &mut reqs[i].buf[done[i]..];
                let entry = opcode::Read::new(fd, rest.as_mut_ptr(), rest.len() as u32)
                    .offset(reqs[i].offset + done[i] as u64)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points into `reqs[i].buf`, borrowed mutably for the whole of
                // this call, and the loop does not return while `in_flight > 0`: every pushed entry
                // is reaped before the borrow ends, on error paths too (an unrecoverable submit
                // error aborts the process rather than unwinding with reads in flight). The fd stays
                // open because `file` is borrowed for the same span. `in_flight < cap` guarantees
                // queue space, so the push cannot fail.
                let pushed = unsafe { self.ring.submission().push(&entry) };
                assert!(
                    pushed.is_ok(),
                    "io_uring submission queue full despite in_flight < capacity"
                );
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                match e.raw_os_error() {
                    // Retry: the entries stay queued (or in flight) and are reaped below or later.
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => {}
                    _ => {
                        tracing::error!(error = %e, "io_uring submit failed with reads possibly in flight");
                        std::process::abort();
                    }
                }
            }
            for cqe in self.ring.completion() {
                in_flight -= 1;
                let i = cqe.user_data() as usize;
                match cqe.result() {
                    res if res < 0 => {
                        first_error.get_or_insert(io::Error::from_raw_os_error(-res));
                    }
                    0 => {
                        first_error.get_or_insert(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "read past the end of the index file",
                        ));
                    }
                    res => {
                        done[i] += res as usize;
                        if done[i] < reqs[i].buf.len() {
                            pending.push_back(i);
                        }
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A per-thread searcher.
pub struct Searcher<'a> {
    index: &'a DiskIndex,
    io: Box<dyn SectorIo>,
    visited: VisitedSet,
    table: Vec<f32>,
    bufs: Vec<Vec<Page>>,
    misses: Vec<u32>,
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
    /// Sectors' worth of nodes read per hop (`W`).
    pub beam_width: usize,
}

impl Default for SearchParams {
    fn default() -> Self {
        Self { k: 10, list_size: 100, beam_width: 4 }
    }
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The query does not fit the index.
    #[error("query: {0}")]
    Query(String),
    /// Reading the index failed or found corruption.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl Searcher<'_> {
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
        let started = Instant::now();
        let ix = self.index;
        let h = ix.header;
        if params.k == 0 || params.list_size == 0 || params.beam_width == 0 {
            return Err(SearchError::Query(
                "k, list size and beam width must be at least 1".into(),
            ));
        }
        let in_dim =
            if h.user_metric == Metric::InnerProduct { h.dim as usize - 1 } else { h.dim as usize };
        if query.len() != in_dim {
            return Err(SearchError::Query(format!(
                "dimension {}, the index has {in_dim}",
                query.len()
            )));
        }
        let mut qf = query.to_f32();
        if let Some(bad) = qf.iter().find(|x| !x.is_finite()) {
            return Err(SearchError::Query(format!("non-finite value {bad}")));
        }
        let q_norm_sq: f32 = qf.iter().map(|x| x * x).sum();
        match h.user_metric {
            Metric::Cosine if q_norm_sq > 0.0 => {
                let norm = q_norm_sq.sqrt();
                qf.iter_mut().for_each(|x| *x /= norm);
            }
            Metric::InnerProduct => qf.push(0.0),
            _ => {}
        }
        // Exact distances use the native kernel when the query has the stored type, else f32.
        let native = matches!(
            (query, h.elem, h.user_metric),
            (Row::U8(_), crate::data::ElemType::U8, Metric::L2)
                | (Row::I8(_), crate::data::ElemType::I8, Metric::L2)
        );
        let k = Isa::active();
        ix.pq.query_table(&qf, &mut self.table);
        let table = PqTable::new(&self.table, ix.pq.bytes());
        let l = params.list_size.max(params.k);
        let mut stats = QueryStats::default();

        self.visited.clear();

        // Candidate list: (pq distance, id, expanded), sorted, at most `l`.
        let mut list: Vec<(f32, u32, bool)> = Vec::with_capacity(l + 1);
        let mut exact: Vec<Neighbour> = Vec::new();
        let mut pq_out = [0.0f32; 1];
        self.visited.insert(h.entry);
        k.pq_score_ids(table, &ix.codes, &[h.entry], &mut pq_out);
        stats.pq_distances += 1;
        list.push((pq_out[0], h.entry, false));

        let mut beam: Vec<u32> = Vec::with_capacity(params.beam_width);
        let mut fresh: Vec<u32> = Vec::new();
        let mut fresh_d: Vec<f32> = Vec::new();
        loop {
            beam.clear();
            for c in list.iter_mut().filter(|c| !c.2).take(params.beam_width) {
                c.2 = true;
                beam.push(c.1);
            }
            if beam.is_empty() {
                break;
            }
            stats.hops += 1;
            // Read what the cache does not hold, all in one batch.
            let mut misses = std::mem::take(&mut self.misses);
            misses.clear();
            misses.extend(beam.iter().copied().filter(|id| !ix.cache.contains_key(id)));
            let spn = h.sectors_per_node();
            while self.bufs.len() < misses.len() {
                self.bufs.push(vec![Page([0; SECTOR]); spn]);
            }
            {
                let mut reqs: Vec<ReadReq<'_>> = misses
                    .iter()
                    .zip(self.bufs.iter_mut())
                    .map(|(&id, buf)| ReadReq {
                        offset: h.locate(id).sector * SECTOR as u64,
                        buf: bytemuck::cast_slice_mut(&mut buf[..]),
                    })
                    .collect();
                self.io
                    .read_batch(&ix.file, &mut reqs)
                    .map_err(|e| LayoutError::Io { path: ix.path.clone(), source: e })?;
            }
            stats.ios += (misses.len() * spn) as u64;
            stats.cache_hits += (beam.len() - misses.len()) as u64;
            for &id in &beam {
                let node: NodeRef<'_> = match ix.cache.get(&id) {
                    Some(bytes) => parse_node(&h, bytes)
                        .map_err(|reason| LayoutError::Corrupt { path: ix.path.clone(), reason })?,
                    None => {
                        let slot =
                            misses.iter().position(|&m| m == id).expect("every miss was read");
                        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut self.bufs[slot][..]);
                        node_from_sectors(&h, &ix.path, id, h.locate(id), buf)?
                    }
                };
                let d = exact_distance(k, &h, native, query, &qf, node.vector);
                stats.exact_distances += 1;
                exact.push(Neighbour { id, distance: d });
                fresh.clear();
                fresh.extend(node.neighbours.iter().copied().filter(|&nb| self.visited.insert(nb)));
                fresh_d.resize(fresh.len(), 0.0);
                k.pq_score_ids(table, &ix.codes, &fresh, &mut fresh_d);
                stats.pq_distances += fresh.len() as u64;
                for (&nb, &d) in fresh.iter().zip(&fresh_d) {
                    if list.len() == l && list.last().is_some_and(|w| w.0 <= d) {
                        continue;
                    }
                    let at = list.partition_point(|c| c.0 <= d);
                    list.insert(at, (d, nb, false));
                    list.truncate(l);
                }
            }
            self.misses = misses;
        }
        exact.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        exact.truncate(params.k);
        stats.latency_us = started.elapsed().as_secs_f64() * 1e6;
        Ok((exact, stats))
    }
}

/// Exact distance from the query to a stored vector (raw bytes of the stored type).
fn exact_distance<K: Kernels>(
    k: K,
    h: &Header,
    native: bool,
    query: Row<'_>,
    qf: &[f32],
    v: &[u8],
) -> f32 {
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
