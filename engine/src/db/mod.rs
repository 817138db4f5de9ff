//! The database: collections, the write path (WAL → in-memory table), flushes to Parquet
//! segments, deletes as persisted tombstones, searches that merge every source, and recovery.
//!
//! One file per concern, following the data:
//!
//! | file            | what it holds                                                        |
//! |-----------------|----------------------------------------------------------------------|
//! | `body.rs`       | the manifest body (what is durable) and the engine's file names      |
//! | `budget.rs`     | the memory budget: a build's allowance, the sector cache's share     |
//! | `model.rs`      | the in-memory model: collections, sealed segments, the key map      |
//! | `keys.rs`       | ids in RAM: the key map and segment key arrays, by id kind           |
//! | `memtable.rs`   | the in-memory table of recent rows, and its frozen prefix            |
//! | `inner.rs`      | the shared state behind a [`Database`], its locks and pools          |
//! | `open.rs`       | open and recovery: load, check, sweep orphans, replay the WAL        |
//! | `catalog.rs`    | create, drop, list and describe collections                          |
//! | `write.rs`      | inserts and deletes: WAL first, then applied in LSN order            |
//! | `flush.rs`      | freeze → write → commit → install of the in-memory rows              |
//! | `install.rs`    | the one step that puts a new segment in place of the rows it copied |
//! | `background.rs` | the background worker: index builds, damaged-index replacement       |
//! | `index_build.rs`| a segment's index built (in memory or from a file) and put in place |
//! | `merge.rs`      | merges: pick, write, carry deletions, commit, install                |
//! | `search.rs`     | nearest-neighbour search over every source of a collection           |
//! | `read.rs`       | get and scan, and the lock-free views every read works on            |
//!
//! Locks are always taken in this order, and never the other way: `manifest` → `order` →
//! `state`. Readers take only `state` (shared), and only to copy out `Arc` views; no lock on
//! the state is held across disk I/O or a sync. A flush holds `manifest` throughout but `order`
//! only to freeze the memtables, so writers go on while it writes segments. ARCHITECTURE.md
//! has the whole concurrency contract.

use std::sync::Arc;

mod background;
mod body;
mod budget;
mod catalog;
mod flush;
mod id_file;
mod id_filter;
mod index_build;
mod inner;
mod install;
mod keys;
mod label_graphs;
mod memtable;
mod merge;
mod model;
mod open;
mod pace;
mod read;
mod search;
mod write;

pub use background::BackgroundStats;
pub use catalog::{CollectionStats, MemoryUse, ResidentBytes};
pub use read::Scan;
pub use search::SearchParams;
pub use write::PendingWrite;

use inner::{Inner, lock};

/// Directory of Parquet segments.
pub const SEGMENTS_DIR: &str = "segments";
/// Directory of deletion files.
pub const DELETES_DIR: &str = "deletes";
/// Directory of disk indexes (one sub-directory per segment).
pub const INDEXES_DIR: &str = "indexes";
/// Directory of the write-ahead log.
pub const WAL_DIR: &str = "wal";
/// The most results one search may ask for.
pub const MAX_K: usize = 10_000;
/// The largest candidate list a search may ask for.
pub const MAX_LIST_SIZE: usize = 100_000;
/// The most queries one [`Database::search_batch`] may carry (Flight's `VectorSearch` limit).
pub const MAX_BATCH_QUERIES: usize = 10_000;
/// Rows a scan reads from a segment per batch, unless [`Scan::set_batch_rows`] changes it.
pub const SCAN_BATCH_ROWS: usize = 8192;
/// The most rows [`Scan::set_batch_rows`] accepts.
pub const MAX_SCAN_BATCH_ROWS: usize = 1 << 20;

/// An open database. Share it between threads by reference or in an `Arc`; every method takes
/// `&self`. Dropping it stops background work (an index build in progress is abandoned and
/// cleaned up at the next open).
#[derive(Debug)]
pub struct Database {
    inner: Arc<Inner>,
    worker: Option<std::thread::JoinHandle<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Database {
    fn drop(&mut self) {
        lock(&self.inner.flush_ctl).shutdown = true;
        self.inner.flush_cv.notify_all();
        lock(&self.inner.work).shutdown = true;
        self.inner.work_cv.notify_all();
        for t in [self.worker.take(), self.flusher.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}
