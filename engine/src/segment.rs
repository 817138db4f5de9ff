//! Segment files (Parquet, written and read through the [`Vfs`] seam) and deletion files.
//!
//! A segment is an immutable Parquet file with the collection's Arrow schema (`id`, `vector`,
//! attributes), zstd-compressed, in row groups of [`crate::Options::row_group_rows`]. pyarrow,
//! DuckDB and anything else that reads Parquet can read it directly. Parquet (as written by
//! parquet-rs) has no page checksums, so the manifest records each segment's length and CRC32C,
//! checked whenever the segment is opened.
//!
//! A deletion file lists the rows of one segment that are deleted (or replaced by a newer
//! version). Files are immutable: each change writes a new numbered file, so the committed
//! manifest never names a file being written. Layout (little-endian):
//!
//! ```text
//! 0..8    magic "QVRDEL\0\0"
//! 8..12   u32 format version (1)
//! 12..16  u32 CRC32C of bytes 0..12 followed by bytes 16..end
//! 16..24  u64 segment id
//! 24..32  u64 rows in the segment
//! 32..40  u64 count of deleted rows
//! 40..    count × u32 row numbers, strictly increasing, each < rows; the file ends there
//! ```

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};

use quiver_wal::vfs::{OpenMode, Vfs, VfsFile};

/// Why a segment or deletion file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// An I/O error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file fails verification (checksum, length, schema or structure).
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Parquet refused to write.
    #[error("{}: parquet: {reason}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Parquet's message.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.to_path_buf(), source }
}

/// A `Write` that appends to a [`VfsFile`] through a buffer and checksums what it writes.
struct VfsWriter {
    file: Box<dyn VfsFile>,
    offset: u64,
    buf: Vec<u8>,
    crc: u32,
}

const WRITE_BUF: usize = 1 << 20;

impl VfsWriter {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.offset)?;
            self.crc = crc32c::crc32c_append(self.crc, &self.buf);
            self.offset += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for VfsWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > WRITE_BUF {
            self.flush_buf()?;
        }
        if data.len() >= WRITE_BUF {
            self.file.write_all_at(data, self.offset)?;
            self.crc = crc32c::crc32c_append(self.crc, data);
            self.offset += data.len() as u64;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

/// Length and checksum of a written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSum {
    /// Bytes.
    pub len: u64,
    /// CRC32C of all bytes.
    pub crc: u32,
}

/// Writes `batches` (all with `schema`) as a new Parquet file at `path` and `fdatasync`s it. The
/// caller syncs the directory before the manifest names the file.
///
/// # Errors
/// I/O failure (the partial file is left for the caller to remove) or a Parquet refusal.
pub fn write_segment(
    vfs: &dyn Vfs,
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
    zstd_level: i32,
) -> Result<FileSum, SegmentError> {
    let file = vfs.open(path, OpenMode::CreateNew).map_err(io_err(path))?;
    let writer = VfsWriter { file, offset: 0, buf: Vec::with_capacity(WRITE_BUF), crc: 0 };
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| SegmentError::Parquet { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_created_by(format!("quiver {}", env!("CARGO_PKG_VERSION")));
    // The vector column's leaf (`vector.list.item`): a dictionary of float noise never pays and
    // min/max statistics of vector elements prune nothing, but both cost CPU on every flush.
    // Float leaves are BYTE_STREAM_SPLIT: the exponent bytes of all values lie together, so zstd
    // compresses them better and faster than plain floats (SIFT: 4.1x instead of 3.3x).
    let parquet_schema = parquet::arrow::ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| SegmentError::Parquet { path: path.to_path_buf(), reason: e.to_string() })?;
    for col in parquet_schema.columns() {
        if col.path().parts().first().map(String::as_str) == Some(crate::schema::VECTOR_COLUMN) {
            props = props
                .set_column_dictionary_enabled(col.path().clone(), false)
                .set_column_statistics_enabled(
                    col.path().clone(),
                    parquet::file::properties::EnabledStatistics::None,
                );
            if col.physical_type() == parquet::basic::Type::FLOAT {
                props = props.set_column_encoding(
                    col.path().clone(),
                    parquet::basic::Encoding::BYTE_STREAM_SPLIT,
                );
            }
        }
    }
    let props = props.build();
    let parquet_err = |e: parquet::errors::ParquetError| match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<io::Error>() {
            Ok(io) => SegmentError::Io { path: path.to_path_buf(), source: *io },
            Err(other) => {
                SegmentError::Parquet { path: path.to_path_buf(), reason: other.to_string() }
            }
        },
        other => SegmentError::Parquet { path: path.to_path_buf(), reason: other.to_string() },
    };
    let mut w = ArrowWriter::try_new(writer, schema.clone(), Some(props)).map_err(parquet_err)?;
    for b in batches {
        w.write(b).map_err(parquet_err)?;
    }
    let mut writer = w.into_inner().map_err(parquet_err)?;
    writer.flush_buf().map_err(io_err(path))?;
    writer.file.sync_data().map_err(io_err(path))?;
    Ok(FileSum { len: writer.offset, crc: writer.crc })
}

/// A [`ChunkReader`] over a [`VfsFile`], so Parquet reads go through the seam.
#[derive(Clone, Debug)]
pub struct VfsChunkReader {
    file: Arc<dyn VfsFile>,
    len: u64,
}

/// A `Read` at a position of a [`VfsChunkReader`]'s file.
#[derive(Debug)]
pub struct VfsRead {
    file: Arc<dyn VfsFile>,
    pos: u64,
}

impl Read for VfsRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Length for VfsChunkReader {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for VfsChunkReader {
    type T = VfsRead;
    fn get_read(&self, start: u64) -> parquet::errors::Result<VfsRead> {
        Ok(VfsRead { file: self.file.clone(), pos: start })
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        if start.checked_add(length as u64).is_none_or(|end| end > self.len) {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "read of {length} bytes at {start} past the end ({})",
                self.len
            )));
        }
        let mut buf = vec![0u8; length];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        Ok(Bytes::from(buf))
    }
}

/// An open, verified segment file.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    path: PathBuf,
    reader: VfsChunkReader,
    meta: ArrowReaderMetadata,
    rows: u64,
}

impl SegmentFile {
    /// Opens `path`, checks its length and CRC32C against `sum`, its schema against `schema`, and
    /// its row count against `rows`.
    ///
    /// # Errors
    /// [`SegmentError::Io`] or [`SegmentError::Corrupt`].
    pub fn open(
        vfs: &dyn Vfs,
        path: &Path,
        sum: FileSum,
        schema: &SchemaRef,
        rows: u64,
    ) -> Result<Self, SegmentError> {
        let corrupt = |reason: String| SegmentError::Corrupt { path: path.to_path_buf(), reason };
        let file: Arc<dyn VfsFile> =
            Arc::from(vfs.open(path, OpenMode::Read).map_err(io_err(path))?);
        let len = file.len().map_err(io_err(path))?;
        if len != sum.len {
            return Err(corrupt(format!("{len} bytes, the manifest says {}", sum.len)));
        }
        let mut crc = 0u32;
        let mut buf = vec![0u8; WRITE_BUF];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(WRITE_BUF as u64) as usize;
            file.read_exact_at(&mut buf[..n], at).map_err(io_err(path))?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += n as u64;
        }
        if crc != sum.crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let reader = VfsChunkReader { file, len };
        let meta = ArrowReaderMetadata::load(&reader, ArrowReaderOptions::new())
            .map_err(|e| corrupt(format!("parquet metadata: {e}")))?;
        if meta.schema().fields() != schema.fields() {
            return Err(corrupt(format!(
                "schema {:?} differs from the collection's {:?}",
                meta.schema(),
                schema
            )));
        }
        let file_rows = meta.metadata().file_metadata().num_rows();
        if file_rows < 0 || file_rows as u64 != rows {
            return Err(corrupt(format!("{file_rows} rows, the manifest says {rows}")));
        }
        Ok(SegmentFile { path: path.to_path_buf(), reader, meta, rows })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the columns `columns` (indices into the stored schema) of the rows in `rows`
    /// (strictly increasing), or of every row if `rows` is `None`, as batches of at most
    /// `batch_rows` rows (fewer when rows are large: about 1 MiB each), in row order.
    ///
    /// # Errors
    /// [`SegmentError`] on I/O failure or a malformed file.
    pub fn read(
        &self,
        columns: &[usize],
        rows: Option<&[u32]>,
        batch_rows: usize,
    ) -> Result<Vec<RecordBatch>, SegmentError> {
        let corrupt = |e: &dyn std::fmt::Display| SegmentError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        // Parquet returns columns in file order: read them sorted, then put them in the order
        // asked for.
        let mut sorted = columns.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let positions: Vec<usize> = columns
            .iter()
            .map(|c| sorted.binary_search(c).expect("every column is in the sorted list"))
            .collect();
        let mask = ProjectionMask::roots(self.meta.parquet_schema(), sorted.iter().copied());
        // parquet-rs grows a list column's value buffer with `reserve_exact` page by page, so a
        // batch of many pages copies itself once per page: a 64k-row batch of 128-d vectors
        // spent a third of a scan in `memmove`. Batches of about a page (1 MiB) avoid that;
        // callers that want bigger ones concatenate (one copy).
        let md = self.meta.metadata();
        let bytes: i64 = md.row_groups().iter().map(|g| g.total_byte_size()).sum();
        let row_bytes = (bytes.max(1) as u64).div_ceil(self.rows.max(1)).max(1);
        let read_rows = usize::try_from((1u64 << 20) / row_bytes).unwrap_or(usize::MAX);
        let read_rows = read_rows.clamp(64, batch_rows.max(64)).min(batch_rows.max(1));
        let mut b = ParquetRecordBatchReaderBuilder::new_with_metadata(
            self.reader.clone(),
            self.meta.clone(),
        )
        .with_projection(mask)
        .with_batch_size(read_rows);
        if let Some(rows) = rows {
            debug_assert!(rows.windows(2).all(|w| w[0] < w[1]));
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            // Only the row groups holding a wanted row are read; the selection is relative to
            // the concatenation of those groups.
            let mut wanted = Vec::new();
            let mut sel = Vec::new();
            let mut it = rows.iter().map(|&r| u64::from(r)).peekable();
            let mut first = 0u64;
            for (g, rg) in self.meta.metadata().row_groups().iter().enumerate() {
                let end = first + rg.num_rows().max(0) as u64;
                let mut pos = first;
                while let Some(&r) = it.peek()
                    && r < end
                {
                    if r > pos {
                        sel.push(RowSelector::skip((r - pos) as usize));
                    }
                    sel.push(RowSelector::select(1));
                    pos = r + 1;
                    it.next();
                }
                if pos > first {
                    wanted.push(g);
                    if end > pos {
                        sel.push(RowSelector::skip((end - pos) as usize));
                    }
                }
                first = end;
            }
            if let Some(r) = it.next() {
                return Err(corrupt(&format!("row {r} is past the end ({} rows)", self.rows)));
            }
            b = b.with_row_groups(wanted).with_row_selection(RowSelection::from(sel));
        }
        let reader = b.build().map_err(|e| corrupt(&e))?;
        let identity =
            positions.iter().enumerate().all(|(i, &p)| i == p) && positions.len() == sorted.len();
        reader
            .map(|b| {
                let b = b.map_err(|e| corrupt(&e))?;
                if identity { Ok(b) } else { b.project(&positions).map_err(|e| corrupt(&e)) }
            })
            .collect()
    }
}

/// The deletion file's magic.
const DEL_MAGIC: [u8; 8] = *b"QVRDEL\0\0";
const DEL_VERSION: u32 = 1;
const DEL_HEADER: usize = 40;

/// Encodes a deletion file for `segment` of `rows` rows listing `deleted` (strictly increasing).
pub fn encode_deletes(segment: u64, rows: u64, deleted: &[u32]) -> Vec<u8> {
    assert!(deleted.windows(2).all(|w| w[0] < w[1]), "deleted rows must be strictly increasing");
    assert!(deleted.last().is_none_or(|&r| u64::from(r) < rows), "deleted row out of range");
    let mut out = Vec::with_capacity(DEL_HEADER + 4 * deleted.len());
    out.extend_from_slice(&DEL_MAGIC);
    out.extend_from_slice(&DEL_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&segment.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&(deleted.len() as u64).to_le_bytes());
    for r in deleted {
        out.extend_from_slice(&r.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..12]), &out[16..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a deletion file, checking everything [`encode_deletes`] promises.
///
/// # Errors
/// A description of the first problem.
pub fn decode_deletes(bytes: &[u8], segment: u64, rows: u64) -> Result<Vec<u32>, String> {
    if bytes.len() < DEL_HEADER {
        return Err("shorter than its header".into());
    }
    if bytes[0..8] != DEL_MAGIC {
        return Err("bad magic".into());
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(12) != crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..]) {
        return Err("checksum mismatch".into());
    }
    if u32_at(8) != DEL_VERSION {
        return Err(format!("format version {} is not supported", u32_at(8)));
    }
    if u64_at(16) != segment || u64_at(24) != rows {
        return Err(format!(
            "written for segment {} of {} rows, expected segment {segment} of {rows}",
            u64_at(16),
            u64_at(24)
        ));
    }
    let count = u64_at(32);
    if (bytes.len() - DEL_HEADER) as u64 != count.saturating_mul(4) {
        return Err("length does not match the count".into());
    }
    let out: Vec<u32> = (0..count as usize).map(|i| u32_at(DEL_HEADER + 4 * i)).collect();
    if !out.windows(2).all(|w| w[0] < w[1]) || out.last().is_some_and(|&r| u64::from(r) >= rows) {
        return Err("rows not strictly increasing or out of range".into());
    }
    Ok(out)
}
