//! Error enums, one per family of operations. All are `#[non_exhaustive]`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::batch::BatchError;
use crate::manifest::ManifestError;
use crate::names::NameError;
use crate::schema::SchemaError;
use crate::segment::SegmentError;

/// Why [`crate::Database::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A directory could not be created or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another handle (in this or another process) has the directory open.
    #[error("{0}")]
    Locked(String),
    /// The manifest is unreadable or damaged.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `MANIFEST` is missing but the directory holds data (segment, deletion or index files, or
    /// WAL records): it is damaged, not new. Nothing was changed; restore the manifest.
    #[error(
        "{}: MANIFEST is missing, but the directory holds data ({}); refusing to open it as a new database, which would discard that data. Restore MANIFEST from a backup",
        dir.display(),
        found.join(", ")
    )]
    ManifestMissing {
        /// The database directory.
        dir: PathBuf,
        /// What was found (a few paths, or WAL LSNs), relative to `dir`.
        found: Vec<String>,
    },
    /// The manifest body does not parse or is inconsistent.
    #[error("manifest body: {0}")]
    ManifestBody(String),
    /// The WAL could not be opened or is damaged.
    #[error(transparent)]
    Wal(#[from] quiver_wal::OpenError),
    /// A WAL record could not be read or applied.
    #[error("WAL record at LSN {lsn}: {reason}")]
    WalRecord {
        /// The record.
        lsn: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment or deletion file named by the manifest is missing or damaged.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The options are inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
}

/// Why creating, dropping or looking up a collection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    /// The name is not allowed.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The schema is not allowed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A collection of that name exists.
    #[error("collection {0:?} already exists")]
    AlreadyExists(String),
    /// No collection of that name.
    #[error("no collection named {0:?}")]
    NotFound(String),
    /// The manifest commit failed (the database is poisoned until reopened).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An earlier failure left the database unable to write until it is reopened.
    #[error("the database can no longer write ({0}); reopen it")]
    Poisoned(String),
}

/// Why an insert or delete failed. Unless the variant says otherwise, nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// No collection of that name.
    #[error("no collection named {0:?}")]
    NotFound(String),
    /// The batch is refused.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The WAL failed; whether the write is durable is unknown. The database is poisoned until
    /// reopened (recovery then decides).
    #[error("write-ahead log: {0}")]
    Wal(#[from] quiver_wal::AppendError),
    /// The write is durable but the flush it triggered failed (see the flush error).
    #[error("the write is durable, but the flush it triggered failed: {0}")]
    Flush(#[source] Box<FlushError>),
    /// The write waited longer than [`crate::Options::max_stall`] for memory: the in-memory
    /// tables were full and their flush had not freed them.
    #[error("the in-memory tables are full and their flush is behind; waited {0:?}")]
    Stalled(Duration),
    /// An earlier failure left the database unable to write until it is reopened.
    #[error("the database can no longer write ({0}); reopen it")]
    Poisoned(String),
}

/// Why a flush (writing the in-memory table as segments) failed. The rows stay in memory and in
/// the WAL; nothing acknowledged is lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// Syncing the WAL failed.
    #[error("write-ahead log: {0}")]
    Wal(#[from] quiver_wal::AppendError),
    /// Writing a segment or deletion file failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The manifest commit failed (the database is poisoned until reopened).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An earlier failure left the database unable to write until it is reopened.
    #[error("the database can no longer write ({0}); reopen it")]
    Poisoned(String),
}

/// Why a search, get or scan failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No collection of that name.
    #[error("no collection named {0:?}")]
    NotFound(String),
    /// The query or parameters are invalid.
    #[error("invalid query: {0}")]
    Query(#[from] QueryError),
    /// A requested column is not in the collection.
    #[error("no column named {0:?}")]
    UnknownColumn(String),
    /// The search's filter cannot be used on the collection.
    #[error(transparent)]
    Filter(#[from] crate::filter::FilterError),
    /// The ids are of the wrong type or contain nulls.
    #[error(transparent)]
    Ids(#[from] BatchError),
    /// A segment could not be read.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A disk index could not be searched (it was unreadable, or found damaged).
    #[error("disk index of segment {segment:016x}: {source}")]
    Index {
        /// The segment's id.
        segment: u64,
        /// What failed.
        #[source]
        source: quiver_diskgraph::index::IndexError,
    },
    /// A disk index search failed in a way not named above.
    #[error("disk index of segment {segment:016x}: {source}")]
    Search {
        /// The segment's id.
        segment: u64,
        /// What failed.
        #[source]
        source: quiver_diskgraph::search::SearchError,
    },
    /// Arrow could not assemble the result.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// Why a search's query or parameters were refused. Nothing was read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The query's length is not the collection's dimension.
    #[error("the query has {got} values, the collection's vectors {expected}")]
    Dimension {
        /// The collection's dimension.
        expected: usize,
        /// The query's length.
        got: usize,
    },
    /// The query holds a NaN or an infinity.
    #[error("the query has the non-finite value {0}")]
    NonFinite(f32),
    /// A value so large that squared distances would overflow `f32` (L2 and inner product; see
    /// [`max_magnitude`](crate::max_magnitude)).
    #[error(
        "the query has the value {value}, beyond the largest magnitude {limit:e} this dimension allows (larger values make squared distances overflow f32)"
    )]
    Magnitude {
        /// The offending value.
        value: f32,
        /// The largest magnitude allowed at this dimension.
        limit: f32,
    },
    /// A zero query under the cosine metric.
    #[error("a zero query has no cosine distance")]
    ZeroCosine,
    /// k outside `1..=MAX_K`.
    #[error("k = {0} is outside 1..={max}", max = crate::MAX_K)]
    K(usize),
    /// The list size or the beam width is out of range.
    #[error("list size {list_size} must be in 1..={max_list} and beam width {beam_width} in 1..={max_beam}", max_list = crate::MAX_LIST_SIZE, max_beam = quiver_diskgraph::search::MAX_BEAM_WIDTH)]
    Walk {
        /// The list size asked for.
        list_size: usize,
        /// The beam width asked for.
        beam_width: usize,
    },
    /// A batch of queries that is empty or larger than
    /// [`MAX_BATCH_QUERIES`](crate::MAX_BATCH_QUERIES).
    #[error("a batch of {0} queries; a batch holds 1..={max}", max = crate::MAX_BATCH_QUERIES)]
    BatchSize(usize),
    /// A disk index refused the query (it does not fit the index the segment was built with).
    #[error(transparent)]
    Index(#[from] quiver_diskgraph::search::QueryError),
}

impl ReadError {
    /// Whether the read found damaged data (a checksum or structure check failed), as opposed
    /// to an I/O failure that may pass, or a bad request.
    #[must_use]
    pub fn is_corruption(&self) -> bool {
        use quiver_diskgraph::index::IndexError;
        use quiver_diskgraph::layout::LayoutError;
        match self {
            ReadError::Segment(SegmentError::Corrupt { .. }) => true,
            ReadError::Index { source, .. } => matches!(
                source,
                IndexError::Layout(LayoutError::Corrupt { .. }) | IndexError::Mismatch(_)
            ),
            _ => false,
        }
    }
}

/// Why a unit of background work (an index build, a merge, taking a damaged index out of
/// service) failed. The background thread retries with backoff (from 10 ms to 10 s): a full
/// disk that is freed again lets the work resume by itself. A failure that leaves the manifest's
/// state unknown poisons the database as well; then writes fail with `Poisoned`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackgroundError {
    /// Building or opening the disk index of a segment failed.
    #[error("index of segment {segment:016x}: {source}")]
    Index {
        /// The segment's id.
        segment: u64,
        /// What failed.
        #[source]
        source: quiver_diskgraph::index::IndexError,
    },
    /// A segment or deletion file could not be read or written.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A segment's rows could not be decoded (ids, vectors).
    #[error(transparent)]
    Rows(#[from] BatchError),
    /// The manifest commit failed.
    #[error("manifest commit: {0}")]
    Manifest(#[from] ManifestError),
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl BackgroundError {
    /// Whether the disk was full (ENOSPC, or a quota): work that resumes once space returns.
    #[must_use]
    pub fn is_no_space(&self) -> bool {
        is_no_space(self)
    }
}

/// Whether `e`, or any error in its chain of sources, is an I/O error saying the disk (or a
/// quota) is full.
#[must_use]
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    let full = |io: &io::Error| {
        io.kind() == io::ErrorKind::StorageFull
            || io.kind() == io::ErrorKind::QuotaExceeded
            || io.raw_os_error() == Some(28)
    };
    while let Some(e) = cur {
        // The WAL shares its I/O error among waiters as an `Arc`.
        let io = e
            .downcast_ref::<io::Error>()
            .or_else(|| e.downcast_ref::<std::sync::Arc<io::Error>>().map(|a| &**a));
        if io.is_some_and(full) {
            return true;
        }
        cur = e.source();
    }
    false
}
