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
//! into the new codes file as it is written (never gathered in RAM). Unless the growth
//! retrains it ([`Growth::retrain`]): then a sample of the grown index's rows, old ones taken
//! in the scan and added ones read before the link, trains a new codebook of the same code
//! size, and the write pass encodes every node it writes with it (the link still steers by
//! the old codes). Memory
//! ([`GrowShape::peak_bytes`]): 4 bytes per old node (its new position), the dropped nodes' lists,
//! `m + 4` bytes per added row (its code and position), and one chunk: its rows, their graph,
//! their lists and edges; when retraining, the sample while it trains
//! ([`crate::pq::file_training_bytes`]) and the grown index's codes, all new, as it is opened. Inner-product indexes are not grown: their stored vectors are
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
use crate::pq::{CODES_FILE, CodesWriter, PIVOTS_FILE, PqCodebook, PqParams};
use crate::search::{DiskIndex, SearchParams};
use crate::source::VectorFile;
use crate::vamana::{self, Candidate, robust_prune};

mod link;
mod plan;
mod retrain;
mod spill;
mod write;

use link::{ChunkJob, Linked, Pruner};
pub use plan::GrowShape;
use retrain::{Sample, SamplePlan};
use spill::Spill;
use write::Patch;

/// Marks an old node that is dropped.
const DROPPED: u32 = u32::MAX;
/// The fewest rows a chunk may have ([`GrowShape::chunk_rows`]): fewer would leave each chunk's own
/// graph too sparse to matter.
pub const MIN_CHUNK_ROWS: u64 = 256;
/// The fewest sampled rows a growth that retrains its codebook should train on (39 a centroid
/// of a subspace's 256, below which faiss warns that k-means is starved), or all the rows if
/// fewer: [`GrowShape::sample_rows`] offers no smaller sample.
pub const MIN_RETRAIN_ROWS: u64 = 10_000;

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
            _ => self.copy(start, count),
        }
    }

    /// A copy of rows `start..start + count`, the rows left in place.
    fn copy(&self, start: usize, count: usize) -> Result<VectorSet, DataError> {
        match self {
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
    /// `None`: the base's codebook is kept. `Some`: a new one, of the base's code size, is
    /// trained on a sample of at most `max_samples` of the grown index's rows (kept and added in
    /// proportion; [`GrowShape::sample_rows`] picks what an allowance holds) with these
    /// iterations and seed, and every code is re-encoded with it.
    pub retrain: Option<PqParams>,
    /// `Some`: every code is re-encoded with this codebook, trained elsewhere (a newer one of
    /// the same data's), instead of the base's; not with [`Growth::retrain`].
    pub recode: Option<&'a PqCodebook>,
}

impl std::fmt::Debug for Growth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Growth")
            .field("base", &self.base.path())
            .field("added", &self.added)
            .field("chunk_rows", &self.chunk_rows)
            .field("retrain", &self.retrain)
            .field("recode", &self.recode.is_some())
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
    /// Rows the new codebook was trained on (0: the base's was kept).
    pub trained_rows: usize,
    /// Kept nodes whose lists changed (lost a dropped neighbour or gained an added one).
    pub patched: usize,
    /// Mean out-degree of the new graph.
    pub mean_degree: f64,
    /// Seconds scanning the old file.
    pub scan_seconds: f64,
    /// Seconds gathering the rest of the sample and training a new codebook (0: kept).
    pub train_seconds: f64,
    /// Seconds building the added rows' graphs among themselves (chunk by chunk).
    pub graph_seconds: f64,
    /// Seconds searching the old index for the added rows, pruning and spilling their lists.
    pub link_seconds: f64,
    /// Seconds writing the new files.
    pub write_seconds: f64,
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
    let plan = growth.retrain.map(|p| SamplePlan::new(h.n as usize, b, p.max_samples, p.seed));
    std::fs::create_dir_all(dir).map_err(|e| IndexError::Io { path: dir.into(), source: e })?;
    let mut sample = plan.as_ref().map(|_| Sample::new(&h, dir)).transpose()?;
    let old = scan(&reader, &growth, plan.as_ref().zip(sample.as_mut()), progress)?;
    summary.kept = old.kept as usize;
    summary.dropped = h.n as usize - summary.kept;
    summary.scan_seconds = t.elapsed().as_secs_f64();
    if old.kept as usize + b == 0 {
        return Err(IndexError::CannotGrow("no rows would be left"));
    }

    let t = Instant::now();
    let trained = match (plan, sample, growth.retrain) {
        (Some(plan), Some(mut sample), Some(params)) => {
            sample.take_added(&plan, &growth.added, h.user_metric)?;
            summary.trained_rows = sample.filled;
            Some(sample.train(base.pq().metric(), base.pq().bytes(), &params)?)
        }
        _ => None,
    };
    let codebook = trained.as_ref().or(growth.recode);
    summary.train_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| IndexError::Io { path: dir.into(), source: e })?;
    let mut spill = Spill::create(dir)?;
    let mut linked = Linked::new(b);
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
    let job = Patch { growth: &growth, h, old: &old, linked: &linked, pruner: &pruner, codebook };
    let (patched, degrees) = job.write(&reader, &spill, dir, progress)?;
    summary.patched = patched;
    summary.mean_degree = degrees as f64 / (old.kept as usize + b) as f64;
    if codebook.is_none() {
        job.write_codes(dir)?;
    }
    spill.remove();
    codebook.unwrap_or(base.pq()).write_to(&dir.join(PIVOTS_FILE))?;
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
    if growth.retrain.is_some() && growth.recode.is_some() {
        return Err(IndexError::CannotGrow(
            "a growth either retrains its codebook or is given one",
        ));
    }
    if let Some(pq) = growth.recode {
        let own = growth.base.pq();
        if pq.dim() != own.dim() || pq.metric() != own.metric() {
            return Err(IndexError::CannotGrow(
                "the codebook given is of another dimension or metric than the index's",
            ));
        }
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

    /// The new position of joint id `u`: an old node's, or that of added row `u − n` from
    /// `added` (each added row's new position), `n` being the old index's node count.
    fn joint_position(&self, added: &[u32], u: u32) -> u32 {
        let n = self.position.len() as u32;
        if u < n { self.position[u as usize] } else { added[(u - n) as usize] }
    }
}

/// Step 1: which old nodes are kept, where they go, and the dropped nodes' lists; the kept
/// nodes of a retraining growth's sample are taken.
fn scan(
    reader: &IndexReader,
    growth: &Growth<'_>,
    mut sample: Option<(&SamplePlan, &mut Sample)>,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<Old, IndexError> {
    let n = reader.header().n as usize;
    let mut old = Old { position: vec![DROPPED; n], kept: 0, dropped_lists: HashMap::new() };
    reader.for_each_node::<IndexError>(|p, node| {
        let kept = (growth.relabel)(node.label).is_some();
        if let Some((plan, sample)) = sample.as_mut() {
            sample.offer_old(plan, p, kept, node.vector)?;
        }
        if kept {
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
