//! The partitioned build: an index of more points than the RAM budget holds, one partition at a
//! time (strategy 3 of [`crate::plan`]). With one partition it is strategy 2, the single graph
//! over 8-bit codes: every point belongs to it once, its list is its only one, and the merge
//! just writes the nodes.
//!
//! 1. **Train.** A sample of rows, gathered from the file, trains the PQ codebook and `P`
//!    partition centroids (k-means), and gives the mean the entry point is chosen by. Partitions
//!    the sample says would overflow their capacity are split in two ([`balance`]).
//! 2. **Assign and encode.** One pass over the file, a piece at a time: each row is encoded
//!    (the codes stay resident: `m` bytes a point, as a search holds them) and joins the
//!    partitions of its two nearest centroids that still have room, the nearer being its *home*.
//!    Each member's id and stored row go to its partition's member file ([`Members`]).
//!    The row nearest the sample mean becomes the entry.
//! 3. **Build.** Per partition: its members are read back in one pass (float rows as 8-bit
//!    scalar codes: a quarter of the memory, so partitions are four times larger, and fewer,
//!    within the same budget), its Vamana graph built in RAM, and each member's list (as global
//!    ids) written out: a home member's to its record in the lists file, laid out by home
//!    partition ([`home_starts`]) so that a partition's home lists are one dense stretch; a
//!    guest's appended to its home partition's guest log ([`append_guests`]). The members at
//!    home here are ordered for sector packing among themselves
//!    ([`crate::pack::sector_order_among`] on the partition's graph, from the slot of its sector
//!    where the partition's first node lands), and the order written out.
//! 4. **Merge and write.** Positions follow the partitions' packing orders one after another.
//!    Per partition again, for its home members in packed order (a chunk at a time, within a
//!    partition's allowance, with their full-precision rows read from the member file, their
//!    home lists from the lists file and their guest lists from the guest log): the two lists are
//!    united and, when the union is longer than `R`, re-pruned with RobustPrune (the point's own
//!    vector against its candidates' PQ reconstructions) — DiskANN truncates the union at random
//!    instead, which drops the edges that made the graph navigable. Nodes are written in
//!    position order; the codes are permuted into it in place and written last.
//!
//! Scratch files live in a directory inside the output directory, removed when the build ends,
//! whether it succeeds or not.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use quiver_simd::{Isa, Kernels};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::data::{
    DataError, ElemType, Metric, Row, VectorSet, cosine_accepts, distance, mips_max_norm_sq,
};
use crate::index::{BuildParams, BuildSummary, GRAPH_FILE, IndexError, store_piece, stored_metric};
use crate::layout::{Header, IndexWriter};
use crate::pack;
use crate::plan::{MEMBER_WRITER_BYTES, PIECE_BYTES, Plan, Shape};
use crate::pq::{CODES_FILE, PIVOTS_FILE, PqCodebook, PqParams, write_codes};
use crate::source::VectorFile;
use crate::vamana::{self, Candidate, robust_prune};

mod scratch;

use scratch::{
    ListsFile, Members, Scratch, append_guests, blocks_of, encode_record, home_starts, io,
    members_name, order_name, read_guests, read_ids, write_ids,
};

/// Name of the scratch directory inside the output directory.
pub const SCRATCH_DIR: &str = ".partitioned-build";
/// Lloyd iterations of the partition k-means.
const KMEANS_ITERATIONS: usize = 10;

/// How the input's rows become stored rows ([`crate::index::store_piece`]), one piece at a time.
struct Storage {
    user: Metric,
    metric: Metric,
    max_norm_sq: f64,
}

impl Storage {
    fn store(&self, raw: VectorSet) -> Result<VectorSet, DataError> {
        store_piece(raw, self.user, self.max_norm_sq)
    }
}

/// What the partitioned build was asked for.
pub(crate) struct Job<'a> {
    pub(crate) file: &'a VectorFile,
    pub(crate) metric: Metric,
    pub(crate) params: &'a BuildParams,
    pub(crate) dir: &'a Path,
    pub(crate) partitions: usize,
    pub(crate) capacity: usize,
    pub(crate) training_rows: usize,
    /// The PQ codebook to use instead of training one ([`crate::index::build_index_with`]).
    pub(crate) codebook: Option<&'a PqCodebook>,
    /// Home members the merge takes at once ([`crate::plan::Shape::merge_rows`]).
    pub(crate) merge_rows: usize,
    /// The input's shape, in the stored space.
    pub(crate) shape: Shape,
    pub(crate) plan: Plan,
}

/// Builds the index of `job.file` into `job.dir`, a partition at a time. `progress(phase, done,
/// total)` reports each phase.
///
/// # Errors
/// [`IndexError`] for unusable data, bad parameters or I/O failure.
pub(crate) fn build(
    job: &Job<'_>,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<BuildSummary, IndexError> {
    let (file, n, dim) = (job.file, job.file.len(), job.file.dim());
    if job.metric == Metric::Cosine {
        cosine_accepts(file.elem())?; // before anything touches the disk
    }
    std::fs::create_dir_all(job.dir).map_err(io(job.dir))?;
    let scratch = Scratch::create(job.dir)?;
    let t = Instant::now();
    let max_norm_sq =
        if job.metric == Metric::InnerProduct { max_norm_sq_of(file, progress)? } else { 0.0 };
    let stored_metric = stored_metric(job.metric);
    let storage = Storage { user: job.metric, metric: stored_metric, max_norm_sq };

    let trained = train(job, &storage)?;
    let partitions = trained.partitions();
    let assigned = assign(job, &storage, &trained, &scratch, progress)?;
    let pq_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let (stored_elem, stored_dim) = (job.shape.stored_elem, job.shape.stored_dim);
    let mut header = Header {
        version: crate::layout::VERSION,
        elem: stored_elem,
        metric: stored_metric,
        user_metric: job.metric,
        dim: stored_dim as u32,
        n: n as u64,
        max_degree: job.params.graph.max_degree as u32,
        entry: 0,
        mips_max_norm_sq: max_norm_sq as f32,
    };
    let lists = ListsFile::create(&scratch.path("lists"), n, job.params.graph.max_degree)?;
    let starts = home_starts(&assigned.home, partitions);
    build_partitions(
        job, &storage, &trained, &assigned, &lists, &starts, &header, &scratch, progress,
    )?;
    let graph_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let position = positions(n, partitions, &scratch)?;
    header.entry = position[assigned.entry as usize];
    let graph_path = job.dir.join(GRAPH_FILE);
    let degrees = merge_and_write(
        job,
        &storage,
        &trained,
        &assigned.codes,
        &position,
        header,
        &lists,
        &starts,
        &scratch,
        progress,
    )?;
    drop(lists);
    let mut codes = assigned.codes;
    let m = trained.pq.bytes();
    permute(&mut codes, m, &position);
    trained.pq.write_to(&job.dir.join(PIVOTS_FILE))?;
    write_codes(&job.dir.join(CODES_FILE), m, &codes)?;
    drop(scratch);
    File::open(job.dir).and_then(|d| d.sync_all()).map_err(io(job.dir))?;
    let write_seconds = t.elapsed().as_secs_f64();
    let graph_file_bytes = std::fs::metadata(&graph_path).map_err(io(&graph_path))?.len();
    Ok(BuildSummary {
        n,
        dim,
        stored_dim,
        pq_bytes: m,
        mean_degree: degrees as f64 / n as f64,
        pq_seconds,
        graph_seconds,
        write_seconds,
        graph_file_bytes,
        plan: Plan { strategy: job.plan.strategy.with_partitions(partitions), ..job.plan },
    })
}

/// How many partitions each point joins: its two nearest, or the only one.
fn copies(job: &Job<'_>) -> usize {
    job.partitions.min(2)
}

/// Rows per piece of a streaming pass over `file`: [`PIECE_BYTES`] of stored rows (at least 1).
fn piece_rows(file: &VectorFile, extra_per_row: usize) -> usize {
    let row = (file.row_bytes().div_ceil(64) * 64 + 64 + extra_per_row) as u64;
    (PIECE_BYTES / row).max(1) as usize
}

/// The inner-product reduction's `M²`: one pass over the file.
fn max_norm_sq_of(
    file: &VectorFile,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<f64, IndexError> {
    let (n, rows) = (file.len(), piece_rows(file, 0));
    let mut max = 0.0f64;
    for start in (0..n).step_by(rows) {
        let piece = file.read_range(start, rows.min(n - start))?;
        max = max.max(mips_max_norm_sq(&piece));
        progress("norms", start + piece.len(), n);
    }
    Ok(max)
}

/// What step 1 trains.
struct Trained {
    pq: PqCodebook,
    /// `P` centroids of `dim` floats, in the stored space.
    centroids: Vec<f32>,
    /// The sample's mean, in the stored space.
    mean: Vec<f32>,
    /// The 8-bit codes partition graphs are built over, for float rows.
    scalar: Option<ScalarCodes>,
}

/// 8-bit scalar codes of float rows, for building partition graphs in a quarter of the memory:
/// `code = round((x − offset_j) / step)`, clamped to 0..=255, with one `step` for every
/// dimension (the largest range in the sample over 255), so that squared L2 between codes is
/// squared L2 between rows over `step²`, up to rounding. Cosine rows are at unit length, where
/// L2 orders as cosine does; inner product is stored as L2 already.
struct ScalarCodes {
    offset: Vec<f32>,
    step: f32,
}

impl Trained {
    /// Number of partitions (balancing may have split some of the planned ones).
    fn partitions(&self) -> usize {
        self.centroids.len() / self.mean.len()
    }
}

impl ScalarCodes {
    /// Codes fitted to `sample`'s range, or `None` when its rows are bytes already.
    fn train(sample: &VectorSet) -> Option<ScalarCodes> {
        if sample.elem() != ElemType::F32 || sample.is_empty() {
            return None;
        }
        let dim = sample.dim();
        let (mut lo, mut hi) = (vec![f32::INFINITY; dim], vec![f32::NEG_INFINITY; dim]);
        for i in 0..sample.len() {
            let Row::F32(r) = sample.row(i) else { unreachable!("checked f32") };
            for ((l, h), &x) in lo.iter_mut().zip(&mut hi).zip(r) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let range = lo.iter().zip(&hi).map(|(l, h)| h - l).fold(0.0f32, f32::max);
        let step = if range > 0.0 { range / 255.0 } else { 1.0 };
        Some(ScalarCodes { offset: lo, step })
    }

    /// Writes the code of `row` into `out` (one byte a dimension).
    fn encode_row(&self, row: Row<'_>, out: &mut [u8]) {
        let Row::F32(r) = row else { unreachable!("trained on f32 rows") };
        for ((c, &x), &o) in out.iter_mut().zip(r).zip(&self.offset) {
            *c = ((x - o) / self.step).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Step 1: PQ, partition centroids and the mean, from a sample gathered from the file.
fn train(job: &Job<'_>, storage: &Storage) -> Result<Trained, IndexError> {
    let n = job.file.len();
    let rows = job.training_rows.clamp(1, n);
    let mut rng = StdRng::seed_from_u64(job.params.pq.seed);
    let mut ids: Vec<u32> = if rows == n {
        (0..n as u32).collect()
    } else {
        rand::seq::index::sample(&mut rng, n, rows).into_iter().map(|i| i as u32).collect()
    };
    ids.sort_unstable();
    let sample = storage.store(job.file.gather(&ids)?)?;
    drop(ids);
    let pq = match job.codebook {
        Some(c) => crate::index::fits(c, sample.dim(), storage.metric)?.clone(),
        None => {
            let pq_params = PqParams { max_samples: rows, ..job.params.pq };
            PqCodebook::train(&sample, storage.metric, &pq_params)?
        }
    };
    let dim = sample.dim();
    let mut mean = vec![0.0f64; dim];
    for i in 0..sample.len() {
        for (m, x) in mean.iter_mut().zip(sample.row(i).to_f32()) {
            *m += f64::from(x);
        }
    }
    let mean = mean.iter().map(|&m| (m / sample.len() as f64) as f32).collect();
    let centroids = kmeans(&sample, job.partitions, job.params.pq.seed);
    let centroids = balance(&sample, centroids, n, job.capacity, job.params.pq.seed);
    let scalar = ScalarCodes::train(&sample);
    Ok(Trained { pq, centroids, mean, scalar })
}

/// A partition is split when the sample says it would hold more than this share of its capacity:
/// the margin absorbs the sample's error, so that the capacity (a hard limit, which sends a point
/// to a farther partition once its nearer ones are full) is seldom reached.
const BALANCE_SHARE: f64 = 0.9;

/// Splits the partitions that would overflow, until none would: k-means clusters are uneven
/// (on 1M SIFT, the largest of 23 drew ~2× its share), and once a partition is full every later
/// point near it joins a farther one, where its neighbours are not. Each point's two nearest
/// centroids are counted over the sample and scaled to the `n` points; the most crowded
/// partition over [`BALANCE_SHARE`] of `capacity` is replaced by a 2-means split of the sample
/// rows at home in it. More, smaller partitions cost little (the memberships stay `2n`); a
/// crowded one costs recall.
fn balance(
    sample: &VectorSet,
    mut cents: Vec<f32>,
    n: usize,
    capacity: usize,
    seed: u64,
) -> Vec<f32> {
    let dim = sample.dim();
    let kernels = Isa::active();
    let limit = capacity as f64 * BALANCE_SHARE;
    let scale = n as f64 / sample.len().max(1) as f64;
    while cents.len() / dim > 1 && cents.len() / dim < u16::MAX as usize {
        let nearest: Vec<(u16, u16)> = (0..sample.len())
            .into_par_iter()
            .map(|i| {
                let ranking = ranked(kernels, &sample.row(i).to_f32(), &cents, dim);
                (ranking[0].1, ranking[1].1)
            })
            .collect();
        let mut counts = vec![0usize; cents.len() / dim];
        for &(a, b) in &nearest {
            counts[a as usize] += 1;
            counts[b as usize] += 1;
        }
        let (crowded, count) = counts
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|&(_, c)| c)
            .expect("at least two partitions");
        if count as f64 * scale <= limit {
            break;
        }
        let home: Vec<f32> = (0..sample.len())
            .filter(|&i| nearest[i].0 as usize == crowded)
            .flat_map(|i| sample.row(i).to_f32())
            .collect();
        if home.len() / dim < 2 {
            break; // a partition crowded only by guests: splitting it would not help
        }
        let members = VectorSet::from_f32(dim, &home).expect("sample rows are valid");
        let halves = kmeans(&members, 2, seed ^ cents.len() as u64);
        cents[crowded * dim..(crowded + 1) * dim].copy_from_slice(&halves[..dim]);
        cents.extend_from_slice(&halves[dim..]);
    }
    cents
}

/// `k` centroids of `sample` (L2, in f32): distinct sample rows to start, then Lloyd iterations;
/// a centroid left without points restarts at a random row.
fn kmeans(sample: &VectorSet, k: usize, seed: u64) -> Vec<f32> {
    let (n, dim) = (sample.len(), sample.dim());
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7061_7274);
    let rows: Vec<Vec<f32>> = (0..n).map(|i| sample.row(i).to_f32()).collect();
    let starts = rand::seq::index::sample(&mut rng, n, k.min(n)).into_vec();
    let mut cents: Vec<f32> = Vec::with_capacity(k * dim);
    for i in 0..k {
        cents.extend_from_slice(&rows[starts[i % starts.len()]]);
    }
    let kernels = Isa::active();
    for _ in 0..KMEANS_ITERATIONS {
        let nearest: Vec<usize> = rows
            .par_iter()
            .map(|r| ranked(kernels, r, &cents, dim).first().map_or(0, |&(_, c)| c as usize))
            .collect();
        let mut sums = vec![0.0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (r, &c) in rows.iter().zip(&nearest) {
            counts[c] += 1;
            for (s, &x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(r) {
                *s += f64::from(x);
            }
        }
        for c in 0..k {
            let cent = &mut cents[c * dim..(c + 1) * dim];
            if counts[c] == 0 {
                let pick = rand::RngExt::random_range(&mut rng, 0..n);
                cent.copy_from_slice(&rows[pick]);
            } else {
                for (x, &s) in cent.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                    *x = (s / counts[c] as f64) as f32;
                }
            }
        }
    }
    cents
}

/// Every centroid of `cents` by L2 distance from `row`, nearest first.
fn ranked(kernels: Isa, row: &[f32], cents: &[f32], dim: usize) -> Vec<(f32, u16)> {
    let mut out: Vec<(f32, u16)> = cents
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, cent)| (kernels.l2_sq_f32(row, cent), c as u16))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    out
}

/// What step 2 produces.
struct Assigned {
    /// PQ codes in input order.
    codes: Vec<u8>,
    /// Each point's home partition.
    home: Vec<u16>,
    /// The input row nearest the sample mean.
    entry: u32,
}

/// Step 2: one pass over the file, encoding each row and assigning it to two partitions.
fn assign(
    job: &Job<'_>,
    storage: &Storage,
    trained: &Trained,
    scratch: &Scratch,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<Assigned, IndexError> {
    let (file, n, parts) = (job.file, job.file.len(), trained.partitions());
    let m = trained.pq.bytes();
    let mut codes = vec![0u8; n * m];
    let mut home = vec![u16::MAX; n];
    let mut counts = vec![0usize; parts];
    let mut writers = (0..parts)
        .map(|p| {
            let path = scratch.path(&members_name(p));
            File::create(&path)
                .map(|f| BufWriter::with_capacity(MEMBER_WRITER_BYTES as usize, f))
                .map_err(io(&path))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let kernels = Isa::active();
    let dim = trained.mean.len();
    // Each row's ranking of every centroid is held for one piece: bound the piece by it too.
    let rows = piece_rows(file, parts * 8);
    let mut entry = (f32::INFINITY, 0u32);
    // Memberships that went to a farther partition because a nearer one was full.
    let mut displaced = 0usize;
    for start in (0..n).step_by(rows) {
        let piece = storage.store(file.read_range(start, rows.min(n - start))?)?;
        trained.pq.encode_into_slice(&piece, &mut codes[start * m..(start + piece.len()) * m]);
        let rankings: Vec<(f32, Vec<(f32, u16)>)> = (0..piece.len())
            .into_par_iter()
            .map(|i| {
                let row = piece.row(i).to_f32();
                (
                    kernels.l2_sq_f32(&row, &trained.mean),
                    ranked(kernels, &row, &trained.centroids, dim),
                )
            })
            .collect();
        for (i, (to_mean, ranking)) in rankings.into_iter().enumerate() {
            let id = (start + i) as u32;
            if to_mean < entry.0 {
                entry = (to_mean, id);
            }
            let mut chosen = ranking
                .iter()
                .enumerate()
                .map(|(rank, &(_, p))| (rank, p as usize))
                .filter(|&(_, p)| counts[p] < job.capacity);
            let (rank, first) = chosen.next().expect("the plan leaves room in the partitions");
            home[id as usize] = first as u16;
            let second = chosen.next();
            displaced += usize::from(rank > 0) + usize::from(second.is_some_and(|(r, _)| r > 1));
            for p in std::iter::once(first).chain(second.map(|(_, p)| p)) {
                counts[p] += 1;
                let path = scratch.path(&members_name(p));
                writers[p].write_all(&id.to_le_bytes()).map_err(io(&path))?;
                writers[p].write_all(piece.row_bytes(i)).map_err(io(&path))?;
            }
        }
        progress("assign", start + piece.len(), n);
    }
    for (p, w) in writers.into_iter().enumerate() {
        let path = scratch.path(&members_name(p));
        w.into_inner().map_err(|e| io(&path)(e.into_error()))?;
    }
    tracing::info!(
        displaced,
        memberships = counts.iter().sum::<usize>(),
        largest = counts.iter().max().copied().unwrap_or(0),
        smallest = counts.iter().min().copied().unwrap_or(0),
        "points assigned to partitions"
    );
    Ok(Assigned { codes, home, entry: entry.1 })
}

/// Step 3: each partition's graph, its lists spilled to `lists`, its home members' packed order
/// written out.
#[allow(clippy::too_many_arguments)]
fn build_partitions(
    job: &Job<'_>,
    storage: &Storage,
    trained: &Trained,
    assigned: &Assigned,
    lists: &ListsFile,
    starts: &[u32],
    header: &Header,
    scratch: &Scratch,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<(), IndexError> {
    let per_sector = header.nodes_per_sector();
    let total = copies(job) * job.file.len();
    let mut done = 0;
    let mut record = Vec::new();
    let mut list = Vec::new();
    // `starts` ends with the total.
    for (p, &start) in starts[..trained.partitions()].iter().enumerate() {
        let members = Members::open(scratch, p, &job.shape)?;
        let order_path = scratch.path(&order_name(p));
        if members.len == 0 {
            write_ids(&order_path, std::iter::empty())?;
            continue;
        }
        let mut ids = Vec::with_capacity(members.len);
        // The rows the graph is built over: 8-bit codes of float rows, byte rows as they are.
        let (mut local, metric) = match &trained.scalar {
            Some(codes) => {
                (VectorSet::zeroed(ElemType::U8, codes.offset.len(), members.len)?, Metric::L2)
            }
            None => (
                VectorSet::zeroed(job.shape.stored_elem, job.shape.stored_dim, members.len)?,
                storage.metric,
            ),
        };
        members.for_each(|i, id, row| {
            ids.push(id);
            match &trained.scalar {
                Some(codes) => codes.encode_row(row, local.row_bytes_mut(i)),
                None => local.row_bytes_mut(i).copy_from_slice(row.as_bytes()),
            }
            Ok(())
        })?;
        let graph = vamana::build(&local, metric, &job.params.graph, &|d| {
            progress("graph", done + d.min(ids.len()), total)
        })?;
        drop(local); // the guests' index below takes a fraction of its bytes
        let home_of = |l: u32| assigned.home[ids[l as usize] as usize];
        // Member `l`'s list as global ids into `list`; returns its global id.
        let global = |l: u32, list: &mut Vec<u32>| {
            list.clear();
            list.extend(graph.neighbours(l as usize).map(|u| ids[u as usize]));
            ids[l as usize]
        };
        // Home members' blocks are consecutive, in ascending id order, from the partition's first.
        let mut home_lists = lists.writer_at(start)?;
        let mut guests: Vec<u32> = Vec::new();
        for l in 0..ids.len() as u32 {
            if home_of(l) != p as u16 {
                guests.push(l);
                continue;
            }
            global(l, &mut list);
            record.clear();
            encode_record(&list, lists.record, &mut record);
            home_lists.write_all(&record).map_err(io(&lists.path))?;
        }
        home_lists.into_inner().map_err(|e| io(&lists.path)(e.into_error()))?;
        guests.sort_by_key(|&l| home_of(l)); // stable: ascending ids within each home
        for run in guests.chunk_by(|&a, &b| home_of(a) == home_of(b)) {
            append_guests(scratch, home_of(run[0]) as usize, lists.record, run, global)?;
        }
        drop(guests);
        // Packed among the home members alone, from where the partition's first node lands: with
        // guests packed too and dropped after, or every partition after the first shifted within
        // its sectors, the sectors would not hold the groups the packing chose.
        let at_home: Vec<bool> = (0..ids.len() as u32).map(|l| home_of(l) == p as u16).collect();
        let first_free = per_sector.max(1) - start as usize % per_sector.max(1);
        let order = pack::sector_order_among(&graph, per_sector, &at_home, first_free);
        write_ids(&order_path, order.into_iter().map(|l| ids[l as usize]))?;
        done += ids.len();
        progress("graph", done, total);
    }
    Ok(())
}

/// Every point's position: the partitions' packing orders, one after another.
fn positions(n: usize, partitions: usize, scratch: &Scratch) -> Result<Vec<u32>, IndexError> {
    let mut position = vec![u32::MAX; n];
    let mut next = 0u32;
    for p in 0..partitions {
        for id in read_ids(&scratch.path(&order_name(p)))? {
            assert_eq!(position[id as usize], u32::MAX, "point {id} at home twice");
            position[id as usize] = next;
            next += 1;
        }
    }
    assert_eq!(next as usize, n, "every point has exactly one home");
    Ok(position)
}

/// Per-thread buffers of the merge.
#[derive(Default)]
struct MergeScratch {
    lists: [Vec<u32>; 2],
    decoded: Vec<f32>,
}

/// Step 4: every point's two lists united and re-pruned, and the nodes written in position
/// order. Returns the sum of the degrees.
#[allow(clippy::too_many_arguments)]
fn merge_and_write(
    job: &Job<'_>,
    storage: &Storage,
    trained: &Trained,
    codes: &[u8],
    position: &[u32],
    header: Header,
    lists: &ListsFile,
    starts: &[u32],
    scratch: &Scratch,
    progress: &(dyn Fn(&'static str, usize, usize) + Sync),
) -> Result<u64, IndexError> {
    let n = job.file.len();
    let mut writer = IndexWriter::create(&job.dir.join(GRAPH_FILE), header)?;
    let mut done = 0;
    let mut degrees = 0u64;
    let merge = Merge { pq: &trained.pq, codes, metric: storage.metric, params: job.params };
    // Each member's home record, then its guest record (none with one partition).
    let (record, copies) = (lists.record, copies(job));
    // `starts` ends with the total: each partition's blocks begin at its own entry.
    for (p, &first) in starts[..trained.partitions()].iter().enumerate() {
        let order = read_ids(&scratch.path(&order_name(p)))?;
        let mut home_sorted = order.clone();
        home_sorted.sort_unstable();
        // A chunk of home members at a time (in packed order), within the merge's allowance.
        for chunk in order.chunks(job.merge_rows.max(1)) {
            let mut sorted = chunk.to_vec();
            sorted.sort_unstable();
            let vectors = Members::open(scratch, p, &job.shape)?.gather(&sorted)?;
            let block = copies * record;
            let mut blocks = vec![0u8; sorted.len() * block];
            lists.read_many(&blocks_of(first, &home_sorted, &sorted), &mut blocks, block)?;
            if copies == 2 {
                read_guests(scratch, p, record, &sorted, &mut blocks, (block, record))?;
            }
            // Each member's row in `vectors` (and block in `blocks`), and its merged list.
            let merged: Vec<Result<(usize, Vec<u32>), IndexError>> = chunk
                .par_iter()
                .map_init(MergeScratch::default, |s, &id| {
                    let k = sorted.binary_search(&id).expect("a member");
                    let [home, guest] = &mut s.lists;
                    home.clear();
                    guest.clear();
                    let records = &blocks[k * block..(k + 1) * block];
                    lists.parse(id, &records[..record], home)?;
                    if copies == 2 {
                        lists.parse(id, &records[record..], guest)?;
                    }
                    Ok((k, merge.lists(id, vectors.row(k), s)))
                })
                .collect();
            drop(blocks);
            let mut out = Vec::new();
            for (&id, member) in chunk.iter().zip(merged) {
                let (k, list) = member?;
                degrees += list.len() as u64;
                out.clear();
                out.extend(list.iter().map(|&u| position[u as usize]));
                writer.push(vectors.row_bytes(k), &out, id)?;
            }
            done += chunk.len();
            progress("merge", done, n);
        }
    }
    writer.finish()?;
    Ok(degrees)
}

/// The merge of one point's lists.
struct Merge<'a> {
    pq: &'a PqCodebook,
    codes: &'a [u8],
    metric: Metric,
    params: &'a BuildParams,
}

impl Merge<'_> {
    /// The union of `s.lists` without `id` or repeats; re-pruned to `R` when longer, with
    /// distances from `row` (the point's stored vector) to its candidates' PQ reconstructions,
    /// and between those.
    fn lists(&self, id: u32, row: Row<'_>, s: &mut MergeScratch) -> Vec<u32> {
        let r = self.params.graph.max_degree;
        let [home, guest] = &s.lists;
        let mut union: Vec<u32> = Vec::with_capacity(home.len() + guest.len());
        for &u in home.iter().chain(guest) {
            if u != id && !union.contains(&u) {
                union.push(u);
            }
        }
        if union.len() <= r {
            // Held until the chunk is written: at most R ids, as the merge's allowance counts,
            // not the two lists' worth it was made room for.
            union.shrink_to_fit();
            return union;
        }
        let m = self.pq.bytes();
        let dim = self.pq.dim();
        let mut decoded = VectorSet::zeroed(ElemType::F32, dim, union.len())
            .expect("the stored dimension is valid");
        s.decoded.resize(dim, 0.0);
        for (i, &u) in union.iter().enumerate() {
            let code = &self.codes[u as usize * m..(u as usize + 1) * m];
            self.pq.decode_into(code, &mut s.decoded);
            decoded.row_bytes_mut(i).copy_from_slice(bytemuck::cast_slice(&s.decoded));
        }
        let point = row.to_f32();
        let kernels = Isa::active();
        let cands: Vec<Candidate> = (0..union.len())
            .map(|i| Candidate {
                id: i as u32,
                dist: distance(kernels, self.metric, Row::F32(&point), decoded.row(i)),
            })
            .collect();
        let kept = robust_prune(
            &decoded,
            self.metric,
            u32::MAX,
            cands,
            self.params.graph.alpha,
            r,
            self.params.graph.saturate,
        );
        kept.into_iter().map(|i| union[i as usize]).collect()
    }
}

/// Reorders `codes` (`m` bytes each, in input order) in place so that point `i`'s code lands at
/// `position[i]`: each cycle of the permutation is followed once, with a bit per point.
fn permute(codes: &mut [u8], m: usize, position: &[u32]) {
    let n = position.len();
    let mut placed = vec![0u64; n.div_ceil(64)];
    let mut carried = vec![0u8; m];
    for start in 0..n {
        if placed[start / 64] >> (start % 64) & 1 == 1 {
            continue;
        }
        carried.copy_from_slice(&codes[start * m..(start + 1) * m]);
        let mut from = start;
        loop {
            let to = position[from] as usize;
            codes[to * m..(to + 1) * m].swap_with_slice(&mut carried);
            placed[to / 64] |= 1 << (to % 64);
            if to == start {
                break;
            }
            from = to;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PARTITION_SLACK;

    /// Rows around `centre`, `count` of them, spread by `spread` (deterministic).
    fn cluster(centre: f32, count: usize, spread: f32, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..count * 4)
            .map(|_| centre + spread * (rand::RngExt::random::<f32>(&mut rng) - 0.5))
            .collect()
    }

    #[test]
    fn an_uneven_sample_is_split_until_no_partition_would_overflow() {
        // Three clusters holding 70%, 20% and 10% of the points; four partitions planned, each
        // capped at 1.15 × its share of the 2n memberships. K-means alone leaves the big cluster
        // (1.4n memberships) overflowing its partitions.
        let mut rows = cluster(0.0, 7000, 1.0, 1);
        rows.extend(cluster(10.0, 2000, 1.0, 2));
        rows.extend(cluster(-10.0, 1000, 1.0, 3));
        let sample = VectorSet::from_f32(4, &rows).unwrap();
        let n = 1_000_000;
        let capacity = (2.0 * n as f64 / 4.0 * PARTITION_SLACK) as usize;
        let planned = kmeans(&sample, 4, 9);
        let cents = balance(&sample, planned, n, capacity, 9);
        let parts = cents.len() / 4;
        assert!(parts > 4, "nothing was split: {parts} partitions");
        let mut counts = vec![0usize; parts];
        for i in 0..sample.len() {
            let ranking = ranked(Isa::active(), &sample.row(i).to_f32(), &cents, 4);
            counts[ranking[0].1 as usize] += 1;
            counts[ranking[1].1 as usize] += 1;
        }
        let largest = *counts.iter().max().unwrap() as f64 * n as f64 / sample.len() as f64;
        assert!(largest <= capacity as f64 * BALANCE_SHARE, "{largest} of {capacity}: {counts:?}");
    }

    #[test]
    fn permute_moves_every_code_to_its_position() {
        let n = 1000;
        let m = 3;
        let mut position: Vec<u32> = (0..n as u32).collect();
        let mut rng = StdRng::seed_from_u64(7);
        rand::seq::SliceRandom::shuffle(&mut position[..], &mut rng);
        let codes: Vec<u8> = (0..n * m).map(|i| (i * 31 % 251) as u8).collect();
        let mut moved = codes.clone();
        permute(&mut moved, m, &position);
        for i in 0..n {
            let p = position[i] as usize;
            assert_eq!(&moved[p * m..(p + 1) * m], &codes[i * m..(i + 1) * m]);
        }
    }
}
