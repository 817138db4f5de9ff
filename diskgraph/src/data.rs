//! Vectors in RAM and the files they come from.
//!
//! A [`VectorSet`] holds `n` rows of `dim` elements of one [`ElemType`], each row starting on a
//! 64-byte boundary (the kernels' loads never split a cache line). The readers accept the formats of
//! the DiskANN / big-ann ecosystem and reject anything malformed with an error naming the file and
//! what was wrong — a truncated file, a dimension that changes between rows, a NaN — never a panic
//! and never silently garbled vectors.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use quiver_simd::{Isa, Kernels, MAX_DIM};

/// Element type of stored vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// Unsigned byte (SIFT / BIGANN).
    U8,
    /// Signed byte.
    I8,
}

impl ElemType {
    /// The extension of the headered binary vector file of this element type (`fbin`, `u8bin`,
    /// `i8bin`), which [`VectorFile::open`](crate::source::VectorFile::open) and
    /// [`read_vectors`] read and [`write_bin`](crate::source::write_bin) writes.
    pub const fn bin_extension(self) -> &'static str {
        match self {
            ElemType::F32 => "fbin",
            ElemType::U8 => "u8bin",
            ElemType::I8 => "i8bin",
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::U8 | ElemType::I8 => 1,
        }
    }

    /// Code stored in index headers.
    pub const fn code(self) -> u32 {
        match self {
            ElemType::F32 => 1,
            ElemType::U8 => 2,
            ElemType::I8 => 3,
        }
    }

    /// The type for a header code.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(ElemType::F32),
            2 => Some(ElemType::U8),
            3 => Some(ElemType::I8),
            _ => None,
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElemType::F32 => "f32",
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
        })
    }
}

/// Distance function. Smaller is nearer for all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Squared Euclidean distance.
    L2,
    /// Negated inner product (maximum inner product search).
    InnerProduct,
    /// Cosine distance `1 − cos`. Vectors are normalised when loaded, so it is computed as
    /// `1 − a·b`. Float data only.
    Cosine,
}

impl Metric {
    /// Code stored in index headers.
    pub const fn code(self) -> u32 {
        match self {
            Metric::L2 => 1,
            Metric::InnerProduct => 2,
            Metric::Cosine => 3,
        }
    }

    /// The metric for a header code.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Metric::L2),
            2 => Some(Metric::InnerProduct),
            3 => Some(Metric::Cosine),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        })
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "inner_product" | "dot" | "dot_product" | "mips" => Ok(Metric::InnerProduct),
            "cosine" | "cos" => Ok(Metric::Cosine),
            _ => Err(format!("unknown metric {s:?}: expected l2, ip or cosine")),
        }
    }
}

/// Why vectors could not be read or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file name does not say which format it is.
    #[error(
        "{path}: unknown vector file type (expected .fbin, .u8bin, .i8bin, .fvecs, .bvecs or .ivecs)"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file's contents do not match its format.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was wrong, and where.
        reason: String,
    },
    /// Vectors that cannot be indexed (a dimension of 0 or above the limit, NaN, …).
    #[error("invalid vectors: {0}")]
    Invalid(String),
}

/// One cache line; rows are stored in whole lines so that each starts 64-byte aligned.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// `n` vectors of `dim` elements, each row 64-byte aligned.
#[derive(Clone)]
pub struct VectorSet {
    elem: ElemType,
    dim: usize,
    n: usize,
    /// Bytes from one row to the next: `dim × size` rounded up to 64.
    stride: usize,
    lines: Vec<Line>,
}

impl fmt::Debug for VectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VectorSet({} × {} {})", self.n, self.dim, self.elem)
    }
}

/// A borrowed vector of some element type.
#[derive(Clone, Copy, Debug)]
pub enum Row<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// u8 elements.
    U8(&'a [u8]),
    /// i8 elements.
    I8(&'a [i8]),
}

impl Row<'_> {
    /// The elements as `f32` (exact for the byte types).
    pub fn to_f32(&self) -> Vec<f32> {
        match *self {
            Row::F32(v) => v.to_vec(),
            Row::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Row::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match *self {
            Row::F32(v) => v.len(),
            Row::U8(v) => v.len(),
            Row::I8(v) => v.len(),
        }
    }

    /// Whether the row has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bytes, little-endian as stored on disk.
    pub fn as_bytes(&self) -> &[u8] {
        match *self {
            Row::F32(v) => bytemuck::cast_slice(v),
            Row::U8(v) => v,
            Row::I8(v) => bytemuck::cast_slice(v),
        }
    }
}

impl VectorSet {
    /// An all-zero set of `n` rows, to be filled with [`VectorSet::row_bytes_mut`].
    ///
    /// # Errors
    /// If `dim` is 0 or above [`MAX_DIM`], or the size overflows.
    pub fn zeroed(elem: ElemType, dim: usize, n: usize) -> Result<Self, DataError> {
        if dim == 0 || dim > MAX_DIM {
            return Err(DataError::Invalid(format!("dimension {dim}, expected 1..={MAX_DIM}")));
        }
        let stride = (dim * elem.size()).div_ceil(64) * 64;
        let lines = n
            .checked_mul(stride / 64)
            .ok_or_else(|| DataError::Invalid(format!("{n} vectors of {dim} is too large")))?;
        Ok(Self { elem, dim, n, stride, lines: vec![Line([0; 64]); lines] })
    }

    /// Builds a set from `f32` rows given back to back.
    ///
    /// # Errors
    /// As [`VectorSet::zeroed`], if `data.len()` is not a multiple of `dim`, or a value is not finite.
    pub fn from_f32(dim: usize, data: &[f32]) -> Result<Self, DataError> {
        Self::from_raw(ElemType::F32, dim, bytemuck::cast_slice(data))
    }

    /// Builds a set from `u8` rows given back to back.
    ///
    /// # Errors
    /// As [`VectorSet::zeroed`], or if `data.len()` is not a multiple of `dim`.
    pub fn from_u8(dim: usize, data: &[u8]) -> Result<Self, DataError> {
        Self::from_raw(ElemType::U8, dim, data)
    }

    /// Builds a set from `i8` rows given back to back.
    ///
    /// # Errors
    /// As [`VectorSet::zeroed`], or if `data.len()` is not a multiple of `dim`.
    pub fn from_i8(dim: usize, data: &[i8]) -> Result<Self, DataError> {
        Self::from_raw(ElemType::I8, dim, bytemuck::cast_slice(data))
    }

    /// Builds a set from raw little-endian rows given back to back.
    fn from_raw(elem: ElemType, dim: usize, bytes: &[u8]) -> Result<Self, DataError> {
        let row = dim.checked_mul(elem.size()).filter(|&r| r > 0);
        let Some(row) = row.filter(|&r| bytes.len().is_multiple_of(r)) else {
            return Err(DataError::Invalid(format!(
                "{} bytes is not a whole number of {dim}-dimensional {elem} vectors",
                bytes.len()
            )));
        };
        let mut set = Self::zeroed(elem, dim, bytes.len() / row)?;
        for (i, chunk) in bytes.chunks_exact(row).enumerate() {
            set.row_bytes_mut(i).copy_from_slice(chunk);
        }
        set.validate()?;
        Ok(set)
    }

    /// Rejects non-finite float values (they would poison every distance they touch).
    fn validate(&self) -> Result<(), DataError> {
        if self.elem == ElemType::F32 {
            for i in 0..self.n {
                if let Row::F32(r) = self.row(i)
                    && let Some(j) = r.iter().position(|x| !x.is_finite())
                {
                    return Err(DataError::Invalid(format!(
                        "vector {i} has a non-finite value ({}) at position {j}",
                        r[j]
                    )));
                }
            }
        }
        Ok(())
    }

    /// Element type.
    pub fn elem(&self) -> ElemType {
        self.elem
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes of RAM the vectors occupy.
    pub fn ram_bytes(&self) -> usize {
        self.lines.len() * 64
    }

    fn all_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.lines)
    }

    /// The raw bytes of row `i` (exactly `dim × size` of them).
    pub fn row_bytes(&self, i: usize) -> &[u8] {
        let at = i * self.stride;
        &self.all_bytes()[at..at + self.dim * self.elem.size()]
    }

    /// The raw bytes of row `i`, for filling.
    pub fn row_bytes_mut(&mut self, i: usize) -> &mut [u8] {
        let (at, len) = (i * self.stride, self.dim * self.elem.size());
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.lines);
        &mut bytes[at..at + len]
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> Row<'_> {
        let b = self.row_bytes(i);
        match self.elem {
            // Rows start 64-byte aligned, so the cast cannot fail on alignment.
            ElemType::F32 => Row::F32(bytemuck::cast_slice(b)),
            ElemType::U8 => Row::U8(b),
            ElemType::I8 => Row::I8(bytemuck::cast_slice(b)),
        }
    }

    /// Scales every float row to unit length (zero rows stay zero). Used for the cosine metric.
    ///
    /// # Errors
    /// If the set does not hold floats.
    pub fn normalize(&mut self) -> Result<(), DataError> {
        cosine_accepts(self.elem)?;
        for i in 0..self.n {
            unit_length(bytemuck::cast_slice_mut(self.row_bytes_mut(i)));
        }
        Ok(())
    }

    /// The first `n` rows as a new set (for sampling and quick tests).
    pub fn prefix(&self, n: usize) -> VectorSet {
        let n = n.min(self.n);
        let mut out = self.clone();
        out.n = n;
        out.lines.truncate(n * self.stride / 64);
        out
    }
}

/// The MIPS → L2 reduction (Bachrach et al., 2014). Graph indexes built directly on inner product
/// leave low-norm points unreachable (no point ever has them as its nearest neighbour, so pruning
/// drops every edge into them). Instead each vector `x` becomes `[x, √(M² − ‖x‖²)]`, where `M` is the
/// largest norm in the set, and a query `q` becomes `[q, 0]` ([`mips_query`]). Then
/// `‖q′ − x′‖² = ‖q‖² + M² − 2 q·x`, so L2 order on the transformed vectors is inner-product order on
/// the originals. Returns the transformed set (f32, `dim + 1`) and `M²`.
///
/// # Errors
/// If `dim + 1` exceeds the dimension limit.
pub fn mips_to_l2(data: &VectorSet) -> Result<(VectorSet, f32), DataError> {
    let max = mips_max_norm_sq(data);
    Ok((mips_transform(data, max)?, max as f32))
}

/// The largest squared norm in `data` (in f64): the `M²` of [`mips_to_l2`]. A build that streams
/// its input takes the maximum over every piece, then transforms each with [`mips_transform`].
pub fn mips_max_norm_sq(data: &VectorSet) -> f64 {
    (0..data.len()).map(|i| norm_sq(data.row(i))).fold(0.0f64, f64::max)
}

fn norm_sq(row: Row<'_>) -> f64 {
    match row {
        Row::F32(v) => norm_sq_f64(v),
        other => norm_sq_f64(&other.to_f32()),
    }
}

/// The squared length of `row`, summed in f64: what [`unit_length`] divides by (its square
/// root), and what every other length of a float vector is taken with, so the same row always
/// gives the same bits.
pub fn norm_sq_f64(row: &[f32]) -> f64 {
    row.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
}

/// Refuses the cosine metric on vectors of `elem` unless they are floats (integer vectors
/// cannot be stored normalised).
///
/// # Errors
/// [`DataError::Invalid`] for integer element types.
pub fn cosine_accepts(elem: ElemType) -> Result<(), DataError> {
    if elem == ElemType::F32 {
        Ok(())
    } else {
        Err(DataError::Invalid(format!("the cosine metric needs float vectors, these are {elem}")))
    }
}

/// Each row `x` of `data` as `[x, √(M² − ‖x‖²)]` for `M² = max_norm_sq` (see [`mips_to_l2`]).
///
/// # Errors
/// If `dim + 1` exceeds the dimension limit.
pub fn mips_transform(data: &VectorSet, max_norm_sq: f64) -> Result<VectorSet, DataError> {
    let mut out = VectorSet::zeroed(ElemType::F32, data.dim() + 1, data.len())?;
    for i in 0..data.len() {
        let mut row = data.row(i).to_f32();
        let norm = norm_sq(data.row(i));
        row.push((max_norm_sq - norm).max(0.0).sqrt() as f32);
        out.row_bytes_mut(i).copy_from_slice(bytemuck::cast_slice(&row));
    }
    Ok(out)
}

/// A query for a set transformed by [`mips_to_l2`]: the query with a 0 appended.
pub fn mips_query(query: &[f32]) -> Vec<f32> {
    let mut q = query.to_vec();
    q.push(0.0);
    q
}

/// Distance between two rows of one element type under `metric`, with the kernels of `k`.
/// Cosine assumes both rows are normalised (see [`VectorSet::normalize`]).
///
/// # Panics
/// If the rows differ in type or length.
#[inline(always)] // a match on constants around one kernel call: inlined, the match folds away
pub fn distance<K: Kernels>(k: K, metric: Metric, a: Row<'_>, b: Row<'_>) -> f32 {
    match (metric, a, b) {
        (Metric::L2, Row::F32(x), Row::F32(y)) => k.l2_sq_f32(x, y),
        (Metric::L2, Row::U8(x), Row::U8(y)) => k.l2_sq_u8(x, y) as f32,
        (Metric::L2, Row::I8(x), Row::I8(y)) => k.l2_sq_i8(x, y) as f32,
        (Metric::InnerProduct, Row::F32(x), Row::F32(y)) => -k.dot_f32(x, y),
        (Metric::InnerProduct, Row::U8(x), Row::U8(y)) => -(k.dot_u8(x, y) as f32),
        (Metric::InnerProduct, Row::I8(x), Row::I8(y)) => -(k.dot_i8(x, y) as f32),
        (Metric::Cosine, Row::F32(x), Row::F32(y)) => 1.0 - k.dot_f32(x, y),
        (m, a, b) => panic!("distance: {m} between {a:?} and {b:?} is not defined"),
    }
}

/// [`distance`] with the process's active kernels.
pub fn distance_active(metric: Metric, a: Row<'_>, b: Row<'_>) -> f32 {
    distance(Isa::active(), metric, a, b)
}

/// Reads exactly `buf.len()` bytes or reports where the file ended.
fn read_exact_at(
    r: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<(), DataError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            DataError::Malformed {
                path: path.to_owned(),
                reason: format!("file ends inside {what}"),
            }
        } else {
            DataError::Io { path: path.to_owned(), source: e }
        }
    })
}

fn open(path: &Path) -> Result<(BufReader<File>, u64), DataError> {
    let f = File::open(path).map_err(|e| DataError::Io { path: path.to_owned(), source: e })?;
    let len = f.metadata().map_err(|e| DataError::Io { path: path.to_owned(), source: e })?.len();
    Ok((BufReader::with_capacity(1 << 20, f), len))
}

/// Reads a vector file, choosing the format by extension: `.fbin` / `.u8bin` / `.i8bin` (header
/// `u32 n, u32 dim`, then rows) or `.fvecs` / `.bvecs` (each row prefixed by its `i32` dimension).
///
/// # Errors
/// [`DataError`] naming the file and the problem: unknown extension, I/O failure, truncation,
/// inconsistent dimensions, trailing bytes, a dimension out of range, or a non-finite float.
pub fn read_vectors(path: &Path) -> Result<VectorSet, DataError> {
    // One reader for every format: the whole file as one range of rows, checked as it is read.
    let file = crate::source::VectorFile::open(path)?;
    file.read_range(0, file.len())
}

/// Reads an `.ivecs` file (ground truth): one list of ids per row.
///
/// # Errors
/// As [`read_vectors`].
pub fn read_ivecs(path: &Path) -> Result<Vec<Vec<u32>>, DataError> {
    let (mut r, len) = open(path)?;
    let malformed = |reason: String| DataError::Malformed { path: path.to_owned(), reason };
    let mut rows = Vec::new();
    let mut pos = 0u64;
    let mut head = [0u8; 4];
    while pos < len {
        read_exact_at(
            &mut r,
            &mut head,
            path,
            &format!("the length prefix of row {}", rows.len()),
        )?;
        let k = i32::from_le_bytes(head);
        if k < 0 || k as usize > MAX_DIM {
            return Err(malformed(format!("row {} declares {k} ids", rows.len())));
        }
        let mut buf = vec![0u8; k as usize * 4];
        read_exact_at(&mut r, &mut buf, path, &format!("row {}", rows.len()))?;
        let ids: Vec<u32> = buf
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
            .map(|id| {
                u32::try_from(id)
                    .map_err(|_| malformed(format!("negative id {id} in row {}", rows.len())))
            })
            .collect::<Result<_, _>>()?;
        rows.push(ids);
        pos += 4 + k as u64 * 4;
    }
    Ok(rows)
}

/// Scales `row` to unit length, summing squares in f64: the one normalisation every cosine
/// vector and query goes through (stored rows, index queries, and the engine's exact searches),
/// so the same input always gives the same bits. Returns `false`, leaving `row` as it is, if its
/// length is zero or not finite.
pub fn unit_length(row: &mut [f32]) -> bool {
    let norm = norm_sq_f64(row).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    row.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_64_byte_aligned_for_every_type_and_odd_dims() {
        for (elem, dim) in [(ElemType::F32, 50), (ElemType::U8, 7), (ElemType::I8, 129)] {
            let set = VectorSet::zeroed(elem, dim, 5).unwrap();
            for i in 0..5 {
                assert_eq!(set.row_bytes(i).as_ptr() as usize % 64, 0);
                assert_eq!(set.row(i).len(), dim);
            }
        }
    }

    #[test]
    fn nan_and_bad_dimensions_are_rejected() {
        assert!(VectorSet::from_f32(2, &[1.0, f32::NAN]).is_err());
        assert!(VectorSet::from_f32(2, &[1.0, 2.0, 3.0]).is_err());
        assert!(VectorSet::from_u8(0, &[]).is_err());
        assert!(VectorSet::from_u8(MAX_DIM + 1, &[]).is_err());
        assert!(VectorSet::from_u8(3, &[1, 2, 3, 4, 5, 6]).is_ok());
    }

    #[test]
    fn cosine_on_bytes_is_refused() {
        let mut s = VectorSet::from_u8(2, &[1, 2]).unwrap();
        assert!(s.normalize().is_err());
    }
}
