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
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
use crate::plan::{MEMBER_WRITER_BYTES, PIECE_BYTES, Plan, SCRATCH_STREAM_BYTES, Shape};
use crate::pq::{CODES_FILE, PIVOTS_FILE, PqCodebook, PqParams, write_codes};
use crate::source::VectorFile;
use crate::vamana::{self, Candidate, robust_prune};

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

/// The scratch directory, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create(out: &Path) -> Result<Scratch, IndexError> {
        let dir = out.join(SCRATCH_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Scratch { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove build scratch");
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IndexError + '_ {
    move |e| IndexError::Io { path: path.to_owned(), source: e }
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
    let pq_params = PqParams { max_samples: rows, ..job.params.pq };
    let pq = PqCodebook::train(&sample, storage.metric, &pq_params)?;
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

/// Where each partition's home lists begin in the lists file, and the total, last. A point's
/// *block* is its record there, in home-partition order: the home members of partition 0 in
/// ascending id order, then those of partition 1, and so on. A partition's build writes its home
/// members' lists as one dense, ascending stretch, and the merge, which takes one partition's home
/// members at a time, reads them from it. In id order (the first layout) every chunk of the merge
/// read nearly the whole file (on GloVe at 32 MiB, 14 GB of reads for a 200 MB file). The starts
/// are also where each partition's nodes begin in the index, as positions follow home partitions.
fn home_starts(home: &[u16], partitions: usize) -> Vec<u32> {
    let mut starts = vec![0u32; partitions + 1];
    for &p in home {
        starts[p as usize + 1] += 1;
    }
    for p in 0..partitions {
        starts[p + 1] += starts[p];
    }
    starts
}

/// The blocks of a partition's home members `ids` (ascending, a subset of `home_sorted`, all of
/// the partition's home members ascending, whose blocks start at `first`): ascending too.
fn blocks_of(first: u32, home_sorted: &[u32], ids: &[u32]) -> Vec<u32> {
    ids.iter()
        .map(|id| {
            let rank = home_sorted.binary_search(id).expect("a home member of the partition");
            first + rank as u32
        })
        .collect()
}

fn members_name(p: usize) -> String {
    format!("members-{p:05}")
}

fn order_name(p: usize) -> String {
    format!("order-{p:05}")
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

/// A partition's members as step 2 wrote them (file `members-{p}`): per member, in ascending id
/// order, its id (`u32`, little-endian) and then its stored row. Steps 3 and 4 read a partition's
/// rows from here, one sequential pass each, instead of gathering them from the input, where a
/// partition's members lie all over the file: the gather's reads, coalesced across the gaps
/// between members, read nearly the whole input for every partition (on SIFT 1M at 96 MiB, 15 GB
/// in the graph phase and 16 GB in the merge, against 1 GB written here).
struct Members {
    path: PathBuf,
    reader: BufReader<File>,
    /// One row, the buffer a record's row is read into (aligned for any element type).
    row: VectorSet,
    len: usize,
}

impl Members {
    fn open(scratch: &Scratch, p: usize, shape: &Shape) -> Result<Members, IndexError> {
        let path = scratch.path(&members_name(p));
        let file = File::open(&path).map_err(io(&path))?;
        let row = VectorSet::zeroed(shape.stored_elem, shape.stored_dim, 1)?;
        let record = 4 + row.row_bytes(0).len() as u64;
        let bytes = file.metadata().map_err(io(&path))?.len();
        if bytes % record != 0 {
            return Err(IndexError::Mismatch(format!(
                "{}: {bytes} bytes is not a whole number of {record}-byte members",
                path.display()
            )));
        }
        let reader = BufReader::with_capacity(SCRATCH_STREAM_BYTES, file);
        Ok(Members { path, reader, row, len: (bytes / record) as usize })
    }

    /// Every member: its id, its row in [`Members::row`] as `each(index, id, row)` sees it.
    fn for_each(
        mut self,
        mut each: impl FnMut(usize, u32, Row<'_>) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut id = [0u8; 4];
        for i in 0..self.len {
            self.reader.read_exact(&mut id).map_err(io(&self.path))?;
            self.reader.read_exact(self.row.row_bytes_mut(0)).map_err(io(&self.path))?;
            each(i, u32::from_le_bytes(id), self.row.row(0))?;
        }
        Ok(())
    }

    /// The rows of `sorted` (ascending member ids), into rows `0..` of a new set.
    fn gather(mut self, sorted: &[u32]) -> Result<VectorSet, IndexError> {
        let mut out = VectorSet::zeroed(self.row.elem(), self.row.dim(), sorted.len())?;
        let mut next = 0;
        for _ in 0..self.len {
            let wanted = sorted.get(next).copied();
            let mut peek = [0u8; 4];
            self.reader.read_exact(&mut peek).map_err(io(&self.path))?;
            let id = u32::from_le_bytes(peek);
            let row = if Some(id) == wanted {
                out.row_bytes_mut(next)
            } else {
                self.row.row_bytes_mut(0)
            };
            self.reader.read_exact(row).map_err(io(&self.path))?;
            next += usize::from(Some(id) == wanted);
        }
        if next != sorted.len() {
            return Err(IndexError::Mismatch(format!(
                "{}: member {} missing",
                self.path.display(),
                sorted[next]
            )));
        }
        Ok(out)
    }
}

fn read_ids(path: &Path) -> Result<Vec<u32>, IndexError> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path).map_err(io(path))?)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
}

fn write_ids(path: &Path, ids: impl Iterator<Item = u32>) -> Result<(), IndexError> {
    let mut w = BufWriter::new(File::create(path).map_err(io(path))?);
    for id in ids {
        w.write_all(&id.to_le_bytes()).map_err(io(path))?;
    }
    w.into_inner().map_err(|e| io(path)(e.into_error()))?;
    Ok(())
}

/// Home lists on disk: one record per point, in its block (see [`home_starts`]), `1 + R`
/// little-endian words: the length, then the ids. A record never written reads as an empty list.
/// A partition writes its home members' records in one ascending, dense stretch.
struct ListsFile {
    path: PathBuf,
    file: File,
    record: usize,
}

/// A record of a list: its length, then its ids, padded with zeros to `record` bytes.
fn encode_record(list: &[u32], record: usize, out: &mut Vec<u8>) {
    assert!(4 * (1 + list.len()) <= record, "a list of {} over the record", list.len());
    let at = out.len();
    out.extend_from_slice(&(list.len() as u32).to_le_bytes());
    for x in list {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.resize(at + record, 0);
}

impl ListsFile {
    fn create(path: &Path, n: usize, max_degree: usize) -> Result<ListsFile, IndexError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io(path))?;
        let record = 4 * (1 + max_degree);
        file.set_len((n * record) as u64).map_err(io(path))?;
        Ok(ListsFile { path: path.to_owned(), file, record })
    }

    /// A writer of consecutive records from block `first` on.
    fn writer_at(&self, first: u32) -> Result<BufWriter<File>, IndexError> {
        let mut file = self.file.try_clone().map_err(io(&self.path))?;
        file.seek(SeekFrom::Start((first as usize * self.record) as u64))
            .map_err(io(&self.path))?;
        Ok(BufWriter::with_capacity(SCRATCH_STREAM_BYTES, file))
    }

    /// The records of `blocks` (ascending, distinct), one after another in `out` at `stride`
    /// bytes apart (at least a record; the rest of each stride is left as it is), nearby blocks
    /// read together (as [`VectorFile::gather`] reads rows).
    fn read_many(&self, blocks: &[u32], out: &mut [u8], stride: usize) -> Result<(), IndexError> {
        let record = self.record;
        assert!(stride >= record && out.len() == blocks.len() * stride, "room for every record");
        let mut buf = Vec::new();
        for run in crate::source::coalesced_runs(blocks, record as u64) {
            let first = blocks[run.start] as usize;
            buf.resize((blocks[run.end - 1] as usize - first + 1) * record, 0);
            self.file.read_exact_at(&mut buf, (first * record) as u64).map_err(io(&self.path))?;
            for (k, &b) in blocks[run.clone()].iter().enumerate() {
                let from = (b as usize - first) * record;
                let to = (run.start + k) * stride;
                out[to..to + record].copy_from_slice(&buf[from..from + record]);
            }
        }
        Ok(())
    }

    /// A list from its `record` (as [`encode_record`] wrote it), appended to `out`.
    fn parse(&self, id: u32, record: &[u8], out: &mut Vec<u32>) -> Result<(), IndexError> {
        let len = u32::from_le_bytes(record[..4].try_into().expect("4 bytes")) as usize;
        let max = self.record / 4 - 1;
        if len > max {
            return Err(IndexError::Mismatch(format!(
                "{}: point {id} has a list of {len} over R = {max}",
                self.path.display()
            )));
        }
        out.extend(
            record[4..4 + 4 * len]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        Ok(())
    }
}

fn guests_name(p: usize) -> String {
    format!("guests-{p:05}")
}

/// The guest lists of partition `home`'s members, built in other partitions: one file per home
/// partition, appended to by each partition that hosts some of its members (their records in
/// ascending id order). Appending keeps every write sequential: written into the members' blocks
/// instead, each guest list dirtied a page of its own, which under a memory cap was evicted and
/// read back to be written (about 4 KiB read and written per 260-byte list).
fn append_guests(
    scratch: &Scratch,
    home: usize,
    record: usize,
    members: &[u32],
    list_of: impl Fn(u32, &mut Vec<u32>) -> u32,
) -> Result<(), IndexError> {
    let path = scratch.path(&guests_name(home));
    let file = File::options().create(true).append(true).open(&path).map_err(io(&path))?;
    let mut w = BufWriter::with_capacity(SCRATCH_STREAM_BYTES, file);
    let (mut buf, mut list) = (Vec::with_capacity(4 + record), Vec::new());
    for &member in members {
        let id = list_of(member, &mut list);
        buf.clear();
        buf.extend_from_slice(&id.to_le_bytes());
        encode_record(&list, record, &mut buf);
        w.write_all(&buf).map_err(io(&path))?;
    }
    w.into_inner().map_err(|e| io(&path)(e.into_error()))?;
    Ok(())
}

/// Copies the guest record of each of `sorted`'s members (ascending) from partition `home`'s
/// guest log into `out`, at `stride · k + offset` for member `k`. Members without one keep what
/// `out` held there (zeros: an empty list).
fn read_guests(
    scratch: &Scratch,
    home: usize,
    record: usize,
    sorted: &[u32],
    out: &mut [u8],
    (stride, offset): (usize, usize),
) -> Result<(), IndexError> {
    let path = scratch.path(&guests_name(home));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // no guests
        Err(e) => return Err(io(&path)(e)),
    };
    let bytes = file.metadata().map_err(io(&path))?.len();
    if bytes % (4 + record) as u64 != 0 {
        return Err(IndexError::Mismatch(format!(
            "{}: {bytes} bytes is not a whole number of {}-byte guest lists",
            path.display(),
            4 + record
        )));
    }
    let mut r = BufReader::with_capacity(SCRATCH_STREAM_BYTES, file);
    let mut entry = vec![0u8; 4 + record];
    loop {
        match r.read_exact(&mut entry) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io(&path)(e)),
        }
        let id = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
        if let Ok(k) = sorted.binary_search(&id) {
            let at = k * stride + offset;
            out[at..at + record].copy_from_slice(&entry[4..]);
        }
    }
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
        let at_home: Vec<bool> =
            ids.iter().map(|&id| assigned.home[id as usize] == p as u16).collect();
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
            // Each member's home record, then its guest record (none with one partition).
            let (record, copies) = (lists.record, copies(job));
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

    /// A shape of `dim`-float rows, for the member files.
    fn floats(dim: usize) -> Shape {
        Shape {
            n: 0,
            stored_dim: dim,
            stored_elem: ElemType::F32,
            input_elem: ElemType::F32,
            dim,
            max_degree: 4,
            slack: 1.3,
            pq_bytes: 1,
            pq_samples: 1,
        }
    }

    fn chop(path: &Path, bytes: u64) {
        let file = File::options().write(true).open(path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len - bytes).unwrap();
    }

    #[test]
    fn guest_lists_reach_their_members_and_a_torn_guest_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(dir.path()).unwrap();
        let record = 4 * (1 + 4);
        // Partition 3's guests, hosted by two partitions: local members 0..3 are points 5, 9
        // and 12 of the first, local member 0 is point 30 of the second.
        let first = |l: u32, list: &mut Vec<u32>| {
            *list = vec![l + 10, l + 20];
            [5, 9, 12][l as usize]
        };
        append_guests(&scratch, 3, record, &[0, 1, 2], first).unwrap();
        append_guests(&scratch, 3, record, &[0], |_, list: &mut Vec<u32>| {
            *list = vec![7, 8, 9, 6];
            30
        })
        .unwrap();
        let lists = ListsFile::create(&scratch.path("lists"), 1, 4).unwrap();
        let (sorted, stride) = ([9u32, 30, 31], 2 * record);
        let mut out = vec![0u8; sorted.len() * stride];
        read_guests(&scratch, 3, record, &sorted, &mut out, (stride, record)).unwrap();
        let guest = |k: usize| {
            let mut list = Vec::new();
            lists.parse(sorted[k], &out[k * stride + record..(k + 1) * stride], &mut list).unwrap();
            list
        };
        assert_eq!(guest(0), [11, 21]);
        assert_eq!(guest(1), [7, 8, 9, 6]);
        assert!(guest(2).is_empty(), "point 31 has no guest list");
        // A partition nobody hosted members of has no log: no guest lists, no error.
        read_guests(&scratch, 4, record, &sorted, &mut out, (stride, record)).unwrap();

        chop(&scratch.path(&guests_name(3)), 3);
        let torn = read_guests(&scratch, 3, record, &sorted, &mut out, (stride, record));
        assert!(matches!(torn, Err(IndexError::Mismatch(_))), "{torn:?}");
    }

    #[test]
    fn a_partitions_members_come_back_with_their_rows_and_a_torn_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::create(dir.path()).unwrap();
        let shape = floats(3);
        let path = scratch.path(&members_name(0));
        let mut bytes = Vec::new();
        for id in [2u32, 4, 7, 8] {
            bytes.extend_from_slice(&id.to_le_bytes());
            for j in 0..3 {
                bytes.extend_from_slice(&(id as f32 + j as f32 / 10.0).to_le_bytes());
            }
        }
        std::fs::write(&path, &bytes).unwrap();

        let mut seen = Vec::new();
        Members::open(&scratch, 0, &shape)
            .unwrap()
            .for_each(|i, id, row| {
                seen.push((i, id, row.to_f32()[2]));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, [(0, 2, 2.2), (1, 4, 4.2), (2, 7, 7.2), (3, 8, 8.2)]);
        let rows = Members::open(&scratch, 0, &shape).unwrap().gather(&[4, 8]).unwrap();
        assert_eq!(rows.row(0).to_f32(), [4.0, 4.1, 4.2]);
        assert_eq!(rows.row(1).to_f32(), [8.0, 8.1, 8.2]);
        let missing = Members::open(&scratch, 0, &shape).unwrap().gather(&[4, 5]);
        assert!(matches!(missing, Err(IndexError::Mismatch(_))), "{missing:?}");

        chop(&path, 1);
        let torn = Members::open(&scratch, 0, &shape);
        assert!(matches!(torn, Err(IndexError::Mismatch(_))), "{:?}", torn.err());
    }
}
