//! # quiver-engine — the embeddable vector database
//!
//! Open a [`Database`] in a directory, create collections with a [`CollectionSchema`] (vector
//! dimension, element type, metric, id type, attribute columns), then [`Database::insert`]
//! Arrow record batches (upserting by id), [`Database::delete`] by id, and
//! [`Database::search`], [`Database::get`] and [`Database::scan`]. A write returns once it is
//! durable in the write-ahead log and is visible to every read from then on.
//!
//! Recent rows live in an in-memory table; [`Database::flush`] (automatic past
//! [`Options::memtable_bytes`]) writes them as immutable Parquet segments that pyarrow and DuckDB
//! read directly. Background work builds a disk index (`quiver-diskgraph`) for each segment and
//! merges small segments. Deletes are tombstones, persisted in deletion files and applied to
//! every read; merges drop the deleted rows. A checksummed manifest, replaced atomically, names
//! the live files and the WAL checkpoint. `docs/durability.md` has the protocol step by step.
//!
//! ```no_run
//! use std::sync::Arc;
//! use arrow_array::{FixedSizeListArray, RecordBatch, UInt64Array, types::Float32Type};
//! use arrow_schema::{Field, Schema};
//! use quiver_engine::{CollectionSchema, Database, Metric, Options, SearchParams, VectorType};
//!
//! let db = Database::open("/tmp/quiver-doc", Options::default())?;
//! let schema = CollectionSchema::new(3, VectorType::F32, Metric::L2);
//! db.create_collection("docs", schema.clone())?;
//! let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
//!     vec![Some(vec![Some(0.0), Some(1.0), Some(2.0)])], 3);
//! let batch = RecordBatch::try_new(schema.arrow_schema(), vec![
//!     Arc::new(UInt64Array::from(vec![7])), Arc::new(vectors)])?;
//! db.insert("docs", &batch)?;
//! let hits = db.search("docs", &[0.0, 1.0, 2.1], &SearchParams::default())?;
//! assert_eq!(hits.num_rows(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! May depend on: `quiver-wal`, `quiver-diskgraph` (and through them `quiver-vfs`,
//! `quiver-simd`). Never on `quiver-flight` or the `quiver` binary.

#![deny(missing_docs)]

mod batch;
mod db;
mod error;
mod filter;
mod index_source;
mod lock;
mod manifest;
mod names;
mod options;
mod rowset;
mod schema;
mod segment;

pub use batch::{
    BatchError, MessageRefusal, has_dictionary, held_bytes, max_magnitude, value_bytes,
};
pub use db::{
    BackgroundStats, CollectionStats, Database, MAX_BATCH_QUERIES, MAX_K, MAX_LIST_SIZE,
    MAX_SCAN_BATCH_ROWS, MemoryUse, PendingWrite, ResidentBytes, SCAN_BATCH_ROWS, Scan,
    SearchParams,
};
pub use error::{
    BackgroundError, CollectionError, FlushError, OpenError, QueryError, ReadError, WriteError,
    is_no_space,
};
pub use filter::{
    CompareOp, Filter, FilterError, Literal, MAX_IN_VALUES, MAX_PREDICATE_DEPTH,
    MAX_PREDICATE_NODES, Predicate,
};
pub use manifest::ManifestError;
pub use names::{MAX_NAME_LEN, NameError, validate_collection_name};
pub use options::{
    DEFAULT_MAX_GROWTH_SHARE, DEFAULT_ROW_GROUP_BYTES, DEFAULT_SECTOR_CACHE_BYTES,
    MIN_MEMORY_BUDGET, Options, budget_shares,
};
pub use schema::{
    CollectionSchema, DISTANCE_COLUMN, ID_COLUMN, IdType, MAX_ATTRIBUTES, MAX_DIM, MAX_STRING_ID,
    RESERVED_COLUMNS, RESULT_DISTANCE_COLUMN, SCORE_COLUMN, SchemaError, VECTOR_COLUMN, VectorType,
};
pub use segment::{MAX_LABEL_VALUES, SegmentError};

// The lower crates' types an embedder names: the metric, the element types indexes store, the
// index build and open options, the errors engine errors carry, and the file-system seam.
// Nothing else of them is part of this crate's API.
pub use quiver_diskgraph::cache::{CacheStats, SectorCache};
pub use quiver_diskgraph::data::{ElemType, Metric};
pub use quiver_diskgraph::index::{BuildParams, IndexError};
pub use quiver_diskgraph::pq::PqParams;
pub use quiver_diskgraph::search::{
    Backend, OpenOptionsIndex, QueryError as IndexQueryError, SearchError as IndexSearchError,
};
pub use quiver_diskgraph::vamana::VamanaParams;
pub use quiver_wal::vfs::{OsVfs, Vfs};
pub use quiver_wal::{AppendError as WalAppendError, OpenError as WalOpenError};
pub use quiver_wal::{SYNC_BUCKETS as WAL_SYNC_BUCKETS, WalStats};

/// The engine's storage pieces, for this crate's own white-box tests and benchmarks (segment
/// files, the manifest store, the directory lock). Not part of the API: no stability promise,
/// hidden from the documentation.
#[doc(hidden)]
pub mod internals {
    pub use crate::lock::{DirLock, LOCK_FILE};
    pub use crate::manifest::{MANIFEST_FILE, MANIFEST_TMP, ManifestStore};
    pub use crate::segment::{FileSum, SegmentFile, SegmentWriter, write_segment};
}
