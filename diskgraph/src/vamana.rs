//! The Vamana graph (DiskANN, Subramanya et al. 2019), built in RAM.
//!
//! Every point is inserted by a greedy search from the entry point (the medoid) over the graph built
//! so far, followed by **RobustPrune** of the visited set: a candidate `v` is dropped when an already
//! chosen neighbour `p*` is nearer to it, by a factor `α`, than the point itself is
//! (`α · d(p*, v) ≤ d(p, v)`). `α = 1` keeps the graph sparse; `α > 1` keeps long edges that make
//! search converge in few hops — the property a disk index needs, because every hop is a disk read.
//! As in the paper, the build makes two passes, the first with `α = 1` and the second with the
//! configured `α`. Each new edge `p → j` is mirrored as `j → p`; a node whose list exceeds
//! `slack · R` is pruned back to `R`.
//!
//! Inner product should not be built directly: low-norm points end up unreachable. The index builder
//! applies [`crate::data::mips_to_l2`] and builds in L2 instead.
//!
//! Parallelism: points are inserted concurrently (rayon); each adjacency list has its own lock and
//! no lock is held while another is taken, so there is no lock-order deadlock. With one thread the
//! build is a plain loop in a seeded random order, so it is deterministic under the seed.

use std::sync::Mutex;

use quiver_simd::Isa;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::data::{Metric, VectorSet, distance};

/// Build parameters. `Default` gives the documented defaults.
#[derive(Clone, Copy, Debug)]
pub struct VamanaParams {
    /// Maximum out-degree `R`. Default 64.
    pub max_degree: usize,
    /// Search list size `L` used while building. Default 100.
    pub list_size: usize,
    /// Pruning factor of the second pass. Default 1.2.
    pub alpha: f32,
    /// A list may grow to `slack · R` before it is pruned back to `R`. Default 1.3.
    pub slack: f32,
    /// Seed of the insertion order. Default 0x5155_4956.
    pub seed: u64,
    /// Worker threads; 0 means rayon's global pool (all cores). 1 gives a deterministic build.
    pub threads: usize,
}

impl Default for VamanaParams {
    fn default() -> Self {
        Self {
            max_degree: 64,
            list_size: 100,
            alpha: 1.2,
            slack: 1.3,
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

/// A built graph: adjacency lists and the entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    /// Out-neighbours of each point, at most `max_degree` each.
    pub adj: Vec<Vec<u32>>,
    /// Where every search starts: the medoid.
    pub entry: u32,
    /// The degree bound `R` the lists respect.
    pub max_degree: usize,
}

impl Graph {
    /// Mean out-degree.
    pub fn mean_degree(&self) -> f64 {
        self.adj.iter().map(Vec::len).sum::<usize>() as f64 / self.adj.len().max(1) as f64
    }
}

/// A candidate: point id and its distance to the current target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Point id.
    pub id: u32,
    /// Distance to the query.
    pub dist: f32,
}

/// Per-thread search scratch: a generation-stamped visited set, reused across searches.
#[derive(Debug)]
pub struct Scratch {
    stamp: Vec<u32>,
    generation: u32,
}

impl Scratch {
    /// Scratch for a graph of `n` points.
    pub fn new(n: usize) -> Self {
        Self { stamp: vec![0; n], generation: 0 }
    }

    fn next_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `id` visited; returns whether it was new.
    fn visit(&mut self, id: u32) -> bool {
        let s = &mut self.stamp[id as usize];
        let new = *s != self.generation;
        *s = self.generation;
        new
    }
}

/// The sorted candidate list of a greedy search: at most `cap` entries, nearest first, each with an
/// "expanded" flag.
struct Beam {
    items: Vec<(Candidate, bool)>,
    cap: usize,
}

impl Beam {
    fn new(cap: usize) -> Self {
        Self { items: Vec::with_capacity(cap + 1), cap }
    }

    /// Inserts if the list is not full or `c` beats the worst entry.
    fn insert(&mut self, c: Candidate) {
        if self.items.len() == self.cap && self.items.last().is_some_and(|w| w.0.dist <= c.dist) {
            return;
        }
        let at = self.items.partition_point(|(x, _)| x.dist <= c.dist);
        self.items.insert(at, (c, false));
        self.items.truncate(self.cap);
    }

    /// The nearest unexpanded candidate, now marked expanded.
    fn next(&mut self) -> Option<Candidate> {
        let slot = self.items.iter_mut().find(|(_, done)| !done)?;
        slot.1 = true;
        Some(slot.0)
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
    let k = Isa::active();
    scratch.next_generation();
    let mut beam = Beam::new(l.max(1));
    let mut expanded = Vec::new();
    let mut nbrs = Vec::new();
    scratch.visit(entry);
    beam.insert(Candidate {
        id: entry,
        dist: distance(k, metric, query, data.row(entry as usize)),
    });
    while let Some(c) = beam.next() {
        expanded.push(c);
        nbrs.clear();
        neighbours(c.id, &mut nbrs);
        for &n in &nbrs {
            if scratch.visit(n) {
                beam.insert(Candidate {
                    id: n,
                    dist: distance(k, metric, query, data.row(n as usize)),
                });
            }
        }
    }
    (beam.items.into_iter().map(|(c, _)| c).collect(), expanded)
}

/// RobustPrune: chooses at most `r` neighbours for `p` among `cands` (distances to `p` given).
pub fn robust_prune(
    data: &VectorSet,
    metric: Metric,
    p: u32,
    mut cands: Vec<Candidate>,
    alpha: f32,
    r: usize,
) -> Vec<u32> {
    let k = Isa::active();
    cands.retain(|c| c.id != p);
    cands.sort_by(|a, b| a.dist.total_cmp(&b.dist).then(a.id.cmp(&b.id)));
    cands.dedup_by_key(|c| c.id);
    let mut out: Vec<u32> = Vec::with_capacity(r);
    // `occluded[i]` once some chosen neighbour covers candidate i.
    let mut occluded = vec![false; cands.len()];
    for i in 0..cands.len() {
        if out.len() >= r {
            break;
        }
        if occluded[i] {
            continue;
        }
        let chosen = cands[i];
        out.push(chosen.id);
        let row = data.row(chosen.id as usize);
        for j in i + 1..cands.len() {
            if !occluded[j] {
                let d = distance(k, metric, row, data.row(cands[j].id as usize));
                if alpha * d <= cands[j].dist {
                    occluded[j] = true;
                }
            }
        }
    }
    out
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
/// `2 · n`, two passes) from time to time.
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
    if !(params.slack >= 1.0 && params.slack <= 4.0) {
        return Err(BuildError::Param(format!("slack {}, expected 1.0..=4.0", params.slack)));
    }
    if n >= u32::MAX as usize {
        return Err(BuildError::TooMany(n));
    }
    if n == 0 {
        return Ok(Graph { adj: Vec::new(), entry: 0, max_degree: r });
    }
    let entry = medoid(data);
    let adj: Vec<Mutex<Vec<u32>>> = (0..n).map(|_| Mutex::new(Vec::new())).collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut StdRng::seed_from_u64(params.seed));
    let l = params.list_size.max(r);
    let slack_cap = ((r as f32 * params.slack) as usize).max(r);
    let done = std::sync::atomic::AtomicUsize::new(0);

    let insert = |p: u32, alpha: f32, scratch: &mut Scratch| {
        let read = |id: u32, out: &mut Vec<u32>| out.extend_from_slice(&lock(&adj[id as usize]));
        let (_, mut visited) =
            greedy_search(data, metric, data.row(p as usize), entry, l, read, scratch);
        // Keep the current neighbours in the pool (they matter in the second pass).
        let current: Vec<u32> = lock(&adj[p as usize]).clone();
        let prow = data.row(p as usize);
        let k = Isa::active();
        visited.extend(
            current.iter().map(|&id| Candidate {
                id,
                dist: distance(k, metric, prow, data.row(id as usize)),
            }),
        );
        let chosen = robust_prune(data, metric, p, visited, alpha, r);
        *lock(&adj[p as usize]) = chosen.clone();
        for &j in &chosen {
            let mut list = lock(&adj[j as usize]);
            if list.contains(&p) {
                continue;
            }
            if list.len() < slack_cap {
                list.push(p);
            } else {
                let jrow = data.row(j as usize);
                let cands: Vec<Candidate> = list
                    .iter()
                    .chain(std::iter::once(&p))
                    .map(|&id| Candidate {
                        id,
                        dist: distance(k, metric, jrow, data.row(id as usize)),
                    })
                    .collect();
                *list = robust_prune(data, metric, j, cands, alpha, r);
            }
        }
        let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if d.is_multiple_of(1024) {
            progress(d);
        }
    };

    let run_pass = |alpha: f32| {
        if params.threads == 1 {
            let mut scratch = Scratch::new(n);
            for &p in &order {
                insert(p, alpha, &mut scratch);
            }
        } else {
            order
                .par_iter()
                .for_each_init(|| Scratch::new(n), |scratch, &p| insert(p, alpha, scratch));
        }
    };
    let pool = (params.threads > 1)
        .then(|| rayon::ThreadPoolBuilder::new().num_threads(params.threads).build())
        .transpose()
        .map_err(|e| BuildError::Param(format!("thread pool: {e}")))?;
    let passes = |f: &(dyn Fn() + Sync)| match &pool {
        Some(pool) => pool.install(f),
        None => f(),
    };
    passes(&|| run_pass(1.0));
    passes(&|| run_pass(params.alpha));

    // Lists may hold up to slack · R entries: prune every oversized list back to R.
    let mut adj: Vec<Vec<u32>> =
        adj.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).collect();
    let k = Isa::active();
    adj.par_iter_mut().enumerate().filter(|(_, list)| list.len() > r).for_each(|(j, list)| {
        let jrow = data.row(j);
        let cands = list
            .iter()
            .map(|&id| Candidate { id, dist: distance(k, metric, jrow, data.row(id as usize)) })
            .collect();
        *list = robust_prune(data, metric, j as u32, cands, params.alpha, r);
    });
    progress(2 * n);
    Ok(Graph { adj, entry, max_degree: r })
}

/// Locks a list, recovering from poisoning (a panicking insert leaves a valid, if partial, list).
fn lock(m: &Mutex<Vec<u32>>) -> std::sync::MutexGuard<'_, Vec<u32>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    let read = |id: u32, out: &mut Vec<u32>| out.extend_from_slice(&graph.adj[id as usize]);
    let (mut list, _) = greedy_search(data, metric, query, graph.entry, l.max(k), read, scratch);
    list.truncate(k);
    list
}
