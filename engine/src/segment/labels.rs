//! A segment's label index: for one attribute column with few distinct values (a tenant, a
//! category), the rows holding each value, on disk beside the segment file
//! (`segments/{id:016x}.{column}.labels`). A filter on that column alone is answered by
//! evaluating it over the distinct values (a few thousand at most) and reading the rows of
//! those that pass — a few kilobytes for a rare value — instead of reading and evaluating the
//! column over every row of the segment.
//!
//! ```text
//! header     44 bytes: magic "QVRLBL01", the segment's rows (u64), posting bytes (u64),
//!            the segment file's CRC-32C (u32), the column's index (u32), distinct values
//!            (u32), value bytes (u32), CRC-32C of the 40 bytes before it (u32)
//! values     the distinct non-null values, ascending: 8 bytes each (i64) for integer and
//!            boolean columns; for string columns a u32 length, then the UTF-8 bytes, each
//! directory  per value, then once for the nulls: rows (u32), CRC-32C of its posting (u32)
//! check      CRC-32C of the values and the directory (u32)
//! postings   per value, then the nulls: its rows, ascending u32s
//! ```
//!
//! All integers little-endian. Every row is in exactly one posting, so the postings are 4
//! bytes a row. The file is derived: it is built from the segment's column the first time a
//! filter on that column alone reads the segment, written under a temporary name and renamed,
//! not synced. One that is missing, bound to another segment file, of another length, or fails
//! a checksum when opened is built again; a posting that fails its checksum when read is
//! reported corrupt, never used. RAM holds the values and the directory (at most
//! [`MAX_LABEL_VALUES`] entries), not the postings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_cast::cast;
use arrow_schema::{DataType, Field, Schema};
use quiver_wal::vfs::{OpenMode, Vfs, VfsFile};

use super::SegmentError;
use crate::rowset::RowSet;

/// Most distinct values a column may have in a segment to be given a label index.
pub const MAX_LABEL_VALUES: usize = 16_384;
const MAGIC: [u8; 8] = *b"QVRLBL01";
const HEADER: usize = 44;
/// Bytes of postings written at a time.
const WRITE_BUFFER: usize = 256 << 10;
/// Postings are written and checked as the u32s in memory: little-endian on these targets.
const _: () = assert!(cfg!(target_endian = "little"), "label postings are little-endian");
/// Distinguishes temporary files of builds that race.
static BUILDS: AtomicU64 = AtomicU64::new(0);

/// The file name of column `column`'s label index beside segment file `segment`.
pub(crate) fn labels_path(segment: &Path, column: usize) -> PathBuf {
    segment.with_extension(format!("{column}.labels"))
}

/// The temporary name a build writes `path` (a [`labels_path`]) under, unique to this
/// process and build.
fn temporary_path(path: &Path) -> PathBuf {
    let n = BUILDS.fetch_add(1, Ordering::Relaxed);
    path.with_extension(format!("labels.{}.{n}.tmp", std::process::id()))
}

/// For a file name [`labels_path`] or [`temporary_path`] gives (`{stem}.{column}.labels`, or
/// `{stem}.{column}.labels.{pid}.{n}.tmp`): the segment file's stem, and whether the file is
/// temporary. `None` for any other name.
pub(crate) fn label_file_stem(name: &str) -> Option<(&str, bool)> {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (stem, rest) = name.split_once('.')?;
    let (column, kind) = rest.split_once('.')?;
    if !digits(column) {
        return None;
    }
    let tmp = match kind.strip_prefix("labels")? {
        "" => false,
        tail => match tail.split('.').collect::<Vec<_>>().as_slice() {
            ["", pid, n, "tmp"] if digits(pid) && digits(n) => true,
            _ => return None,
        },
    };
    Some((stem, tmp))
}

/// How a column's values are kept: which columns can have a label index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Integers and booleans, as i64.
    Int,
    /// Strings, as UTF-8.
    Str,
}

impl Kind {
    fn of(data_type: &DataType) -> Option<Kind> {
        use DataType::{
            Boolean, Int8, Int16, Int32, Int64, LargeUtf8, UInt8, UInt16, UInt32, UInt64, Utf8,
            Utf8View,
        };
        match data_type {
            Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => {
                Some(Kind::Int)
            }
            Utf8 | LargeUtf8 | Utf8View => Some(Kind::Str),
            _ => None,
        }
    }
}

/// An open label index: the file, the distinct values and where each one's rows lie.
#[derive(Debug)]
pub(crate) struct LabelIndex {
    file: Box<dyn VfsFile>,
    path: PathBuf,
    /// The column as the filter sees it.
    field: Arc<Field>,
    /// The distinct values in the column's type, then one null: what a filter is evaluated on.
    values: ArrayRef,
    /// Per entry (each value, then the nulls): its first row's place among the postings, its
    /// rows, its posting's checksum.
    starts: Vec<u64>,
    counts: Vec<u32>,
    crcs: Vec<u32>,
    /// Where the postings begin in the file.
    postings_at: u64,
    rows: u64,
}

/// A value of a column as a build reads and keeps it; `Null` orders after every value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Owned {
    Int(i64),
    Str(Box<str>),
    Null,
}

impl LabelIndex {
    /// Whether a column of `data_type` can have a label index.
    pub(crate) fn supports(data_type: &DataType) -> bool {
        Kind::of(data_type).is_some()
    }

    /// Builds the label index of `field` (column `column` of a segment file of `rows` rows
    /// whose checksum is `segment_crc`) from the column, read twice through `batches` (every
    /// row in order each time: once to count each value's rows, once to place them, so the
    /// build holds 4 bytes a row and the distinct values), writes it to `path` and opens it.
    /// `Ok(None)` if the column has more than [`MAX_LABEL_VALUES`] distinct values or is of a
    /// type without one.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if the file cannot be written; [`SegmentError::Corrupt`] if the
    /// batches do not hold `rows` values of the column, the same both times.
    pub(crate) fn build<I>(
        vfs: &dyn Vfs,
        path: &Path,
        field: &Arc<Field>,
        column: usize,
        (rows, segment_crc): (u64, u32),
        mut batches: impl FnMut() -> Result<I, SegmentError>,
    ) -> Result<Option<LabelIndex>, SegmentError>
    where
        I: Iterator<Item = Result<RecordBatch, SegmentError>>,
    {
        let Some(kind) = Kind::of(field.data_type()) else { return Ok(None) };
        let corrupt = |reason: String| SegmentError::Corrupt { path: path.to_path_buf(), reason };
        let as_type = if kind == Kind::Int { DataType::Int64 } else { DataType::Utf8 };
        let read = |batches: I, each: &mut dyn FnMut(Owned)| {
            let mut seen = 0u64;
            for batch in batches {
                let batch = batch?;
                let column = batch.column(0);
                seen += column.len() as u64;
                let keys = cast(column, &as_type)
                    .map_err(|e| corrupt(format!("{}: {e}", field.name())))?;
                if let Some(ints) = keys.as_any().downcast_ref::<Int64Array>() {
                    ints.iter().for_each(|v| each(v.map_or(Owned::Null, Owned::Int)));
                } else {
                    let texts = keys.as_any().downcast_ref::<StringArray>().expect("cast");
                    texts
                        .iter()
                        .for_each(|v| each(v.map_or(Owned::Null, |t| Owned::Str(t.into()))));
                }
            }
            if seen != rows {
                return Err(corrupt(format!("{seen} values of {} for {rows} rows", field.name())));
            }
            Ok(())
        };
        // Pass 1: each value's rows, counted (`Owned::Null`: the nulls).
        let mut counts: BTreeMap<Owned, u32> = BTreeMap::new();
        let mut too_many = false;
        read(batches()?, &mut |key| {
            if too_many {
                return;
            }
            *counts.entry(key).or_insert(0) += 1;
            too_many = counts.len() > MAX_LABEL_VALUES + 1;
        })?;
        let nulls = counts.remove(&Owned::Null).unwrap_or(0);
        if too_many || counts.len() > MAX_LABEL_VALUES {
            return Ok(None);
        }
        // Pass 2: each row placed in its value's posting (values ascending, the nulls last).
        let mut next: ahash::AHashMap<Owned, usize> = ahash::AHashMap::new();
        let mut at = 0usize;
        for (value, &count) in &counts {
            next.insert(value.clone(), at);
            at += count as usize;
        }
        next.insert(Owned::Null, at);
        let mut placed = vec![0u32; rows as usize];
        let mut row = 0u32;
        let mut strays = 0u64;
        read(batches()?, &mut |key| {
            match next.get_mut(&key) {
                Some(slot) if *slot < placed.len() => {
                    placed[*slot] = row;
                    *slot += 1;
                }
                _ => strays += 1,
            }
            row += 1;
        })?;
        let counts: Vec<(Owned, u32)> = counts.into_iter().chain([(Owned::Null, nulls)]).collect();
        // Each value's rows fill its posting exactly: its cursor ends where the next begins.
        let mut end = 0usize;
        let filled = counts.iter().all(|(value, count)| {
            end += *count as usize;
            next.get(value) == Some(&end)
        });
        if strays > 0 || !filled {
            return Err(corrupt(format!("{} changed between two reads", field.name())));
        }
        write(vfs, path, column, (rows, segment_crc), &counts, &placed)?;
        LabelIndex::open(vfs, path, field, column, (rows, segment_crc)).map(Some)
    }

    /// Opens `path`, the label index of `field` (column `column`) of a segment file of `rows`
    /// rows whose checksum is `segment_crc`, and reads its values and directory.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if it cannot be read (missing, say); [`SegmentError::Corrupt`] if
    /// it fails a check: header, binding to the segment, length, or the values' checksum.
    pub(crate) fn open(
        vfs: &dyn Vfs,
        path: &Path,
        field: &Arc<Field>,
        column: usize,
        (rows, segment_crc): (u64, u32),
    ) -> Result<LabelIndex, SegmentError> {
        let io = |source| SegmentError::Io { path: path.to_path_buf(), source };
        let corrupt = |reason: String| SegmentError::Corrupt { path: path.to_path_buf(), reason };
        let kind = Kind::of(field.data_type())
            .ok_or_else(|| corrupt(format!("no label index for a {} column", field.data_type())))?;
        let file = vfs.open(path, OpenMode::Read).map_err(io)?;
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, 0).map_err(io)?;
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        if h[..8] != MAGIC || half(40) != crc32c::crc32c(&h[..40]) {
            return Err(corrupt("bad magic or header checksum".into()));
        }
        let (n, posting_bytes, crc, col) = (word(8), word(16), half(24), half(28) as usize);
        let (entries, value_bytes) = (half(32) as usize, half(36) as usize);
        if n != rows || crc != segment_crc || col != column || posting_bytes != 4 * rows {
            return Err(corrupt(format!(
                "written for column {col}, {n} rows, a segment file with CRC {crc:08x}: not \
                 column {column}, {rows} rows, {segment_crc:08x}"
            )));
        }
        if entries > MAX_LABEL_VALUES {
            return Err(corrupt(format!("{entries} values, more than {MAX_LABEL_VALUES}")));
        }
        let meta = value_bytes + 8 * (entries + 1) + 4;
        let len = file.len().map_err(io)?;
        let want = (HEADER + meta) as u64 + posting_bytes;
        if len != want {
            return Err(corrupt(format!("{len} bytes, {want} expected")));
        }
        let mut m = vec![0u8; meta];
        file.read_exact_at(&mut m, HEADER as u64).map_err(io)?;
        let check = u32::from_le_bytes(m[meta - 4..].try_into().expect("4 bytes"));
        if check != crc32c::crc32c(&m[..meta - 4]) {
            return Err(corrupt("values or directory fail their checksum".into()));
        }
        let values = parse_values(kind, &m[..value_bytes], entries)
            .ok_or_else(|| corrupt("values malformed".into()))?;
        let values = cast(&values, field.data_type())
            .map_err(|e| corrupt(format!("values as {}: {e}", field.data_type())))?;
        let (mut starts, mut counts, mut crcs) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0u64;
        for entry in m[value_bytes..meta - 4].chunks_exact(8) {
            let count = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
            starts.push(at);
            counts.push(count);
            crcs.push(u32::from_le_bytes(entry[4..].try_into().expect("4 bytes")));
            at += u64::from(count);
        }
        if at != rows {
            return Err(corrupt(format!("postings of {at} rows for {rows}")));
        }
        Ok(LabelIndex {
            file,
            path: path.to_path_buf(),
            field: Arc::clone(field),
            values,
            starts,
            counts,
            crcs,
            postings_at: (HEADER + meta) as u64,
            rows,
        })
    }

    /// The rows for which `pass` holds, where `pass` evaluates a filter on a batch of this
    /// column alone: evaluated once per distinct value (and once for null), then the rows of
    /// the values that pass are read, adjacent postings in one read. `None` if `pass` fails
    /// on the values (the caller evaluates the column itself, and meets the error there).
    ///
    /// # Errors
    /// [`SegmentError::Io`] for a failed read; [`SegmentError::Corrupt`] if a posting fails
    /// its checksum or names a row past the segment.
    pub(crate) fn rows_where(
        &self,
        pass: impl FnOnce(&RecordBatch) -> Result<BooleanArray, arrow_schema::ArrowError>,
    ) -> Result<Option<RowSet>, SegmentError> {
        let corrupt = |reason: String| SegmentError::Corrupt { path: self.path.clone(), reason };
        let Ok(passed) = pass(&self.values_batch()) else { return Ok(None) };
        let mut out = RowSet::new(self.rows as usize);
        let wanted: Vec<usize> = (0..self.counts.len())
            .filter(|&e| passed.is_valid(e) && passed.value(e) && self.counts[e] > 0)
            .collect();
        let mut buffer = Vec::new();
        for run in wanted.chunk_by(|a, b| b - a == 1) {
            let (first, last) = (run[0], run[run.len() - 1]);
            let rows =
                (self.starts[last] + u64::from(self.counts[last]) - self.starts[first]) as usize;
            buffer.resize(4 * rows, 0);
            let at = self.postings_at + 4 * self.starts[first];
            let io = |source| SegmentError::Io { path: self.path.clone(), source };
            self.file.read_exact_at(&mut buffer, at).map_err(io)?;
            let mut from = 0;
            for &e in run {
                let bytes = &buffer[from..from + 4 * self.counts[e] as usize];
                from += bytes.len();
                if crc32c::crc32c(bytes) != self.crcs[e] {
                    return Err(corrupt(format!("the rows of value {e} fail their checksum")));
                }
                for r in bytes.chunks_exact(4) {
                    let r = u32::from_le_bytes(r.try_into().expect("4 bytes")) as usize;
                    if r as u64 >= self.rows {
                        return Err(corrupt(format!("row {r} of {} rows", self.rows)));
                    }
                    out.insert(r);
                }
            }
        }
        Ok(Some(out))
    }

    /// Its entries: each distinct value in ascending order, then the nulls (the last entry).
    pub(crate) fn entries(&self) -> usize {
        self.counts.len()
    }

    /// The rows holding entry `entry` ([`LabelIndex::entries`]).
    pub(crate) fn count(&self, entry: usize) -> usize {
        self.counts[entry] as usize
    }

    /// The entries with rows for which `pass` holds (the nulls' last, if they pass), where
    /// `pass` evaluates a filter on a batch of this column alone; `None` if `pass` fails on
    /// the values. No I/O: the values are in RAM.
    pub(crate) fn entries_where(
        &self,
        pass: impl FnOnce(&RecordBatch) -> Result<BooleanArray, arrow_schema::ArrowError>,
    ) -> Option<Vec<usize>> {
        let passed = pass(&self.values_batch()).ok()?;
        Some(
            (0..self.counts.len())
                .filter(|&e| passed.is_valid(e) && passed.value(e) && self.counts[e] > 0)
                .collect(),
        )
    }

    /// The rows of entry `entry`, ascending, read from disk and checked.
    ///
    /// # Errors
    /// [`SegmentError::Io`] for a failed read; [`SegmentError::Corrupt`] if the posting fails
    /// its checksum, names a row past the segment or is out of order.
    pub(crate) fn entry_rows(&self, entry: usize) -> Result<Vec<u32>, SegmentError> {
        let corrupt = |reason: String| SegmentError::Corrupt { path: self.path.clone(), reason };
        let mut buffer = vec![0u8; 4 * self.counts[entry] as usize];
        let at = self.postings_at + 4 * self.starts[entry];
        let io = |source| SegmentError::Io { path: self.path.clone(), source };
        self.file.read_exact_at(&mut buffer, at).map_err(io)?;
        if crc32c::crc32c(&buffer) != self.crcs[entry] {
            return Err(corrupt(format!("the rows of value {entry} fail their checksum")));
        }
        let rows: Vec<u32> = buffer
            .chunks_exact(4)
            .map(|r| u32::from_le_bytes(r.try_into().expect("4 bytes")))
            .collect();
        let ordered = rows.windows(2).all(|w| w[0] < w[1]);
        if !ordered || rows.last().is_some_and(|&r| u64::from(r) >= self.rows) {
            return Err(corrupt(format!("the rows of value {entry} are not rows of the segment")));
        }
        Ok(rows)
    }

    /// The distinct values, then a null, as a batch of this column alone.
    fn values_batch(&self) -> RecordBatch {
        // Nullable whatever the column: the values end with the null entry.
        let field = self.field.as_ref().clone().with_nullable(true);
        let schema = Arc::new(Schema::new(vec![field]));
        RecordBatch::try_new(schema, vec![Arc::clone(&self.values)])
            .expect("the values are of the column's type")
    }

    /// Bytes of RAM it holds: its values and directory.
    pub(crate) fn bytes(&self) -> usize {
        self.values.get_array_memory_size() + 16 * self.counts.len()
    }
}

/// Parses `entries` values of `kind`, plus a trailing null, as an Int64 or Utf8 array.
fn parse_values(kind: Kind, bytes: &[u8], entries: usize) -> Option<ArrayRef> {
    match kind {
        Kind::Int => {
            if bytes.len() != 8 * entries {
                return None;
            }
            let values =
                bytes.chunks_exact(8).map(|b| Some(i64::from_le_bytes(b.try_into().ok()?)));
            Some(Arc::new(values.chain([None]).collect::<Int64Array>()))
        }
        Kind::Str => {
            let mut out = Vec::with_capacity(entries + 1);
            let mut at = 0usize;
            for _ in 0..entries {
                let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
                let text = std::str::from_utf8(bytes.get(at + 4..at + 4 + len)?).ok()?;
                out.push(Some(text));
                at += 4 + len;
            }
            (at == bytes.len()).then(|| {
                out.push(None);
                Arc::new(StringArray::from(out)) as ArrayRef
            })
        }
    }
}

/// Writes the label index of `counts` (each distinct value and its rows' count, ascending,
/// then the nulls') whose postings lie one after another in `placed` to `path`, under a
/// temporary name renamed into place.
fn write(
    vfs: &dyn Vfs,
    path: &Path,
    column: usize,
    (rows, segment_crc): (u64, u32),
    counts: &[(Owned, u32)],
    placed: &[u32],
) -> Result<(), SegmentError> {
    let mut meta = Vec::new();
    for (value, _) in counts {
        match value {
            Owned::Int(v) => meta.extend_from_slice(&v.to_le_bytes()),
            Owned::Str(v) => {
                meta.extend_from_slice(&(v.len() as u32).to_le_bytes());
                meta.extend_from_slice(v.as_bytes());
            }
            Owned::Null => {}
        }
    }
    let value_bytes = meta.len();
    let mut at = 0usize;
    for &(_, count) in counts {
        let posting = &placed[at..at + count as usize];
        at += posting.len();
        meta.extend_from_slice(&count.to_le_bytes());
        meta.extend_from_slice(&crc32c::crc32c(bytemuck::cast_slice(posting)).to_le_bytes());
    }
    debug_assert_eq!(at, placed.len(), "every row in one posting");
    meta.extend_from_slice(&crc32c::crc32c(&meta).to_le_bytes());
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&rows.to_le_bytes());
    h.extend_from_slice(&(4 * rows).to_le_bytes());
    h.extend_from_slice(&segment_crc.to_le_bytes());
    h.extend_from_slice(&(column as u32).to_le_bytes());
    h.extend_from_slice(&(counts.len() as u32 - 1).to_le_bytes());
    h.extend_from_slice(&(value_bytes as u32).to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c(&h).to_le_bytes());
    debug_assert_eq!(h.len(), HEADER);
    let tmp = temporary_path(path);
    let io = |source| SegmentError::Io { path: tmp.clone(), source };
    let file = vfs.open(&tmp, OpenMode::CreateNew).map_err(io)?;
    let mut offset = 0u64;
    let mut put = |bytes: &[u8]| -> Result<(), SegmentError> {
        file.write_all_at(bytes, offset).map_err(io)?;
        offset += bytes.len() as u64;
        Ok(())
    };
    put(&h)?;
    put(&meta)?;
    for chunk in placed.chunks(WRITE_BUFFER / 4) {
        put(bytemuck::cast_slice(chunk))?;
    }
    drop(file);
    vfs.rename(&tmp, path).map_err(|source| SegmentError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_wal::vfs::OsVfs;

    fn int_field() -> Arc<Field> {
        // Not nullable, as a column may be: the values still carry their null entry.
        Arc::new(Field::new("tenant", DataType::UInt16, false))
    }

    fn batches(values: &[Option<u16>]) -> Vec<Result<RecordBatch, SegmentError>> {
        let schema = Arc::new(Schema::new(vec![Field::new("tenant", DataType::UInt16, true)]));
        values
            .chunks(7)
            .map(|c| {
                let array = arrow_array::UInt16Array::from(c.to_vec());
                Ok(RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(array)]).unwrap())
            })
            .collect()
    }

    fn equal_to(
        v: u16,
    ) -> impl FnOnce(&RecordBatch) -> Result<BooleanArray, arrow_schema::ArrowError> {
        move |b| {
            let scalar = arrow_array::UInt16Array::new_scalar(v);
            arrow_ord::cmp::eq(b.column(0), &scalar)
        }
    }

    #[test]
    fn a_value_s_rows_come_back_exactly_and_nulls_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000001.2.labels");
        let values: Vec<Option<u16>> =
            (0..100u16).map(|i| if i % 10 == 9 { None } else { Some(i % 4) }).collect();
        let vfs = OsVfs;
        let built = LabelIndex::build(&vfs, &path, &int_field(), 2, (100, 7), || {
            Ok(batches(&values).into_iter())
        })
        .unwrap()
        .expect("4 values are few enough");
        let reopened = LabelIndex::open(&vfs, &path, &int_field(), 2, (100, 7)).unwrap();
        for index in [&built, &reopened] {
            for v in 0..5u16 {
                let got: Vec<u32> =
                    index.rows_where(equal_to(v)).unwrap().unwrap().rows().collect();
                let want: Vec<u32> =
                    (0..100u32).filter(|&r| values[r as usize] == Some(v)).collect();
                assert_eq!(got, want, "value {v}");
            }
            // IS NULL: only the null entry passes.
            let nulls = index
                .rows_where(|b| Ok(arrow_arith::boolean::is_null(b.column(0)).unwrap()))
                .unwrap()
                .unwrap();
            assert_eq!(nulls.rows().collect::<Vec<_>>(), (9..100).step_by(10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_label_file_of_another_segment_or_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000001.0.labels");
        let values: Vec<Option<u16>> = (0..50u16).map(|i| Some(i % 3)).collect();
        let vfs = OsVfs;
        LabelIndex::build(&vfs, &path, &int_field(), 0, (50, 7), || {
            Ok(batches(&values).into_iter())
        })
        .unwrap()
        .unwrap();
        // Another segment file (checksum), another row count, another column.
        for (rows, crc, column) in [(50, 8, 0), (51, 7, 0), (50, 7, 1)] {
            let e = LabelIndex::open(&vfs, &path, &int_field(), column, (rows, crc)).unwrap_err();
            assert!(matches!(e, SegmentError::Corrupt { .. }), "{e}");
        }
        // A flipped byte in a posting: the value's rows are refused when read, not returned.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let index = LabelIndex::open(&vfs, &path, &int_field(), 0, (50, 7)).unwrap();
        let e = index.rows_where(|b| Ok(BooleanArray::from(vec![true; b.num_rows()]))).unwrap_err();
        assert!(matches!(e, SegmentError::Corrupt { .. }), "{e}");
        // A torn file: shorter than its header says.
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let e = LabelIndex::open(&vfs, &path, &int_field(), 0, (50, 7)).unwrap_err();
        assert!(matches!(e, SegmentError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn a_column_that_reads_differently_twice_is_refused_not_indexed() {
        // The build reads the column twice (count, then place): if the two reads disagree,
        // the postings would be wrong, so it fails instead of writing them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000001.0.labels");
        let first: Vec<Option<u16>> = (0..40u16).map(|i| Some(i % 4)).collect();
        let second: Vec<Option<u16>> = (0..40u16).map(|i| Some((i + 1) % 4 / 2)).collect();
        let mut reads = 0;
        let built = LabelIndex::build(&OsVfs, &path, &int_field(), 0, (40, 7), || {
            reads += 1;
            Ok(batches(if reads == 1 { &first } else { &second }).into_iter())
        });
        assert!(matches!(built, Err(SegmentError::Corrupt { .. })), "{built:?}");
        assert!(!path.exists(), "nothing written");
    }

    #[test]
    fn the_names_a_build_writes_parse_back_to_their_segment_and_nothing_else_does() {
        let path = labels_path(Path::new("segments/00000000000000ab.parquet"), 3);
        let tmp = temporary_path(&path);
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(label_file_stem(&name(&path)), Some(("00000000000000ab", false)));
        assert_eq!(label_file_stem(&name(&tmp)), Some(("00000000000000ab", true)));
        for other in
            ["00000000000000ab.parquet", "00000000000000ab.ids", "a.x.labels", "a.3.labels.1.tmp"]
        {
            assert_eq!(label_file_stem(other), None, "{other}");
        }
    }

    #[test]
    fn too_many_values_or_an_unsupported_type_build_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000001.0.labels");
        let many: Vec<Option<u16>> = (0..=MAX_LABEL_VALUES as u16).map(Some).collect();
        let rows = many.len() as u64;
        let vfs = OsVfs;
        let built = LabelIndex::build(&vfs, &path, &int_field(), 0, (rows, 7), || {
            Ok(batches(&many).into_iter())
        });
        assert!(built.unwrap().is_none());
        assert!(!path.exists(), "nothing written");
        let float = Arc::new(Field::new("f", DataType::Float32, true));
        let built = LabelIndex::build(&vfs, &path, &float, 0, (0, 7), || Ok(std::iter::empty()));
        assert!(built.unwrap().is_none());
    }
}
