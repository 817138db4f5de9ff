//! Growing an index without rebuilding it: rows dropped, rows added, one sequential pass over
//! the old graph file (FreshDiskANN's StreamingMerge, Singh et al. 2021, done out of core).
//!
//! The result is a new index directory, in the ordinary format; the old one is only read, so a
//! crash at any point leaves it intact (the caller commits the new one, or removes it).
//!
//! 1. **Scan.** One pass over the old graph file, in position order: each node's label says
//!    whether it is kept ([`Growth::relabel`]) and, if so, its new position (kept nodes keep
//!    their relative order). The neighbour lists of dropped nodes are held until the write.
//! 2. **Link the added rows.** An in-memory Vamana graph over the added rows (they are the
//!    small side) gives each its neighbours among themselves. Each added row is searched for in
//!    the old index (the PQ-steered disk search with a list of `max(R, L / 2)`, dropped nodes
//!    walked through but never returned), and its candidates (the search's nearest kept nodes, with exact distances, and
//!    its graph neighbours among the added rows) are pruned with RobustPrune to at most `R`
//!    out-neighbours. Each out-edge is recorded in reverse, to be added to its target.
//! 3. **Patch and write.** A second pass over the old file writes the new one. A kept node's
//!    list loses its dropped neighbours, which are replaced by *their* kept neighbours (delete
//!    consolidation), and gains its reverse edges; a list that grew past `R` is re-pruned with
//!    the node's own vector against its candidates' PQ reconstructions, as the partitioned
//!    build's merge does. The added rows follow, in sector-packed order. Unchanged lists are
//!    copied as they are.
//!
//! The PQ codebook is the old index's: added rows are encoded with it, kept codes are copied
//! into the new codes file as it is written (never gathered in RAM). Memory: 4 bytes per old
//! node (its new position), the dropped nodes' lists, and the added rows with their graph,
//! their packed out-lists and the reverse edges they leave, grouped by target
//! ([`grow_peak_bytes`]). Inner-product indexes are not grown: their stored vectors are scaled
//! by the largest norm seen at build time, which an added row may exceed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use quiver_simd::Isa;
use rayon::prelude::*;

use crate::data::{DataError, ElemType, Metric, Row, VectorSet, distance};
use crate::index::{BuildParams, GRAPH_FILE, IndexError, store_piece};
use crate::layout::{Header, IndexReader, IndexWriter, SECTOR};
use crate::pack;
use crate::pq::{CODES_FILE, CodesWriter, PIVOTS_FILE, PqCodebook};
use crate::search::{DiskIndex, SearchParams};
use crate::vamana::{self, Candidate, robust_prune};

/// Marks an old node that is dropped.
const DROPPED: u32 = u32::MAX;
/// Reads in flight while an added row is searched for (8 measured no faster: the link is
/// CPU-bound, not latency-bound).
const BEAM_WIDTH: usize = 4;

/// What to make of an old index.
pub struct Growth<'a> {
    /// The index grown, open.
    pub base: &'a DiskIndex,
    /// The new label of an old label, or `None` for a row dropped.
    pub relabel: &'a (dyn Fn(u32) -> Option<u32> + Sync),
    /// The rows added, in the input space (as a build from them would take them).
    pub added: VectorSet,
    /// The label of each added row.
    pub added_labels: &'a [u32],
    /// `R`, `L`, `α` and the rest; the PQ parameters are unused (the old codebook is kept).
    pub params: &'a BuildParams,
}

impl std::fmt::Debug for Growth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Growth")
            .field("base", &self.base.path())
            .field("added", &self.added)
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
    /// Kept nodes whose lists changed (lost a dropped neighbour or gained an added one).
    pub patched: usize,
    /// Mean out-degree of the new graph.
    pub mean_degree: f64,
    /// Seconds scanning the old file.
    pub scan_seconds: f64,
    /// Seconds building the added rows' graph among themselves.
    pub graph_seconds: f64,
    /// Seconds searching the old index for the added rows and pruning their lists.
    pub link_seconds: f64,
    /// Seconds writing the new files.
    pub write_seconds: f64,
}

/// Bytes [`grow_index`] holds at its peak for an old index of `old` nodes with `dropped` of
/// them dropped and `added` rows of `row_bytes` each added, codes of `m` bytes and degree `r`
/// (the old index itself, open, is the caller's): the planner's figure. It is the larger of
/// the growth's working set and the grown index's codes, which whoever opens it loads.
///
/// The working set: each old node's new position (4 bytes), the dropped nodes' lists, and the
/// added rows — their vectors and codes, their in-memory graph beside their packed out-lists
/// while they are linked, then the out-lists beside the reverse edges they leave, grouped by
/// target, while the new file is written. The new index's codes are written as they are made,
/// not held. (200k SIFT bytes, 10k dropped, 30k added: 29.1 MiB estimated; `quiver grow`
/// peaked at 42.4 MiB resident, with the old index open, 6.2 MiB, and the process's own 6.5.)
pub fn grow_peak_bytes(old: u64, dropped: u64, added: u64, row_bytes: u64, m: u64, r: u64) -> u64 {
    let positions = 4 * old;
    let dropped_lists = dropped * (4 * r + 48);
    let slack = crate::vamana::VamanaParams::default().slack;
    let graph_build = crate::plan::graph_build_bytes(added, r as usize, slack);
    // While linking: the added rows' graph (in its build's allocation) and their out-lists
    // packed; then the graph is freed and the reverse edges are grouped by target (4 bytes an
    // edge and a joint id).
    let packed = added * (4 * r + 8);
    let reverse = added * 4 * r + 4 * (old + added);
    let link = graph_build + packed + LINK_SCRATCH;
    // Writing: a batch of nodes with their vectors, old and new lists, and the file buffers.
    let batch = patch_batch(row_bytes, r) as u64 * (row_bytes + 12 * r + 64);
    let buffers = (SECTOR * crate::layout::SCAN_SECTORS + crate::layout::WRITE_BUFFER) as u64;
    let write = packed + reverse + batch + buffers;
    let working = positions + dropped_lists + added * (row_bytes + m) + link.max(write);
    working.max((old - dropped.min(old) + added) * m)
}

/// Transient bytes of the link beyond the packed lists: one chunk's lists as they are made,
/// and the searchers' lists and buffers.
const LINK_SCRATCH: u64 = 1 << 20;
/// Added rows linked at a time: their fresh lists are packed after each chunk.
const LINK_CHUNK: usize = 1024;

/// Lists of joint ids, one per added row, packed one after another.
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

/// The reverse edges the added rows' out-lists imply, grouped by target (joint ids): the
/// sources of the edges into `t` are `sources[offsets[t]..offsets[t + 1]]`. Four bytes an edge
/// and four a joint id.
#[derive(Default)]
struct Reverse {
    offsets: Vec<u32>,
    sources: Vec<u32>,
}

impl Reverse {
    /// By counting sort over the targets of `out`, for joint ids below `old_n + out.len()`.
    fn of(out: &Lists, old_n: u32) -> Reverse {
        let ids = old_n as usize + out.len();
        assert!(out.ids.len() < u32::MAX as usize, "too many edges for 32-bit offsets");
        let mut offsets = vec![0u32; ids + 1];
        for &target in &out.ids {
            offsets[target as usize + 1] += 1;
        }
        for t in 0..ids {
            offsets[t + 1] += offsets[t];
        }
        let mut next = offsets.clone();
        let mut sources = vec![0u32; out.ids.len()];
        for i in 0..out.len() {
            for &target in out.get(i) {
                let slot = &mut next[target as usize];
                sources[*slot as usize] = old_n + i as u32;
                *slot += 1;
            }
        }
        Reverse { offsets, sources }
    }

    /// The sources of the edges into `target`.
    fn sources(&self, target: u32) -> &[u32] {
        match (self.offsets.get(target as usize), self.offsets.get(target as usize + 1)) {
            (Some(&lo), Some(&hi)) => &self.sources[lo as usize..hi as usize],
            _ => &[],
        }
    }
}

/// Writes into `dir` (created if missing) the index of `growth.base` with its dropped rows
/// removed and the added rows inserted, relabelled (the added rows are moved, not copied). `progress(phase, done, total)` reports
/// each phase.
///
/// # Errors
/// [`IndexError::CannotGrow`] for an inner-product index, added rows of another dimension or
/// element type, or nothing left; [`IndexError`] for a damaged old index or I/O failure.
pub fn grow_index(
    mut growth: Growth<'_>,
    dir: &Path,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<GrowSummary, IndexError> {
    let base = growth.base;
    let h = *base.header();
    check(&growth, &h)?;
    // The rows move into the stored space (no copy); `growth.added` is not used again.
    let empty = VectorSet::zeroed(growth.added.elem(), growth.added.dim(), 0)?;
    let added = store_piece(std::mem::replace(&mut growth.added, empty), h.user_metric, 0.0)?;
    let growth = &growth;
    let mut summary = GrowSummary { added: added.len(), ..GrowSummary::default() };

    let t = Instant::now();
    let reader = IndexReader::open(base.path())?;
    let old = scan(&reader, growth, progress)?;
    summary.kept = old.kept as usize;
    summary.dropped = h.n as usize - summary.kept;
    summary.scan_seconds = t.elapsed().as_secs_f64();
    if old.kept as usize + added.len() == 0 {
        return Err(IndexError::CannotGrow("no rows would be left"));
    }

    let t = Instant::now();
    let pruner = Pruner::new(growth, &h, &added);
    let link = link(growth, &h, &old, &pruner, progress)?;
    summary.graph_seconds = link.graph_seconds;
    summary.link_seconds = t.elapsed().as_secs_f64() - link.graph_seconds;

    let t = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| IndexError::Io { path: dir.into(), source: e })?;
    let job = Patch { growth, h, old: &old, added: &added, link: &link, pruner: &pruner };
    let (patched, degrees) = job.write(&reader, dir, progress)?;
    summary.patched = patched;
    summary.mean_degree = degrees as f64 / (old.kept as usize + added.len()) as f64;
    job.write_codes(dir)?;
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

/// Ids while linking: an old position, or `old_n + i` for added row `i` ("joint ids").
struct Link {
    /// Added rows' out-lists (joint ids), by added row.
    out: Lists,
    /// Reverse edges to add.
    reverse: Reverse,
    /// `order[k]` is the added row written `k`-th (sector-packed).
    order: Vec<u32>,
    /// The new position of each added row.
    position: Vec<u32>,
    /// The added rows' graph's entry point (an added row), if any were added.
    entry: Option<u32>,
    /// The added rows' PQ codes, by added row.
    codes: Vec<u8>,
    /// Seconds the added rows' graph took.
    graph_seconds: f64,
}

/// Step 2: out-lists for the added rows, and the reverse edges they imply.
fn link(
    growth: &Growth<'_>,
    h: &Header,
    old: &Old,
    pruner: &Pruner<'_>,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<Link, IndexError> {
    let added = pruner.added;
    let b = added.len();
    let base = growth.base;
    let pq = base.pq();
    let mut codes = vec![0u8; b * pq.bytes()];
    pq.encode_into_slice(added, &mut codes);
    if b == 0 {
        let (out, reverse) = (Lists::default(), Reverse::default());
        let (order, position) = (Vec::new(), Vec::new());
        return Ok(Link { out, reverse, order, position, entry: None, codes, graph_seconds: 0.0 });
    }
    let params = pruner.params;
    let started = Instant::now();
    let graph = vamana::build(added, h.metric, &params, &|d| progress("graph", d, b))?;
    let graph_seconds = started.elapsed().as_secs_f64();
    let order = pack::sector_order(&graph, h.nodes_per_sector());
    let position = pack::inverse(&order).into_iter().map(|k| old.kept + k).collect();
    let old_n = h.n as u32;
    // Half the build's list (at least R): on 200k SIFT + 30k, L 64 instead of 100 took the
    // link from 45 s to 32 s for recall@10 0.959 instead of 0.960 at search L 20.
    let list_size = (params.list_size / 2).max(params.max_degree);
    let search = SearchParams { k: list_size, list_size, beam_width: BEAM_WIDTH };
    let accept = |label: u32| (growth.relabel)(label).is_some();
    let link_one = |searcher: &mut Result<crate::search::Searcher<'_>, IndexError>, i: usize| {
        let searcher = searcher.as_mut().map_err(|e| IndexError::Io {
            path: base.path().into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let row = added.row(i).to_f32();
        let found = if old.kept > 0 {
            searcher.search_positions(Row::F32(&row), search, &accept).map_err(search_error)?.0
        } else {
            Vec::new()
        };
        let mut cands: Vec<(u32, Option<f32>)> =
            found.iter().map(|f| (f.id, Some(f.distance))).collect();
        cands.extend(graph.neighbours(i).map(|j| (old_n + j, None)));
        Ok::<_, IndexError>(pruner.prune(&row, &cands))
    };
    // A chunk at a time, so that only one chunk's lists are unpacked at once.
    let mut out = Lists::with_capacity(b, b * params.max_degree);
    for first in (0..b).step_by(LINK_CHUNK) {
        let chunk: Vec<Result<Vec<u32>, IndexError>> = (first..(first + LINK_CHUNK).min(b))
            .into_par_iter()
            .map_init(|| base.searcher(), link_one)
            .collect();
        for list in chunk {
            let list = list?;
            assert!(
                list.iter().all(|&u| u >= old_n || old.is_kept(u)),
                "an out-edge to a dropped node"
            );
            out.push(&list);
        }
        progress("link", out.len(), b);
    }
    // The added rows' own graph is not needed past here: freed before the reverse edges grow.
    let entry = graph.entry;
    drop(graph);
    let reverse = Reverse::of(&out, old_n);
    Ok(Link { out, reverse, order, position, entry: Some(entry), codes, graph_seconds })
}

/// A search error as an index error (the old index is damaged or unreadable).
fn search_error(e: crate::search::SearchError) -> IndexError {
    match e {
        crate::search::SearchError::Layout(l) => l.into(),
        other => IndexError::Mismatch(other.to_string()),
    }
}

/// RobustPrune over joint ids: old nodes stand as their PQ reconstructions, added rows as
/// themselves.
struct Pruner<'a> {
    pq: &'a PqCodebook,
    codes: &'a [u8],
    added: &'a VectorSet,
    old_n: u32,
    metric: Metric,
    params: crate::vamana::VamanaParams,
}

impl<'a> Pruner<'a> {
    /// The pruner of `growth` over `base`'s codes and the stored `added` rows, with the old
    /// index's `R`.
    fn new(growth: &Growth<'a>, h: &Header, added: &'a VectorSet) -> Pruner<'a> {
        let mut params = growth.params.graph;
        params.max_degree = h.max_degree as usize;
        let (pq, codes) = (growth.base.pq(), growth.base.codes());
        Pruner { pq, codes, added, old_n: h.n as u32, metric: h.metric, params }
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
        let m = self.pq.bytes();
        let mut vectors = VectorSet::zeroed(ElemType::F32, dim, unique.len())
            .expect("the stored dimension is valid");
        let mut decoded = vec![0.0f32; dim];
        let kernels = Isa::active();
        let mut scored = Vec::with_capacity(unique.len());
        for (i, &(u, d)) in unique.iter().enumerate() {
            if u < self.old_n {
                let code = &self.codes[u as usize * m..(u as usize + 1) * m];
                self.pq.decode_into(code, &mut decoded);
            } else {
                decoded = self.added.row((u - self.old_n) as usize).to_f32();
            }
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
    added: &'a VectorSet,
    link: &'a Link,
    pruner: &'a Pruner<'a>,
}

impl Patch<'_> {
    /// The new position of a joint id.
    fn position(&self, u: u32) -> u32 {
        let old_n = self.h.n as u32;
        if u < old_n {
            self.old.position[u as usize]
        } else {
            self.link.position[(u - old_n) as usize]
        }
    }

    /// The new header: same shape, the new count, an entry point that survives.
    fn header(&self) -> Header {
        let h = self.h;
        let entry = if self.old.is_kept(h.entry) {
            Some(self.old.position[h.entry as usize])
        } else {
            let mates = self.old.dropped_lists.get(&h.entry).into_iter().flatten();
            mates.copied().find(|&u| self.old.is_kept(u)).map(|u| self.old.position[u as usize])
        };
        let entry =
            entry.or_else(|| self.link.entry.map(|i| self.link.position[i as usize])).unwrap_or(0);
        Header {
            version: crate::layout::VERSION,
            n: u64::from(self.old.kept) + self.added.len() as u64,
            entry,
            ..h
        }
    }

    /// A kept node's list (joint ids): its kept neighbours, the kept neighbours of its dropped
    /// ones, and its reverse edges, re-pruned to `R` when longer. Whether it changed.
    fn patched(&self, node: &OldNode) -> (Vec<u32>, bool) {
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
        for &u in self.link.reverse.sources(old_p) {
            changed = true;
            push(&mut list, u);
        }
        (self.pruner.fitted(list, || stored_f32(self.h.elem, &node.vector)), changed)
    }

    /// Writes the graph file: kept nodes (patched), then the added rows. Returns the number of
    /// patched kept nodes and the sum of degrees.
    fn write(
        &self,
        reader: &IndexReader,
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
        let mut out = Vec::new();
        let mut flush = |batch: &mut Vec<OldNode>,
                         writer: &mut IndexWriter|
         -> Result<(), IndexError> {
            let lists: Vec<(Vec<u32>, bool)> = batch.par_iter().map(|n| self.patched(n)).collect();
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
        let old_n = self.h.n as u32;
        for order in self.link.order.chunks(batch_len) {
            let lists: Vec<Vec<u32>> = order
                .par_iter()
                .map(|&i| {
                    let mut list = self.link.out.get(i as usize).to_vec();
                    for &u in self.link.reverse.sources(old_n + i) {
                        if !list.contains(&u) {
                            list.push(u);
                        }
                    }
                    self.pruner.fitted(list, || self.added.row(i as usize).to_f32())
                })
                .collect();
            for (&i, list) in order.iter().zip(lists) {
                degrees += list.len() as u64;
                out.clear();
                out.extend(list.iter().map(|&u| self.position(u)));
                let label = self.growth.added_labels[i as usize];
                writer.push(self.added.row_bytes(i as usize), &out, label)?;
            }
        }
        progress("write", total, total);
        writer.finish()?;
        Ok((patched, degrees))
    }

    /// Writes the PQ codes in the new positions' order, as they are copied (not gathered
    /// first: the new index's codes are its largest structure in RAM).
    fn write_codes(&self, dir: &Path) -> Result<(), IndexError> {
        let m = self.growth.base.pq().bytes();
        let old = self.growth.base.codes();
        let n = u64::from(self.old.kept) + self.added.len() as u64;
        let mut writer = CodesWriter::create(&dir.join(CODES_FILE), m, n)?;
        for (p, code) in old.chunks_exact(m).enumerate() {
            if self.old.is_kept(p as u32) {
                writer.push(code)?;
            }
        }
        for &i in &self.link.order {
            writer.push(&self.link.codes[i as usize * m..(i as usize + 1) * m])?;
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
    fn reverse_edges_list_every_source_of_every_target_once() {
        // 5 old nodes (joint ids 0..5), 4 added rows (joint ids 5..9).
        let old_n = 5;
        let out_lists: [&[u32]; 4] = [&[0, 3, 6], &[], &[3, 5, 8], &[3]];
        let mut out = Lists::with_capacity(4, 8);
        out_lists.iter().for_each(|l| out.push(l));
        assert_eq!(out.len(), 4);
        assert_eq!(out.get(2), &[3, 5, 8]);
        let reverse = Reverse::of(&out, old_n);
        for target in 0..old_n + 4 {
            let mut want: Vec<u32> = (0..4u32)
                .filter(|&i| out_lists[i as usize].contains(&target))
                .map(|i| old_n + i)
                .collect();
            want.sort_unstable();
            let mut got = reverse.sources(target).to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "sources of {target}");
        }
        assert!(reverse.sources(old_n + 10).is_empty(), "an id past the end has no sources");
    }
}
