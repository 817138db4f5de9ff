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

use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory;
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;

use crate::rowset::RowSet;
pub(crate) use labels::LabelIndex;
pub use labels::MAX_LABEL_VALUES;

/// Most rows a data page of an attribute (or id) column holds: a filter's zones are pages of
/// this many rows where the file has a page index.
pub(crate) const ZONE_PAGE_ROWS: usize = 4_096;
pub(crate) use labels::label_file_stem;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;

use quiver_wal::vfs::{OpenMode, Vfs, VfsFile};

mod byte_split;
mod deletes;
mod filtering;
mod labels;
mod vector_leaf;
mod vector_writer;
pub use deletes::{decode_deletes, encode_deletes};
use vector_leaf::VectorLeaf;
use vector_writer::VectorWriter;

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
    let mut w = SegmentWriter::create(vfs, path, schema, row_group_rows, zstd_level)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}

/// Writes a new segment file: first rows encoded from Arrow batches ([`SegmentWriter::write`]),
/// then whole row groups copied from other segments without decoding them
/// ([`SegmentWriter::copy_row_groups`], what merges do with segments that lost no rows).
/// [`SegmentWriter::finish`] writes the footer and `fdatasync`s the file; the caller syncs the
/// directory before the manifest names it.
pub struct SegmentWriter {
    path: PathBuf,
    schema: SchemaRef,
    /// `None` once an error left the file unusable.
    state: Option<WriterState>,
}

enum WriterState {
    /// Encoding batches; no row group copied yet.
    Encoding(Box<Encoder>),
    /// Copying row groups; encoding is over.
    Copying(Box<SerializedFileWriter<VfsWriter>>),
}

/// Encodes batches into row groups: the `vector` column of float vectors through
/// [`VectorWriter`], every other column through parquet-rs's Arrow column writers.
struct Encoder {
    schema: SchemaRef,
    fw: SerializedFileWriter<VfsWriter>,
    factory: ArrowRowGroupWriterFactory,
    row_group_rows: usize,
    /// Rows waiting for the next row group (fewer than `row_group_rows`).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    row_groups: usize,
    vector: Option<VectorWriter>,
    /// The first leaf column of each root column (and the leaf count at the end).
    first_leaf: Vec<usize>,
}

impl Encoder {
    fn new(
        writer: VfsWriter,
        schema: &SchemaRef,
        props: WriterProperties,
        row_group_rows: usize,
        zstd_level: i32,
    ) -> parquet::errors::Result<Self> {
        // The Arrow writer puts the Arrow schema in the file's metadata; its lower half does
        // the rest.
        let (fw, factory) =
            ArrowWriter::try_new(writer, schema.clone(), Some(props))?.into_serialized_writer()?;
        let pschema = fw.schema_descr();
        let mut first_leaf = vec![0; schema.fields().len() + 1];
        for leaf in 0..pschema.num_columns() {
            first_leaf[pschema.get_column_root_idx(leaf) + 1] = leaf + 1;
        }
        for r in 1..first_leaf.len() {
            first_leaf[r] = first_leaf[r].max(first_leaf[r - 1]);
        }
        let vector = match schema.index_of(crate::schema::VECTOR_COLUMN) {
            Ok(root) if first_leaf[root + 1] == first_leaf[root] + 1 => VectorWriter::new(
                root,
                schema.field(root),
                first_leaf[root],
                pschema.column(first_leaf[root]),
                zstd_level,
            )?,
            _ => None,
        };
        Ok(Encoder {
            schema: schema.clone(),
            fw,
            factory,
            row_group_rows: row_group_rows.max(1),
            pending: Vec::new(),
            pending_rows: 0,
            row_groups: 0,
            vector,
            first_leaf,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> parquet::errors::Result<()> {
        let mut at = 0;
        while at < batch.num_rows() {
            let take = (batch.num_rows() - at).min(self.row_group_rows - self.pending_rows);
            self.pending.push(batch.slice(at, take));
            self.pending_rows += take;
            at += take;
            if self.pending_rows == self.row_group_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the pending rows as a row group.
    fn flush(&mut self) -> parquet::errors::Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let mut writers = self.factory.create_column_writers(self.row_groups)?;
        let vector_root = self.vector.as_ref().map(|v| v.root);
        for (root, field) in self.schema.fields().iter().enumerate() {
            if Some(root) == vector_root {
                continue;
            }
            for b in &self.pending {
                let leaves = parquet::arrow::arrow_writer::compute_leaves(field, b.column(root))?;
                for (k, leaf) in leaves.iter().enumerate() {
                    writers[self.first_leaf[root] + k].write(leaf)?;
                }
            }
        }
        let mut vector = match self.vector.as_mut() {
            Some(v) => Some((v.leaf, v.encode_chunk(&self.pending, self.pending_rows)?)),
            None => None,
        };
        let mut rg = self.fw.next_row_group()?;
        for (leaf, w) in writers.into_iter().enumerate() {
            match vector.take() {
                Some((at, (bytes, close))) if at == leaf => rg.append_column(&bytes, close)?,
                other => {
                    vector = other;
                    w.close()?.append_to_row_group(&mut rg)?;
                }
            }
        }
        rg.close()?;
        self.row_groups += 1;
        self.pending.clear();
        self.pending_rows = 0;
        Ok(())
    }
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter").field("path", &self.path).finish_non_exhaustive()
    }
}

fn parquet_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> SegmentError + '_ {
    move |e| match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<io::Error>() {
            Ok(io) => SegmentError::Io { path: path.to_path_buf(), source: *io },
            Err(other) => {
                SegmentError::Parquet { path: path.to_path_buf(), reason: other.to_string() }
            }
        },
        other => SegmentError::Parquet { path: path.to_path_buf(), reason: other.to_string() },
    }
}

/// The writer properties of every segment.
fn writer_props(
    path: &Path,
    schema: &SchemaRef,
    row_group_rows: usize,
    zstd_level: i32,
) -> Result<WriterProperties, SegmentError> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| SegmentError::Parquet { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        // Pages of at most ZONE_PAGE_ROWS rows, each with its min/max in the page index (the
        // default statistics level): the zones a filter skips (`segment/filtering.rs`).
        .set_data_page_row_count_limit(ZONE_PAGE_ROWS)
        .set_created_by(format!("quiver {}", env!("CARGO_PKG_VERSION")));
    // The vector column's leaf (`vector.list.item`): a dictionary of float noise never pays and
    // min/max statistics of vector elements prune nothing, but both cost CPU on every flush.
    // Float leaves are BYTE_STREAM_SPLIT: the exponent bytes of all values lie together, so zstd
    // compresses them better and faster than plain floats (SIFT: 4.1x instead of 3.3x).
    let parquet_schema = parquet::arrow::ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| SegmentError::Parquet { path: path.to_path_buf(), reason: e.to_string() })?;
    for col in parquet_schema.columns() {
        // A segment's ids are (all but killed rows) distinct: a dictionary of them never pays
        // (and parquet-rs builds one before giving up on it). Plain + zstd is also smaller.
        if col.path().parts() == [crate::schema::ID_COLUMN] {
            props = props.set_column_dictionary_enabled(col.path().clone(), false);
        }
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
    Ok(props.build())
}

impl SegmentWriter {
    /// Creates the file at `path` (it must not exist) for rows of `schema`, in row groups of at
    /// most `row_group_rows` rows, zstd-compressed at `zstd_level`.
    ///
    /// # Errors
    /// I/O failure or a Parquet refusal (e.g. a bad zstd level).
    pub fn create(
        vfs: &dyn Vfs,
        path: &Path,
        schema: &SchemaRef,
        row_group_rows: usize,
        zstd_level: i32,
    ) -> Result<Self, SegmentError> {
        let props = writer_props(path, schema, row_group_rows, zstd_level)?;
        let file = vfs.open(path, OpenMode::CreateNew).map_err(io_err(path))?;
        let writer = VfsWriter { file, offset: 0, buf: Vec::with_capacity(WRITE_BUF), crc: 0 };
        let enc = Encoder::new(writer, schema, props, row_group_rows, zstd_level)
            .map_err(parquet_err(path))?;
        Ok(SegmentWriter {
            path: path.to_path_buf(),
            schema: schema.clone(),
            state: Some(WriterState::Encoding(Box::new(enc))),
        })
    }

    fn failed(&self) -> SegmentError {
        SegmentError::Parquet {
            path: self.path.clone(),
            reason: "an earlier error left the file unfinished".into(),
        }
    }

    /// Encodes `batch` (with the writer's schema).
    ///
    /// # Errors
    /// I/O failure or a Parquet refusal.
    ///
    /// # Panics
    /// After [`Self::copy_row_groups`]: encoded rows come first.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SegmentError> {
        assert_eq!(batch.schema().fields(), self.schema.fields(), "a batch of another schema");
        match &mut self.state {
            Some(WriterState::Encoding(w)) => {
                let r = w.write(batch);
                if r.is_err() {
                    self.state = None;
                }
                r.map_err(parquet_err(&self.path))
            }
            Some(WriterState::Copying(_)) => panic!("SegmentWriter::write after copy_row_groups"),
            None => Err(self.failed()),
        }
    }

    /// Appends every row group of `from` (a segment of the same schema) as it is stored: the
    /// column chunks are copied byte for byte, not decoded. `from` is first checked against
    /// its checksum again, so a segment damaged since it was opened is an error here rather than
    /// garbage carried into a new file with a fresh checksum.
    ///
    /// # Errors
    /// I/O failure, [`SegmentError::Corrupt`] for a damaged `from`, or a Parquet refusal.
    pub fn copy_row_groups(&mut self, from: &SegmentFile) -> Result<(), SegmentError> {
        let err = parquet_err(&self.path);
        if from.meta.schema().fields() != self.schema.fields() {
            return Err(SegmentError::Parquet {
                path: self.path.clone(),
                reason: format!("{} has another schema", from.path.display()),
            });
        }
        from.verify()?;
        let mut fw = match self.state.take() {
            Some(WriterState::Encoding(mut w)) => {
                w.flush().map_err(&err)?;
                Box::new(w.fw)
            }
            Some(WriterState::Copying(fw)) => fw,
            None => return Err(self.failed()),
        };
        let result = (|| {
            let src = BufferedChunks(from.reader.clone());
            let md = from.meta.metadata();
            // The pages' min/max and places go along (the writer moves the places to where
            // the chunk lands), so a merged segment keeps its page zones.
            let pages = md.page_index();
            for (g, rg) in md.row_groups().iter().enumerate() {
                let mut out = fw.next_row_group().map_err(&err)?;
                for (c, column) in rg.columns().iter().enumerate() {
                    let close = ColumnCloseResult {
                        bytes_written: column.compressed_size() as u64,
                        rows_written: rg.num_rows() as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: pages.and_then(|p| p.column_index(g, c)).cloned(),
                        offset_index: pages.and_then(|p| p.offset_index(g, c)).cloned(),
                    };
                    out.append_column(&src, close).map_err(&err)?;
                }
                out.close().map_err(&err)?;
            }
            Ok(())
        })();
        if result.is_ok() {
            self.state = Some(WriterState::Copying(fw));
        }
        result
    }

    /// Writes the footer, `fdatasync`s the file and returns its length and checksum.
    ///
    /// # Errors
    /// I/O failure or a Parquet refusal.
    pub fn finish(self) -> Result<FileSum, SegmentError> {
        let err = parquet_err(&self.path);
        let mut writer = match self.state {
            Some(WriterState::Encoding(mut w)) => {
                w.flush().map_err(&err)?;
                w.fw.into_inner().map_err(&err)?
            }
            Some(WriterState::Copying(fw)) => fw.into_inner().map_err(&err)?,
            None => return Err(self.failed()),
        };
        writer.flush_buf().map_err(io_err(&self.path))?;
        writer.file.sync_data().map_err(io_err(&self.path))?;
        Ok(FileSum { len: writer.offset, crc: writer.crc })
    }
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

/// A [`VfsChunkReader`] whose sequential reads go through a 1 MiB buffer, for copying column
/// chunks (Parquet copies them through `io::copy`'s small buffer: one `pread` each otherwise).
struct BufferedChunks(VfsChunkReader);

impl Length for BufferedChunks {
    fn len(&self) -> u64 {
        self.0.len
    }
}

impl ChunkReader for BufferedChunks {
    type T = io::BufReader<VfsRead>;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(io::BufReader::with_capacity(WRITE_BUF, self.0.get_read(start)?))
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.0.get_bytes(start, length)
    }
}

/// An open, verified segment file.
///
/// A file holds the columns its collection had when it was written: a prefix of the
/// collection's schema, since columns are only ever added at the end and nullable
/// (`segment::widens`). Reads of the columns it lacks return nulls.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    path: PathBuf,
    reader: VfsChunkReader,
    meta: ArrowReaderMetadata,
    /// The collection's schema, of which the file holds the first `width` columns.
    schema: SchemaRef,
    width: usize,
    rows: u64,
    sum: FileSum,
    /// The rows that passed the filters last evaluated over the whole file, by filter key
    /// (most recent first, at most [`MASK_MEMO`]): a file never changes, so a filter asked
    /// again is not read and evaluated again.
    masks: Arc<std::sync::Mutex<RememberedMasks>>,
    /// Its label indexes opened so far, by column: `None` for a column that has none (too
    /// many distinct values).
    labels: Arc<std::sync::Mutex<OpenedLabels>>,
}

/// A segment file's label indexes opened so far: by column, `None` where it has none.
type OpenedLabels = Vec<(usize, Option<Arc<LabelIndex>>)>;

/// Filter results a segment file remembers, by filter key, most recent first.
type RememberedMasks = Vec<(String, Arc<RowSet>)>;

/// Filter results a segment file remembers: each is a bit per row, so a segment holds at most
/// `MASK_MEMO / 8` bytes a row of them.
pub const MASK_MEMO: usize = 4;

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
        check_sum(file.as_ref(), path, sum)?;
        let len = sum.len;
        let reader = VfsChunkReader { file, len };
        // With the page index where the file has one: the pages' zones, and reads of selected
        // rows that skip the pages holding none.
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load(&reader, options)
            .map_err(|e| corrupt(format!("parquet metadata: {e}")))?;
        if !widens(meta.schema(), schema) {
            return Err(corrupt(format!(
                "schema {:?} is not the collection's {:?} or a prefix of it",
                meta.schema(),
                schema
            )));
        }
        let file_rows = meta.metadata().file_metadata().num_rows();
        if file_rows < 0 || file_rows as u64 != rows {
            return Err(corrupt(format!("{file_rows} rows, the manifest says {rows}")));
        }
        let masks = Arc::default();
        let width = meta.schema().fields().len();
        let (path, schema) = (path.to_path_buf(), Arc::clone(schema));
        let labels = Arc::default();
        Ok(SegmentFile { path, reader, meta, schema, width, rows, sum, masks, labels })
    }

    /// The same file read under `schema`, a widening of the schema it was opened with (its
    /// collection gained columns): no I/O.
    ///
    /// # Panics
    /// If `schema` does not widen the file's own schema (an engine bug: columns are only added).
    #[must_use]
    pub fn with_schema(&self, schema: &SchemaRef) -> SegmentFile {
        assert!(
            widens(self.meta.schema(), schema),
            "segment {}: {schema:?} does not widen the file's schema",
            self.path.display()
        );
        SegmentFile { schema: Arc::clone(schema), ..self.clone() }
    }

    /// Whether the file holds every column of its collection (a file written before columns
    /// were added does not, and cannot be copied row group by row group into a newer one).
    pub fn holds_every_column(&self) -> bool {
        self.width == self.schema.fields().len()
    }

    /// The collection's schema the file is read under.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Checks the file against its length and checksum again (it was checked when opened).
    ///
    /// # Errors
    /// [`SegmentError::Io`] or [`SegmentError::Corrupt`].
    pub fn verify(&self) -> Result<(), SegmentError> {
        check_sum(self.reader.file.as_ref(), &self.path, self.sum)
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
        self.batches(columns, rows, batch_rows)?.collect()
    }

    /// [`SegmentFile::read`] as an iterator: one pass over the file, decoding as it goes.
    ///
    /// # Errors
    /// [`SegmentError`] on I/O failure or a malformed file (also from the iterator).
    pub fn batches(
        &self,
        columns: &[usize],
        rows: Option<&[u32]>,
        batch_rows: usize,
    ) -> Result<SegmentBatches, SegmentError> {
        if columns.iter().all(|&c| c < self.width) {
            return self.stored_batches(columns, rows, batch_rows);
        }
        // Some columns were added after the file was written: read the others (or, if none,
        // the id column for the row count) and put nulls in their place.
        let stored: Vec<usize> = columns.iter().copied().filter(|&c| c < self.width).collect();
        let read = if stored.is_empty() { vec![0] } else { stored.clone() };
        let mut batches = self.stored_batches(&read, rows, batch_rows)?;
        let plan = columns
            .iter()
            .map(|&c| match stored.iter().position(|&s| s == c) {
                Some(at) => Ok(at),
                None => Err(self.schema.field(c).data_type().clone()),
            })
            .collect();
        let schema = self.schema.project(columns).map_err(|e| SegmentError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        batches.added = Some((plan, Arc::new(schema)));
        Ok(batches)
    }

    /// [`SegmentFile::batches`] of columns the file holds.
    fn stored_batches(
        &self,
        columns: &[usize],
        rows: Option<&[u32]>,
        batch_rows: usize,
    ) -> Result<SegmentBatches, SegmentError> {
        debug_assert!(columns.iter().all(|&c| c < self.width), "columns the file holds");
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
        let identity =
            positions.iter().enumerate().all(|(i, &p)| i == p) && positions.len() == sorted.len();
        let positions = if identity { None } else { Some(positions) };
        // parquet-rs grows a list column's value buffer with `reserve_exact` page by page, so a
        // batch of many pages copies itself once per page: a 64k-row batch of 128-d vectors
        // spent a third of a scan in `memmove`. Batches of about a page (1 MiB) avoid that;
        // callers that want bigger ones concatenate (one copy). The split read below decodes
        // vectors itself and takes the caller's size (only its other columns read by 1 MiB).
        let md = self.meta.metadata();
        let bytes: i64 = md.row_groups().iter().map(|g| g.total_byte_size()).sum();
        let row_bytes = (bytes.max(1) as u64).div_ceil(self.rows.max(1)).max(1);
        let read_rows = usize::try_from((1u64 << 20) / row_bytes).unwrap_or(usize::MAX);
        let read_rows = read_rows.clamp(64, batch_rows.max(64)).min(batch_rows.max(1));
        let arrow_reader = |roots: &[usize]| {
            let mask = ProjectionMask::roots(self.meta.parquet_schema(), roots.iter().copied());
            ParquetRecordBatchReaderBuilder::new_with_metadata(
                self.reader.clone(),
                self.meta.clone(),
            )
            .with_projection(mask)
            .with_batch_size(read_rows)
        };
        // A whole-file read of float vectors decodes the vector leaf itself (VectorLeaf); the
        // other columns, if any, come from the Arrow reader.
        let vector_root = self.meta.schema().index_of(crate::schema::VECTOR_COLUMN).ok();
        if rows.is_none()
            && let Some(root) = vector_root
            && let Ok(slot) = sorted.binary_search(&root)
            && let Some(leaf) = VectorLeaf::new(self, root).map(Box::new)
        {
            let others: Vec<usize> = sorted.iter().copied().filter(|&c| c != root).collect();
            let reader = if others.is_empty() {
                None
            } else {
                Some(arrow_reader(&others).build().map_err(|e| corrupt(&e))?)
            };
            let schema = Arc::new(self.meta.schema().project(&sorted).map_err(|e| corrupt(&e))?);
            // Vectors are decoded straight into a buffer of the batch's size, so batches need
            // not stay near a page: the caller's size is taken as asked.
            let max_rows = batch_rows.max(1);
            return Ok(SegmentBatches {
                path: self.path.clone(),
                added: None,
                source: Source::Split {
                    reader,
                    others_left: None,
                    leaf,
                    slot,
                    schema,
                    want: max_rows,
                    max_rows,
                },
                positions,
            });
        }
        let mut b = arrow_reader(&sorted);
        if let Some(rows) = rows {
            debug_assert!(rows.windows(2).all(|w| w[0] < w[1]));
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
                    match sel.last_mut() {
                        Some(s) if !s.skip => s.row_count += 1,
                        _ => sel.push(RowSelector::select(1)),
                    }
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
        Ok(SegmentBatches {
            path: self.path.clone(),
            source: Source::Arrow(reader),
            positions,
            added: None,
        })
    }
}

/// Where [`SegmentBatches`] gets its rows.
enum Source {
    /// The Arrow reader, for every column asked.
    Arrow(parquet::arrow::arrow_reader::ParquetRecordBatchReader),
    /// The vector column from [`VectorLeaf`] and the others (if any) from the Arrow reader; the
    /// vector column goes at `slot` of `schema` (the columns asked, in file order).
    Split {
        reader: Option<parquet::arrow::arrow_reader::ParquetRecordBatchReader>,
        /// Rows of the other columns read but not yet returned.
        others_left: Option<RecordBatch>,
        leaf: Box<VectorLeaf>,
        slot: usize,
        schema: SchemaRef,
        /// Rows per batch ([`SegmentBatches::set_batch_rows`]).
        want: usize,
        /// The most rows a batch may have (the `batch_rows` the read was opened with).
        max_rows: usize,
    },
}

/// The batches of one read of a segment ([`SegmentFile::batches`]).
pub struct SegmentBatches {
    path: PathBuf,
    source: Source,
    /// Where each asked-for column is among those read, unless that is the identity.
    positions: Option<Vec<usize>>,
    /// For a read of columns added after the file was written: each asked-for column's place
    /// among those read, or the type of the nulls that stand for it; and the schema of the
    /// batches returned.
    added: Option<AddedColumns>,
}

/// See [`SegmentBatches::added`].
type AddedColumns = (Vec<Result<usize, arrow_schema::DataType>>, SchemaRef);

impl SegmentBatches {
    /// Rows per batch from here on (at least 1, at most the `batch_rows` the read was opened
    /// with), where the read can honour it without copying: a whole-file read that decodes the
    /// vector column itself returns batches of exactly this size (fewer at the end), so a
    /// caller that wants a given size need not concatenate. Other reads keep their size.
    pub fn set_batch_rows(&mut self, rows: usize) {
        if let Source::Split { want, max_rows, .. } = &mut self.source {
            *want = rows.clamp(1, *max_rows);
        }
    }
}

/// Gathers `want` rows (fewer only once `next` runs out) from a stream of batches, in order:
/// first what `left` kept of the last batch, then batches from `next` (told how many rows are
/// still wanted; `None` at the end). The last batch is cut at `want` and its remainder kept in
/// `left`. Returns the pieces, which share the batches' buffers (nothing is copied).
///
/// # Errors
/// The first error of `next`; the pieces gathered before it are dropped.
pub(crate) fn gather_rows<E>(
    left: &mut Option<RecordBatch>,
    want: usize,
    mut next: impl FnMut(usize) -> Result<Option<RecordBatch>, E>,
) -> Result<Vec<RecordBatch>, E> {
    let mut parts = Vec::new();
    let mut rows = 0;
    while rows < want {
        let b = match left.take() {
            Some(b) => b,
            None => match next(want - rows)? {
                Some(b) => b,
                None => break,
            },
        };
        let take = (want - rows).min(b.num_rows());
        if take < b.num_rows() {
            *left = Some(b.slice(take, b.num_rows() - take));
        }
        rows += take;
        parts.push(if take < b.num_rows() { b.slice(0, take) } else { b });
    }
    Ok(parts)
}

impl std::fmt::Debug for SegmentBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentBatches").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Iterator for SegmentBatches {
    type Item = Result<RecordBatch, SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        let corrupt = |e: &dyn std::fmt::Display| SegmentError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let b = match &mut self.source {
            Source::Arrow(reader) => match reader.next()? {
                Ok(b) => b,
                Err(e) => return Some(Err(corrupt(&e))),
            },
            Source::Split { reader, others_left, leaf, slot, schema, want, .. } => {
                let (mut columns, rows) = match reader {
                    Some(r) => {
                        // `want` rows of the other columns, cut from the Arrow reader's batches.
                        let parts = match gather_rows(others_left, *want, |_| r.next().transpose())
                        {
                            Ok(parts) => parts,
                            Err(e) => return Some(Err(corrupt(&e))),
                        };
                        let rows = parts.iter().map(RecordBatch::num_rows).sum();
                        let columns = match &parts[..] {
                            [] => Vec::new(),
                            [one] => one.columns().to_vec(),
                            [first, ..] => {
                                match arrow_select::concat::concat_batches(&first.schema(), &parts)
                                {
                                    Ok(b) => b.columns().to_vec(),
                                    Err(e) => return Some(Err(corrupt(&e))),
                                }
                            }
                        };
                        (columns, rows)
                    }
                    None => (Vec::new(), *want),
                };
                let vectors = match leaf.take(rows) {
                    Ok(v) => v,
                    Err(e) => return Some(Err(e)),
                };
                if vectors.len() != rows && reader.is_some() {
                    return Some(Err(corrupt(&format!(
                        "the vector column ends {} rows before the others",
                        rows - vectors.len()
                    ))));
                }
                if vectors.is_empty() {
                    // The end of the other columns (or of the file): the vectors end too.
                    match leaf.take(1) {
                        Ok(v) if v.is_empty() => return None,
                        Ok(_) => return Some(Err(corrupt(&"the vector column has extra rows"))),
                        Err(e) => return Some(Err(e)),
                    }
                }
                columns.insert(*slot, Arc::new(vectors));
                match RecordBatch::try_new(schema.clone(), columns) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(corrupt(&e))),
                }
            }
        };
        let b = match &self.positions {
            None => b,
            Some(p) => match b.project(p) {
                Ok(b) => b,
                Err(e) => return Some(Err(corrupt(&e))),
            },
        };
        let Some((plan, schema)) = &self.added else { return Some(Ok(b)) };
        let columns = plan
            .iter()
            .map(|place| match place {
                Ok(at) => Arc::clone(b.column(*at)),
                Err(data_type) => arrow_array::new_null_array(data_type, b.num_rows()),
            })
            .collect();
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
        Some(
            RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
                .map_err(|e| corrupt(&e)),
        )
    }
}

/// Whether `wide` is `narrow` with nullable columns added at the end (or `narrow` itself): the
/// only schema change a collection allows, so a segment file written before it stays readable.
pub fn widens(narrow: &arrow_schema::Schema, wide: &arrow_schema::Schema) -> bool {
    let (n, w) = (narrow.fields(), wide.fields());
    n.len() <= w.len()
        && n.iter().zip(w.iter()).all(|(a, b)| a == b)
        && w.iter().skip(n.len()).all(|f| f.is_nullable())
}

/// Checks that `file` has the length and CRC32C of `sum`.
fn check_sum(file: &dyn VfsFile, path: &Path, sum: FileSum) -> Result<(), SegmentError> {
    let corrupt = |reason: String| SegmentError::Corrupt { path: path.to_path_buf(), reason };
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
    Ok(())
}
