//! Product quantisation: the compact codes that stay in RAM and steer the beam search.
//!
//! A vector of `dim` elements is split into `m` contiguous subspaces (sizes differ by at most one);
//! each subspace has 256 centroids learnt by k-means, and a vector's code is the index of the nearest
//! centroid in each subspace — `m` bytes. The data's mean is subtracted first (as DiskANN does), so
//! the centroids model the spread, not the offset.
//!
//! Training is deterministic under a seed: each subspace's k-means has its own generator seeded from
//! `(seed, subspace)`, so the result does not depend on how many threads run it. (The generator is
//! `rand`'s `StdRng`: reproducible for a given build of Quiver, not promised across `rand` versions.)
//!
//! At query time [`PqCodebook::query_table`] builds the `m × 256` table of query-to-centroid
//! distances that `quiver_simd`'s PQ scorer sums; the sum approximates the true distance under the
//! collection's metric (squared L2, negated inner product, or cosine distance on normalised data).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rayon::prelude::*;

use crate::data::{Metric, Row, VectorSet};

/// Centroids per subspace.
pub const CENTROIDS: usize = quiver_simd::PQ_CENTROIDS;

/// How PQ is trained. `Default` gives the documented defaults.
#[derive(Clone, Copy, Debug)]
pub struct PqParams {
    /// Bytes per code (subspaces). Default: chosen from the dimension by [`default_pq_bytes`].
    pub bytes: Option<usize>,
    /// At most this many vectors are sampled for training. Default 100 000.
    pub max_samples: usize,
    /// Lloyd iterations after k-means++ seeding. Default 12.
    pub iterations: usize,
    /// Seed for sampling and seeding. Default 0x5155_4956 ("QUIV").
    pub seed: u64,
}

impl Default for PqParams {
    fn default() -> Self {
        Self { bytes: None, max_samples: 100_000, iterations: 12, seed: 0x5155_4956 }
    }
}

/// The default code size for a dimension: one byte per 4 dimensions, between 8 and 64 bytes
/// (128-d SIFT → 32 bytes, 50-d GloVe → 13, 960-d GIST → 64), and never more than `dim`.
pub fn default_pq_bytes(dim: usize) -> usize {
    dim.div_ceil(4).clamp(8, 64).min(dim)
}

/// Why PQ could not be trained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PqError {
    /// The code size does not fit the dimension.
    #[error("{bytes} PQ bytes for dimension {dim}: expected 1..={dim} (and at most {max})", max = quiver_simd::MAX_PQ_SUBSPACES)]
    BadBytes {
        /// Requested bytes.
        bytes: usize,
        /// Vector dimension.
        dim: usize,
    },
    /// No vectors to train on.
    #[error("cannot train PQ on an empty vector set")]
    Empty,
    /// The sample file could not be read ([`PqCodebook::train_from_file`]).
    #[error("reading the PQ training sample: {0}")]
    Sample(#[source] crate::data::DataError),
}

/// Subspaces whose k-means run at a time when training from a file
/// ([`PqCodebook::train_from_file`]): each holds its columns of the sample and their transpose.
pub const FILE_TRAIN_GROUP: usize = 2;
/// Bytes of the sample file read at a time when training from it.
pub const FILE_TRAIN_PIECE: usize = 256 << 10;

/// Bytes of training a codebook of `m` subspaces from a file of `rows` sampled rows of `dim`
/// dimensions ([`PqCodebook::train_from_file`]): [`FILE_TRAIN_GROUP`] subspaces' columns and
/// their transposes at a time, the piece read (as stored and as f32) and the centroids.
#[must_use]
pub fn file_training_bytes(rows: u64, dim: u64, m: u64) -> u64 {
    let sub = dim.div_ceil(m.max(1));
    let group = FILE_TRAIN_GROUP as u64 * rows * sub * 4 * 2;
    group + 2 * FILE_TRAIN_PIECE as u64 + 2 * CENTROIDS as u64 * dim * 4 + dim * 16
}

/// A trained product quantiser.
#[derive(Clone, Debug)]
pub struct PqCodebook {
    dim: usize,
    metric: Metric,
    /// Subspace `j` covers dimensions `bounds[j]..bounds[j + 1]`.
    bounds: Vec<usize>,
    /// Mean of the training sample, subtracted before quantising.
    center: Vec<f32>,
    /// Subspace `j`'s 256 centroids, row-major, start at `256 · bounds[j]`.
    centroids: Vec<f32>,
    /// The same centroids column-major, one entry per subspace, for encoding; made on the first
    /// encode. An index opened only to be searched never encodes, so it does not hold its
    /// centroids twice (128 KiB more per index at 128-d, 512 KiB at 512-d).
    columns: std::sync::OnceLock<Vec<Columns>>,
}

/// Two codebooks are equal when they quantise alike (whether either has made its encoding
/// columns yet does not matter).
impl PartialEq for PqCodebook {
    fn eq(&self, other: &Self) -> bool {
        self.dim == other.dim
            && self.metric == other.metric
            && self.bounds == other.bounds
            && self.center == other.center
            && self.centroids == other.centroids
    }
}

impl PqCodebook {
    /// Trains a codebook on (a sample of) `data`.
    ///
    /// # Errors
    /// If `data` is empty or the code size does not fit the dimension.
    pub fn train(data: &VectorSet, metric: Metric, params: &PqParams) -> Result<Self, PqError> {
        let dim = data.dim();
        let bounds = subspace_bounds(dim, data.len(), params)?;
        let m = bounds.len() - 1;

        // Sample without replacement, in a deterministic order.
        let mut rng = StdRng::seed_from_u64(params.seed);
        let take = params.max_samples.clamp(1, data.len());
        let mut picks: Vec<usize> = if take == data.len() {
            (0..data.len()).collect()
        } else {
            rand::seq::index::sample(&mut rng, data.len(), take).into_vec()
        };
        picks.sort_unstable();
        let mut sample: Vec<f32> = Vec::with_capacity(take * dim);
        for &i in &picks {
            sample.extend(data.row(i).to_f32());
        }
        let mut center = vec![0.0f64; dim];
        for row in sample.chunks_exact(dim) {
            for (c, &x) in center.iter_mut().zip(row) {
                *c += f64::from(x);
            }
        }
        let center: Vec<f32> = center.iter().map(|&c| (c / take as f64) as f32).collect();
        for row in sample.chunks_exact_mut(dim) {
            for (x, &c) in row.iter_mut().zip(&center) {
                *x -= c;
            }
        }

        let per_subspace: Vec<Vec<f32>> = (0..m)
            .into_par_iter()
            .map(|j| {
                let (lo, hi) = (bounds[j], bounds[j + 1]);
                let sub: Vec<f32> =
                    sample.chunks_exact(dim).flat_map(|r| r[lo..hi].iter().copied()).collect();
                kmeans(&sub, hi - lo, params.iterations, subspace_seed(params.seed, j))
            })
            .collect();
        let centroids = per_subspace.concat();
        debug_assert_eq!(centroids.len(), CENTROIDS * dim);
        Ok(Self::assemble(dim, metric, bounds, center, centroids))
    }

    /// Trains a codebook on every row of a vector file, as [`PqCodebook::train`] would on the
    /// same rows held in memory (the same codebook, bit for bit), but holding only
    /// [`FILE_TRAIN_GROUP`] subspaces' columns at a time ([`file_training_bytes`]): one pass
    /// for the mean, then one a group of subspaces. What a growth that retrains its codebook
    /// under a tight budget trains with (1024-d rows: 10,000 sampled rows are 40 MB, a
    /// subspace's columns 0.6 MB).
    ///
    /// # Errors
    /// [`PqError::Empty`] for an empty file, [`PqError::BadBytes`] for a code size that does
    /// not fit, [`PqError::Sample`] if the file cannot be read.
    pub fn train_from_file(
        file: &crate::source::VectorFile,
        metric: Metric,
        params: &PqParams,
    ) -> Result<Self, PqError> {
        let (dim, n) = (file.dim(), file.len());
        let bounds = subspace_bounds(dim, n, params)?;
        let m = bounds.len() - 1;
        let piece = (FILE_TRAIN_PIECE / file.row_bytes().max(1)).max(1);
        let for_each_piece = |each: &mut dyn FnMut(&VectorSet)| -> Result<(), PqError> {
            for start in (0..n).step_by(piece) {
                let rows = file.read_range(start, piece.min(n - start)).map_err(PqError::Sample)?;
                each(&rows);
            }
            Ok(())
        };
        let mut sum = vec![0.0f64; dim];
        for_each_piece(&mut |rows| {
            for i in 0..rows.len() {
                for (c, x) in sum.iter_mut().zip(rows.row(i).to_f32()) {
                    *c += f64::from(x);
                }
            }
        })?;
        let center: Vec<f32> = sum.iter().map(|&c| (c / n as f64) as f32).collect();
        let mut centroids = Vec::with_capacity(CENTROIDS * dim);
        for group in (0..m).collect::<Vec<_>>().chunks(FILE_TRAIN_GROUP) {
            let mut subs: Vec<Vec<f32>> = group
                .iter()
                .map(|&j| Vec::with_capacity(n * (bounds[j + 1] - bounds[j])))
                .collect();
            for_each_piece(&mut |rows| {
                for i in 0..rows.len() {
                    let row = rows.row(i).to_f32();
                    for (sub, &j) in subs.iter_mut().zip(group) {
                        let (lo, hi) = (bounds[j], bounds[j + 1]);
                        sub.extend(row[lo..hi].iter().zip(&center[lo..hi]).map(|(x, c)| x - c));
                    }
                }
            })?;
            let trained: Vec<Vec<f32>> = subs
                .par_iter()
                .zip(group)
                .map(|(sub, &j)| {
                    let len = bounds[j + 1] - bounds[j];
                    kmeans(sub, len, params.iterations, subspace_seed(params.seed, j))
                })
                .collect();
            drop(subs);
            for c in trained {
                centroids.extend(c);
            }
        }
        debug_assert_eq!(centroids.len(), CENTROIDS * dim);
        Ok(Self::assemble(dim, metric, bounds, center, centroids))
    }

    /// Rebuilds a codebook from its parts (as stored on disk).
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn from_parts(
        dim: usize,
        metric: Metric,
        m: usize,
        center: Vec<f32>,
        centroids: Vec<f32>,
    ) -> Result<Self, String> {
        if m == 0 || m > dim || m > quiver_simd::MAX_PQ_SUBSPACES {
            return Err(format!("{m} subspaces for dimension {dim}"));
        }
        if center.len() != dim || centroids.len() != CENTROIDS * dim {
            return Err(format!(
                "PQ pivots: {} centre values and {} centroid values for dimension {dim}",
                center.len(),
                centroids.len()
            ));
        }
        if let Some(bad) = center.iter().chain(&centroids).find(|x| !x.is_finite()) {
            return Err(format!("PQ pivots hold a non-finite value ({bad})"));
        }
        let bounds = (0..=m).map(|j| j * dim / m).collect();
        Ok(Self::assemble(dim, metric, bounds, center, centroids))
    }

    fn assemble(
        dim: usize,
        metric: Metric,
        bounds: Vec<usize>,
        center: Vec<f32>,
        centroids: Vec<f32>,
    ) -> Self {
        let columns = std::sync::OnceLock::new();
        Self { dim, metric, bounds, center, centroids, columns }
    }

    /// The encoding columns, made on first use.
    fn columns(&self) -> &[Columns] {
        self.columns.get_or_init(|| {
            let sub = |w: &[usize]| &self.centroids[CENTROIDS * w[0]..CENTROIDS * w[1]];
            self.bounds.windows(2).map(|w| Columns::new(sub(w), w[1] - w[0])).collect()
        })
    }

    /// Dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes per code.
    pub fn bytes(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The metric the tables are built for.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The subtracted mean.
    pub fn center(&self) -> &[f32] {
        &self.center
    }

    /// All centroids: subspace `j`'s 256 rows of `len_j` floats start at `256 · start_j`.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    fn sub(&self, j: usize) -> (usize, usize, &[f32]) {
        let (lo, hi) = (self.bounds[j], self.bounds[j + 1]);
        (lo, hi, &self.centroids[CENTROIDS * lo..CENTROIDS * hi])
    }

    /// Encodes one vector into `out` (`bytes()` long).
    pub fn encode_into(&self, row: Row<'_>, out: &mut [u8]) {
        self.encode_with(row, out, &mut EncodeScratch::default());
    }

    fn encode_with(&self, row: Row<'_>, out: &mut [u8], scratch: &mut EncodeScratch) {
        assert_eq!(out.len(), self.bytes(), "PQ encode: output of {} bytes", out.len());
        assert_eq!(row.len(), self.dim, "PQ encode: row of dimension {}", row.len());
        let x = &mut scratch.x;
        x.clear();
        match row {
            Row::F32(v) => x.extend(v.iter().zip(&self.center).map(|(v, c)| v - c)),
            Row::U8(v) => x.extend(v.iter().zip(&self.center).map(|(&v, c)| f32::from(v) - c)),
            Row::I8(v) => x.extend(v.iter().zip(&self.center).map(|(&v, c)| f32::from(v) - c)),
        }
        for ((o, w), columns) in out.iter_mut().zip(self.bounds.windows(2)).zip(self.columns()) {
            *o = columns.nearest(&x[w[0]..w[1]], &mut scratch.dist).0;
        }
    }

    /// Encodes every vector of `data`, in parallel: `data.len() × bytes()` bytes.
    pub fn encode_all(&self, data: &VectorSet) -> Vec<u8> {
        let mut codes = vec![0u8; data.len() * self.bytes()];
        self.encode_into_slice(data, &mut codes);
        codes
    }

    /// Encodes every vector of `data`, in parallel, into `codes` (`data.len() × bytes()` bytes):
    /// how a build that streams its input encodes one piece at a time.
    pub fn encode_into_slice(&self, data: &VectorSet, codes: &mut [u8]) {
        let m = self.bytes();
        assert_eq!(
            codes.len(),
            data.len() * m,
            "PQ encode: {} bytes for {} codes",
            codes.len(),
            data.len()
        );
        codes
            .par_chunks_mut(m)
            .enumerate()
            .for_each_init(EncodeScratch::default, |scratch, (i, out)| {
                self.encode_with(data.row(i), out, scratch)
            });
    }

    /// The reconstruction of a code (centre plus the chosen centroids), for tests and diagnostics.
    pub fn decode(&self, code: &[u8]) -> Vec<f32> {
        let mut v = vec![0.0; self.dim];
        self.decode_into(code, &mut v);
        v
    }

    /// [`PqCodebook::decode`] into `out` (`dim` floats).
    pub fn decode_into(&self, code: &[u8], out: &mut [f32]) {
        assert_eq!(out.len(), self.dim, "PQ decode: output of {} floats", out.len());
        out.copy_from_slice(&self.center);
        for (j, &c) in code.iter().enumerate() {
            let (lo, hi, cents) = self.sub(j);
            let len = hi - lo;
            for (d, x) in out[lo..hi].iter_mut().enumerate() {
                *x += cents[usize::from(c) * len + d];
            }
        }
    }

    /// Fills `table` (`bytes() × 256`) so that summing `table[j·256 + code[j]]` over `j` gives the
    /// approximate distance from `query` to the coded vector under the codebook's metric.
    pub fn query_table(&self, query: &[f32], table: &mut [f32]) {
        assert_eq!(query.len(), self.dim, "PQ table: query of dimension {}", query.len());
        assert_eq!(table.len(), self.bytes() * CENTROIDS, "PQ table: wrong table size");
        let m = self.bytes();
        for j in 0..m {
            let (lo, hi, cents) = self.sub(j);
            let len = hi - lo;
            let row = &mut table[j * CENTROIDS..(j + 1) * CENTROIDS];
            match self.metric {
                Metric::L2 => {
                    // ‖q − (μ + c)‖² over the subspace.
                    let q: Vec<f32> = query[lo..hi]
                        .iter()
                        .zip(&self.center[lo..hi])
                        .map(|(a, b)| a - b)
                        .collect();
                    for (c, t) in row.iter_mut().enumerate() {
                        let cent = &cents[c * len..(c + 1) * len];
                        *t = q.iter().zip(cent).map(|(a, b)| (a - b) * (a - b)).sum();
                    }
                }
                Metric::InnerProduct | Metric::Cosine => {
                    // −q·(μ + c); cosine adds 1/m per subspace so the sum is 1 − q·x̂.
                    let q = &query[lo..hi];
                    let qmu: f32 = q.iter().zip(&self.center[lo..hi]).map(|(a, b)| a * b).sum();
                    let bias = if self.metric == Metric::Cosine { 1.0 / m as f32 } else { 0.0 };
                    for (c, t) in row.iter_mut().enumerate() {
                        let cent = &cents[c * len..(c + 1) * len];
                        let dot: f32 = q.iter().zip(cent).map(|(a, b)| a * b).sum();
                        *t = bias - qmu - dot;
                    }
                }
            }
        }
    }
}

/// Reused buffers of an encoding thread.
struct EncodeScratch {
    x: Vec<f32>,
    dist: [f32; CENTROIDS],
}

impl Default for EncodeScratch {
    fn default() -> Self {
        Self { x: Vec::new(), dist: [0.0; CENTROIDS] }
    }
}

/// One subspace's 256 centroids stored column-major (`len` columns of 256 values), so that the
/// distances from a point to all of them are `len` passes of 256 independent lanes — a shape the
/// compiler vectorises — instead of 256 short horizontal sums.
#[derive(Clone, Debug, PartialEq)]
struct Columns {
    t: Vec<f32>,
}

impl Columns {
    /// From `CENTROIDS` row-major centroids of `len` floats.
    fn new(rows: &[f32], len: usize) -> Self {
        debug_assert_eq!(rows.len(), CENTROIDS * len);
        Self { t: transpose(rows, len) }
    }

    /// The nearest centroid to `x` and its squared distance; ties go to the lowest index.
    fn nearest(&self, x: &[f32], dist: &mut [f32; CENTROIDS]) -> (u8, f32) {
        debug_assert_eq!(x.len() * CENTROIDS, self.t.len());
        dist.fill(0.0);
        for (&xd, col) in x.iter().zip(self.t.chunks_exact(CENTROIDS)) {
            for (o, &c) in dist.iter_mut().zip(col) {
                let t = xd - c;
                *o += t * t;
            }
        }
        argmin(dist)
    }
}

/// Row-major rows of `len` floats, column-major: column `d` holds every row's element `d`.
fn transpose(rows: &[f32], len: usize) -> Vec<f32> {
    let n = rows.len() / len;
    let mut t = vec![0.0f32; rows.len()];
    for (i, row) in rows.chunks_exact(len).enumerate() {
        for (d, &x) in row.iter().enumerate() {
            t[d * n + i] = x;
        }
    }
    t
}

/// The smallest value of `d` and its first index.
fn argmin(d: &[f32; CENTROIDS]) -> (u8, f32) {
    const LANES: usize = 16;
    let mut lanes = [f32::INFINITY; LANES];
    for chunk in d.chunks_exact(LANES) {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v < *m { v } else { *m };
        }
    }
    let min = lanes.iter().copied().fold(f32::INFINITY, |a, b| if b < a { b } else { a });
    let at = d.iter().position(|&v| v == min).unwrap_or(0);
    (at as u8, min)
}

/// Where each subspace of a codebook of `params.bytes` (or the default for `dim`) starts and
/// ends: `m + 1` bounds; refuses a code size that does not fit, or no rows (`n`) to train on.
fn subspace_bounds(dim: usize, n: usize, params: &PqParams) -> Result<Vec<usize>, PqError> {
    let m = params.bytes.unwrap_or_else(|| default_pq_bytes(dim));
    if m == 0 || m > dim || m > quiver_simd::MAX_PQ_SUBSPACES {
        return Err(PqError::BadBytes { bytes: m, dim });
    }
    if n == 0 {
        return Err(PqError::Empty);
    }
    Ok((0..=m).map(|j| j * dim / m).collect())
}

/// The seed of subspace `j`'s k-means: its own generator, so a codebook does not depend on
/// how many threads trained it, nor on how the subspaces were grouped.
fn subspace_seed(seed: u64, j: usize) -> u64 {
    seed ^ (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// k-means with k-means++ seeding: 256 centroids of `len` floats for the `sample` rows. When there
/// are fewer distinct points than centroids, the spare centroids repeat points (harmless: a code
/// then never uses them).
fn kmeans(sample: &[f32], len: usize, iterations: usize, seed: u64) -> Vec<f32> {
    let n = sample.len() / len;
    let point = |i: usize| &sample[i * len..(i + 1) * len];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cents = Vec::with_capacity(CENTROIDS * len);

    // k-means++: each next centre is drawn with probability proportional to D(x)². The sample is
    // kept column-major for the distance updates (`len` passes over `n` lanes, which vectorise),
    // and D(x)² is summed per block of `BLOCK` points so that a draw skips whole blocks.
    const BLOCK: usize = 512;
    let sample_columns = transpose(sample, len);
    let mut dist = vec![f32::INFINITY; n];
    let mut block_sums = vec![0.0f64; n.div_ceil(BLOCK)];
    let mut fresh = vec![0.0f32; n];
    let mut add_centre = |c: &[f32], dist: &mut [f32], block_sums: &mut [f64]| {
        fresh.fill(0.0);
        for (&cd, col) in c.iter().zip(sample_columns.chunks_exact(n)) {
            for (t, &x) in fresh.iter_mut().zip(col) {
                let v = x - cd;
                *t += v * v;
            }
        }
        for ((sum, d), f) in
            block_sums.iter_mut().zip(dist.chunks_mut(BLOCK)).zip(fresh.chunks(BLOCK))
        {
            let mut lanes = [0.0f64; 4];
            for (i, (d, &f)) in d.iter_mut().zip(f).enumerate() {
                *d = if f < *d { f } else { *d };
                lanes[i % 4] += f64::from(*d);
            }
            *sum = lanes.iter().sum();
        }
    };
    let first = rand::RngExt::random_range(&mut rng, 0..n);
    cents.extend_from_slice(point(first));
    add_centre(point(first), &mut dist, &mut block_sums);
    for _ in 1..CENTROIDS {
        let total: f64 = block_sums.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rand::RngExt::random::<f64>(&mut rng) * total;
            let mut block = 0;
            while block + 1 < block_sums.len() && r > block_sums[block] {
                r -= block_sums[block];
                block += 1;
            }
            // Within the block (and past it, should rounding leave `r` above the block's sum).
            let mut pick = None;
            for (i, &d) in dist.iter().enumerate().skip(block * BLOCK) {
                if d > 0.0 {
                    pick = Some(i);
                    r -= f64::from(d);
                    if r <= 0.0 {
                        break;
                    }
                }
            }
            pick.unwrap_or(n - 1)
        } else {
            rand::RngExt::random_range(&mut rng, 0..n)
        };
        let c = point(pick).to_vec();
        add_centre(&c, &mut dist, &mut block_sums);
        cents.extend_from_slice(&c);
    }

    // Lloyd iterations.
    let mut assign = vec![0u8; n];
    let mut dist = [0.0f32; CENTROIDS];
    for _ in 0..iterations {
        let columns = Columns::new(&cents, len);
        let mut sums = vec![0.0f64; CENTROIDS * len];
        let mut counts = [0usize; CENTROIDS];
        let mut far = (0usize, -1.0f32);
        for (i, a) in assign.iter_mut().enumerate() {
            let (c, d) = columns.nearest(point(i), &mut dist);
            *a = c;
            counts[usize::from(c)] += 1;
            for (s, &x) in
                sums[usize::from(c) * len..(usize::from(c) + 1) * len].iter_mut().zip(point(i))
            {
                *s += f64::from(x);
            }
            if d > far.1 {
                far = (i, d);
            }
        }
        for c in 0..CENTROIDS {
            let dst = &mut cents[c * len..(c + 1) * len];
            if counts[c] > 0 {
                for (x, s) in dst.iter_mut().zip(&sums[c * len..(c + 1) * len]) {
                    *x = (*s / counts[c] as f64) as f32;
                }
            } else {
                // An empty cluster takes over the point worst served by the current centres.
                dst.copy_from_slice(point(far.0));
            }
        }
    }
    cents
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bytes_fit_the_dimension() {
        assert_eq!(default_pq_bytes(128), 32);
        assert_eq!(default_pq_bytes(50), 13);
        assert_eq!(default_pq_bytes(960), 64);
        assert_eq!(default_pq_bytes(3), 3);
    }

    /// Training from a file holds a few subspaces at a time; it must not train another
    /// codebook than the in-memory training of the same rows (a growth under a tight budget
    /// would then encode worse, or differently from a build, for no visible reason).
    #[test]
    fn a_codebook_trained_from_a_file_is_the_one_trained_in_memory_bit_for_bit() {
        let dim = 24;
        let values: Vec<f32> =
            (0..3000 * dim).map(|i| ((i * 7919 % 1013) as f32).sin() * 40.0 + 3.0).collect();
        let data = VectorSet::from_f32(dim, &values).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.fbin");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        crate::source::write_bin(&path, crate::data::ElemType::F32, dim, &[&bytes]).unwrap();
        let file = crate::source::VectorFile::open(&path).unwrap();
        // Five subspaces: groups of two, the last one alone.
        let params = PqParams { bytes: Some(5), max_samples: 3000, iterations: 4, seed: 7 };
        let in_memory = PqCodebook::train(&data, Metric::L2, &params).unwrap();
        let from_file = PqCodebook::train_from_file(&file, Metric::L2, &params).unwrap();
        assert_eq!(from_file.center(), in_memory.center());
        assert_eq!(from_file.centroids(), in_memory.centroids());
        assert!(from_file == in_memory);
    }
}

/// File names inside an index directory.
pub const PIVOTS_FILE: &str = "pq_pivots.bin";
/// File holding every node's PQ code.
pub const CODES_FILE: &str = "pq_codes.bin";
const PIVOTS_MAGIC: [u8; 8] = *b"QVRPQPIV";
const CODES_MAGIC: [u8; 8] = *b"QVRPQCOD";
const PQ_FILE_VERSION: u32 = 1;

/// Why a PQ file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PqFileError {
    /// An I/O call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged or not a PQ file of this version.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes `body` followed by its CRC32C to `path` and fsyncs it.
fn write_checksummed(path: &std::path::Path, body: &[u8]) -> Result<(), PqFileError> {
    use std::io::Write;
    let io = |e| PqFileError::Io { path: path.to_owned(), source: e };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(body).map_err(io)?;
    f.write_all(&crc32c::crc32c(body).to_le_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Reads a file written by [`write_checksummed`], checks magic, version and checksum, and returns
/// the body after the 12-byte magic + version prefix.
fn read_checksummed(path: &std::path::Path, magic: [u8; 8]) -> Result<Vec<u8>, PqFileError> {
    let corrupt = |reason: String| PqFileError::Corrupt { path: path.to_owned(), reason };
    let mut all =
        std::fs::read(path).map_err(|e| PqFileError::Io { path: path.to_owned(), source: e })?;
    if all.len() < 16 || all[..8] != magic {
        return Err(corrupt(
            "not a Quiver PQ file of the expected kind (bad magic or too short)".into(),
        ));
    }
    let version = u32::from_le_bytes(all[8..12].try_into().expect("4 bytes"));
    if version != PQ_FILE_VERSION {
        return Err(corrupt(format!("version {version}, this build reads {PQ_FILE_VERSION}")));
    }
    let at = all.len() - 4;
    let stored = u32::from_le_bytes(all[at..].try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(&all[..at]);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum {actual:#010x}, stored {stored:#010x} (damaged or truncated)"
        )));
    }
    all.truncate(at);
    Ok(all.split_off(12))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl PqCodebook {
    /// Writes the codebook to `path` (format: `docs/format.md`) and fsyncs it.
    ///
    /// # Errors
    /// If writing fails.
    pub fn write_to(&self, path: &std::path::Path) -> Result<(), PqFileError> {
        let mut b = Vec::with_capacity(24 + 4 * (self.center.len() + self.centroids.len()));
        b.extend_from_slice(&PIVOTS_MAGIC);
        b.extend_from_slice(&PQ_FILE_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.dim as u32).to_le_bytes());
        b.extend_from_slice(&(self.bytes() as u32).to_le_bytes());
        b.extend_from_slice(&self.metric.code().to_le_bytes());
        b.extend_from_slice(bytemuck::cast_slice(&self.center));
        b.extend_from_slice(bytemuck::cast_slice(&self.centroids));
        write_checksummed(path, &b)
    }

    /// Reads a codebook written by [`PqCodebook::write_to`].
    ///
    /// # Errors
    /// [`PqFileError::Corrupt`] for a damaged, truncated or inconsistent file.
    pub fn read_from(path: &std::path::Path) -> Result<Self, PqFileError> {
        let corrupt = |reason: String| PqFileError::Corrupt { path: path.to_owned(), reason };
        let b = read_checksummed(path, PIVOTS_MAGIC)?;
        if b.len() < 12 {
            return Err(corrupt("header too short".into()));
        }
        let (dim, m, metric) = (le_u32(&b, 0) as usize, le_u32(&b, 4) as usize, le_u32(&b, 8));
        let metric =
            Metric::from_code(metric).ok_or_else(|| corrupt(format!("metric code {metric}")))?;
        if dim == 0 || dim > quiver_simd::MAX_DIM || b.len() != 12 + 4 * dim * (1 + CENTROIDS) {
            return Err(corrupt(format!("{} bytes of pivots for dimension {dim}", b.len())));
        }
        let floats: Vec<f32> =
            b[12..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect();
        let (center, centroids) = floats.split_at(dim);
        Self::from_parts(dim, metric, m, center.to_vec(), centroids.to_vec()).map_err(corrupt)
    }
}

/// Writes PQ codes (`n` codes of `m` bytes) to `path` and fsyncs it.
///
/// # Errors
/// If writing fails.
pub fn write_codes(path: &std::path::Path, m: usize, codes: &[u8]) -> Result<(), PqFileError> {
    assert!(
        m > 0 && codes.len().is_multiple_of(m),
        "PQ codes: {} bytes in codes of {m}",
        codes.len()
    );
    let mut writer = CodesWriter::create(path, m, (codes.len() / m) as u64)?;
    writer.push(codes)?;
    writer.finish()
}

/// Bytes before the codes in `pq_codes.bin`: magic, version, `m`, `n`.
pub(crate) const CODES_PREFIX: usize = 24;

/// Writes a `pq_codes.bin` a piece at a time, so that the codes of a large index need not be
/// held in RAM to be written (the format of [`write_codes`]).
pub struct CodesWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    crc: u32,
    /// Code bytes still to come.
    left: u64,
}

impl std::fmt::Debug for CodesWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodesWriter").field("path", &self.path).field("left", &self.left).finish()
    }
}

impl CodesWriter {
    /// Creates `path` for `n` codes of `m` bytes.
    ///
    /// # Errors
    /// If the file cannot be created or written.
    pub fn create(path: &std::path::Path, m: usize, n: u64) -> Result<Self, PqFileError> {
        assert!(m > 0, "PQ codes of 0 bytes");
        let io = |e| PqFileError::Io { path: path.to_owned(), source: e };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut prefix = Vec::with_capacity(CODES_PREFIX);
        prefix.extend_from_slice(&CODES_MAGIC);
        prefix.extend_from_slice(&PQ_FILE_VERSION.to_le_bytes());
        prefix.extend_from_slice(&(m as u32).to_le_bytes());
        prefix.extend_from_slice(&n.to_le_bytes());
        let mut writer = Self {
            file: std::io::BufWriter::with_capacity(1 << 16, file),
            path: path.to_owned(),
            crc: 0,
            left: n * m as u64 + CODES_PREFIX as u64,
        };
        writer.push(&prefix)?;
        Ok(writer)
    }

    /// Appends `codes` (whole codes, or any run of bytes: the codes are one byte string).
    ///
    /// # Errors
    /// If writing fails.
    ///
    /// # Panics
    /// If more bytes are pushed than `n` codes hold.
    pub fn push(&mut self, codes: &[u8]) -> Result<(), PqFileError> {
        use std::io::Write;
        assert!(codes.len() as u64 <= self.left, "more PQ codes than the file was created for");
        self.left -= codes.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, codes);
        self.file
            .write_all(codes)
            .map_err(|e| PqFileError::Io { path: self.path.clone(), source: e })
    }

    /// Writes the checksum and fsyncs the file.
    ///
    /// # Errors
    /// If writing or syncing fails.
    ///
    /// # Panics
    /// If fewer codes were pushed than the file was created for.
    pub fn finish(mut self) -> Result<(), PqFileError> {
        use std::io::Write;
        assert_eq!(self.left, 0, "PQ codes: {} bytes short", self.left);
        let io = |e| PqFileError::Io { path: self.path.clone(), source: e };
        self.file.write_all(&self.crc.to_le_bytes()).map_err(io)?;
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }
}

/// Opens a `pq_codes.bin` and checks its prefix (magic, version, and a length that holds `n`
/// codes of `m` bytes and the checksum): the file positioned at the first code, the prefix
/// bytes (the checksum covers them), `m` and `n`.
///
/// # Errors
/// [`PqFileError::Corrupt`] for a damaged, truncated or inconsistent prefix.
pub(crate) fn read_codes_prefix(
    path: &std::path::Path,
) -> Result<(std::fs::File, [u8; CODES_PREFIX], usize, u64), PqFileError> {
    use std::io::Read;
    let corrupt = |reason: String| PqFileError::Corrupt { path: path.to_owned(), reason };
    let io = |e| PqFileError::Io { path: path.to_owned(), source: e };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut prefix = [0u8; CODES_PREFIX];
    if len < (CODES_PREFIX + 4) as u64 {
        return Err(corrupt("not a Quiver PQ file of the expected kind (too short)".into()));
    }
    file.read_exact(&mut prefix).map_err(io)?;
    if prefix[..8] != CODES_MAGIC {
        return Err(corrupt("not a Quiver PQ file of the expected kind (bad magic)".into()));
    }
    let version = le_u32(&prefix, 8);
    if version != PQ_FILE_VERSION {
        return Err(corrupt(format!("version {version}, this build reads {PQ_FILE_VERSION}")));
    }
    let m = le_u32(&prefix, 12) as usize;
    let n = u64::from_le_bytes(prefix[16..24].try_into().expect("8 bytes"));
    let body = len - (CODES_PREFIX + 4) as u64;
    if m == 0 || n.checked_mul(m as u64) != Some(body) {
        return Err(corrupt(format!("{body} code bytes for {n} codes of {m}")));
    }
    Ok((file, prefix, m, n))
}

/// Reads PQ codes written by [`write_codes`]: `(m, codes)`. The codes are read straight into
/// their own buffer (an index's codes are its largest structure in RAM: no second copy).
///
/// # Errors
/// [`PqFileError::Corrupt`] for a damaged, truncated or inconsistent file.
pub fn read_codes(path: &std::path::Path) -> Result<(usize, Vec<u8>), PqFileError> {
    use std::io::Read;
    let corrupt = |reason: String| PqFileError::Corrupt { path: path.to_owned(), reason };
    let io = |e| PqFileError::Io { path: path.to_owned(), source: e };
    let (mut file, prefix, m, n) = read_codes_prefix(path)?;
    let mut codes = vec![0u8; n as usize * m];
    file.read_exact(&mut codes).map_err(io)?;
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored).map_err(io)?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(&prefix), &codes);
    let stored = u32::from_le_bytes(stored);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum {actual:#010x}, stored {stored:#010x} (damaged or truncated)"
        )));
    }
    Ok((m, codes))
}
