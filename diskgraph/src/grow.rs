//! Growing an index without rebuilding it: rows dropped, rows added, one sequential pass over
//! the old graph file (FreshDiskANN's StreamingMerge, Singh et al. 2021, done out of core).
//!
//! The result is a new index directory, in the ordinary format; the old one is only read, so a
//! crash at any point leaves it intact (the caller commits the new one, or removes it).
//!
//! 1. **Scan.** One pass over the old graph file, in position order: each node's label says
//!    whether it is kept ([`Growth::relabel`]) and, if so, its new position (kept nodes keep
//!    their relative order). The neighbour lists of dropped nodes are held until the write.
//! 2. **Link the added rows, a chunk at a time** ([`Growth::chunk_rows`]). A chunk's rows are
//!    read ([`AddedRows`]), and an in-memory Vamana graph over them gives each its neighbours
//!    within the chunk. Each is searched for in the old index (the PQ-steered disk search with a
//!    list of `max(R, L / 2)`, dropped nodes walked through but never returned), and its
//!    candidates (the search's nearest kept nodes, with exact distances, and its graph
//!    neighbours in the chunk) are pruned with RobustPrune to at most `R` out-neighbours. A
//!    chunk's rows are then finished at once: each list gains the chunk's edges into it
//!    (re-pruned past `R`), and the nodes are spilled, in sector-packed order, to a file beside
//!    the new index. The chunk's edges into old nodes are sorted by target and spilled as one
//!    run. Only then is the next chunk read: rows of two chunks meet through the old graph,
//!    never directly, so one chunk (the default) is best when memory allows.
//! 3. **Patch and write.** A second pass over the old file writes the new one. A kept node's
//!    list loses its dropped neighbours, which are replaced by *their* kept neighbours (delete
//!    consolidation), and gains its reverse edges, merged from the runs; a list that grew past
//!    `R` is re-pruned with the node's own vector against its candidates' stand-ins (PQ
//!    reconstructions, or the rows themselves while their chunk is still held), as the
//!    partitioned build's merge does. The spilled added nodes follow. Unchanged lists are
//!    copied as they are.
//!
//! The PQ codebook is the old index's: added rows are encoded with it, kept codes are copied
//! into the new codes file as it is written (never gathered in RAM). Memory
//! ([`GrowShape::peak_bytes`]): 4 bytes per old node (its new position), the dropped nodes' lists,
//! `m + 4` bytes per added row (its code and position), and one chunk: its rows, their graph,
//! their lists and edges. Inner-product indexes are not grown: their stored vectors are
//! scaled by the largest norm seen at build time, which an added row may exceed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quiver_simd::Isa;
use rayon::prelude::*;

use crate::data::{DataError, ElemType, Metric, Row, VectorSet, distance};
use crate::index::{BuildParams, GRAPH_FILE, IndexError, store_piece};
use crate::layout::{Header, IndexReader, IndexWriter, SECTOR};
use crate::pack;
use crate::pq::{CODES_FILE, CodesWriter, PIVOTS_FILE, PqCodebook};
use crate::search::{DiskIndex, SearchParams};
use crate::source::VectorFile;
use crate::vamana::{self, Candidate, robust_prune};

/// Marks an old node that is dropped.
const DROPPED: u32 = u32::MAX;
/// Reads in flight while an added row is searched for (8 measured no faster: the link is
/// CPU-bound, not latency-bound).
const BEAM_WIDTH: usize = 4;
/// The spilled added nodes, beside the new index while it is written.
const NODES_SPILL: &str = "grow-nodes.tmp";
/// The spilled reverse edges into old nodes, one sorted run per chunk.
const EDGES_SPILL: &str = "grow-edges.tmp";
/// Most edges into old nodes sorted and spilled as one run (2 MiB of them).
const RUN_EDGES: usize = 1 << 18;
/// Bytes the runs' cursors read at a time in the write pass, all together ([`run_buffer`]).
const RUN_BUFFERS: u64 = 4 << 20;
/// Bytes the spilled nodes are read back at a time.
const NODES_BUFFER: usize = 64 << 10;

/// Bytes each of `runs` cursors reads at a time: a share of [`RUN_BUFFERS`], 4 to 64 KiB.
fn run_buffer(runs: u64) -> u64 {
    (RUN_BUFFERS / runs.max(1)).clamp(4 << 10, 64 << 10)
}
/// The fewest rows a chunk may have ([`GrowShape::chunk_rows`]): fewer would leave each chunk's own
/// graph too sparse to matter.
pub const MIN_CHUNK_ROWS: u64 = 256;

/// Where a growth's added rows come from.
#[derive(Debug)]
pub enum AddedRows {
    /// Held in memory (moved into the growth: one chunk takes them without a copy).
    Memory(VectorSet),
    /// A vector file, read a chunk at a time.
    File(VectorFile),
}

impl AddedRows {
    /// Rows to add.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            AddedRows::Memory(set) => set.len(),
            AddedRows::File(file) => file.len(),
        }
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn dim(&self) -> usize {
        match self {
            AddedRows::Memory(set) => set.dim(),
            AddedRows::File(file) => file.dim(),
        }
    }

    fn elem(&self) -> ElemType {
        match self {
            AddedRows::Memory(set) => set.elem(),
            AddedRows::File(file) => file.elem(),
        }
    }

    /// Rows `start..start + count`: an in-memory set asked for whole is moved out.
    fn take(&mut self, start: usize, count: usize) -> Result<VectorSet, DataError> {
        match self {
            AddedRows::Memory(set) if start == 0 && count == set.len() => {
                let empty = VectorSet::zeroed(set.elem(), set.dim(), 0)?;
                Ok(std::mem::replace(set, empty))
            }
            AddedRows::Memory(set) => {
                let mut out = VectorSet::zeroed(set.elem(), set.dim(), count)?;
                for i in 0..count {
                    out.row_bytes_mut(i).copy_from_slice(set.row_bytes(start + i));
                }
                Ok(out)
            }
            AddedRows::File(file) => file.read_range(start, count),
        }
    }
}

/// What to make of an old index.
pub struct Growth<'a> {
    /// The index grown, open.
    pub base: &'a DiskIndex,
    /// The new label of an old label, or `None` for a row dropped.
    pub relabel: &'a (dyn Fn(u32) -> Option<u32> + Sync),
    /// The rows added, in the input space (as a build from them would take them).
    pub added: AddedRows,
    /// The label of each added row.
    pub added_labels: &'a [u32],
    /// `R`, `L`, `α` and the rest; the PQ parameters are unused (the old codebook is kept).
    pub params: &'a BuildParams,
    /// Added rows linked at a time (0: all at once). [`GrowShape::chunk_rows`] picks the most a
    /// RAM allowance holds.
    pub chunk_rows: usize,
}

impl std::fmt::Debug for Growth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Growth")
            .field("base", &self.base.path())
            .field("added", &self.added)
            .field("chunk_rows", &self.chunk_rows)
            .finish_non_exhaustive()
    }
}

/// What a growth did.
#[derive(Clone, Debug, Default)]
pub struct GrowSummary {
    /// Old nodes kept.
    pub kept: usize,
    /// Old nodes dropped.
    pub dropped: usize,
    /// Rows added.
    pub added: usize,
    /// Chunks the added rows were linked in.
    pub chunks: usize,
    /// Kept nodes whose lists changed (lost a dropped neighbour or gained an added one).
    pub patched: usize,
    /// Mean out-degree of the new graph.
    pub mean_degree: f64,
    /// Seconds scanning the old file.
    pub scan_seconds: f64,
    /// Seconds building the added rows' graphs among themselves (chunk by chunk).
    pub graph_seconds: f64,
    /// Seconds searching the old index for the added rows, pruning and spilling their lists.
    pub link_seconds: f64,
    /// Seconds writing the new files.
    pub write_seconds: f64,
}

/// A growth's shape, all its memory plan needs: an old index of `old` nodes with `dropped` of
/// them dropped, `added` rows of `row_bytes` each added, codes of `m` bytes, degree `r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowShape {
    /// Nodes of the old index.
    pub old: u64,
    /// Of them, dropped.
    pub dropped: u64,
    /// Rows added.
    pub added: u64,
    /// Bytes of a stored row.
    pub row_bytes: u64,
    /// Bytes of a PQ code.
    pub m: u64,
    /// The graph's degree `R`.
    pub r: u64,
}

impl GrowShape {
    /// The shape of growing `base` by `added` rows with `dropped` of its rows dropped.
    #[must_use]
    pub fn of(base: &DiskIndex, dropped: u64, added: u64) -> GrowShape {
        let h = base.header();
        let row_bytes = u64::from(h.dim) * h.elem.size() as u64;
        let (m, r) = (base.pq().bytes() as u64, u64::from(h.max_degree));
        GrowShape { old: h.n, dropped, added, row_bytes, m, r }
    }

    /// Bytes [`grow_index`] holds at its peak linking `chunk` added rows at a time (0: all at
    /// once); the old index itself, open, is the caller's. It is the larger of the growth's
    /// working set and the grown index's codes that its opening loads beside the old index's,
    /// opened sharing them ([`GrowShape::grown_codes_bytes`]).
    ///
    /// The working set: each old node's new position (4 bytes), the dropped nodes' lists, each
    /// added row's code and new position, and one chunk — its rows and codes, with their
    /// in-memory graph beside their packed out-lists while they are linked, then the lists
    /// beside the chunk's edges (those into old nodes a run at a time) while its nodes are
    /// finished and spilled; in the write pass, the last chunk's rows (kept as exact stand-ins),
    /// a batch of old nodes, the file buffers and a buffer per run of spilled edges. (200k SIFT
    /// bytes grown by 30k at once: 24.4 MiB estimated, 36.8 MiB measured for the whole `quiver
    /// grow` process, the old index's 6.2 MiB and the binary's own included.)
    #[must_use]
    pub fn peak_bytes(&self, chunk: u64) -> u64 {
        let GrowShape { old, dropped, added, row_bytes, m, r } = *self;
        let c = if chunk == 0 { added } else { chunk.min(added) };
        let run_edges = (c * r).min(RUN_EDGES as u64);
        let runs =
            if c == 0 { 0 } else { added.div_ceil(c) + (added * r).div_ceil(RUN_EDGES as u64) };
        let positions = 4 * old;
        let dropped_lists = dropped * (4 * r + 48);
        let per_added = added * (m + 4);
        let slack = crate::vamana::VamanaParams::default().slack;
        let graph_build = crate::plan::graph_build_bytes(c, r as usize, slack);
        let rows = c * (row_bytes + m);
        let packed = c * (4 * r + 8);
        let link = rows + graph_build + packed + LINK_SCRATCH;
        // Finishing: the lists, the chunk's edges among itself (grouped) and a run of its edges
        // into old nodes (8 bytes each, sorted), and a batch of finished records.
        let finish = rows + packed + c * (4 * r + 4) + run_edges * 8 + LINK_SCRATCH;
        let batch = patch_batch(row_bytes, r) as u64 * (row_bytes + 12 * r + 64);
        let buffers = (SECTOR * crate::layout::SCAN_SECTORS + crate::layout::WRITE_BUFFER) as u64;
        let write = c * row_bytes + batch + buffers + NODES_BUFFER as u64 + runs * run_buffer(runs);
        let working = positions + dropped_lists + per_added + link.max(finish).max(write);
        working.max(self.grown_codes_bytes())
    }

    /// Bytes of codes the grown index loads when it is opened sharing its base's codes
    /// ([`crate::search::OpenOptionsIndex::share_codes`]) while the base is open: with no row
    /// dropped, every old code stays at its position and is shared, so the added rows' codes
    /// and at most one merge of two pieces ([`crate::codes::MAX_PIECES`]: the two adjacent
    /// pieces smallest together hold at most an eighth of the codes); with rows dropped, the
    /// positions after the first move, and all of them, conservatively.
    #[must_use]
    pub fn grown_codes_bytes(&self) -> u64 {
        let total = (self.old - self.dropped.min(self.old) + self.added) * self.m;
        if self.dropped == 0 {
            (self.added * self.m + total.div_ceil(crate::codes::MAX_PIECES as u64 / 2)).min(total)
        } else {
            total
        }
    }

    /// The most added rows a chunk may hold for the growth to peak ([`GrowShape::peak_bytes`])
    /// within `allowance`: all of them if they fit at once, else the largest chunk that fits,
    /// or `None` when not even [`MIN_CHUNK_ROWS`] does.
    #[must_use]
    pub fn chunk_rows(&self, allowance: u64) -> Option<u64> {
        let fits = |c: u64| self.peak_bytes(c) <= allowance;
        let added = self.added;
        if added == 0 || fits(added) {
            return fits(added).then_some(added);
        }
        let (mut lo, mut hi) = (MIN_CHUNK_ROWS, added);
        if !fits(lo) {
            return None;
        }
        // The peak grows with the chunk: the largest chunk that fits lies in lo..hi.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}

/// Transient bytes of the link beyond the packed lists: one sub-chunk's lists as they are
/// made, and the searchers' lists and buffers.
const LINK_SCRATCH: u64 = 1 << 20;
/// Added rows linked in parallel at a time: their fresh lists are packed after each.
const LINK_CHUNK: usize = 1024;

/// Lists of joint ids, one per added row of a chunk, packed one after another.
#[derive(Default)]
struct Lists {
    /// `offsets[i]..offsets[i + 1]` is where row `i`'s list lies in `ids`.
    offsets: Vec<u64>,
    ids: Vec<u32>,
}

impl Lists {
    fn with_capacity(rows: usize, ids: usize) -> Lists {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Lists { offsets, ids: Vec::with_capacity(ids) }
    }

    fn push(&mut self, list: &[u32]) {
        self.ids.extend_from_slice(list);
        self.offsets.push(self.ids.len() as u64);
    }

    fn get(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// The edges among a chunk's rows reversed, grouped by target: the sources (joint ids) of the
/// edges into chunk row `t` are `sources[offsets[t]..offsets[t + 1]]`.
#[derive(Default)]
struct Reverse {
    offsets: Vec<u32>,
    sources: Vec<u32>,
}

impl Reverse {
    /// By counting sort over the targets of `out` that are rows of the chunk, whose joint ids
    /// are `first..first + out.len()`.
    fn within(out: &Lists, first: u32) -> Reverse {
        let n = out.len();
        let local = |u: u32| u.checked_sub(first).map(|t| t as usize).filter(|&t| t < n);
        let mut offsets = vec![0u32; n + 1];
        for t in out.ids.iter().filter_map(|&u| local(u)) {
            offsets[t + 1] += 1;
        }
        for t in 0..n {
            offsets[t + 1] += offsets[t];
        }
        let mut next = offsets.clone();
        let mut sources = vec![0u32; offsets[n] as usize];
        for i in 0..n {
            for t in out.get(i).iter().filter_map(|&u| local(u)) {
                sources[next[t] as usize] = first + i as u32;
                next[t] += 1;
            }
        }
        Reverse { offsets, sources }
    }

    /// The sources of the edges into chunk row `t`.
    fn sources(&self, t: usize) -> &[u32] {
        &self.sources[self.offsets[t] as usize..self.offsets[t + 1] as usize]
    }
}

/// Writes into `dir` (created if missing) the index of `growth.base` with its dropped rows
/// removed and the added rows inserted, relabelled (rows held in memory are moved, not
/// copied). `progress(phase, done, total)` reports each phase.
///
/// # Errors
/// [`IndexError::CannotGrow`] for an inner-product index, added rows of another dimension or
/// element type, or nothing left; [`IndexError`] for a damaged old index, unreadable added
/// rows or I/O failure.
pub fn grow_index(
    mut growth: Growth<'_>,
    dir: &Path,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<GrowSummary, IndexError> {
    let base = growth.base;
    let h = *base.header();
    check(&growth, &h)?;
    let b = growth.added.len();
    let mut summary = GrowSummary { added: b, ..GrowSummary::default() };

    let t = Instant::now();
    let reader = IndexReader::open(base.path())?;
    let old = scan(&reader, &growth, progress)?;
    summary.kept = old.kept as usize;
    summary.dropped = h.n as usize - summary.kept;
    summary.scan_seconds = t.elapsed().as_secs_f64();
    if old.kept as usize + b == 0 {
        return Err(IndexError::CannotGrow("no rows would be left"));
    }

    let t = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| IndexError::Io { path: dir.into(), source: e })?;
    let mut spill = Spill::create(dir)?;
    let mut linked = Linked::new(b, h.n as u32);
    let chunk = if growth.chunk_rows == 0 { b.max(1) } else { growth.chunk_rows };
    for first in (0..b).step_by(chunk) {
        let count = chunk.min(b - first);
        let rows = growth.added.take(first, count)?;
        let rows = store_piece(rows, h.user_metric, 0.0)?;
        let job = ChunkJob { growth: &growth, h: &h, old: &old, first };
        job.link(rows, &mut linked, &mut spill, progress)?;
        summary.chunks += 1;
    }
    summary.graph_seconds = linked.graph_seconds;
    summary.link_seconds = t.elapsed().as_secs_f64() - linked.graph_seconds;
    spill.finish()?;

    let t = Instant::now();
    let last = linked.last.take();
    let pruner = Pruner::new(&growth, &h, last.as_ref().map(|(f, rows)| (*f, rows)))
        .with_added_codes(&linked.codes, &linked.position, old.kept);
    let job = Patch { growth: &growth, h, old: &old, linked: &linked, pruner: &pruner };
    let (patched, degrees) = job.write(&reader, &spill, dir, progress)?;
    summary.patched = patched;
    summary.mean_degree = degrees as f64 / (old.kept as usize + b) as f64;
    job.write_codes(dir)?;
    spill.remove();
    base.pq().write_to(&dir.join(PIVOTS_FILE))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IndexError::Io { path: dir.into(), source: e })?;
    summary.write_seconds = t.elapsed().as_secs_f64();
    Ok(summary)
}

fn check(growth: &Growth<'_>, h: &Header) -> Result<(), IndexError> {
    if h.user_metric == Metric::InnerProduct {
        return Err(IndexError::CannotGrow("inner-product indexes are rebuilt, not grown"));
    }
    if growth.added.len() != growth.added_labels.len() {
        return Err(IndexError::CannotGrow("one label is needed per added row"));
    }
    if !growth.added.is_empty() {
        // Cosine indexes store unit f32 rows of f32 input; the others store the input as given.
        if growth.added.dim() != h.dim as usize || growth.added.elem() != h.elem {
            return Err(IndexError::CannotGrow(
                "the added rows' dimension or element type differs from the index's",
            ));
        }
    }
    if h.n > u64::from(u32::MAX - 1) || growth.added.len() as u64 + h.n > u64::from(u32::MAX - 1) {
        return Err(DataError::Invalid("too many rows for 32-bit positions".into()).into());
    }
    Ok(())
}

/// What the first pass learned of the old index.
struct Old {
    /// The new position of each old position, or [`DROPPED`].
    position: Vec<u32>,
    /// Old nodes kept.
    kept: u32,
    /// The neighbour lists (old positions) of dropped nodes.
    dropped_lists: HashMap<u32, Vec<u32>>,
}

impl Old {
    fn is_kept(&self, p: u32) -> bool {
        self.position[p as usize] != DROPPED
    }
}

/// Step 1: which old nodes are kept, where they go, and the dropped nodes' lists.
fn scan(
    reader: &IndexReader,
    growth: &Growth<'_>,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<Old, IndexError> {
    let n = reader.header().n as usize;
    let mut old = Old { position: vec![DROPPED; n], kept: 0, dropped_lists: HashMap::new() };
    reader.for_each_node::<IndexError>(|p, node| {
        if (growth.relabel)(node.label).is_some() {
            old.position[p as usize] = old.kept;
            old.kept += 1;
        } else {
            old.dropped_lists.insert(p, node.neighbours);
        }
        if (p as usize).is_multiple_of(65_536) {
            progress("scan", p as usize, n);
        }
        Ok(())
    })?;
    progress("scan", n, n);
    Ok(old)
}

/// The spill files beside the new index: the added nodes, finished, in position order; and
/// the reverse edges into old nodes, one run sorted by target per chunk. Removed when done
/// or dropped.
struct Spill {
    nodes_path: PathBuf,
    edges_path: PathBuf,
    nodes: Option<BufWriter<File>>,
    edges: Option<BufWriter<File>>,
    /// Each run's first byte in the edges file and its edges.
    runs: Vec<(u64, u64)>,
    edges_written: u64,
}

impl Spill {
    fn create(dir: &Path) -> Result<Spill, IndexError> {
        let open = |path: &Path| {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map(BufWriter::new)
                .map_err(|e| IndexError::Io { path: path.into(), source: e })
        };
        let (nodes_path, edges_path) = (dir.join(NODES_SPILL), dir.join(EDGES_SPILL));
        let mut spill = Spill {
            nodes: None,
            edges: None,
            runs: Vec::new(),
            edges_written: 0,
            nodes_path,
            edges_path,
        };
        spill.nodes = Some(open(&spill.nodes_path)?);
        spill.edges = Some(open(&spill.edges_path)?);
        Ok(spill)
    }

    fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
        move |e| IndexError::Io { path: path.into(), source: e }
    }

    /// Appends one finished added node: label, count, `r` ids (the list, then zeros), vector.
    fn push_node(
        &mut self,
        label: u32,
        list: &[u32],
        r: usize,
        vector: &[u8],
    ) -> Result<(), IndexError> {
        assert!(list.len() <= r, "a finished list within R");
        let w = self.nodes.as_mut().expect("spilling");
        let mut record = Vec::with_capacity(8 + 4 * r + vector.len());
        record.extend_from_slice(&label.to_le_bytes());
        record.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for k in 0..r {
            record.extend_from_slice(&list.get(k).copied().unwrap_or(0).to_le_bytes());
        }
        record.extend_from_slice(vector);
        w.write_all(&record).map_err(Self::io_error(&self.nodes_path))
    }

    /// Appends a run of edges (`target << 32 | source`, sorted).
    fn push_run(&mut self, edges: &[u64]) -> Result<(), IndexError> {
        debug_assert!(edges.windows(2).all(|w| w[0] <= w[1]), "a run is sorted");
        let w = self.edges.as_mut().expect("spilling");
        let bytes: Vec<u8> = edges.iter().flat_map(|e| e.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(Self::io_error(&self.edges_path))?;
        self.runs.push((self.edges_written * 8, edges.len() as u64));
        self.edges_written += edges.len() as u64;
        Ok(())
    }

    /// Flushes both files for reading (they are scratch: never synced).
    fn finish(&mut self) -> Result<(), IndexError> {
        for (w, path) in [(&mut self.nodes, &self.nodes_path), (&mut self.edges, &self.edges_path)]
        {
            w.as_mut().expect("spilling").flush().map_err(Self::io_error(path))?;
        }
        Ok(())
    }

    /// The finished added nodes, from the first.
    fn nodes_reader(&self) -> Result<BufReader<File>, IndexError> {
        File::open(&self.nodes_path)
            .map(|f| BufReader::with_capacity(NODES_BUFFER, f))
            .map_err(Self::io_error(&self.nodes_path))
    }

    /// A cursor per run.
    fn cursors(&self) -> Result<Vec<RunCursor>, IndexError> {
        let file = File::open(&self.edges_path).map_err(Self::io_error(&self.edges_path))?;
        let file = std::sync::Arc::new(file);
        let edges_per_read = (run_buffer(self.runs.len() as u64) / 8) as usize;
        Ok(self
            .runs
            .iter()
            .map(|&(offset, edges)| RunCursor {
                file: file.clone(),
                path: self.edges_path.clone(),
                offset,
                left: edges,
                edges_per_read,
                buf: Vec::new(),
                at: 0,
            })
            .collect())
    }

    fn remove(&mut self) {
        drop(self.nodes.take());
        drop(self.edges.take());
        for path in [&self.nodes_path, &self.edges_path] {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Reads one spilled run of edges in order.
struct RunCursor {
    file: std::sync::Arc<File>,
    path: PathBuf,
    /// The next unread byte of the run.
    offset: u64,
    /// Edges of the run not yet read into `buf`.
    left: u64,
    /// Edges read at a time.
    edges_per_read: usize,
    buf: Vec<u64>,
    at: usize,
}

impl RunCursor {
    /// The next edge, without taking it.
    fn peek(&mut self) -> Result<Option<u64>, IndexError> {
        if self.at == self.buf.len() {
            if self.left == 0 {
                return Ok(None);
            }
            let edges = self.left.min(self.edges_per_read as u64) as usize;
            let mut bytes = vec![0u8; edges * 8];
            self.file
                .read_exact_at(&mut bytes, self.offset)
                .map_err(|e| IndexError::Io { path: self.path.clone(), source: e })?;
            self.buf.clear();
            self.buf.extend(
                bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))),
            );
            self.at = 0;
            self.offset += bytes.len() as u64;
            self.left -= edges as u64;
        }
        Ok(Some(self.buf[self.at]))
    }

    /// Moves the edges whose target is at most `last` into `into`.
    fn drain_through(&mut self, last: u32, into: &mut Vec<u64>) -> Result<(), IndexError> {
        while let Some(e) = self.peek()? {
            if (e >> 32) as u32 > last {
                break;
            }
            into.push(e);
            self.at += 1;
        }
        Ok(())
    }
}

/// What linking every chunk leaves for the write pass.
struct Linked {
    /// The new position of each added row.
    position: Vec<u32>,
    /// The added rows' PQ codes, in their new positions' order.
    codes: Vec<u8>,
    /// The first chunk's graph's entry point, at its new position.
    entry: Option<u32>,
    /// The last chunk's first added row and its rows (stored), kept as exact stand-ins.
    last: Option<(usize, VectorSet)>,
    /// Joint ids of added rows start here: the old index's node count.
    old_n: u32,
    graph_seconds: f64,
}

impl Linked {
    fn new(added: usize, old_n: u32) -> Linked {
        Linked {
            position: vec![DROPPED; added],
            codes: Vec::new(),
            entry: None,
            last: None,
            old_n,
            graph_seconds: 0.0,
        }
    }
}

/// Step 2 for one chunk of added rows, starting at added row `first`.
struct ChunkJob<'a> {
    growth: &'a Growth<'a>,
    h: &'a Header,
    old: &'a Old,
    first: usize,
}

impl ChunkJob<'_> {
    /// Links the chunk's `rows` (stored): their out-lists, then their finished nodes and their
    /// edges into old nodes, spilled.
    fn link(
        &self,
        rows: VectorSet,
        linked: &mut Linked,
        spill: &mut Spill,
        progress: &(dyn Fn(&'static str, usize, usize) + Sync),
    ) -> Result<(), IndexError> {
        let (h, old, first) = (self.h, self.old, self.first);
        let (b, total) = (rows.len(), self.growth.added.len());
        let pq = self.growth.base.pq();
        let m = pq.bytes();
        let mut codes = vec![0u8; b * m];
        pq.encode_into_slice(&rows, &mut codes);
        let old_n = h.n as u32;
        let joint_first = old_n + first as u32;
        let pruner = Pruner::new(self.growth, h, Some((first, &rows)));
        let params = pruner.params;
        let started = Instant::now();
        let done_before = first;
        let graph = vamana::build(&rows, h.metric, &params, &|d| {
            progress("graph", done_before + d, total);
        })?;
        linked.graph_seconds += started.elapsed().as_secs_f64();
        let order = pack::sector_order(&graph, h.nodes_per_sector());
        let rank = pack::inverse(&order);
        let position_first = old.kept + first as u32;
        for (i, &k) in rank.iter().enumerate() {
            linked.position[first + i] = position_first + k;
        }
        if first == 0 {
            linked.entry = Some(position_first + rank[graph.entry as usize]);
        }
        let out = self.out_lists(&rows, &graph, &pruner, progress)?;
        drop(graph);
        let reverse = Reverse::within(&out, joint_first);
        // Edges into old nodes, as (target's old position, source), sorted in runs of at most
        // RUN_EDGES.
        let mut edges: Vec<u64> = Vec::with_capacity(RUN_EDGES.min(b * params.max_degree));
        for i in 0..b {
            let source = joint_first + i as u32;
            for &u in out.get(i).iter().filter(|&&u| u < old_n) {
                if edges.len() == RUN_EDGES {
                    edges.sort_unstable();
                    spill.push_run(&edges)?;
                    edges.clear();
                }
                edges.push((u64::from(u) << 32) | u64::from(source));
            }
        }
        edges.sort_unstable();
        spill.push_run(&edges)?;
        drop(edges);
        let position = |u: u32| {
            if u < old_n { old.position[u as usize] } else { linked.position[(u - old_n) as usize] }
        };
        let r = h.max_degree as usize;
        for batch in order.chunks(LINK_CHUNK) {
            let lists: Vec<Vec<u32>> = batch
                .par_iter()
                .map(|&i| {
                    let i = i as usize;
                    let mut list = out.get(i).to_vec();
                    for &u in reverse.sources(i) {
                        if !list.contains(&u) {
                            list.push(u);
                        }
                    }
                    let list = pruner.fitted(list, || rows.row(i).to_f32());
                    list.into_iter().map(position).collect()
                })
                .collect();
            for (&i, list) in batch.iter().zip(lists) {
                let label = self.growth.added_labels[first + i as usize];
                spill.push_node(label, &list, r, rows.row_bytes(i as usize))?;
                linked.codes.extend_from_slice(&codes[i as usize * m..(i as usize + 1) * m]);
            }
        }
        linked.last = Some((first, rows));
        Ok(())
    }

    /// Each of the chunk's rows' out-list (joint ids): its nearest kept old nodes found by a
    /// disk search, and its neighbours in the chunk's `graph`, pruned.
    fn out_lists(
        &self,
        rows: &VectorSet,
        graph: &vamana::Graph,
        pruner: &Pruner<'_>,
        progress: &(dyn Fn(&'static str, usize, usize) + Sync),
    ) -> Result<Lists, IndexError> {
        let (growth, old, first) = (self.growth, self.old, self.first);
        let base = growth.base;
        let b = rows.len();
        let old_n = self.h.n as u32;
        let joint_first = old_n + first as u32;
        let params = pruner.params;
        // Half the build's list (at least R): on 200k SIFT + 30k, L 64 instead of 100 took the
        // link from 45 s to 32 s for recall@10 0.959 instead of 0.960 at search L 20.
        let list_size = (params.list_size / 2).max(params.max_degree);
        let search = SearchParams { k: list_size, list_size, beam_width: BEAM_WIDTH };
        let accept = |label: u32| (growth.relabel)(label).is_some();
        let link_one = |searcher: &mut Result<crate::search::Searcher<'_>, IndexError>,
                        i: usize| {
            let searcher = searcher.as_mut().map_err(|e| IndexError::Io {
                path: base.path().into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let row = rows.row(i).to_f32();
            let found = if old.kept > 0 {
                searcher.search_positions(Row::F32(&row), search, &accept).map_err(search_error)?.0
            } else {
                Vec::new()
            };
            let mut cands: Vec<(u32, Option<f32>)> =
                found.iter().map(|f| (f.id, Some(f.distance))).collect();
            cands.extend(graph.neighbours(i).map(|j| (joint_first + j, None)));
            Ok::<_, IndexError>(pruner.prune(&row, &cands))
        };
        // A sub-chunk at a time, so that only its lists are unpacked at once.
        let mut out = Lists::with_capacity(b, b * params.max_degree);
        for sub in (0..b).step_by(LINK_CHUNK) {
            let lists: Vec<Result<Vec<u32>, IndexError>> = (sub..(sub + LINK_CHUNK).min(b))
                .into_par_iter()
                .map_init(|| base.searcher(), link_one)
                .collect();
            for list in lists {
                let list = list?;
                assert!(
                    list.iter().all(|&u| (u >= old_n && u - joint_first < b as u32)
                        || (u < old_n && old.is_kept(u))),
                    "an out-edge to a dropped node or outside the chunk"
                );
                out.push(&list);
            }
            progress("link", first + out.len(), growth.added.len());
        }
        Ok(out)
    }
}

/// A search error as an index error (the old index is damaged or unreadable).
fn search_error(e: crate::search::SearchError) -> IndexError {
    match e {
        crate::search::SearchError::Layout(l) => l.into(),
        other => IndexError::Mismatch(other.to_string()),
    }
}

/// RobustPrune over joint ids: old nodes stand as their PQ reconstructions, added rows as
/// themselves while their chunk is held, else as their PQ reconstructions too.
struct Pruner<'a> {
    pq: &'a PqCodebook,
    codes: &'a crate::codes::Codes,
    /// The added rows held (stored), and the added row the first of them is.
    held: Option<(usize, &'a VectorSet)>,
    /// Every added row's code, in new-position order, with the new positions and the first
    /// added row's: for added rows not held.
    added_codes: &'a [u8],
    added_position: &'a [u32],
    kept: u32,
    old_n: u32,
    metric: Metric,
    params: crate::vamana::VamanaParams,
}

impl<'a> Pruner<'a> {
    /// The pruner of `growth` over `base`'s codes and the `held` added rows (stored), with the
    /// old index's `R`.
    fn new(growth: &Growth<'a>, h: &Header, held: Option<(usize, &'a VectorSet)>) -> Pruner<'a> {
        let mut params = growth.params.graph;
        params.max_degree = h.max_degree as usize;
        let (pq, codes) = (growth.base.pq(), growth.base.codes());
        let old_n = h.n as u32;
        let (added_codes, added_position, kept) = (&[][..], &[][..], 0);
        Pruner {
            pq,
            codes,
            held,
            added_codes,
            added_position,
            kept,
            old_n,
            metric: h.metric,
            params,
        }
    }

    /// With every added row's code (`codes`, in new-position order) and new `position`, the
    /// first added row's being `kept`.
    fn with_added_codes(mut self, codes: &'a [u8], position: &'a [u32], kept: u32) -> Pruner<'a> {
        (self.added_codes, self.added_position, self.kept) = (codes, position, kept);
        self
    }

    /// `list` (joint ids, no repeats) as it is if it fits in `R`, else pruned to `R` from the
    /// node's own vector (`row`, made only then).
    fn fitted(&self, list: Vec<u32>, row: impl FnOnce() -> Vec<f32>) -> Vec<u32> {
        if list.len() <= self.params.max_degree {
            return list;
        }
        let cands: Vec<(u32, Option<f32>)> = list.iter().map(|&u| (u, None)).collect();
        self.prune(&row(), &cands)
    }

    /// Joint id `u`'s stand-in, into `into`.
    fn stand_in(&self, u: u32, into: &mut Vec<f32>) {
        let m = self.pq.bytes();
        if u < self.old_n {
            self.pq.decode_into(self.codes.code(u), into);
            return;
        }
        let a = (u - self.old_n) as usize;
        if let Some((first, rows)) = self.held
            && (first..first + rows.len()).contains(&a)
        {
            *into = rows.row(a - first).to_f32();
            return;
        }
        let k = (self.added_position[a] - self.kept) as usize;
        self.pq.decode_into(&self.added_codes[k * m..(k + 1) * m], into);
    }

    /// Prunes `cands` (joint ids, each with its distance from `row` if known exactly; repeats
    /// allowed) to at most `R`. Unknown distances are taken to the candidate's stand-in.
    fn prune(&self, row: &[f32], cands: &[(u32, Option<f32>)]) -> Vec<u32> {
        let mut unique: Vec<(u32, Option<f32>)> = Vec::with_capacity(cands.len());
        for &(u, d) in cands {
            if !unique.iter().any(|&(v, _)| v == u) {
                unique.push((u, d));
            }
        }
        let dim = self.pq.dim();
        let mut vectors = VectorSet::zeroed(ElemType::F32, dim, unique.len())
            .expect("the stored dimension is valid");
        let mut decoded = vec![0.0f32; dim];
        let kernels = Isa::active();
        let mut scored = Vec::with_capacity(unique.len());
        for (i, &(u, d)) in unique.iter().enumerate() {
            self.stand_in(u, &mut decoded);
            vectors.row_bytes_mut(i).copy_from_slice(bytemuck::cast_slice(&decoded));
            let dist = d.unwrap_or_else(|| {
                distance(kernels, self.metric, Row::F32(row), Row::F32(&decoded))
            });
            scored.push(Candidate { id: i as u32, dist });
        }
        let p = &self.params;
        robust_prune(&vectors, self.metric, u32::MAX, scored, p.alpha, p.max_degree, p.saturate)
            .into_iter()
            .map(|i| unique[i as usize].0)
            .collect()
    }
}

/// A kept node read in the write pass, owned so that a batch of them is patched in parallel.
struct OldNode {
    position: u32,
    vector: Vec<u8>,
    neighbours: Vec<u32>,
    label: u32,
}

/// Bytes the write pass's batch of kept nodes may hold, each with its vector and lists.
const PATCH_BATCH_BYTES: u64 = 3 << 19;
/// Most nodes patched in parallel at a time in the write pass.
const PATCH_BATCH_MAX: u64 = 1024;
/// Fewest nodes patched in parallel at a time in the write pass.
const PATCH_BATCH_MIN: u64 = 64;

/// Nodes patched in parallel at a time in the write pass: as many as [`PATCH_BATCH_BYTES`]
/// holds with rows of `row_bytes` and lists of up to `r` (1,024 of 128-d floats, 319 of 1024-d
/// floats, whose batch of 1,024 took 5 MB and kept growths from fitting a tight budget). The
/// batch's size changes nothing in the file written.
fn patch_batch(row_bytes: u64, r: u64) -> usize {
    let node = row_bytes + 12 * r + 64;
    (PATCH_BATCH_BYTES / node).clamp(PATCH_BATCH_MIN, PATCH_BATCH_MAX) as usize
}

/// Step 3: the new files.
struct Patch<'a> {
    growth: &'a Growth<'a>,
    h: Header,
    old: &'a Old,
    linked: &'a Linked,
    pruner: &'a Pruner<'a>,
}

impl Patch<'_> {
    /// The new header: same shape, the new count, an entry point that survives.
    fn header(&self) -> Header {
        let h = self.h;
        let entry = if self.old.is_kept(h.entry) {
            Some(self.old.position[h.entry as usize])
        } else {
            let mates = self.old.dropped_lists.get(&h.entry).into_iter().flatten();
            mates.copied().find(|&u| self.old.is_kept(u)).map(|u| self.old.position[u as usize])
        };
        Header {
            version: crate::layout::VERSION,
            n: u64::from(self.old.kept) + self.linked.position.len() as u64,
            entry: entry.or(self.linked.entry).unwrap_or(0),
            ..h
        }
    }

    /// The new position of a joint id.
    fn position(&self, u: u32) -> u32 {
        let old_n = self.linked.old_n;
        if u < old_n {
            self.old.position[u as usize]
        } else {
            self.linked.position[(u - old_n) as usize]
        }
    }

    /// A kept node's list (joint ids): its kept neighbours, the kept neighbours of its dropped
    /// ones, and its reverse edges (`sources`), re-pruned to `R` when longer. Whether it
    /// changed.
    fn patched(&self, node: &OldNode, sources: &[u32]) -> (Vec<u32>, bool) {
        let old_p = node.position;
        let mut list: Vec<u32> = Vec::with_capacity(node.neighbours.len());
        let mut changed = false;
        let push = |list: &mut Vec<u32>, u: u32| {
            if u != old_p && !list.contains(&u) {
                list.push(u);
            }
        };
        for &nb in &node.neighbours {
            if self.old.is_kept(nb) {
                push(&mut list, nb);
                continue;
            }
            changed = true;
            for &x in self.old.dropped_lists.get(&nb).into_iter().flatten() {
                if self.old.is_kept(x) {
                    push(&mut list, x);
                }
            }
        }
        for &u in sources {
            changed = true;
            push(&mut list, u);
        }
        (self.pruner.fitted(list, || stored_f32(self.h.elem, &node.vector)), changed)
    }

    /// Writes the graph file: kept nodes (patched), then the spilled added nodes. Returns the
    /// number of patched kept nodes and the sum of degrees.
    fn write(
        &self,
        reader: &IndexReader,
        spill: &Spill,
        dir: &Path,
        progress: &(dyn Fn(&'static str, usize, usize) + Sync),
    ) -> Result<(usize, u64), IndexError> {
        let header = self.header();
        let total = header.n as usize;
        let mut writer = IndexWriter::create(&dir.join(GRAPH_FILE), header)?;
        let (mut patched, mut degrees, mut written) = (0usize, 0u64, 0usize);
        let row_bytes = u64::from(self.h.dim) * self.h.elem.size() as u64;
        let batch_len = patch_batch(row_bytes, u64::from(self.h.max_degree));
        let mut batch: Vec<OldNode> = Vec::with_capacity(batch_len);
        let mut cursors = spill.cursors()?;
        let mut edges: Vec<u64> = Vec::new();
        let mut out = Vec::new();
        let mut flush =
            |batch: &mut Vec<OldNode>, writer: &mut IndexWriter| -> Result<(), IndexError> {
                let Some(last) = batch.last().map(|n| n.position) else { return Ok(()) };
                edges.clear();
                for cursor in &mut cursors {
                    cursor.drain_through(last, &mut edges)?;
                }
                edges.sort_unstable();
                let sources: Vec<Vec<u32>> = batch
                    .iter()
                    .map(|n| {
                        let target = u64::from(n.position) << 32;
                        let lo = edges.partition_point(|&e| e < target);
                        let hi = edges.partition_point(|&e| e < target + (1 << 32));
                        edges[lo..hi].iter().map(|&e| e as u32).collect()
                    })
                    .collect();
                let lists: Vec<(Vec<u32>, bool)> =
                    batch.par_iter().zip(&sources).map(|(n, s)| self.patched(n, s)).collect();
                for (node, (list, changed)) in batch.iter().zip(lists) {
                    patched += usize::from(changed);
                    degrees += list.len() as u64;
                    out.clear();
                    out.extend(list.iter().map(|&u| self.position(u)));
                    let label = (self.growth.relabel)(node.label).expect("a kept node");
                    writer.push(&node.vector, &out, label)?;
                }
                written += batch.len();
                progress("write", written, total);
                batch.clear();
                Ok(())
            };
        reader.for_each_node::<IndexError>(|p, node| {
            if self.old.is_kept(p) {
                let (vector, neighbours, label) =
                    (node.vector.to_vec(), node.neighbours, node.label);
                batch.push(OldNode { position: p, vector, neighbours, label });
                if batch.len() == batch_len {
                    flush(&mut batch, &mut writer)?;
                }
            }
            Ok(())
        })?;
        flush(&mut batch, &mut writer)?;
        for cursor in &mut cursors {
            assert!(cursor.peek()?.is_none(), "every reverse edge reached a kept node");
        }
        degrees += self.copy_added(spill, &mut writer)?;
        progress("write", total, total);
        writer.finish()?;
        Ok((patched, degrees))
    }

    /// Appends the spilled added nodes; returns the sum of their degrees.
    fn copy_added(&self, spill: &Spill, writer: &mut IndexWriter) -> Result<u64, IndexError> {
        let r = self.h.max_degree as usize;
        let row_bytes = self.h.dim as usize * self.h.elem.size();
        let mut reader = spill.nodes_reader()?;
        let mut record = vec![0u8; 8 + 4 * r + row_bytes];
        let mut list = Vec::with_capacity(r);
        let mut degrees = 0u64;
        let word = |record: &[u8], k: usize| {
            u32::from_le_bytes(record[4 * k..4 * k + 4].try_into().expect("4 bytes"))
        };
        for _ in 0..self.linked.position.len() {
            reader
                .read_exact(&mut record)
                .map_err(|e| IndexError::Io { path: spill.nodes_path.clone(), source: e })?;
            let (label, count) = (word(&record, 0), word(&record, 1) as usize);
            assert!(count <= r, "a spilled list within R");
            list.clear();
            list.extend((0..count).map(|k| word(&record, 2 + k)));
            degrees += count as u64;
            writer.push(&record[8 + 4 * r..], &list, label)?;
        }
        Ok(degrees)
    }

    /// Writes the PQ codes in the new positions' order, as they are copied (not gathered
    /// first: the new index's codes are its largest structure in RAM).
    fn write_codes(&self, dir: &Path) -> Result<(), IndexError> {
        let m = self.growth.base.pq().bytes();
        let old = self.growth.base.codes();
        let n = u64::from(self.old.kept) + self.linked.position.len() as u64;
        let mut writer = CodesWriter::create(&dir.join(CODES_FILE), m, n)?;
        for (p, code) in old.iter().enumerate() {
            if self.old.is_kept(p as u32) {
                writer.push(code)?;
            }
        }
        for code in self.linked.codes.chunks_exact(m) {
            writer.push(code)?;
        }
        writer.finish()?;
        Ok(())
    }
}

/// A stored vector's bytes as `f32`s.
fn stored_f32(elem: ElemType, bytes: &[u8]) -> Vec<f32> {
    match elem {
        ElemType::F32 => {
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect()
        }
        ElemType::U8 => bytes.iter().map(|&x| f32::from(x)).collect(),
        ElemType::I8 => bytes.iter().map(|&x| f32::from(x as i8)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_edges_within_a_chunk_list_every_source_of_every_target_once() {
        // 5 old nodes (joint ids 0..5), a chunk of 4 added rows (joint ids 5..9).
        let first = 5;
        let out_lists: [&[u32]; 4] = [&[0, 3, 6], &[], &[3, 5, 8], &[3, 7]];
        let mut out = Lists::with_capacity(4, 9);
        out_lists.iter().for_each(|l| out.push(l));
        assert_eq!(out.len(), 4);
        assert_eq!(out.get(2), &[3, 5, 8]);
        let reverse = Reverse::within(&out, first);
        for t in 0..4u32 {
            let mut want: Vec<u32> = (0..4u32)
                .filter(|&i| out_lists[i as usize].contains(&(first + t)))
                .map(|i| first + i)
                .collect();
            want.sort_unstable();
            let mut got = reverse.sources(t as usize).to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "sources of chunk row {t}");
        }
    }

    #[test]
    fn a_chunk_is_picked_to_fit_the_allowance_and_none_below_the_least_chunk() {
        let shape =
            GrowShape { old: 200_000, dropped: 0, added: 150_000, row_bytes: 512, m: 32, r: 64 };
        let whole = shape.peak_bytes(0);
        assert_eq!(shape.chunk_rows(whole), Some(shape.added));
        let allowance = whole / 8;
        let chunk = shape.chunk_rows(allowance).expect("a chunk fits");
        assert!(chunk < shape.added && chunk >= MIN_CHUNK_ROWS, "chunk {chunk}");
        assert!(shape.peak_bytes(chunk) <= allowance);
        assert!(shape.peak_bytes(chunk + 1) > allowance);
        // The grown index's codes alone would not fit: no chunk helps.
        let dropping = GrowShape { dropped: 10, ..shape };
        let codes = dropping.grown_codes_bytes();
        assert_eq!(codes, (200_000 - 10 + 150_000) * 32, "with rows dropped, every code is loaded");
        assert_eq!(dropping.chunk_rows(codes - 1), None);
        // With none dropped, only the added codes and one merge of pieces are loaded.
        let big = GrowShape { old: 1_000_000, added: 30_000, ..shape };
        assert_eq!(big.grown_codes_bytes(), 30_000 * 32 + (1_030_000 * 32u64).div_ceil(8));
        assert!(big.grown_codes_bytes() < GrowShape { dropped: 1, ..big }.grown_codes_bytes() / 4);
    }
}
