//! Vector files read a piece at a time: the input of a build that may not hold every vector.
//!
//! [`read_vectors`](crate::data::read_vectors) loads a whole file into one [`VectorSet`]; a
//! budgeted build cannot. A [`VectorFile`] checks the file's header and length when opened and
//! then reads rows on demand with positioned reads (`pread`): a range of consecutive rows, or a
//! sorted list of scattered rows (nearby rows are read together, so a gather over a partition of
//! the file costs a few large reads rather than one per row). Every row read is checked as
//! [`read_vectors`](crate::data::read_vectors) checks it (dimension prefixes, finite floats), so a
//! damaged file fails the same way whichever reader meets the damage. Nothing is cached: the
//! operating system's page cache is the only copy, and it is not resident memory of the process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use quiver_simd::MAX_DIM;

use crate::data::{DataError, ElemType, Row, VectorSet};

/// Largest single read a gather issues.
const MAX_READ_BYTES: u64 = 1 << 20;
/// Rows this close (in bytes) to the previous one wanted are read in the same request.
const COALESCE_GAP_BYTES: u64 = 64 << 10;

/// How a gather of the records `ids` (ascending, distinct; `stride` bytes each, record `i` at
/// `i · stride`) is split into reads: each range of `ids` is read with one request, from its
/// first record to its last — records at most [`COALESCE_GAP_BYTES`] apart, at most
/// [`MAX_READ_BYTES`] in all (a single record may exceed it).
pub(crate) fn coalesced_runs(ids: &[u32], stride: u64) -> Vec<std::ops::Range<usize>> {
    let gap = (COALESCE_GAP_BYTES / stride) as usize;
    let max = (MAX_READ_BYTES / stride).max(1) as usize;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let first = ids[i] as usize;
        let mut j = i + 1;
        while j < ids.len()
            && (ids[j] as usize) - (ids[j - 1] as usize) <= gap + 1
            && (ids[j] as usize) - first < max
        {
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

/// Writes a headered binary vector file (the format of [`ElemType::bin_extension`]): the row
/// count and `dim` as little-endian `u32`, then `chunks` one after another, each whole rows of
/// `dim` values of `elem` in little-endian byte order. Chunks are written as they are, with no
/// concatenated copy. The file is not synced (a caller that keeps it syncs it).
///
/// # Errors
/// I/O failure; `InvalidInput` if the chunks are not whole rows or the row count or `dim` do
/// not fit the header's `u32`.
pub fn write_bin(path: &Path, elem: ElemType, dim: usize, chunks: &[&[u8]]) -> io::Result<()> {
    let row_bytes = dim * elem.size();
    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
    if row_bytes == 0 || chunks.iter().any(|c| c.len() % row_bytes != 0) {
        return Err(invalid_input("vector chunks must hold whole rows"));
    }
    let mut out = BinWriter::create(path, elem, dim, bytes / row_bytes)?;
    for chunk in chunks {
        out.push(chunk)?;
    }
    out.finish()
}

fn invalid_input(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.to_owned())
}

/// A headered binary vector file written a chunk at a time, for a writer that knows how many
/// rows it will write but never holds them together (a merge streaming its live rows). The
/// header declares the row count up front; [`BinWriter::finish`] refuses a file that did not
/// get exactly that many, so a short or long write never passes for a whole file.
#[derive(Debug)]
pub struct BinWriter {
    out: io::BufWriter<File>,
    row_bytes: usize,
    /// The rows the header declares; `None` for a writer that counts them
    /// ([`BinWriter::create_counting`]).
    declared: Option<usize>,
    written: usize,
}

impl BinWriter {
    /// Creates (or truncates) `path` for `rows` rows of `dim` values of `elem`, and writes the
    /// header.
    ///
    /// # Errors
    /// I/O failure; `InvalidInput` if `dim` is 0 or `rows` or `dim` do not fit the header's `u32`.
    pub fn create(path: &Path, elem: ElemType, dim: usize, rows: usize) -> io::Result<BinWriter> {
        BinWriter::with_buffer(path, elem, dim, rows, 1 << 20)
    }

    /// [`BinWriter::create`] writing through a buffer of `buffer` bytes instead of 1 MiB (for
    /// many writers open at once).
    ///
    /// # Errors
    /// As [`BinWriter::create`].
    pub fn with_buffer(
        path: &Path,
        elem: ElemType,
        dim: usize,
        rows: usize,
        buffer: usize,
    ) -> io::Result<BinWriter> {
        use std::io::Write;
        let header_rows = u32::try_from(rows).map_err(|_| invalid_input("over u32::MAX rows"))?;
        let header_dim =
            u32::try_from(dim).map_err(|_| invalid_input("dimension over u32::MAX"))?;
        if dim == 0 {
            return Err(invalid_input("dimension 0"));
        }
        let mut out = io::BufWriter::with_capacity(buffer, File::create(path)?);
        out.write_all(&header_rows.to_le_bytes())?;
        out.write_all(&header_dim.to_le_bytes())?;
        Ok(BinWriter { out, row_bytes: dim * elem.size(), declared: Some(rows), written: 0 })
    }

    /// [`BinWriter::create`] for a writer that does not know its row count up front (a
    /// sample whose planned rows may turn out dropped): the header's count is written by
    /// [`BinWriter::finish`], as the rows pushed. Writes through a buffer of `buffer` bytes.
    ///
    /// # Errors
    /// As [`BinWriter::create`].
    pub fn create_counting(
        path: &Path,
        elem: ElemType,
        dim: usize,
        buffer: usize,
    ) -> io::Result<BinWriter> {
        let mut writer = BinWriter::with_buffer(path, elem, dim, 0, buffer)?;
        writer.declared = None;
        Ok(writer)
    }

    /// Appends `chunk`: whole rows, little-endian.
    ///
    /// # Errors
    /// I/O failure; `InvalidInput` if `chunk` is not whole rows or goes past the declared count.
    pub fn push(&mut self, chunk: &[u8]) -> io::Result<()> {
        use std::io::Write;
        if !chunk.len().is_multiple_of(self.row_bytes) {
            return Err(invalid_input("vector chunks must hold whole rows"));
        }
        let rows = chunk.len() / self.row_bytes;
        if self.declared.is_some_and(|declared| self.written + rows > declared) {
            return Err(invalid_input("more rows than the header declares"));
        }
        self.out.write_all(chunk)?;
        self.written += rows;
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows_written(&self) -> usize {
        self.written
    }

    /// Flushes the file (not synced).
    ///
    /// # Errors
    /// I/O failure; `InvalidInput` if fewer rows were pushed than the header declares.
    pub fn finish(self) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let Some(declared) = self.declared else {
            let rows =
                u32::try_from(self.written).map_err(|_| invalid_input("over u32::MAX rows"))?;
            let file = self.out.into_inner().map_err(io::IntoInnerError::into_error)?;
            return file.write_all_at(&rows.to_le_bytes(), 0);
        };
        if self.written != declared {
            return Err(invalid_input("fewer rows than the header declares"));
        }
        self.out.into_inner().map_err(io::IntoInnerError::into_error)?.flush()
    }
}

/// An opened vector file (`.fbin`, `.u8bin`, `.i8bin`, `.fvecs`, `.bvecs`), read on demand.
#[derive(Debug)]
pub struct VectorFile {
    path: PathBuf,
    file: File,
    elem: ElemType,
    dim: usize,
    n: usize,
    /// Offset of row 0's first element.
    first: u64,
    /// Bytes from one row's first element to the next's.
    stride: u64,
    /// Whether each row is preceded by its dimension (`.fvecs` / `.bvecs`).
    prefixed: bool,
}

impl VectorFile {
    /// Opens `path`, choosing the format by extension, and checks its header against its length.
    ///
    /// # Errors
    /// [`DataError`] for an unknown extension, an unreadable file, a bad header or a length that
    /// is not a whole number of rows.
    pub fn open(path: &Path) -> Result<VectorFile, DataError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let (elem, prefixed) = match ext.as_str() {
            "fbin" => (ElemType::F32, false),
            "u8bin" => (ElemType::U8, false),
            "i8bin" => (ElemType::I8, false),
            "fvecs" => (ElemType::F32, true),
            "bvecs" => (ElemType::U8, true),
            _ => return Err(DataError::UnknownFormat { path: path.to_owned() }),
        };
        let io = |e| DataError::Io { path: path.to_owned(), source: e };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut f = VectorFile {
            path: path.to_owned(),
            file,
            elem,
            dim: 0,
            n: 0,
            first: 0,
            stride: 0,
            prefixed,
        };
        if prefixed {
            f.open_vecs(len)?
        } else {
            f.open_bin(len)?
        }
        Ok(f)
    }

    fn malformed(&self, reason: String) -> DataError {
        DataError::Malformed { path: self.path.clone(), reason }
    }

    fn read_at(&self, buf: &mut [u8], at: u64, what: &str) -> Result<(), DataError> {
        self.file.read_exact_at(buf, at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.malformed(format!("file ends inside {what}"))
            } else {
                DataError::Io { path: self.path.clone(), source: e }
            }
        })
    }

    fn open_bin(&mut self, len: u64) -> Result<(), DataError> {
        let mut head = [0u8; 8];
        self.read_at(&mut head, 0, "the 8-byte header")?;
        let n = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let dim = u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize;
        if dim == 0 || dim > MAX_DIM {
            return Err(
                self.malformed(format!("header says dimension {dim}, expected 1..={MAX_DIM}"))
            );
        }
        let row = (dim * self.elem.size()) as u64;
        let want = 8 + n as u64 * row;
        if len != want {
            return Err(self.malformed(format!(
                "header says {n} vectors of {dim} {} ({want} bytes with the header), the file has {len} bytes",
                self.elem
            )));
        }
        (self.dim, self.n, self.first, self.stride) = (dim, n, 8, row);
        Ok(())
    }

    fn open_vecs(&mut self, len: u64) -> Result<(), DataError> {
        if len == 0 {
            return Err(self.malformed("empty file".into()));
        }
        let mut head = [0u8; 4];
        self.read_at(&mut head, 0, "the first dimension prefix")?;
        let dim = i32::from_le_bytes(head);
        if dim <= 0 || dim as usize > MAX_DIM {
            return Err(self
                .malformed(format!("first row declares dimension {dim}, expected 1..={MAX_DIM}")));
        }
        let dim = dim as usize;
        let row = 4 + (dim * self.elem.size()) as u64;
        if !len.is_multiple_of(row) {
            return Err(self.malformed(format!(
                "{len} bytes is not a whole number of {row}-byte rows of dimension {dim} (truncated?)"
            )));
        }
        (self.dim, self.n, self.first, self.stride) = (dim, (len / row) as usize, 4, row);
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Whether the file holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes of one row's elements.
    pub fn row_bytes(&self) -> usize {
        self.dim * self.elem.size()
    }

    /// Rows `start..start + count` as a set.
    ///
    /// # Errors
    /// [`DataError`] for a read failure or a bad row (wrong prefix, non-finite value).
    pub fn read_range(&self, start: usize, count: usize) -> Result<VectorSet, DataError> {
        assert!(start + count <= self.n, "rows {start}..{} of {}", start + count, self.n);
        let mut set = VectorSet::zeroed(self.elem, self.dim, count)?;
        let per_read = (MAX_READ_BYTES / self.stride).max(1) as usize;
        let mut buf = Vec::new();
        let mut done = 0;
        while done < count {
            let rows = per_read.min(count - done);
            self.read_rows(start + done, rows, &mut buf)?;
            for i in 0..rows {
                self.place(&buf, i, start + done + i, &mut set, done + i)?;
            }
            done += rows;
        }
        Ok(set)
    }

    /// The rows `ids` (ascending, no repeats), row `i` of the result being row `ids[i]` of the file.
    ///
    /// # Errors
    /// As [`VectorFile::read_range`].
    pub fn gather(&self, ids: &[u32]) -> Result<VectorSet, DataError> {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "gather wants ascending, distinct rows");
        assert!(ids.last().is_none_or(|&l| (l as usize) < self.n), "row past the end");
        let mut set = VectorSet::zeroed(self.elem, self.dim, ids.len())?;
        let mut buf = Vec::new();
        for run in coalesced_runs(ids, self.stride) {
            let first = ids[run.start] as usize;
            let rows = ids[run.end - 1] as usize - first + 1;
            self.read_rows(first, rows, &mut buf)?;
            for (k, &id) in ids[run.clone()].iter().enumerate() {
                self.place(&buf, id as usize - first, id as usize, &mut set, run.start + k)?;
            }
        }
        Ok(set)
    }

    /// Reads `rows` rows from `start` (with their prefixes, if any) into `buf`.
    fn read_rows(&self, start: usize, rows: usize, buf: &mut Vec<u8>) -> Result<(), DataError> {
        let at = self.first - if self.prefixed { 4 } else { 0 } + start as u64 * self.stride;
        buf.resize(rows * self.stride as usize, 0);
        self.read_at(buf, at, &format!("rows {start}..{}", start + rows))
    }

    /// Copies row `i` of `buf` (file row `row`) into row `to` of `set`, checking it.
    fn place(
        &self,
        buf: &[u8],
        i: usize,
        row: usize,
        set: &mut VectorSet,
        to: usize,
    ) -> Result<(), DataError> {
        let mut at = i * self.stride as usize;
        if self.prefixed {
            let d = i32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
            if d as usize != self.dim || d <= 0 {
                return Err(self.malformed(format!(
                    "row {row} declares dimension {d}, row 0 declared {}",
                    self.dim
                )));
            }
            at += 4;
        }
        set.row_bytes_mut(to).copy_from_slice(&buf[at..at + self.row_bytes()]);
        if let Row::F32(r) = set.row(to)
            && let Some(j) = r.iter().position(|x| !x.is_finite())
        {
            return Err(self.malformed(format!(
                "vector {row} has a non-finite value ({}) at position {j}",
                r[j]
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::read_vectors;

    /// `n` rows of `dim` floats, written in two chunks (the first row, then the rest).
    fn write_fbin(path: &Path, n: usize, dim: usize) -> Vec<f32> {
        let values: Vec<f32> = (0..n * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let (first, rest) = values.split_at(dim);
        let chunks = [bytemuck::cast_slice(first), bytemuck::cast_slice(rest)];
        write_bin(path, ElemType::F32, dim, &chunks).unwrap();
        values
    }

    /// A chunk that is not whole rows would shift every later row: refused, not written.
    #[test]
    fn writing_chunks_that_are_not_whole_rows_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.u8bin");
        let got = write_bin(&path, ElemType::U8, 4, &[&[1, 2, 3, 4], &[5, 6, 7]]);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(!path.exists());
        write_bin(&path, ElemType::U8, 4, &[&[1, 2, 3, 4], &[5, 6, 7, 8]]).unwrap();
        let f = VectorFile::open(&path).unwrap();
        assert_eq!((f.len(), f.dim()), (2, 4));
        assert_eq!(f.read_range(1, 1).unwrap().row_bytes(0), &[5, 6, 7, 8]);
    }

    #[test]
    fn a_streamed_file_with_fewer_or_more_rows_than_declared_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.u8bin");
        let mut w = BinWriter::create(&path, ElemType::U8, 2, 3).unwrap();
        w.push(&[1, 2, 3, 4]).unwrap();
        assert_eq!(w.rows_written(), 2);
        assert_eq!(w.push(&[5, 6, 7, 8]).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(w.finish().unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let mut w = BinWriter::create(&path, ElemType::U8, 2, 3).unwrap();
        w.push(&[1, 2, 3, 4]).unwrap();
        w.push(&[5, 6]).unwrap();
        w.finish().unwrap();
        let f = VectorFile::open(&path).unwrap();
        assert_eq!((f.len(), f.dim()), (3, 2));
        assert_eq!(f.read_range(2, 1).unwrap().row_bytes(0), &[5, 6]);
    }

    #[test]
    fn ranges_and_gathers_equal_the_whole_file_read_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.fbin");
        write_fbin(&path, 3000, 33);
        let whole = read_vectors(&path).unwrap();
        let f = VectorFile::open(&path).unwrap();
        assert_eq!((f.len(), f.dim(), f.elem()), (3000, 33, ElemType::F32));
        let part = f.read_range(1000, 1500).unwrap();
        for i in 0..1500 {
            assert_eq!(part.row_bytes(i), whole.row_bytes(1000 + i));
        }
        let ids: Vec<u32> = (0..3000).filter(|i| i % 7 == 0 || i % 500 == 499).collect();
        let got = f.gather(&ids).unwrap();
        for (k, &id) in ids.iter().enumerate() {
            assert_eq!(got.row_bytes(k), whole.row_bytes(id as usize));
        }
    }

    #[test]
    fn a_nan_in_a_gathered_row_is_reported_with_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.fbin");
        let mut values = write_fbin(&path, 100, 4);
        values[57 * 4 + 2] = f32::NAN;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(8);
        bytes.extend_from_slice(bytemuck::cast_slice(&values));
        std::fs::write(&path, bytes).unwrap();
        let f = VectorFile::open(&path).unwrap();
        let err = f.gather(&[3, 57, 90]).unwrap_err().to_string();
        assert!(err.contains("vector 57"), "{err}");
        assert!(f.gather(&[3, 56, 90]).is_ok());
    }

    #[test]
    fn truncated_and_mislabelled_files_are_refused_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.fbin");
        write_fbin(&path, 10, 4);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(VectorFile::open(&path).unwrap_err().to_string().contains("the file has"));
        let other = dir.path().join("v.txt");
        std::fs::write(&other, &bytes).unwrap();
        assert!(matches!(VectorFile::open(&other), Err(DataError::UnknownFormat { .. })));
    }

    #[test]
    fn fvecs_rows_with_a_wrong_prefix_are_refused_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.fvecs");
        let mut bytes = Vec::new();
        for i in 0..20 {
            let d: i32 = if i == 11 { 5 } else { 3 };
            bytes.extend_from_slice(&d.to_le_bytes());
            for j in 0..3 {
                bytes.extend_from_slice(&((i * 3 + j) as f32).to_le_bytes());
            }
        }
        std::fs::write(&path, bytes).unwrap();
        let f = VectorFile::open(&path).unwrap();
        assert_eq!(f.len(), 20);
        let good = f.read_range(0, 11).unwrap();
        assert_eq!(good.row(10).to_f32(), vec![30.0, 31.0, 32.0]);
        assert!(f.read_range(0, 20).unwrap_err().to_string().contains("row 11 declares"));
    }
}
