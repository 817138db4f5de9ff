//! The Vamana graph (DiskANN, Subramanya et al. 2019), built in RAM.
//!
//! Every point is inserted by a greedy search from the entry point (the medoid) over the graph built
//! so far, followed by **RobustPrune** of the visited set: a candidate `v` is dropped when an already
//! chosen neighbour `p*` is nearer to it, by a factor `α`, than the point itself is
//! (`α · d(p*, v) ≤ d(p, v)`). `α = 1` keeps the graph sparse; `α > 1` keeps long edges that make
//! search converge in few hops — the property a disk index needs, because every hop is a disk read.
//! The paper makes two passes, the first with `α = 1` and the second with the configured `α`;
//! DiskANN's own builds (C++ and Rust) make one pass with the configured `α`. Quiver does either
//! ([`VamanaParams::passes`]); one pass is the default, because on the data measured in
//! `BENCHMARKS.md` the second pass doubles the build time for a recall gain of under 0.5 point at
//! a given list size. Each new edge `p → j` is mirrored as `j → p`; a node whose list exceeds
//! `slack · R` is pruned back to `R`.
//!
//! Inner product should not be built directly: low-norm points end up unreachable. The index builder
//! applies [`crate::data::mips_to_l2`] and builds in L2 instead.
//!
//! Parallelism (ParlayANN's batched insertion, which the Rust DiskANN's multi-insert also uses):
//! points are inserted in batches of 1, 2, 4, … up to 2% of the points. Within a batch, every
//! point searches and prunes in parallel against the graph as it stood when the batch began;
//! then the batch's lists are written, and the reverse edges are grouped by target, so that each
//! target is updated by one task and pruned at most once per batch, however many edges it
//! receives. No phase has a reader racing a writer or two writers on one list, so no list needs a
//! lock, and the result depends only on the seed, not on the number of threads.

use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use quiver_simd::{Isa, Kernels, WithKernels};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::data::{Metric, VectorSet, distance};
use crate::visited::VisitedSet;

/// Build parameters. `Default` gives the documented defaults.
#[derive(Clone, Copy, Debug)]
pub struct VamanaParams {
    /// Maximum out-degree `R`. Default 64.
    pub max_degree: usize,
    /// Search list size `L` used while building. Default 100.
    pub list_size: usize,
    /// Pruning factor (of the last pass). Default 1.2.
    pub alpha: f32,
    /// Insertion passes: 1 (every point once, pruned with `alpha`, as DiskANN builds) or 2 (the
    /// paper's: a pass with `α = 1`, then one with `alpha`). Default 1.
    pub passes: usize,
    /// A list may grow to `slack · R` before it is pruned back to `R`. Default 1.3.
    pub slack: f32,
    /// Fill every pruned list up to `R` with the nearest candidates the prune rejected (when
    /// `alpha > 1`), as DiskANN's disk builds do. Default true. See [`robust_prune`].
    pub saturate: bool,
    /// Seed of the insertion order. Default 0x5155_4956.
    pub seed: u64,
    /// Worker threads; 0 means all cores. The graph is the same for any number (see the module
    /// docs).
    pub threads: usize,
}

impl Default for VamanaParams {
    fn default() -> Self {
        Self {
            max_degree: 64,
            list_size: 100,
            alpha: 1.2,
            passes: 1,
            slack: 1.3,
            saturate: true,
            seed: 0x5155_4956,
            threads: 0,
        }
    }
}

/// Limits on the build parameters.
pub const MAX_DEGREE_LIMIT: usize = 512;
/// Largest list size accepted.
pub const MAX_LIST_SIZE: usize = 10_000;

/// Why a graph could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A parameter is out of range.
    #[error("invalid build parameter: {0}")]
    Param(String),
    /// Too many points for 32-bit ids.
    #[error("{0} points: at most u32::MAX - 1 can be indexed")]
    TooMany(usize),
}

/// A built graph: adjacency lists, stored compactly (all ids in one array, with offsets), and the
/// entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    /// `offsets[i]..offsets[i + 1]` is where point `i`'s neighbours lie in `ids`.
    offsets: Vec<u64>,
    ids: Ids,
    /// Where every search starts: the medoid.
    pub entry: u32,
    /// The degree bound `R` the lists respect.
    pub max_degree: usize,
}

impl Graph {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether the graph has no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Point `i`'s out-neighbours.
    pub fn neighbours(&self, i: usize) -> Neighbours<'_> {
        self.ids.range(self.offsets[i] as usize..self.offsets[i + 1] as usize)
    }

    /// Every point's out-neighbours, in point order.
    pub fn lists(&self) -> impl Iterator<Item = Neighbours<'_>> + '_ {
        self.offsets.windows(2).map(|w| self.ids.range(w[0] as usize..w[1] as usize))
    }

    /// A graph from explicit lists (for tests and tools).
    ///
    /// # Panics
    /// If `entry` or a neighbour is not a point, or a list is longer than `max_degree`.
    pub fn from_lists(lists: &[Vec<u32>], entry: u32, max_degree: usize) -> Self {
        let n = lists.len();
        assert!((entry as usize) < n, "entry {entry} of {n} points");
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        let mut ids = Vec::new();
        for l in lists {
            assert!(l.len() <= max_degree && l.iter().all(|&v| (v as usize) < n), "bad list");
            ids.extend_from_slice(l);
            offsets.push(ids.len() as u64);
        }
        // Stored as a build of `n` points would store them, so that equal graphs compare equal.
        let ids = if n <= NARROW_MAX_POINTS {
            Ids::Narrow(ids.into_iter().map(|v| v as u16).collect())
        } else {
            Ids::Wide(ids)
        };
        Self { offsets, ids, entry, max_degree }
    }

    /// Mean out-degree.
    pub fn mean_degree(&self) -> f64 {
        self.ids.len() as f64 / self.len().max(1) as f64
    }
}

/// The most points whose ids a graph stores in 16 bits: ids `0..=65_534` (the slab's length
/// words, at most `slack · R ≤ 2,048`, fit too). A graph of at most this many points (a build's
/// partition, often) holds its lists, and builds them, in half the memory: 168 bytes a point
/// instead of 336 at `R = 64` while building, the largest share of a partition's bytes
/// ([`crate::plan`] counts it), so a budget holds larger partitions.
pub const NARROW_MAX_POINTS: usize = u16::MAX as usize;

/// A graph's neighbour ids, all lists back to back, in the narrowest width its points allow.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ids {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl Ids {
    fn len(&self) -> usize {
        match self {
            Ids::Narrow(v) => v.len(),
            Ids::Wide(v) => v.len(),
        }
    }

    fn range(&self, r: std::ops::Range<usize>) -> Neighbours<'_> {
        Neighbours(match self {
            Ids::Narrow(v) => Walk::Narrow(v[r].iter()),
            Ids::Wide(v) => Walk::Wide(v[r].iter()),
        })
    }
}

/// One point's out-neighbours in a [`Graph`], as `u32` ids whatever width the graph stores.
#[derive(Clone, Debug)]
pub struct Neighbours<'a>(Walk<'a>);

#[derive(Clone, Debug)]
enum Walk<'a> {
    Narrow(std::slice::Iter<'a, u16>),
    Wide(std::slice::Iter<'a, u32>),
}

impl Iterator for Neighbours<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        match &mut self.0 {
            Walk::Narrow(it) => it.next().map(|&v| u32::from(v)),
            Walk::Wide(it) => it.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = match &self.0 {
            Walk::Narrow(it) => it.len(),
            Walk::Wide(it) => it.len(),
        };
        (len, Some(len))
    }
}

impl ExactSizeIterator for Neighbours<'_> {}

/// A candidate: point id and its distance to the current target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Point id.
    pub id: u32,
    /// Distance to the query.
    pub dist: f32,
}

/// Per-thread search scratch: the visited set, reused across searches.
#[derive(Debug)]
pub struct Scratch {
    visited: VisitedSet,
}

impl Scratch {
    /// Scratch for walks over a graph of any size (the visited set grows with the walk, not `n`).
    pub fn new() -> Self {
        Self { visited: VisitedSet::new() }
    }

    /// Scratch for walks over a graph of `n` points: a bitmap of `n` bits marks the visited
    /// points when that is small (it is for a build in RAM), else as [`Scratch::new`].
    pub fn for_points(n: usize) -> Self {
        Self { visited: VisitedSet::for_points(n) }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The sorted candidate list of a greedy search: at most `cap` entries, nearest first, each with an
/// "expanded" flag. Every entry before `cursor` is expanded.
struct Beam {
    items: Vec<(Candidate, bool)>,
    cap: usize,
    cursor: usize,
}

impl Beam {
    fn new(cap: usize) -> Self {
        Self { items: Vec::with_capacity(cap + 1), cap, cursor: 0 }
    }

    /// Inserts if the list is not full or `c` beats the worst entry.
    fn insert(&mut self, c: Candidate) {
        if self.items.len() == self.cap && self.items.last().is_some_and(|w| w.0.dist <= c.dist) {
            return;
        }
        let at = self.items.partition_point(|(x, _)| x.dist <= c.dist);
        self.items.insert(at, (c, false));
        self.items.truncate(self.cap);
        self.cursor = self.cursor.min(at);
    }

    /// Where the nearest unexpanded candidate lies (every entry before `cursor` is expanded).
    fn first_unexpanded(&self) -> Option<usize> {
        Some(self.cursor + self.items[self.cursor..].iter().position(|(_, done)| !done)?)
    }

    /// The nearest unexpanded candidate, left unexpanded: the one [`Beam::next`] gives next
    /// unless a nearer one is inserted first.
    fn peek(&self) -> Option<Candidate> {
        self.first_unexpanded().map(|at| self.items[at].0)
    }

    /// The nearest unexpanded candidate, now marked expanded.
    fn next(&mut self) -> Option<Candidate> {
        let at = self.first_unexpanded()?;
        self.items[at].1 = true;
        self.cursor = at + 1;
        Some(self.items[at].0)
    }
}

/// Greedy search over `neighbours` from `entry` for the point `query` with list size `l`. Returns the
/// final list (nearest first) and every expanded point (the "visited set" of the paper).
pub fn greedy_search(
    data: &VectorSet,
    metric: Metric,
    query: crate::data::Row<'_>,
    entry: u32,
    l: usize,
    neighbours: impl Fn(u32, &mut Vec<u32>),
    scratch: &mut Scratch,
) -> (Vec<Candidate>, Vec<Candidate>) {
    let no_prefetch = |_: u32| {};
    greedy_search_with(
        Isa::active(),
        data,
        metric,
        query,
        entry,
        l,
        neighbours,
        no_prefetch,
        scratch,
    )
}

/// [`greedy_search`] with the kernels of `k`: the build passes the token of its tier, so that
/// each distance is one direct call, not a dispatch on the tier. `prefetch_list(id)` starts
/// loading node `id`'s list: it is called for the candidate likely to be expanded next while the
/// current one's neighbours are scored, so that the list's cache misses (a build's lists are
/// tens of megabytes, read at random) overlap that work instead of stalling the walk.
#[allow(clippy::too_many_arguments)] // greedy_search's arguments, the kernels, the prefetch
fn greedy_search_with<K: Kernels>(
    k: K,
    data: &VectorSet,
    metric: Metric,
    query: crate::data::Row<'_>,
    entry: u32,
    l: usize,
    neighbours: impl Fn(u32, &mut Vec<u32>),
    prefetch_list: impl Fn(u32),
    scratch: &mut Scratch,
) -> (Vec<Candidate>, Vec<Candidate>) {
    scratch.visited.clear();
    let mut beam = Beam::new(l.max(1));
    let mut expanded = Vec::new();
    let mut nbrs = Vec::new();
    scratch.visited.insert(entry);
    beam.insert(Candidate {
        id: entry,
        dist: distance(k, metric, query, data.row(entry as usize)),
    });
    while let Some(c) = beam.next() {
        expanded.push(c);
        nbrs.clear();
        neighbours(c.id, &mut nbrs);
        if let Some(after) = beam.peek() {
            prefetch_list(after.id);
        }
        // Mark every new neighbour first, then score them with their rows prefetched a window ahead.
        keep_unvisited(&mut nbrs, &mut scratch.visited);
        for (i, &n) in nbrs.iter().enumerate() {
            prefetch_ahead(data, &nbrs, i);
            beam.insert(Candidate {
                id: n,
                dist: distance(k, metric, query, data.row(n as usize)),
            });
        }
    }
    (beam.items.into_iter().map(|(c, _)| c).collect(), expanded)
}

/// Keeps the ids of `ids` not yet in `visited`, in order, and marks them visited. Written without a
/// branch on the answer (each id is copied down, and the write position advances only for a new
/// one): about half the ids are new, at random, so `retain`'s branch mispredicted half the time.
#[inline]
fn keep_unvisited(ids: &mut Vec<u32>, visited: &mut VisitedSet) {
    let mut kept = 0;
    for i in 0..ids.len() {
        let id = ids[i];
        let fresh = visited.insert(id);
        ids[kept] = id;
        kept += usize::from(fresh);
    }
    ids.truncate(kept);
}

/// How many rows ahead of the one being scored a walk prefetches: enough to overlap their misses,
/// few enough not to stall on the CPU's line-fill buffers. Prefetching every neighbour's row
/// before scoring the first did stall, with 64 neighbours of 50-d `f32` rows (4 lines each); the
/// window made a 150k-point GloVe graph build 15% faster (24.7 → 21.0 s).
const PREFETCH_AHEAD: usize = 8;

/// Before row `ids[i]` is scored: prefetches the rows `PREFETCH_AHEAD` further on (all of the
/// first window when `i` is 0), so that a few misses are always in flight.
#[inline]
fn prefetch_ahead(data: &VectorSet, ids: &[u32], i: usize) {
    let first = if i == 0 { 0 } else { i + PREFETCH_AHEAD };
    let end = (i + PREFETCH_AHEAD + 1).min(ids.len());
    for &id in ids.get(first..end).unwrap_or_default() {
        quiver_simd::prefetch(data.row_bytes(id as usize));
    }
}

/// Growth of the occlusion threshold between RobustPrune rounds (DiskANN's 1.2).
const ALPHA_STEP: f32 = 1.2;

/// RobustPrune: chooses at most `r` neighbours for `p` among `cands` (distances to `p` given).
///
/// A candidate `v` is *occluded* by a chosen neighbour `c` by the factor `d(p, v) / d(c, v)`; it is
/// eligible while its largest factor over the chosen neighbours is at most the round's threshold.
/// The threshold starts at 1 and grows by `ALPHA_STEP` up to `alpha`, so the short, diverse edges
/// an `α = 1` prune keeps are taken first and the long edges `α > 1` admits fill the remaining
/// slots — as DiskANN prunes. Factors are brought up to date lazily: a candidate is compared with
/// the neighbours chosen since it was last looked at, and only until the comparison rules it out
/// for the round, which spares most of the `R × |cands|` distances an eager prune computes.
///
/// With `saturate` (and `alpha > 1`), the slots the prune leaves free are then filled with the
/// nearest candidates it rejected, so every list ends with `min(R, |cands|)` entries. A node's
/// sector has room for `R` neighbours whether or not they are used, so on disk the extra edges cost
/// no I/O; they cost PQ distances per hop, and buy recall per hop on clustered data, where a pure
/// α-prune leaves lists short (GloVe: mean degree 31 of 64; see `BENCHMARKS.md`).
pub fn robust_prune(
    data: &VectorSet,
    metric: Metric,
    p: u32,
    cands: Vec<Candidate>,
    alpha: f32,
    r: usize,
    saturate: bool,
) -> Vec<u32> {
    robust_prune_with(Isa::active(), data, metric, p, cands, alpha, r, saturate)
}

/// [`robust_prune`] with the kernels of `k` (see [`greedy_search_with`]).
#[allow(clippy::too_many_arguments)] // robust_prune's arguments and the kernels
fn robust_prune_with<K: Kernels>(
    k: K,
    data: &VectorSet,
    metric: Metric,
    p: u32,
    mut cands: Vec<Candidate>,
    alpha: f32,
    r: usize,
    saturate: bool,
) -> Vec<u32> {
    cands.retain(|c| c.id != p);
    cands.sort_by(|a, b| a.dist.total_cmp(&b.dist).then(a.id.cmp(&b.id)));
    cands.dedup_by_key(|c| c.id);
    let mut out: Vec<u32> = Vec::with_capacity(r);
    // Per candidate: its largest occlusion factor so far, how many of `out` it has been compared
    // with, and whether it was chosen.
    let mut factor = vec![0.0f32; cands.len()];
    let mut checked = vec![0usize; cands.len()];
    let mut chosen = vec![false; cands.len()];
    let mut threshold = 1.0f32.min(alpha);
    loop {
        for i in 0..cands.len() {
            if out.len() >= r {
                return out;
            }
            if chosen[i] || factor[i] > threshold {
                continue;
            }
            let row = data.row(cands[i].id as usize);
            let mut f = factor[i];
            while checked[i] < out.len() && f <= threshold {
                let d = distance(k, metric, data.row(out[checked[i]] as usize), row);
                checked[i] += 1;
                // A chosen neighbour at distance 0 is the same vector: it stands in for `v`.
                f = if d > 0.0 { f.max(cands[i].dist / d) } else { f32::INFINITY };
            }
            factor[i] = f;
            if f <= threshold {
                chosen[i] = true;
                out.push(cands[i].id);
            }
        }
        if threshold >= alpha {
            if saturate && alpha > 1.0 {
                let rest = (0..cands.len()).filter(|&i| !chosen[i]).map(|i| cands[i].id);
                out.extend(rest.take(r - out.len()));
            }
            return out;
        }
        threshold = (threshold * ALPHA_STEP).min(alpha);
    }
}

/// The point nearest (in L2, for every metric: the entry should be central) to the mean of `data`.
pub fn medoid(data: &VectorSet) -> u32 {
    let dim = data.dim();
    let mut mean = vec![0.0f64; dim];
    for i in 0..data.len() {
        for (m, x) in mean.iter_mut().zip(data.row(i).to_f32()) {
            *m += f64::from(x);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|&m| (m / data.len() as f64) as f32).collect();
    let k = Isa::active();
    (0..data.len())
        .into_par_iter()
        .map(|i| (quiver_simd::Kernels::l2_sq_f32(k, &mean, &data.row(i).to_f32()), i))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map_or(0, |(_, i)| i as u32)
}

/// Builds the Vamana graph of `data`. `progress` is called with the number of insertions done (out of
/// `passes · n`) from time to time.
///
/// # Errors
/// If a parameter is out of range or there are too many points.
pub fn build(
    data: &VectorSet,
    metric: Metric,
    params: &VamanaParams,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Graph, BuildError> {
    let n = data.len();
    let r = params.max_degree;
    if !(1..=MAX_DEGREE_LIMIT).contains(&r) {
        return Err(BuildError::Param(format!("max degree {r}, expected 1..={MAX_DEGREE_LIMIT}")));
    }
    if !(1..=MAX_LIST_SIZE).contains(&params.list_size) {
        return Err(BuildError::Param(format!(
            "list size {}, expected 1..={MAX_LIST_SIZE}",
            params.list_size
        )));
    }
    if !(params.alpha >= 1.0 && params.alpha <= 4.0) {
        return Err(BuildError::Param(format!("alpha {}, expected 1.0..=4.0", params.alpha)));
    }
    if !(1..=2).contains(&params.passes) {
        return Err(BuildError::Param(format!("{} passes, expected 1 or 2", params.passes)));
    }
    if !(params.slack >= 1.0 && params.slack <= 4.0) {
        return Err(BuildError::Param(format!("slack {}, expected 1.0..=4.0", params.slack)));
    }
    if n >= u32::MAX as usize {
        return Err(BuildError::TooMany(n));
    }
    if n == 0 {
        return Ok(Graph {
            offsets: vec![0],
            ids: Ids::Narrow(Vec::new()),
            entry: 0,
            max_degree: r,
        });
    }
    Isa::active().dispatch(Builder { data, metric, params, progress })
}

/// The build after its parameters are checked, monomorphised for the kernel tier in use.
struct Builder<'a> {
    data: &'a VectorSet,
    metric: Metric,
    params: &'a VamanaParams,
    progress: &'a (dyn Fn(usize) + Sync),
}

impl WithKernels for Builder<'_> {
    type Output = Result<Graph, BuildError>;

    fn run<K: Kernels>(self, k: K) -> Self::Output {
        if self.data.len() <= NARROW_MAX_POINTS {
            build_with::<K, AtomicU16>(k, &self)
        } else {
            build_with::<K, AtomicU32>(k, &self)
        }
    }
}

/// [`build`] with the kernels of `k` and lists of `S` slots, on checked parameters and at least
/// one point.
fn build_with<K: Kernels, S: Slot>(k: K, job: &Builder<'_>) -> Result<Graph, BuildError> {
    let (data, metric, params, progress) = (job.data, job.metric, job.params, job.progress);
    let n = data.len();
    let r = params.max_degree;
    let entry = medoid(data);
    let slack_cap = ((r as f32 * params.slack) as usize).max(r);
    let adj = Adjacency::<S>::new(n, slack_cap);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut StdRng::seed_from_u64(params.seed));
    let l = params.list_size.max(r);
    let batches = batches(n);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads)
        .build()
        .map_err(|e| BuildError::Param(format!("thread pool: {e}")))?;
    let prune = |p: u32, cands: Vec<Candidate>, alpha: f32| {
        robust_prune_with(k, data, metric, p, cands, alpha, r, params.saturate)
    };
    // Prunes node `j`'s own (oversized) list.
    let reprune =
        |j: u32, list: &[u32], alpha: f32| prune(j, scored(k, data, metric, j, list), alpha);

    pool.install(|| {
        let mut done = 0;
        let alphas: &[f32] =
            if params.passes == 2 { &[1.0, params.alpha] } else { &[params.alpha] };
        for &alpha in alphas {
            for batch in &batches {
                let ids = &order[batch.clone()];
                // 1. Every point of the batch finds its neighbours in the graph as it stands: no
                //    list changes until all have, so no reader meets a writer.
                let chosen: Vec<Vec<u32>> = ids
                    .par_iter()
                    .map_init(
                        || Scratch::for_points(n),
                        |scratch, &p| {
                            let read = |id: u32, out: &mut Vec<u32>| adj.read(id, out);
                            let prefetch = |id: u32| adj.prefetch(id);
                            let (_, mut pool) = greedy_search_with(
                                k,
                                data,
                                metric,
                                data.row(p as usize),
                                entry,
                                l,
                                read,
                                prefetch,
                                scratch,
                            );
                            // The current neighbours stay candidates: reverse edges from earlier
                            // batches, and in a second pass the first pass's list.
                            let mut current = Vec::new();
                            adj.read(p, &mut current);
                            pool.extend(scored(k, data, metric, p, &current));
                            prune(p, pool, alpha)
                        },
                    )
                    .collect();
                // 2. Their lists are replaced (each point once per batch, so writes are disjoint).
                ids.par_iter().zip(&chosen).for_each(|(&p, list)| adj.write(p, list));
                // 3. The reverse edges, grouped by target: each target is updated by one task, once
                //    per batch, and pruned at most once however many edges it receives.
                let mut edges: Vec<(u32, u32)> = ids
                    .iter()
                    .zip(&chosen)
                    .flat_map(|(&p, list)| list.iter().map(move |&j| (j, p)))
                    .collect();
                edges.par_sort_unstable();
                let groups: Vec<&[(u32, u32)]> = edges.chunk_by(|a, b| a.0 == b.0).collect();
                groups.par_iter().for_each_init(Vec::new, |list, group| {
                    let j = group[0].0;
                    list.clear();
                    adj.read(j, list);
                    let before = list.len();
                    for &(_, p) in *group {
                        if !list[..before].contains(&p) {
                            list.push(p);
                        }
                    }
                    if list.len() == before {
                        return;
                    }
                    if list.len() > slack_cap {
                        *list = reprune(j, list, alpha);
                    }
                    adj.write(j, list);
                });
                done += ids.len();
                progress(done);
            }
        }
        // Lists may hold up to slack · R entries: prune every oversized list back to R.
        (0..n as u32).into_par_iter().for_each_init(Vec::new, |list, j| {
            list.clear();
            adj.read(j, list);
            if list.len() > r {
                adj.write(j, &reprune(j, list, params.alpha));
            }
        });
    });
    Ok(adj.into_graph(entry, r))
}

/// The largest insertion batch, as a fraction of the points (ParlayANN's choice). A point does
/// not see the others of its batch while it searches, so batches stay small against the graph.
const BATCH_FRACTION: f64 = 0.02;

/// The insertion batches over `n` points: sizes 1, 2, 4, … (the graph starts empty, and an early
/// point should find the ones before it), doubling up to `BATCH_FRACTION · n`.
fn batches(n: usize) -> Vec<std::ops::Range<usize>> {
    let cap = ((n as f64 * BATCH_FRACTION) as usize).max(1);
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 1);
    while start < n {
        let end = (start + size).min(n);
        out.push(start..end);
        start = end;
        size = (size * 2).min(cap);
    }
    out
}

/// `ids` with their distances to point `from`, rows prefetched a window ahead.
fn scored<K: Kernels>(
    k: K,
    data: &VectorSet,
    metric: Metric,
    from: u32,
    ids: &[u32],
) -> Vec<Candidate> {
    let row = data.row(from as usize);
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            prefetch_ahead(data, ids, i);
            Candidate { id, dist: distance(k, metric, row, data.row(id as usize)) }
        })
        .collect()
}

/// The adjacency lists while the graph is built: one slab of `n × (cap + 1)` words, each node's
/// length followed by room for `cap` ids, so that reading a list is one contiguous read.
///
/// The build's phases keep readers and writers apart (see the module docs); the words are atomics
/// only so that disjoint lists can be written from many threads through a shared reference
/// without `unsafe`. Relaxed stores suffice: the end of each rayon phase orders them before the
/// next phase's loads.
struct Adjacency<S> {
    stride: usize,
    slots: Vec<S>,
}

/// A word of the adjacency slab: 16 bits for graphs of at most [`NARROW_MAX_POINTS`] points,
/// else 32.
trait Slot: Send + Sync + Sized {
    /// The plain integer the slot holds.
    type Plain: Copy;
    fn new(value: u32) -> Self;
    fn load(&self) -> u32;
    /// Stores `value`, which fits (the slab's width was chosen for the points).
    fn store(&self, value: u32);
    fn into_plain(self) -> Self::Plain;
    fn widen(plain: Self::Plain) -> u32;
    /// The compacted lists as a graph's ids.
    fn ids(plain: Vec<Self::Plain>) -> Ids;
}

impl Slot for AtomicU16 {
    type Plain = u16;
    fn new(value: u32) -> Self {
        AtomicU16::new(value as u16)
    }
    #[inline]
    fn load(&self) -> u32 {
        u32::from(AtomicU16::load(self, Ordering::Relaxed))
    }
    #[inline]
    fn store(&self, value: u32) {
        debug_assert!(value <= u32::from(u16::MAX), "id {value} in a 16-bit slab");
        AtomicU16::store(self, value as u16, Ordering::Relaxed);
    }
    fn into_plain(self) -> u16 {
        self.into_inner()
    }
    fn widen(plain: u16) -> u32 {
        u32::from(plain)
    }
    fn ids(plain: Vec<u16>) -> Ids {
        Ids::Narrow(plain)
    }
}

impl Slot for AtomicU32 {
    type Plain = u32;
    fn new(value: u32) -> Self {
        AtomicU32::new(value)
    }
    #[inline]
    fn load(&self) -> u32 {
        AtomicU32::load(self, Ordering::Relaxed)
    }
    #[inline]
    fn store(&self, value: u32) {
        AtomicU32::store(self, value, Ordering::Relaxed);
    }
    fn into_plain(self) -> u32 {
        self.into_inner()
    }
    fn widen(plain: u32) -> u32 {
        plain
    }
    fn ids(plain: Vec<u32>) -> Ids {
        Ids::Wide(plain)
    }
}

impl<S: Slot> Adjacency<S> {
    fn new(n: usize, cap: usize) -> Self {
        let stride = cap + 1;
        Self { stride, slots: (0..n * stride).map(|_| S::new(0)).collect() }
    }

    /// Appends node `i`'s list to `out`.
    fn read(&self, i: u32, out: &mut Vec<u32>) {
        let at = i as usize * self.stride;
        let len = (self.slots[at].load() as usize).min(self.stride - 1);
        out.extend(self.slots[at + 1..at + 1 + len].iter().map(S::load));
    }

    /// Starts loading node `i`'s list into the cache (a hint).
    #[inline]
    fn prefetch(&self, i: u32) {
        let at = i as usize * self.stride;
        quiver_simd::prefetch_slice(&self.slots[at..at + self.stride]);
    }

    /// Replaces node `i`'s list; no other task touches node `i` in the same phase.
    fn write(&self, i: u32, ids: &[u32]) {
        let at = i as usize * self.stride;
        assert!(
            ids.len() < self.stride,
            "list of {} ids over the slab's {}",
            ids.len(),
            self.stride - 1
        );
        for (slot, &id) in self.slots[at + 1..].iter().zip(ids) {
            slot.store(id);
        }
        self.slots[at].store(ids.len() as u32);
    }

    /// The compact graph, built in place: each list moves down to follow the previous one (a list
    /// never moves up, as no list is longer than its slot), so the build never holds two copies
    /// of the graph.
    fn into_graph(self, entry: u32, max_degree: usize) -> Graph {
        let Self { stride, slots } = self;
        let n = slots.len() / stride;
        // Same size and alignment: this collect reuses the slab's allocation.
        let mut ids: Vec<S::Plain> = slots.into_iter().map(S::into_plain).collect();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u64);
        let mut end = 0;
        for i in 0..n {
            let at = i * stride;
            let len = (S::widen(ids[at]) as usize).min(stride - 1);
            assert!(len <= max_degree, "point {i} kept {len} neighbours over R = {max_degree}");
            ids.copy_within(at + 1..at + 1 + len, end);
            end += len;
            offsets.push(end as u64);
        }
        // The slab's allocation is kept, not shrunk: shrinking copies the lists into a new
        // allocation while the slab still exists, the largest transient of a build (the planner
        // counts the slab instead, `plan.rs`).
        ids.truncate(end);
        Graph { offsets, ids: S::ids(ids), entry, max_degree }
    }
}

/// In-memory search of a built graph (full precision): the `k` nearest found with list size `l`.
/// Used to test graph quality independently of the disk layout.
pub fn search_in_memory(
    data: &VectorSet,
    metric: Metric,
    graph: &Graph,
    query: crate::data::Row<'_>,
    k: usize,
    l: usize,
    scratch: &mut Scratch,
) -> Vec<Candidate> {
    let read = |id: u32, out: &mut Vec<u32>| out.extend(graph.neighbours(id as usize));
    let (mut list, _) = greedy_search(data, metric, query, graph.entry, l.max(k), read, scratch);
    list.truncate(k);
    list
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU16, AtomicU32};

    use super::*;

    /// The 16-bit slab is a storage choice, not a different build: the same points, seed and
    /// parameters give the same lists with 16-bit and 32-bit ids. A narrowed id that wrapped, or a
    /// length word cut short, would change them.
    #[test]
    fn sixteen_and_thirty_two_bit_slabs_build_the_same_graph() {
        let (n, dim) = (3_000, 16);
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let values: Vec<f32> = (0..n * dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 1_000) as f32
            })
            .collect();
        let data = VectorSet::from_f32(dim, &values).unwrap();
        let params =
            VamanaParams { max_degree: 24, list_size: 40, threads: 2, ..Default::default() };
        let k = Isa::active();
        let job = Builder { data: &data, metric: Metric::L2, params: &params, progress: &|_| {} };
        let narrow = build_with::<_, AtomicU16>(k, &job).unwrap();
        let wide = build_with::<_, AtomicU32>(k, &job).unwrap();
        assert!(matches!(narrow.ids, Ids::Narrow(_)) && matches!(wide.ids, Ids::Wide(_)));
        assert_eq!(narrow.entry, wide.entry);
        assert_eq!(narrow.mean_degree(), wide.mean_degree());
        for i in 0..n {
            let (a, b): (Vec<u32>, Vec<u32>) =
                (narrow.neighbours(i).collect(), wide.neighbours(i).collect());
            assert_eq!(a, b, "point {i}");
        }
        // A build picks 16-bit ids for this many points.
        let built = build(&data, Metric::L2, &params, &|_| {}).unwrap();
        assert_eq!(built, narrow);
    }
}
