//! The state shared by a [`Database`](super::Database) and its threads: locks, the WAL, the
//! manifest store, work queues, pools, and the helpers every room uses (commit, poison, paths).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use quiver_wal::vfs::Vfs;
use quiver_wal::{Lsn, Wal};

use crate::error::{BackgroundError, ReadError};
use crate::lock::DirLock;
use crate::manifest::{ManifestError, ManifestStore};
use crate::options::Options;
use crate::schema::CollectionSchema;
use crate::segment::label_file_stem;
use quiver_diskgraph::search::{DiskIndex, SearchState, Searcher};

use super::SCAN_BATCH_ROWS;
use super::body::{Body, index_name};
use super::model::{Op, State};
use super::read::{CollectionView, SegmentView};

/// Writes submitted to the WAL and not yet applied, in LSN order.
#[derive(Debug, Default)]
pub(super) struct Order {
    pub(super) queue: VecDeque<(Lsn, Op)>,
}

#[derive(Debug, Default)]
pub(super) struct Work {
    pub(super) shutdown: bool,
    /// Bumped whenever background work may have become available or finished.
    pub(super) generation: u64,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) dir: PathBuf,
    pub(super) opts: Options,
    pub(super) vfs: Arc<dyn Vfs>,
    /// The real path of the index directory, if the file system is real and indexing is on.
    pub(super) index_dir: Option<PathBuf>,
    pub(super) wal: Wal,
    pub(super) order: Mutex<Order>,
    pub(super) manifest: Mutex<ManifestStore>,
    pub(super) state: RwLock<State>,
    pub(super) next_id: AtomicU64,
    pub(super) poisoned: Mutex<Option<String>>,
    pub(super) work: Mutex<Work>,
    pub(super) work_cv: Condvar,
    pub(super) flush_ctl: Mutex<FlushCtl>,
    pub(super) flush_cv: Condvar,
    /// Indexes found damaged by a search: (collection id, segment id, the index), for the
    /// background worker to drop (the segment is searched exactly) and rebuild.
    pub(super) damaged_indexes: Mutex<Vec<(u64, u64, Arc<DiskIndex>)>>,
    /// Search states (io_uring rings with registered buffers, visited sets) kept for reuse, so a
    /// query does not create a ring per segment; at most [`MAX_POOLED_SEARCH_STATES`].
    pub(super) search_states: Mutex<Vec<SearchState>>,
    /// Threads that search a query's segments in parallel: its own pool, so searches never
    /// queue behind an index build's work on rayon's global pool.
    pub(super) search_pool: rayon::ThreadPool,
    /// Threads of the background worker's index builds and merges, at a lower scheduling
    /// priority ([`Options::background_nice`]): they use idle cores fully
    /// and yield them to searches and writes.
    pub(super) build_pool: rayon::ThreadPool,
    /// The build pool's scheduling class, paced while background work runs (`pace.rs`).
    pub(super) pace: Arc<super::pace::Pace>,
    /// When the last write was applied (for [`Options::idle_flush`]).
    pub(super) last_write: Mutex<Instant>,
    /// The background worker's last failure, until a unit of work succeeds
    /// ([`crate::Database::background_error`]: a full disk is reported there).
    pub(super) background_failure: Mutex<Option<Arc<BackgroundError>>>,
    /// The inputs of the merge in progress, if any: their vectors (if resident) stay so while it
    /// builds the merged segment's index, and no other merge takes them.
    pub(super) merging: Mutex<Vec<u64>>,
    /// Index builds that ran over the memory budget (no plan fitted what it left them).
    pub(super) over_budget_builds: AtomicU64,
    /// Under a memory budget, the bytes the running index build or growth took from the cache
    /// (its plan's peak, at most its allowance); 0 when none runs. Resizing the cache for a
    /// flush meanwhile leaves them to the build.
    pub(super) build_reserve: AtomicU64,
    /// Merges committed since open.
    pub(super) merges: AtomicU64,
    /// Merges whose index was grown from an input's rather than rebuilt.
    pub(super) index_grows: AtomicU64,
    /// Label graphs built since open (`label_graphs.rs`).
    pub(super) label_graphs_built: AtomicU64,
    /// Label columns whose graphs could not be made in a segment.
    pub(super) label_graph_failures: AtomicU64,
    /// Of those, growths that trained a new codebook (`BackgroundStats::index_retrains`).
    pub(super) index_retrains: AtomicU64,
    pub(super) _lock: Option<DirLock>,
}

/// The fewest rows a row group or a merge's read batch is cut to, however large the rows.
pub(super) const MIN_BATCH_ROWS: usize = 64;

/// Search states kept for reuse: one per concurrent segment search, up to this many (each holds
/// an io_uring ring and 64 registered 4 KiB buffer slots, about 300 KiB).
pub(super) const MAX_POOLED_SEARCH_STATES: usize = 64;

/// WAL payload buffers kept for reuse, and the largest kept: inserts encode their batch into
/// one, which the WAL takes over, so a stream of multi-MB batches does not fault in fresh memory
/// for each. Bounds the pool at 256 MiB; it holds only what was once in flight at the same time.
pub(super) const WAL_BUFFER_POOL: (usize, usize) = (8, 32 << 20);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rows per row group of `schema`'s segments: [`Options::row_group_rows`], fewer if that
    /// many rows would pass [`Options::row_group_bytes`].
    pub(super) fn row_group_rows(&self, schema: &CollectionSchema) -> usize {
        self.rows_within_row_group_bytes(schema, self.opts.row_group_rows)
    }

    /// Rows per batch when a merge reads `schema`'s segments: [`SCAN_BATCH_ROWS`], fewer if
    /// that many rows would pass [`Options::row_group_bytes`].
    pub(super) fn read_batch_rows(&self, schema: &CollectionSchema) -> usize {
        self.rows_within_row_group_bytes(schema, SCAN_BATCH_ROWS)
    }

    /// `rows`, or fewer if that many of `schema`'s rows would pass
    /// [`Options::row_group_bytes`]; at least [`MIN_BATCH_ROWS`].
    fn rows_within_row_group_bytes(&self, schema: &CollectionSchema, rows: usize) -> usize {
        let by_bytes = self.opts.row_group_bytes / schema.row_bytes_estimate().max(1);
        rows.min(by_bytes).max(MIN_BATCH_ROWS)
    }

    pub(super) fn alloc_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    pub(super) fn poisoned(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    pub(super) fn poison(&self, why: String) {
        {
            let mut p = lock(&self.poisoned);
            if p.is_some() {
                return;
            }
            tracing::error!("database poisoned: {why}");
            *p = Some(why);
        }
        // Writers waiting for room must see it now (never called under `flush_ctl`).
        self.notify_flushed();
    }

    /// Records that searching `ix`, the index of segment `s`, failed with `e`. A damaged index
    /// (a sector fails its checksum, a node is malformed) is queued for the background worker,
    /// which drops it, so the segment is searched exactly, and rebuilds it; an I/O error is
    /// only counted, as it may pass.
    pub(super) fn index_failed(
        &self,
        c: &CollectionView,
        s: &SegmentView,
        ix: &Arc<DiskIndex>,
        e: &quiver_diskgraph::layout::LayoutError,
    ) {
        c.counters.index_failures.fetch_add(1, Ordering::Relaxed);
        let damaged = matches!(e, quiver_diskgraph::layout::LayoutError::Corrupt { .. });
        tracing::error!(
            collection = %c.name,
            segment = format!("{:016x}", s.id),
            "disk index failed ({e}); searching the segment from its Parquet file{}",
            if damaged { " and rebuilding the index" } else { "" }
        );
        if damaged {
            let mut queue = lock(&self.damaged_indexes);
            if !queue.iter().any(|(_, _, q)| Arc::ptr_eq(q, ix)) {
                queue.push((c.id, s.id, Arc::clone(ix)));
            }
            drop(queue);
            self.notify_work();
        }
    }

    /// A searcher of `ix` (the index of segment `segment`) with a pooled search state (a new one if none is free).
    pub(super) fn searcher<'a>(
        &self,
        segment: u64,
        ix: &'a DiskIndex,
    ) -> Result<Searcher<'a>, ReadError> {
        let pooled = lock(&self.search_states).pop();
        match pooled {
            Some(state) => ix.searcher_with(state),
            None => ix.searcher(),
        }
        .map_err(|source| ReadError::Index { segment, source })
    }

    /// Returns a search state to the pool (dropped if the pool is full).
    pub(super) fn return_search_state(&self, state: SearchState) {
        let mut pool = lock(&self.search_states);
        if pool.len() < MAX_POOLED_SEARCH_STATES {
            pool.push(state);
        }
    }

    pub(super) fn notify_work(&self) {
        lock(&self.work).generation += 1;
        self.work_cv.notify_all();
    }

    /// Wakes the flusher thread and every writer waiting for room: a flush is wanted, a table
    /// was frozen, a flush finished or gave up, or the database was poisoned.
    pub(super) fn notify_flushed(&self) {
        lock(&self.flush_ctl).generation += 1;
        self.flush_cv.notify_all();
    }

    pub(super) fn path(&self, sub: &str, name: &str) -> PathBuf {
        self.dir.join(sub).join(name)
    }

    /// Commits the state's body (plus `edit`) under the held manifest lock.
    /// Commits the manifest: the state's body with `edit` applied. The body is taken under a
    /// brief read lock, and the commit's writes and syncs run with no state lock held, so
    /// readers and writers go on meanwhile. The caller holds the manifest lock (`store`), and
    /// every change to what a body lists (segments, deletion files, collections, checkpoint)
    /// is made under it, so the body cannot go stale before the commit.
    pub(super) fn commit(
        &self,
        store: &mut ManifestStore,
        edit: impl FnOnce(&mut Body),
    ) -> Result<(), ManifestError> {
        let mut body = self.read().body(self.next_id.load(Ordering::SeqCst));
        edit(&mut body);
        let bytes = serde_json::to_vec(&body).expect("the manifest body serialises");
        store.commit(&bytes).inspect_err(|e| {
            // Only a commit whose outcome is unknown stops the database; one that failed
            // before its rename left the old manifest in force (see `ManifestStore::commit`).
            if store.is_poisoned() {
                self.poison(format!("manifest commit failed: {e}"));
            }
        })?;
        Ok(())
    }

    pub(super) fn remove_quietly(&self, path: &Path) {
        if let Err(e) = self.vfs.remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
    }

    /// Removes segment `id`'s Parquet file, its ids file and its label indexes (those it
    /// has), quietly. A label index left behind (by a crash between these removals) is an
    /// orphan the next open sweeps.
    pub(super) fn remove_segment_files(&self, id: u64) {
        let stem = format!("{id:016x}");
        let dir = self.dir.join(super::SEGMENTS_DIR);
        let ours = |name: &String| label_file_stem(name).is_some_and(|(s, _)| s == stem);
        match self.vfs.list_dir(&dir) {
            Ok(names) => {
                for name in names.iter().filter(|n| ours(n)) {
                    self.remove_quietly(&dir.join(name));
                }
            }
            Err(e) => tracing::warn!("could not list {}: {e}", dir.display()),
        }
        self.remove_quietly(&self.path(super::SEGMENTS_DIR, &super::body::segment_name(id)));
        self.remove_quietly(&self.path(super::SEGMENTS_DIR, &super::id_file::ids_name(id)));
    }

    pub(super) fn remove_index_dir(&self, seg: u64) {
        if let Some(dir) = &self.index_dir {
            let p = dir.join(index_name(seg));
            if let Err(e) = std::fs::remove_dir_all(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("could not remove {}: {e}", p.display());
            }
        }
    }
}

/// Coordination between writers and the flusher thread.
#[derive(Debug, Default)]
pub(super) struct FlushCtl {
    pub(super) shutdown: bool,
    /// Bumped when a flush is wanted, a table was frozen, or a flush finished or gave up: a
    /// writer waiting for room re-checks when it changes.
    pub(super) generation: u64,
    /// A writer's batch does not fit the table beside the rows it holds: the flusher freezes
    /// the table whatever its size, so no table outgrows `memtable_bytes`.
    pub(super) rotate: bool,
    /// The flusher's last attempt failed: writers that need room flush themselves, so they
    /// report the error instead of waiting out `max_stall`.
    pub(super) failing: bool,
}
