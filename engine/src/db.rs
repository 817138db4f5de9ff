//! The database: collections, the write path (WAL → in-memory table), flushes to Parquet
//! segments, deletes as persisted tombstones, searches that merge every source, and recovery.
//!
//! Locks are always taken in this order, and never the other way: `manifest` → `order` →
//! `state`. Readers take only `state` (shared). A flush holds `manifest` throughout but `order`
//! only to freeze the memtables, so writers go on while it writes segments.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use quiver_wal::vfs::{OpenMode, Vfs};
use quiver_wal::{Lsn, Wal, WalOptions};

use crate::batch::{self, Key, Prepared, Vectors, kind};
use crate::diskgraph::data::{Metric, Row, distance_active};
use crate::diskgraph::search::{DiskIndex, SearchState, Searcher};
use crate::error::{
    BackgroundError, CollectionError, FlushError, OpenError, ReadError, WriteError,
};
use crate::index_source;
use crate::lock::DirLock;
use crate::manifest::{ManifestError, ManifestStore};
use crate::names::validate_collection_name;
use crate::options::Options;
use crate::rowset::RowSet;
use crate::schema::{CollectionSchema, DISTANCE_COLUMN, ID_COLUMN};
use crate::segment::{self, FileSum, SegmentFile};

/// Directory of Parquet segments.
pub const SEGMENTS_DIR: &str = "segments";
/// Directory of deletion files.
pub const DELETES_DIR: &str = "deletes";
/// Directory of disk indexes (one sub-directory per segment).
pub const INDEXES_DIR: &str = "indexes";
/// Directory of the write-ahead log.
pub const WAL_DIR: &str = "wal";
/// Manifest body format version.
const BODY_FORMAT: u32 = 1;
/// The most results one search may ask for.
pub const MAX_K: usize = 10_000;
/// The largest candidate list a search may ask for.
pub const MAX_LIST_SIZE: usize = 100_000;
/// Rows a scan reads from a segment per batch, unless [`Scan::set_batch_rows`] changes it.
pub const SCAN_BATCH_ROWS: usize = 8192;
/// The most rows [`Scan::set_batch_rows`] accepts.
pub const MAX_SCAN_BATCH_ROWS: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Manifest body
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Body {
    format: u32,
    /// Next id for a collection, segment or deletion file.
    next_id: u64,
    /// Every WAL record with an LSN below this is reflected in the segments listed here.
    wal_checkpoint: u64,
    collections: Vec<CollectionMeta>,
}

impl Body {
    /// Marks segment `sid` of collection `cid` as indexed or not.
    fn set_indexed(&mut self, cid: u64, sid: u64, indexed: bool) {
        for c in self.collections.iter_mut().filter(|c| c.id == cid) {
            for s in c.segments.iter_mut().filter(|s| s.id == sid) {
                s.indexed = indexed;
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CollectionMeta {
    id: u64,
    name: String,
    schema: CollectionSchema,
    segments: Vec<SegmentMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SegmentMeta {
    id: u64,
    rows: u64,
    bytes: u64,
    crc: u32,
    deletes: Option<DeleteMeta>,
    indexed: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct DeleteMeta {
    file: u64,
    count: u64,
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.parquet")
}

fn delete_name(file: u64) -> String {
    format!("{file:016x}.del")
}

fn index_name(id: u64) -> String {
    format!("{id:016x}")
}

// ---------------------------------------------------------------------------------------------
// In-memory state
// ---------------------------------------------------------------------------------------------

/// Where a live row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Row of the in-memory table.
    Mem(u32),
    /// Row of a segment.
    Seg(u64, u32),
}

/// Every live row's place by id. aHash with per-process random keys: about three times cheaper
/// than SipHash on the insert path, still not predictable by a client choosing ids.
type KeyMap = HashMap<Key, Loc, ahash::RandomState>;

/// Recent rows, in memory, searched exactly.
///
/// A flush freezes a prefix (`frozen`): those rows are being written to a segment while new rows
/// append after them. They stay readable (and killable) here until the flush installs its
/// segment and drops the prefix ([`Memtable::drain_frozen`]).
#[derive(Debug, Default)]
struct Memtable {
    batches: Vec<RecordBatch>,
    /// Row → (batch, row in batch).
    locs: Vec<(u32, u32)>,
    keys: Vec<Key>,
    /// Search vectors, one entry per batch (sharing the batch's buffer where no conversion was
    /// needed).
    vectors: Vec<Vectors>,
    live: Vec<bool>,
    live_count: usize,
    bytes: usize,
    frozen: Frozen,
}

/// The frozen prefix of a memtable: its first `rows` rows, `batches` batches and `bytes` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Frozen {
    rows: usize,
    batches: usize,
    bytes: usize,
}

impl Memtable {
    fn append(&mut self, p: Prepared) -> u32 {
        let first = self.keys.len() as u32;
        let b = self.batches.len() as u32;
        // Vectors sharing the batch's buffer are counted once (in the batch).
        let vector_bytes = if p.vectors_shared { 0 } else { p.vectors.bytes() };
        self.bytes += p.batch.get_array_memory_size() + vector_bytes + 48 * p.keys.len();
        for i in 0..p.keys.len() {
            self.locs.push((b, i as u32));
        }
        self.live.extend(std::iter::repeat_n(true, p.keys.len()));
        self.live_count += p.keys.len();
        self.keys.extend(p.keys);
        self.vectors.push(p.vectors);
        self.batches.push(p.batch);
        first
    }

    fn kill(&mut self, row: u32) {
        let r = row as usize;
        assert!(self.live[r], "memtable row {row} killed twice");
        self.live[r] = false;
        self.live_count -= 1;
    }

    /// Marks every row so far as frozen (a flush is writing them).
    fn freeze(&mut self) -> Frozen {
        assert_eq!(self.frozen, Frozen::default(), "a memtable frozen twice");
        self.frozen =
            Frozen { rows: self.keys.len(), batches: self.batches.len(), bytes: self.bytes };
        self.frozen
    }

    /// The live rows of the frozen prefix.
    fn frozen_live_rows(&self) -> Vec<u32> {
        (0..self.frozen.rows as u32).filter(|&r| self.live[r as usize]).collect()
    }

    /// The live rows of the first `batches` batches, as batches (one per batch that has any), in
    /// row order.
    fn live_batches(&self, batches: usize) -> Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
        let mut out = Vec::new();
        let mut row = 0usize;
        for b in &self.batches[..batches] {
            let n = b.num_rows();
            let mask: arrow_array::BooleanArray =
                self.live[row..row + n].iter().map(|&l| Some(l)).collect();
            row += n;
            if mask.true_count() == 0 {
                continue;
            }
            out.push(if mask.true_count() == n {
                b.clone()
            } else {
                arrow_select::filter::filter_record_batch(b, &mask)?
            });
        }
        Ok(out)
    }

    /// Drops the frozen prefix (its flush installed a segment); rows after it move down by its
    /// length, so the caller re-points their keys. Returns the bytes freed.
    fn drain_frozen(&mut self) -> usize {
        let f = std::mem::take(&mut self.frozen);
        let still_live = self.live[..f.rows].iter().filter(|&&l| l).count();
        self.live_count -= still_live;
        self.live.drain(..f.rows);
        self.keys.drain(..f.rows);
        self.locs.drain(..f.rows);
        for l in &mut self.locs {
            l.0 -= f.batches as u32;
        }
        self.batches.drain(..f.batches);
        self.vectors.drain(..f.batches);
        self.bytes -= f.bytes;
        f.bytes
    }

    /// The vectors of `rows` (ascending), a chunk per batch: a batch whose rows are all taken
    /// is shared, not copied, unless its buffer holds much more than them ([`Vectors::compact`]).
    fn select_vectors(&self, rows: &[u32], dim: usize) -> Vec<Vectors> {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let b = self.locs[rows[i] as usize].0 as usize;
            let mut in_batch = Vec::new();
            while i < rows.len() && self.locs[rows[i] as usize].0 as usize == b {
                in_batch.push(self.locs[rows[i] as usize].1);
                i += 1;
            }
            parts.push(if in_batch.len() == self.batches[b].num_rows() {
                self.vectors[b].compact()
            } else {
                self.vectors[b].select(&in_batch, dim)
            });
        }
        parts
    }

    /// Bytes of search vectors held.
    fn vector_bytes(&self) -> usize {
        self.vectors.iter().map(Vectors::bytes).sum()
    }
}

/// A sealed segment.
#[derive(Debug)]
struct Segment {
    meta: SegmentMeta,
    file: SegmentFile,
    /// The key of every row (deleted ones too); shared so merges take them without a copy.
    keys: Arc<[Key]>,
    /// Copy on write: reads keep the bitmap they started with (an `Arc` clone) while a delete
    /// changes a copy.
    deleted: Arc<RowSet>,
    deleted_count: u64,
    /// Deletions not yet in a deletion file (they are in the WAL).
    dirty: bool,
    /// Search vectors, held until the segment has a disk index: chunks, one after another
    /// (those of flushed batches share the batches' buffers).
    vectors: Option<Arc<[Vectors]>>,
    index: Option<Arc<DiskIndex>>,
}

impl Segment {
    fn kill(&mut self, row: u32) {
        let r = row as usize;
        let fresh = Arc::make_mut(&mut self.deleted).insert(r);
        assert!(fresh, "segment {} row {row} deleted twice", self.meta.id);
        self.deleted_count += 1;
        self.dirty = true;
    }

    fn live_rows(&self) -> Vec<u32> {
        (0..self.keys.len() as u32).filter(|&r| !self.deleted.contains(r as usize)).collect()
    }

    fn deleted_rows(&self) -> Vec<u32> {
        (0..self.keys.len() as u32).filter(|&r| self.deleted.contains(r as usize)).collect()
    }
}

#[derive(Debug)]
struct Collection {
    id: u64,
    name: String,
    schema: Arc<CollectionSchema>,
    arrow: SchemaRef,
    mem: Memtable,
    /// Ascending id (older first).
    segments: Vec<Segment>,
    /// Every live row's place.
    keys: KeyMap,
    /// Index searches that failed since open (each fell back to an exact search of its
    /// segment's Parquet file, and the index was queued for a rebuild if damaged).
    index_failures: Arc<AtomicU64>,
}

impl Collection {
    fn segment_mut(&mut self, id: u64) -> &mut Segment {
        let at = self.segments.binary_search_by_key(&id, |s| s.meta.id).expect("segment exists");
        &mut self.segments[at]
    }

    fn segment(&self, id: u64) -> Option<&Segment> {
        self.segments.binary_search_by_key(&id, |s| s.meta.id).ok().map(|at| &self.segments[at])
    }

    fn kill(&mut self, loc: Loc) {
        match loc {
            Loc::Mem(r) => self.mem.kill(r),
            Loc::Seg(s, r) => self.segment_mut(s).kill(r),
        }
    }

    fn insert(&mut self, p: Prepared) -> usize {
        let first = self.mem.keys.len() as u32;
        for (i, k) in p.keys.iter().enumerate() {
            if let Some(old) = self.keys.insert(k.clone(), Loc::Mem(first + i as u32)) {
                self.kill(old);
            }
        }
        let before = self.mem.bytes;
        self.mem.append(p);
        self.mem.bytes - before
    }

    fn delete(&mut self, keys: &[Key]) {
        for k in keys {
            if let Some(old) = self.keys.remove(k) {
                self.kill(old);
            }
        }
    }

    fn column_index(&self, name: &str) -> Result<usize, ReadError> {
        self.arrow.index_of(name).map_err(|_| ReadError::UnknownColumn(name.to_string()))
    }
}

#[derive(Debug, Default)]
struct State {
    collections: BTreeMap<String, Collection>,
    checkpoint: Lsn,
    /// Bytes of every memtable.
    mem_bytes: usize,
    /// Bytes of the memtables' frozen prefixes (a flush is writing them).
    frozen_bytes: usize,
}

impl State {
    fn by_id_mut(&mut self, id: u64) -> Option<&mut Collection> {
        self.collections.values_mut().find(|c| c.id == id)
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Insert { collection, prepared } => {
                if let Some(c) = self.by_id_mut(collection) {
                    let added = c.insert(prepared);
                    self.mem_bytes += added;
                }
            }
            Op::Delete { collection, keys } => {
                if let Some(c) = self.by_id_mut(collection) {
                    c.delete(&keys);
                }
            }
        }
    }

    fn body(&self, next_id: u64) -> Body {
        Body {
            format: BODY_FORMAT,
            next_id,
            wal_checkpoint: self.checkpoint,
            collections: self
                .collections
                .values()
                .map(|c| CollectionMeta {
                    id: c.id,
                    name: c.name.clone(),
                    schema: (*c.schema).clone(),
                    segments: c.segments.iter().map(|s| s.meta.clone()).collect(),
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
enum Op {
    Insert { collection: u64, prepared: Prepared },
    Delete { collection: u64, keys: Vec<Key> },
}

/// Writes submitted to the WAL and not yet applied, in LSN order.
#[derive(Debug, Default)]
struct Order {
    queue: VecDeque<(Lsn, Op)>,
}

#[derive(Debug, Default)]
struct Work {
    shutdown: bool,
    /// Bumped whenever background work may have become available or finished.
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    opts: Options,
    vfs: Arc<dyn Vfs>,
    /// The real path of the index directory, if the file system is real and indexing is on.
    index_dir: Option<PathBuf>,
    wal: Wal,
    order: Mutex<Order>,
    manifest: Mutex<ManifestStore>,
    state: RwLock<State>,
    next_id: AtomicU64,
    poisoned: Mutex<Option<String>>,
    work: Mutex<Work>,
    work_cv: Condvar,
    flush_ctl: Mutex<FlushCtl>,
    flush_cv: Condvar,
    /// Indexes found damaged by a search: (collection id, segment id, the index), for the
    /// background worker to drop (the segment is searched exactly) and rebuild.
    damaged_indexes: Mutex<Vec<(u64, u64, Arc<DiskIndex>)>>,
    /// Search states (io_uring rings with registered buffers, visited sets) kept for reuse, so a
    /// query does not create a ring per segment; at most [`MAX_POOLED_SEARCH_STATES`].
    search_states: Mutex<Vec<SearchState>>,
    /// When the last write was applied (for [`Options::idle_flush`]).
    last_write: Mutex<Instant>,
    /// The background worker's last failure, until a unit of work succeeds: a flush waiting
    /// for index builds that fail for lack of space reports that instead of stalling.
    background_failure: Mutex<Option<Arc<BackgroundError>>>,
    _lock: Option<DirLock>,
}

/// Search states kept for reuse: one per concurrent segment search, up to this many (each holds
/// an io_uring ring and 64 registered 4 KiB buffer slots, about 300 KiB).
const MAX_POOLED_SEARCH_STATES: usize = 64;

/// WAL payload buffers kept for reuse, and the largest kept: inserts encode their batch into
/// one, which the WAL takes over, so a stream of multi-MB batches does not fault in fresh memory
/// for each. Bounds the pool at 256 MiB; it holds only what was once in flight at the same time.
const WAL_BUFFER_POOL: (usize, usize) = (8, 32 << 20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alloc_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn poisoned(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    fn poison(&self, why: String) {
        let mut p = lock(&self.poisoned);
        if p.is_none() {
            tracing::error!("database poisoned: {why}");
            *p = Some(why);
        }
    }

    /// Records that searching `ix`, the index of segment `s`, failed with `e`. A damaged index
    /// (a sector fails its checksum, a node is malformed) is queued for the background worker,
    /// which drops it, so the segment is searched exactly, and rebuilds it; an I/O error is
    /// only counted, as it may pass.
    fn index_failed(
        &self,
        c: &CollectionView,
        s: &SegmentView,
        ix: &Arc<DiskIndex>,
        e: &crate::diskgraph::layout::LayoutError,
    ) {
        c.index_failures.fetch_add(1, Ordering::Relaxed);
        let damaged = matches!(e, crate::diskgraph::layout::LayoutError::Corrupt { .. });
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

    /// A searcher of `ix` with a pooled search state (a new one if none is free).
    fn searcher<'a>(&self, ix: &'a DiskIndex) -> Result<Searcher<'a>, ReadError> {
        let pooled = lock(&self.search_states).pop();
        match pooled {
            Some(state) => ix.searcher_with(state),
            None => ix.searcher(),
        }
        .map_err(|e| ReadError::Index(e.to_string()))
    }

    /// Returns a search state to the pool (dropped if the pool is full).
    fn return_search_state(&self, state: SearchState) {
        let mut pool = lock(&self.search_states);
        if pool.len() < MAX_POOLED_SEARCH_STATES {
            pool.push(state);
        }
    }

    fn notify_work(&self) {
        lock(&self.work).generation += 1;
        self.work_cv.notify_all();
    }

    fn path(&self, sub: &str, name: &str) -> PathBuf {
        self.dir.join(sub).join(name)
    }

    /// Commits the state's body (plus `edit`) under the held manifest lock.
    /// Commits the manifest: the state's body with `edit` applied. The body is taken under a
    /// brief read lock, and the commit's writes and syncs run with no state lock held, so
    /// readers and writers go on meanwhile. The caller holds the manifest lock (`store`), and
    /// every change to what a body lists (segments, deletion files, collections, checkpoint)
    /// is made under it, so the body cannot go stale before the commit.
    fn commit(
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

    fn remove_quietly(&self, path: &Path) {
        if let Err(e) = self.vfs.remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
    }

    fn remove_index_dir(&self, seg: u64) {
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

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// Search parameters. `Default`: k = 10, list size 100, beam width 4, approximate, no extra
/// columns.
#[derive(Clone, Debug)]
pub struct SearchParams {
    /// Results wanted (1..=[`MAX_K`]).
    pub k: usize,
    /// The disk index's candidate list size `L` (raised to `k` if smaller).
    pub list_size: usize,
    /// The disk index's beam width `W`: reads kept in flight per search
    /// (1..=[`MAX_BEAM_WIDTH`](crate::diskgraph::search::MAX_BEAM_WIDTH)).
    pub beam_width: usize,
    /// Exhaustive search: every live row's exact distance, ignoring the indexes (slow; for
    /// ground truth and tests).
    pub exact: bool,
    /// Columns returned besides `id` and `_distance` (attributes or `vector`).
    pub columns: Vec<String>,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams { k: 10, list_size: 100, beam_width: 4, exact: false, columns: Vec::new() }
    }
}

/// Counters of one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectionStats {
    /// Live rows.
    pub rows: u64,
    /// Live rows in the in-memory table.
    pub memtable_rows: u64,
    /// Sealed segments.
    pub segments: usize,
    /// Segments with a disk index.
    pub indexed_segments: usize,
    /// Rows in segments, live or deleted.
    pub segment_rows: u64,
    /// Rows of segments that are deleted or replaced (dropped at the next merge).
    pub deleted_segment_rows: u64,
    /// Bytes of segment files.
    pub segment_bytes: u64,
    /// Bytes of vectors held in RAM (in-memory table and unindexed segments).
    pub resident_vector_bytes: u64,
    /// Index searches that failed since the database was opened. Each was answered by an exact
    /// search of the segment's Parquet file; a damaged index is then dropped and rebuilt (the
    /// segment counts as unindexed until it is).
    pub index_failures: u64,
}

/// An open database. Share it between threads by reference or in an `Arc`; every method takes
/// `&self`. Dropping it stops background work (an index build in progress is abandoned and
/// cleaned up at the next open).
#[derive(Debug)]
pub struct Database {
    inner: Arc<Inner>,
    worker: Option<std::thread::JoinHandle<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

// ---------------------------------------------------------------------------------------------
// Open and recovery
// ---------------------------------------------------------------------------------------------

impl Database {
    /// Opens (creating if needed) the database in `path`: takes the directory lock, loads the
    /// manifest, opens and verifies every segment and deletion file it names, removes files it
    /// does not name (work in flight at a crash), replays the WAL after the manifest's
    /// checkpoint, and starts background work.
    ///
    /// # Errors
    /// [`OpenError`]: the directory is locked or unreadable, or a file is damaged.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Database, OpenError> {
        let dir = path.as_ref().to_path_buf();
        let vfs = opts.vfs.clone();
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| OpenError::Io { path: p, source }
        };
        for sub in ["", SEGMENTS_DIR, DELETES_DIR, WAL_DIR] {
            let p = if sub.is_empty() { dir.clone() } else { dir.join(sub) };
            vfs.create_dir_all(&p).map_err(io(&p))?;
        }
        let real = vfs.real_path(&dir);
        let lock = match &real {
            Some(real) => Some(DirLock::acquire(real).map_err(|e| {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    OpenError::Locked(e.to_string())
                } else {
                    OpenError::Io { path: real.clone(), source: e }
                }
            })?),
            None => None,
        };
        let index_dir = match (&real, opts.build_indexes) {
            (Some(real), true) => {
                let p = real.join(INDEXES_DIR);
                std::fs::create_dir_all(&p).map_err(io(&p))?;
                Some(p)
            }
            _ => None,
        };
        let (store, committed) = ManifestStore::open(vfs.clone(), &dir)?;
        let manifest_missing = committed.is_none();
        let body: Body = match committed {
            Some((_, bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| OpenError::ManifestBody(e.to_string()))?,
            None => {
                Body { format: BODY_FORMAT, next_id: 1, wal_checkpoint: 1, collections: vec![] }
            }
        };
        if body.format != BODY_FORMAT {
            return Err(OpenError::ManifestBody(format!(
                "body format {} is not supported",
                body.format
            )));
        }

        let mut state = State { checkpoint: body.wal_checkpoint, ..State::default() };
        let mut max_id = 0u64;
        for cm in &body.collections {
            validate_collection_name(&cm.name)
                .map_err(|e| OpenError::ManifestBody(format!("collection name: {e}")))?;
            let c = load_collection(&vfs, &dir, index_dir.as_deref(), &opts, cm)?;
            max_id = max_id.max(cm.id);
            for s in &cm.segments {
                max_id = max_id.max(s.id).max(s.deletes.map_or(0, |d| d.file));
            }
            if state.collections.insert(cm.name.clone(), c).is_some() {
                return Err(OpenError::ManifestBody(format!("collection {:?} twice", cm.name)));
            }
        }
        if body.next_id <= max_id {
            return Err(OpenError::ManifestBody(format!(
                "next id {} is not above the largest id in use ({max_id})",
                body.next_id
            )));
        }
        // Decide before changing anything: the WAL is scanned, not yet repaired, and no file is
        // removed until the manifest, every file it names and the log agree.
        let wal_opts = WalOptions::default()
            .vfs(vfs.clone())
            .sync(opts.wal_sync)
            .segment_bytes(opts.wal_segment_bytes)
            .compression(opts.wal_compression)
            .buffer_pool(WAL_BUFFER_POOL.0, WAL_BUFFER_POOL.1)
            .cut_truncated_tail(opts.cut_truncated_wal);
        let wal_scan = Wal::scan(dir.join(WAL_DIR), wal_opts)?;
        if manifest_missing {
            refuse_if_data_without_manifest(&vfs, &dir, index_dir.as_deref(), &wal_scan)?;
        }
        if wal_scan.next_lsn() < body.wal_checkpoint {
            return Err(OpenError::ManifestBody(format!(
                "the WAL ends before LSN {} but the manifest's checkpoint is {}: WAL files are missing",
                wal_scan.next_lsn(),
                body.wal_checkpoint
            )));
        }
        let wal = wal_scan.open()?;
        remove_orphans(&vfs, &dir, index_dir.as_deref(), &body).map_err(|(p, e)| io(&p)(e))?;
        let replay = wal.replay(body.wal_checkpoint).map_err(|e| OpenError::WalRecord {
            lsn: body.wal_checkpoint,
            reason: e.to_string(),
        })?;
        for rec in replay {
            let rec = rec.map_err(|e| OpenError::WalRecord { lsn: 0, reason: e.to_string() })?;
            let bad = |reason: String| OpenError::WalRecord { lsn: rec.lsn, reason };
            let (cid, b) = batch::decode_payload(&rec.payload).map_err(bad)?;
            let Some(c) = state.collections.values().find(|c| c.id == cid) else {
                if cid >= body.next_id {
                    // Never allocated under this manifest: not a dropped collection's record.
                    return Err(bad(format!(
                        "collection id {cid} was never allocated (the manifest's next id is {})",
                        body.next_id
                    )));
                }
                continue; // the collection was dropped
            };
            let op = match rec.kind {
                kind::INSERT => Op::Insert {
                    collection: cid,
                    prepared: batch::prepare(&c.schema, &b, batch::Admit::Logged)
                        .map_err(|e| bad(e.to_string()))?,
                },
                kind::DELETE => {
                    let ids =
                        b.column_by_name(ID_COLUMN).ok_or_else(|| bad("no id column".into()))?;
                    Op::Delete {
                        collection: cid,
                        keys: batch::delete_keys(ids.as_ref(), c.schema.id_type())
                            .map_err(|e| bad(e.to_string()))?,
                    }
                }
                k => return Err(bad(format!("unknown record kind {k}"))),
            };
            state.apply(op);
        }

        let inner = Arc::new(Inner {
            dir,
            vfs,
            index_dir,
            wal,
            order: Mutex::new(Order::default()),
            manifest: Mutex::new(store),
            state: RwLock::new(state),
            next_id: AtomicU64::new(body.next_id),
            poisoned: Mutex::new(None),
            work: Mutex::new(Work::default()),
            work_cv: Condvar::new(),
            flush_ctl: Mutex::new(FlushCtl::default()),
            flush_cv: Condvar::new(),
            damaged_indexes: Mutex::new(Vec::new()),
            background_failure: Mutex::new(None),
            search_states: Mutex::new(Vec::new()),
            last_write: Mutex::new(Instant::now()),
            _lock: lock,
            opts,
        });
        let spawn = |name: &str, f: fn(&Arc<Inner>)| {
            let w = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&w))
                .map_err(|e| OpenError::Io { path: inner.dir.clone(), source: e })
        };
        let (worker, flusher) = if inner.opts.background {
            (
                Some(spawn("quiver-background", background_loop)?),
                Some(spawn("quiver-flush", flush_loop)?),
            )
        } else {
            (None, None)
        };
        Ok(Database { inner, worker, flusher })
    }
}

fn load_collection(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_dir: Option<&Path>,
    opts: &Options,
    cm: &CollectionMeta,
) -> Result<Collection, OpenError> {
    let schema = Arc::new(cm.schema.clone());
    let arrow = schema.arrow_schema();
    let mut c = Collection {
        id: cm.id,
        name: cm.name.clone(),
        schema: schema.clone(),
        arrow: arrow.clone(),
        mem: Memtable::default(),
        segments: Vec::new(),
        keys: KeyMap::default(),
        index_failures: Arc::new(AtomicU64::new(0)),
    };
    let mut last = None;
    for sm in &cm.segments {
        if last.is_some_and(|l| l >= sm.id) {
            return Err(OpenError::ManifestBody(format!(
                "segments of {:?} are not in ascending id order",
                cm.name
            )));
        }
        last = Some(sm.id);
        let seg = load_segment(vfs, dir, index_dir, opts, &schema, &arrow, sm.clone())?;
        for (r, k) in seg.keys.iter().enumerate() {
            if !seg.deleted.contains(r)
                && c.keys.insert(k.clone(), Loc::Seg(sm.id, r as u32)).is_some()
            {
                return Err(OpenError::ManifestBody(format!(
                    "id {} of collection {:?} is live in two segments",
                    batch::key_to_string(k, schema.id_type()),
                    cm.name
                )));
            }
        }
        c.segments.push(seg);
    }
    Ok(c)
}

fn load_segment(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_dir: Option<&Path>,
    opts: &Options,
    schema: &CollectionSchema,
    arrow: &SchemaRef,
    mut meta: SegmentMeta,
) -> Result<Segment, OpenError> {
    let path = dir.join(SEGMENTS_DIR).join(segment_name(meta.id));
    let file = SegmentFile::open(
        vfs.as_ref(),
        &path,
        FileSum { len: meta.bytes, crc: meta.crc },
        arrow,
        meta.rows,
    )?;
    let corrupt = |reason: String| segment::SegmentError::Corrupt { path: path.clone(), reason };
    let mut keys = Vec::with_capacity(meta.rows as usize);
    for b in file.read(&[0], None, 65_536)? {
        keys.extend(
            batch::keys_of(b.column(0).as_ref(), schema.id_type(), false)
                .map_err(|e| corrupt(e.to_string()))?,
        );
    }
    if keys.len() as u64 != meta.rows {
        return Err(corrupt(format!("{} ids for {} rows", keys.len(), meta.rows)).into());
    }
    let mut deleted = RowSet::new(keys.len());
    let mut deleted_count = 0;
    if let Some(d) = meta.deletes {
        let p = dir.join(DELETES_DIR).join(delete_name(d.file));
        let bytes = vfs
            .open(&p, OpenMode::Read)
            .and_then(|f| f.read_to_vec())
            .map_err(|source| segment::SegmentError::Io { path: p.clone(), source })?;
        let rows = segment::decode_deletes(&bytes, meta.id, meta.rows)
            .map_err(|reason| segment::SegmentError::Corrupt { path: p.clone(), reason })?;
        if rows.len() as u64 != d.count {
            return Err(segment::SegmentError::Corrupt {
                path: p,
                reason: format!("{} rows, the manifest says {}", rows.len(), d.count),
            }
            .into());
        }
        for r in rows {
            deleted.insert(r as usize);
        }
        deleted_count = d.count;
    }
    let mut index = None;
    if meta.indexed {
        match index_dir {
            Some(idir) => match DiskIndex::open(&idir.join(index_name(meta.id)), opts.index_open) {
                Ok(ix) if ix.header().n == meta.rows => {
                    match index_source::check(&idir.join(index_name(meta.id)), source_of(&meta)) {
                        Ok(()) => index = Some(Arc::new(ix)),
                        Err(e) => tracing::warn!(
                            "index of segment {:016x} is not bound to it: {e}; rebuilding it",
                            meta.id
                        ),
                    }
                }
                Ok(ix) => tracing::warn!(
                    "index of segment {:016x} has {} nodes for {} rows; rebuilding it",
                    meta.id,
                    ix.header().n,
                    meta.rows
                ),
                Err(e) => {
                    tracing::warn!(
                        "index of segment {:016x} unusable ({e}); rebuilding it",
                        meta.id
                    );
                }
            },
            None => tracing::info!(
                "segment {:016x} has an index, but indexing is off here: searching it exactly",
                meta.id
            ),
        }
        if index.is_none() {
            meta.indexed = false;
        }
    }
    let vectors = if index.is_some() { None } else { Some(read_vectors(&file, schema)?.into()) };
    Ok(Segment {
        meta,
        file,
        keys: keys.into(),
        deleted: Arc::new(deleted),
        deleted_count,
        dirty: false,
        vectors,
        index,
    })
}

/// What an index built from the segment `meta` records of it.
fn source_of(meta: &SegmentMeta) -> index_source::Source {
    index_source::Source { segment: meta.id, rows: meta.rows, bytes: meta.bytes, crc: meta.crc }
}

/// The search vectors of every row of `file`, a chunk per batch read.
fn read_vectors(
    file: &SegmentFile,
    schema: &CollectionSchema,
) -> Result<Vec<Vectors>, segment::SegmentError> {
    file.batches(&[1], None, MAX_SCAN_BATCH_ROWS)?
        .map(|b| {
            let b = b?;
            batch::vectors_of(schema, b.column(0).as_ref()).map_err(|e| {
                segment::SegmentError::Corrupt {
                    path: file.path().to_path_buf(),
                    reason: e.to_string(),
                }
            })
        })
        .collect()
}

/// Refuses to open a directory as a new database when `MANIFEST` is missing but data is there:
/// a manifest, once committed, is only ever replaced, never removed, so segment, deletion or
/// index files, or a WAL that has been written to, prove the manifest was lost. Opening it as
/// new would sweep those files as orphans and skip the WAL's records.
fn refuse_if_data_without_manifest(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_dir: Option<&Path>,
    wal: &quiver_wal::Recovery,
) -> Result<(), OpenError> {
    const SHOWN: usize = 4;
    let mut found = Vec::new();
    for sub in [SEGMENTS_DIR, DELETES_DIR] {
        let d = dir.join(sub);
        let names = vfs.list_dir(&d).map_err(|source| OpenError::Io { path: d.clone(), source })?;
        found.extend(names.into_iter().map(|n| format!("{sub}/{n}")));
    }
    if let Some(idir) = index_dir {
        let entries = std::fs::read_dir(idir)
            .map_err(|source| OpenError::Io { path: idir.to_path_buf(), source })?;
        for e in entries {
            let e = e.map_err(|source| OpenError::Io { path: idir.to_path_buf(), source })?;
            found.push(format!("{INDEXES_DIR}/{}", e.file_name().to_string_lossy()));
        }
    }
    if wal.next_lsn() > 1 {
        found.push(format!(
            "{WAL_DIR}/: records up to LSN {} ({} present)",
            wal.next_lsn() - 1,
            wal.report().records
        ));
    }
    if found.is_empty() {
        return Ok(());
    }
    let total = found.len();
    found.sort();
    found.truncate(SHOWN);
    if total > SHOWN {
        found.push(format!("and {} more", total - SHOWN));
    }
    Err(OpenError::ManifestMissing { dir: dir.to_path_buf(), found })
}

/// The id in a file name this engine writes in `sub` (`{id:016x}.parquet`, `{id:016x}.del`, or
/// an index directory `{id:016x}` / `{id:016x}.tmp`), or `None` for a name it never writes.
fn engine_file_id(sub: &str, name: &str) -> Option<u64> {
    let stem = match sub {
        SEGMENTS_DIR => name.strip_suffix(".parquet")?,
        DELETES_DIR => name.strip_suffix(".del")?,
        INDEXES_DIR => name.strip_suffix(".tmp").unwrap_or(name),
        _ => return None,
    };
    if stem.len() != 16 || !stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// Removes the segment, deletion and index files that the committed manifest proves are
/// orphans: names this engine writes, with an id it allocated (every id is allocated from the
/// manifest's counter, so a file of the engine's own naming that the committed manifest does
/// not name is either one it replaced or work that was never committed). Anything else in those
/// directories is reported and left alone. Called only once the manifest, the files it names
/// and the WAL have all been checked.
fn remove_orphans(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_dir: Option<&Path>,
    body: &Body,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut keep = std::collections::HashSet::new();
    let mut keep_index = std::collections::HashSet::new();
    for c in &body.collections {
        for s in &c.segments {
            keep.insert(segment_name(s.id));
            if let Some(d) = s.deletes {
                keep.insert(delete_name(d.file));
            }
            if s.indexed {
                keep_index.insert(index_name(s.id));
            }
        }
    }
    for sub in [SEGMENTS_DIR, DELETES_DIR] {
        let d = dir.join(sub);
        let mut removed = false;
        for name in vfs.list_dir(&d).map_err(|e| (d.clone(), e))? {
            if keep.contains(&name) {
                continue;
            }
            if engine_file_id(sub, &name).is_none() {
                tracing::warn!("{sub}/{name} is not a file Quiver writes; leaving it alone");
                continue;
            }
            tracing::info!("removing {sub}/{name}: the committed manifest does not name it");
            vfs.remove_file(&d.join(&name)).map_err(|e| (d.join(&name), e))?;
            removed = true;
        }
        if removed {
            vfs.sync_dir(&d).map_err(|e| (d.clone(), e))?;
        }
    }
    if let Some(idir) = index_dir {
        for e in std::fs::read_dir(idir).map_err(|e| (idir.to_path_buf(), e))? {
            let e = e.map_err(|e| (idir.to_path_buf(), e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if keep_index.contains(&name) {
                continue;
            }
            let is_dir = e.file_type().map_err(|err| (e.path(), err))?.is_dir();
            if !is_dir || engine_file_id(INDEXES_DIR, &name).is_none() {
                tracing::warn!(
                    "{INDEXES_DIR}/{name} is not an index Quiver writes; leaving it alone"
                );
                continue;
            }
            tracing::info!("removing index {name}: the committed manifest does not name it");
            std::fs::remove_dir_all(e.path()).map_err(|err| (e.path(), err))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Collections
// ---------------------------------------------------------------------------------------------

impl Database {
    /// Creates collection `name` with `schema`; durable when it returns.
    ///
    /// # Errors
    /// [`CollectionError`]: a bad name or schema, a name in use, or a failed commit.
    pub fn create_collection(
        &self,
        name: &str,
        schema: CollectionSchema,
    ) -> Result<(), CollectionError> {
        validate_collection_name(name)?;
        schema.validate()?;
        let inner = &self.inner;
        if let Some(p) = inner.poisoned() {
            return Err(CollectionError::Poisoned(p));
        }
        let mut store = lock(&inner.manifest);
        if inner.read().collections.contains_key(name) {
            return Err(CollectionError::AlreadyExists(name.to_string()));
        }
        let id = inner.alloc_id();
        let schema = Arc::new(schema);
        let arrow = schema.arrow_schema();
        let meta = CollectionMeta {
            id,
            name: name.to_string(),
            schema: (*schema).clone(),
            segments: Vec::new(),
        };
        inner.commit(&mut store, |b| b.collections.push(meta))?;
        inner.write().collections.insert(
            name.to_string(),
            Collection {
                id,
                name: name.to_string(),
                schema,
                arrow,
                mem: Memtable::default(),
                segments: Vec::new(),
                keys: KeyMap::default(),
                index_failures: Arc::new(AtomicU64::new(0)),
            },
        );
        Ok(())
    }

    /// Drops collection `name` and deletes its files; durable when it returns.
    ///
    /// # Errors
    /// [`CollectionError::NotFound`], or a failed commit.
    pub fn drop_collection(&self, name: &str) -> Result<(), CollectionError> {
        let inner = &self.inner;
        if let Some(p) = inner.poisoned() {
            return Err(CollectionError::Poisoned(p));
        }
        let mut store = lock(&inner.manifest);
        if !inner.read().collections.contains_key(name) {
            return Err(CollectionError::NotFound(name.to_string()));
        }
        inner.commit(&mut store, |b| b.collections.retain(|c| c.name != name))?;
        let c = {
            let mut st = inner.write();
            let c = st.collections.remove(name).expect("checked above");
            st.mem_bytes -= c.mem.bytes;
            st.frozen_bytes -= c.mem.frozen.bytes;
            c
        };
        drop(store);
        for s in &c.segments {
            inner.remove_quietly(&inner.path(SEGMENTS_DIR, &segment_name(s.meta.id)));
            if let Some(d) = s.meta.deletes {
                inner.remove_quietly(&inner.path(DELETES_DIR, &delete_name(d.file)));
            }
            inner.remove_index_dir(s.meta.id);
        }
        Ok(())
    }

    /// The collections and their schemas, by name.
    pub fn list_collections(&self) -> Vec<(String, CollectionSchema)> {
        self.inner
            .read()
            .collections
            .values()
            .map(|c| (c.name.clone(), (*c.schema).clone()))
            .collect()
    }

    /// The schema of collection `name`.
    ///
    /// # Errors
    /// [`CollectionError::NotFound`].
    pub fn schema(&self, name: &str) -> Result<CollectionSchema, CollectionError> {
        self.inner
            .read()
            .collections
            .get(name)
            .map(|c| (*c.schema).clone())
            .ok_or_else(|| CollectionError::NotFound(name.to_string()))
    }

    /// Counters of collection `name`.
    ///
    /// # Errors
    /// [`CollectionError::NotFound`].
    pub fn stats(&self, name: &str) -> Result<CollectionStats, CollectionError> {
        let st = self.inner.read();
        let c =
            st.collections.get(name).ok_or_else(|| CollectionError::NotFound(name.to_string()))?;
        Ok(CollectionStats {
            rows: c.keys.len() as u64,
            memtable_rows: c.mem.live_count as u64,
            segments: c.segments.len(),
            indexed_segments: c.segments.iter().filter(|s| s.index.is_some()).count(),
            segment_rows: c.segments.iter().map(|s| s.meta.rows).sum(),
            deleted_segment_rows: c.segments.iter().map(|s| s.deleted_count).sum(),
            segment_bytes: c.segments.iter().map(|s| s.meta.bytes).sum(),
            resident_vector_bytes: (c.mem.vector_bytes()
                + c.segments
                    .iter()
                    .filter_map(|s| s.vectors.as_ref())
                    .flat_map(|v| v.iter())
                    .map(Vectors::bytes)
                    .sum::<usize>()) as u64,
            index_failures: c.index_failures.load(Ordering::Relaxed),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

impl Database {
    /// Inserts (upserts by id) the rows of `batch`: columns `id`, `vector`, and any of the
    /// collection's attributes (missing nullable ones become null). Returns once the rows are
    /// durable in the WAL; from then on every search, get and scan sees them. May first flush
    /// the in-memory table, and wait for background work (backpressure).
    ///
    /// # Errors
    /// [`WriteError`]; for a refused batch, nothing was written.
    pub fn insert(&self, collection: &str, batch: &RecordBatch) -> Result<u64, WriteError> {
        self.submit_insert(collection, batch)?.wait()
    }

    /// [`Database::insert`] in two steps, so one caller can keep several writes in flight
    /// (the Flight server pipelines a stream's batches this way): checks `batch`, hands it to
    /// the WAL and returns without waiting for it to become durable. The rows are neither
    /// acknowledged nor visible until [`PendingWrite::wait`] returns. Writes take effect in the
    /// order they were submitted, whoever waits first.
    ///
    /// # Errors
    /// As [`Database::insert`], for everything found before the WAL write; a refused batch
    /// wrote nothing.
    pub fn submit_insert(
        &self,
        collection: &str,
        batch: &RecordBatch,
    ) -> Result<PendingWrite, WriteError> {
        let inner = &self.inner;
        let (cid, schema) = self.admit(collection, batch.num_rows())?;
        let prepared = batch::prepare(&schema, batch, batch::Admit::New)?;
        if prepared.keys.is_empty() {
            return Ok(PendingWrite::done(inner, inner.wal.durable_lsn()));
        }
        let mut payload = inner.wal.buffer();
        batch::encode_payload_into(&mut payload, cid, &prepared.batch)
            .map_err(batch::BatchError::from)?;
        self.submit(Op::Insert { collection: cid, prepared }, kind::INSERT, payload)
    }

    /// Deletes the rows with these ids (an array of the collection's id type); ids not present
    /// are ignored. Durable and visible when it returns.
    ///
    /// # Errors
    /// [`WriteError`]; for refused ids, nothing was written.
    pub fn delete(&self, collection: &str, ids: &dyn Array) -> Result<u64, WriteError> {
        let inner = &self.inner;
        let (cid, schema) = self.admit(collection, ids.len())?;
        let keys = batch::delete_keys(ids, schema.id_type())?;
        if keys.is_empty() {
            return Ok(inner.wal.durable_lsn());
        }
        let array = batch::keys_to_array(&keys, schema.id_type());
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(ID_COLUMN, array.data_type().clone(), false)])),
            vec![array],
        )
        .map_err(batch::BatchError::from)?;
        let payload = batch::encode_payload(cid, &b).map_err(batch::BatchError::from)?;
        self.submit(Op::Delete { collection: cid, keys }, kind::DELETE, payload)?.wait()
    }

    /// The checks every write passes first: not poisoned, within the row limit, a known
    /// collection (its id and schema).
    fn admit(
        &self,
        collection: &str,
        rows: usize,
    ) -> Result<(u64, Arc<CollectionSchema>), WriteError> {
        if let Some(p) = self.inner.poisoned() {
            return Err(WriteError::Poisoned(p));
        }
        let limit = self.inner.opts.max_batch_rows;
        if rows > limit {
            return Err(batch::BatchError::TooManyRows { rows, limit }.into());
        }
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| WriteError::NotFound(collection.to_string()))?;
        Ok((c.id, c.schema.clone()))
    }

    /// Queues `op` behind its WAL record; [`PendingWrite::wait`] applies it once durable.
    fn submit(&self, op: Op, kind: u8, payload: Vec<u8>) -> Result<PendingWrite, WriteError> {
        let inner = &self.inner;
        self.make_room()?;
        let pending = {
            let mut order = lock(&inner.order);
            let pending = inner.wal.submit_owned(kind, payload).inspect_err(|e| {
                inner.poison(format!("WAL append failed: {e}"));
            })?;
            order.queue.push_back((pending.lsn(), op));
            pending
        };
        Ok(PendingWrite { inner: Arc::clone(inner), lsn: pending.lsn(), wal: Some(pending) })
    }
}

/// A write handed to the WAL but not yet acknowledged, from [`Database::submit_insert`].
///
/// [`PendingWrite::wait`] blocks until the write is durable, makes it (and every write
/// submitted before it) visible, and returns its LSN. Dropping it unwaited waits the same way,
/// so no durable write stays invisible; only a leaked one (`mem::forget`) stays invisible until
/// a later write is waited on or a flush.
#[must_use = "a write is acknowledged and visible only once waited on"]
pub struct PendingWrite {
    inner: Arc<Inner>,
    lsn: u64,
    /// `None` once waited on, or for a write that needed no record.
    wal: Option<quiver_wal::Pending>,
}

impl fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingWrite").field("lsn", &self.lsn).finish_non_exhaustive()
    }
}

impl PendingWrite {
    /// A write with nothing to log (no rows): acknowledged at once with `lsn`.
    fn done(inner: &Arc<Inner>, lsn: u64) -> PendingWrite {
        PendingWrite { inner: Arc::clone(inner), lsn, wal: None }
    }

    /// The write's LSN (assigned at submission).
    #[must_use]
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Blocks until the write is durable, applies it, and returns its LSN.
    ///
    /// # Errors
    /// [`WriteError`] if the WAL failed first (the database is then poisoned).
    pub fn wait(mut self) -> Result<u64, WriteError> {
        match self.wal.take() {
            Some(p) => finish_write(&self.inner, p),
            None => Ok(self.lsn),
        }
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(p) = self.wal.take() {
            // The error, if any, has poisoned the database; later writes report it.
            let _ = finish_write(&self.inner, p);
        }
    }
}

/// Waits for `pending`'s record, then applies, in LSN order, every queued write up to it (all
/// are durable); on failure, poisons the database.
fn finish_write(inner: &Inner, pending: quiver_wal::Pending) -> Result<u64, WriteError> {
    let lsn = pending.lsn();
    match pending.wait() {
        Ok(_) => {
            let mut order = lock(&inner.order);
            if order.queue.front().is_some_and(|(l, _)| *l <= lsn) {
                let mut st = inner.write();
                while order.queue.front().is_some_and(|(l, _)| *l <= lsn) {
                    let (_, op) = order.queue.pop_front().expect("checked");
                    st.apply(op);
                }
            }
            drop(order);
            *lock(&inner.last_write) = Instant::now();
            Ok(lsn)
        }
        Err(e) => {
            lock(&inner.order).queue.retain(|(l, _)| *l != lsn);
            inner.poison(format!("WAL write failed: {e}"));
            Err(e.into())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flush
// ---------------------------------------------------------------------------------------------

/// What a flush writes, taken when it freezes the memtables.
struct FlushPlan {
    /// Per collection with frozen rows: the new segment's id and the frozen rows it holds.
    segments: Vec<PlannedSegment>,
    /// Per segment with deletions not yet in a deletion file: what to write.
    deletes: Vec<PlannedDeletes>,
}

struct PlannedSegment {
    collection: u64,
    id: u64,
    arrow: SchemaRef,
    /// The frozen memtable rows written, in order (segment row i is memtable row `rows[i]`).
    rows: Vec<u32>,
    batches: Vec<RecordBatch>,
    keys: Vec<Key>,
    vectors: Vec<Vectors>,
}

struct PlannedDeletes {
    collection: u64,
    segment: u64,
    file: u64,
    rows: u64,
    deleted: Vec<u32>,
}

/// Coordination between writers and the flusher thread.
#[derive(Debug, Default)]
struct FlushCtl {
    shutdown: bool,
    /// Bumped when a flush is wanted or one finished.
    generation: u64,
}

impl Database {
    /// Writes every collection's in-memory rows as Parquet segments and every pending deletion
    /// as deletion files, commits them in the manifest, and truncates the WAL behind them. When it
    /// returns, every write acknowledged before the call is in a segment. A no-op when there is
    /// nothing to write.
    ///
    /// # Errors
    /// [`FlushError`]; the rows stay in memory and in the WAL.
    pub fn flush(&self) -> Result<(), FlushError> {
        flush_once(&self.inner)
    }

    /// Makes room in the memtables before a write. Writes never wait for a flush's I/O unless
    /// the memtables hold twice their budget: past one budget, the flusher thread is woken (or,
    /// without background work, the writer flushes); while a flush runs and new rows fill
    /// another budget, writers wait for it (at most [`Options::max_stall`]).
    fn make_room(&self) -> Result<(), WriteError> {
        let inner = &*self.inner;
        let limit = inner.opts.memtable_bytes;
        let started = Instant::now();
        loop {
            let (total, frozen) = {
                let st = inner.read();
                (st.mem_bytes, st.frozen_bytes)
            };
            let mutable = total - frozen;
            if mutable < limit {
                return Ok(());
            }
            if !inner.opts.background || (frozen == 0 && mutable >= 2 * limit) {
                // No flusher, or it is failing or behind: flush here, reporting its error.
                return flush_once(inner).map_err(|e| match e {
                    FlushError::Stalled(d) => WriteError::Stalled(d),
                    FlushError::Poisoned(p) => WriteError::Poisoned(p),
                    e => WriteError::Flush(Box::new(e)),
                });
            }
            let mut ctl = lock(&inner.flush_ctl);
            if frozen == 0 {
                ctl.generation += 1;
                inner.flush_cv.notify_all();
                return Ok(());
            }
            // A flush is writing the frozen rows and the new ones fill a budget: wait for it.
            if let Some(p) = inner.poisoned() {
                return Err(WriteError::Poisoned(p));
            }
            let waited = started.elapsed();
            if waited >= inner.opts.max_stall {
                return Err(WriteError::Stalled(waited));
            }
            drop(
                inner
                    .flush_cv
                    .wait_timeout(ctl, Duration::from_millis(50))
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }
}

/// The flusher thread: flushes whenever the memtables' unfrozen rows fill their budget.
fn flush_loop(inner: &Arc<Inner>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        {
            let ctl = lock(&inner.flush_ctl);
            if ctl.shutdown {
                return;
            }
            let due = {
                let st = inner.read();
                let unfrozen = st.mem_bytes - st.frozen_bytes;
                let quiet = inner
                    .opts
                    .idle_flush
                    .is_some_and(|after| lock(&inner.last_write).elapsed() >= after);
                unfrozen >= inner.opts.memtable_bytes || (unfrozen > 0 && quiet)
            };
            if !due {
                drop(
                    inner
                        .flush_cv
                        .wait_timeout(ctl, Duration::from_millis(200))
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                continue;
            }
        }
        if inner.poisoned().is_some() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match flush_once(inner) {
            Ok(()) => backoff = Duration::from_millis(10),
            Err(_) if lock(&inner.flush_ctl).shutdown => return,
            Err(e) => {
                tracing::warn!("background flush failed (retrying in {backoff:?}): {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// One flush: freeze, write, commit, install.
///
/// 1. Under the manifest lock (held throughout, so no merge, index install, create or drop
///    interleaves) and briefly the `order` lock: sync the WAL, apply every queued write, take the
///    checkpoint (the next LSN) and freeze every memtable. Writers then go on, appending after
///    the frozen rows.
/// 2. Without `order` or `state` held: write the frozen live rows as new segments and each
///    dirty segment's deletion file, synced, then sync the directories.
/// 3. Commit the manifest (new segments, deletion files, checkpoint), then install under the
///    state lock: frozen rows killed during step 2 (deleted or upserted; their writes are after
///    the checkpoint, so replay re-applies them) are killed in the new segment, which stays
///    dirty; the others' keys move to it; the frozen prefix is dropped and the rows after it
///    re-pointed. A segment deleted from during step 2 stays dirty likewise.
/// 4. Truncate the WAL before the checkpoint.
fn flush_once(inner: &Inner) -> Result<(), FlushError> {
    if let Some(p) = inner.poisoned() {
        return Err(FlushError::Poisoned(p));
    }
    wait_for_background(inner)?;
    let mut store = lock(&inner.manifest);
    if let Some(p) = inner.poisoned() {
        return Err(FlushError::Poisoned(p));
    }

    // 1. Freeze.
    let checkpoint = {
        let mut order = lock(&inner.order);
        // Everything submitted becomes durable; then it is applied, in order.
        inner.wal.sync().inspect_err(|e| inner.poison(format!("WAL sync failed: {e}")))?;
        let mut st = inner.write();
        while let Some((_, op)) = order.queue.pop_front() {
            st.apply(op);
        }
        let checkpoint = inner.wal.next_lsn();
        let idle = st
            .collections
            .values()
            .all(|c| c.mem.keys.is_empty() && !c.segments.iter().any(|s| s.dirty));
        if idle && st.checkpoint == checkpoint {
            return Ok(());
        }
        let mut frozen = 0;
        for c in st.collections.values_mut() {
            frozen += c.mem.freeze().bytes;
        }
        st.frozen_bytes = frozen;
        checkpoint
    };
    let plan = {
        let st = inner.read();
        plan_flush(inner, &st)
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            thaw(inner);
            return Err(e);
        }
    };

    // 2. Write.
    let mut written: Vec<PathBuf> = Vec::new();
    let mut new_segments: Vec<(PlannedSegment, Segment)> = Vec::new();
    let result = (|| -> Result<(), FlushError> {
        for mut p in plan.segments {
            written.push(inner.path(SEGMENTS_DIR, &segment_name(p.id)));
            let keys = std::mem::take(&mut p.keys);
            let vectors = std::mem::take(&mut p.vectors);
            let seg = write_new_segment(inner, &p.arrow, p.id, &p.batches, keys, vectors)?;
            p.batches.clear();
            new_segments.push((p, seg));
        }
        for d in &plan.deletes {
            let path = inner.path(DELETES_DIR, &delete_name(d.file));
            written.push(path.clone());
            write_deletes(inner, &path, d.segment, d.rows, &d.deleted)?;
        }
        for sub in [SEGMENTS_DIR, DELETES_DIR] {
            let d = inner.dir.join(sub);
            inner.vfs.sync_dir(&d).map_err(|source| FlushError::Io { path: d, source })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in &written {
            inner.remove_quietly(p);
        }
        thaw(inner);
        return Err(e);
    }

    // 3. Commit (no state lock held: readers and writers go on during the manifest's syncs),
    // then install under the write lock.
    let metas: Vec<(u64, SegmentMeta)> =
        new_segments.iter().map(|(p, seg)| (p.collection, seg.meta.clone())).collect();
    let deletes = &plan.deletes;
    // After a commit whose outcome is unknown the new manifest may be durable (the rename
    // may have reached the disk), so the files it names stay; open removes them if it was
    // not. The database is poisoned, so the frozen rows stay frozen. A commit that failed
    // before its rename (a full disk) left the old manifest in force: the new files are
    // removed and the rows thawed, as after a failed write, and a later flush retries.
    let committed = inner.commit(&mut store, |b| {
        b.wal_checkpoint = checkpoint;
        for c in &mut b.collections {
            for (cid, m) in &metas {
                if *cid == c.id {
                    c.segments.push(m.clone());
                }
            }
            for d in deletes.iter().filter(|d| d.collection == c.id) {
                let s = c.segments.iter_mut().find(|s| s.id == d.segment).expect("segment");
                s.deletes = Some(DeleteMeta { file: d.file, count: d.deleted.len() as u64 });
            }
        }
    });
    if let Err(e) = committed {
        if !store.is_poisoned() {
            for p in &written {
                inner.remove_quietly(p);
            }
            thaw(inner);
        }
        return Err(e.into());
    }
    let mut obsolete = Vec::new();
    {
        let mut st = inner.write();
        st.checkpoint = checkpoint;
        for d in &plan.deletes {
            let c = st.by_id_mut(d.collection).expect("no drop during a flush");
            let s = c.segment_mut(d.segment);
            let meta = DeleteMeta { file: d.file, count: d.deleted.len() as u64 };
            if let Some(old) = s.meta.deletes.replace(meta) {
                obsolete.push(inner.path(DELETES_DIR, &delete_name(old.file)));
            }
            // Deleted from since the plan: the deletions are in the WAL after the checkpoint.
            s.dirty = s.deleted_count != meta.count;
        }
        for (p, mut seg) in new_segments {
            let c = st.by_id_mut(p.collection).expect("no drop during a flush");
            let mut late = 0usize;
            for (i, &r) in p.rows.iter().enumerate() {
                if c.mem.live[r as usize] {
                    let old = c.keys.insert(seg.keys[i].clone(), Loc::Seg(seg.meta.id, i as u32));
                    debug_assert_eq!(old, Some(Loc::Mem(r)));
                } else {
                    seg.kill(i as u32);
                    late += 1;
                }
            }
            if late > 0 {
                tracing::debug!("flush of {:016x}: {late} rows written meanwhile", seg.meta.id);
            }
            c.segments.push(seg);
            debug_assert!(c.segments.is_sorted_by_key(|s| s.meta.id));
        }
        let mut freed = 0;
        for c in st.collections.values_mut() {
            let moved = c.mem.frozen.rows as u32;
            freed += c.mem.drain_frozen();
            for (r, k) in c.mem.keys.iter().enumerate() {
                if c.mem.live[r] {
                    let loc = c.keys.get_mut(k).expect("a live row's key is mapped");
                    debug_assert_eq!(*loc, Loc::Mem(r as u32 + moved));
                    *loc = Loc::Mem(r as u32);
                }
            }
        }
        st.mem_bytes -= freed;
        st.frozen_bytes = 0;
    }
    drop(store);
    for p in obsolete {
        inner.remove_quietly(&p);
    }
    if let Err(e) = inner.wal.truncate_before(checkpoint) {
        tracing::warn!("WAL truncation failed (retried at the next flush): {e}");
    }
    inner.notify_work();
    lock(&inner.flush_ctl).generation += 1;
    inner.flush_cv.notify_all();
    Ok(())
}

/// What to write for the frozen rows and the dirty segments (taken under the state lock).
fn plan_flush(inner: &Inner, st: &State) -> Result<FlushPlan, FlushError> {
    let mut plan = FlushPlan { segments: Vec::new(), deletes: Vec::new() };
    for c in st.collections.values() {
        let rows = c.mem.frozen_live_rows();
        if !rows.is_empty() {
            let id = inner.alloc_id();
            let batches = c.mem.live_batches(c.mem.frozen.batches).map_err(|e| {
                segment::SegmentError::Parquet {
                    path: inner.path(SEGMENTS_DIR, &segment_name(id)),
                    reason: e.to_string(),
                }
            })?;
            let dim = c.schema.dim();
            plan.segments.push(PlannedSegment {
                collection: c.id,
                id,
                arrow: c.arrow.clone(),
                keys: rows.iter().map(|&r| c.mem.keys[r as usize].clone()).collect(),
                vectors: c.mem.select_vectors(&rows, dim),
                rows,
                batches,
            });
        }
        for s in c.segments.iter().filter(|s| s.dirty) {
            plan.deletes.push(PlannedDeletes {
                collection: c.id,
                segment: s.meta.id,
                file: inner.alloc_id(),
                rows: s.meta.rows,
                deleted: s.deleted_rows(),
            });
        }
    }
    Ok(plan)
}

/// Undoes a freeze whose flush failed before its commit: the rows are all still here.
fn thaw(inner: &Inner) {
    let mut st = inner.write();
    for c in st.collections.values_mut() {
        c.mem.frozen = Frozen::default();
    }
    st.frozen_bytes = 0;
    drop(st);
    lock(&inner.flush_ctl).generation += 1;
    inner.flush_cv.notify_all();
}

/// Backpressure: waits while more segments await an index than allowed.
fn wait_for_background(inner: &Inner) -> Result<(), FlushError> {
    if !inner.opts.background || inner.index_dir.is_none() {
        return Ok(());
    }
    let started = Instant::now();
    let mut work = lock(&inner.work);
    loop {
        let waiting = {
            let st = inner.read();
            st.collections
                .values()
                .flat_map(|c| &c.segments)
                .filter(|s| s.index.is_none() && s.meta.rows as usize >= inner.opts.min_index_rows)
                .count()
        };
        if waiting < inner.opts.max_unindexed_segments {
            return Ok(());
        }
        if let Some(e) = lock(&inner.background_failure).as_ref()
            && e.is_no_space()
        {
            return Err(FlushError::NoSpace(Arc::clone(e)));
        }
        let waited = started.elapsed();
        // The database is closing: the background thread will not build the indexes.
        if waited >= inner.opts.max_stall || work.shutdown {
            return Err(FlushError::Stalled(waited));
        }
        work = inner
            .work_cv
            .wait_timeout(work, Duration::from_millis(100))
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}

fn write_deletes(
    inner: &Inner,
    path: &Path,
    segment: u64,
    rows: u64,
    deleted: &[u32],
) -> Result<(), segment::SegmentError> {
    let bytes = segment::encode_deletes(segment, rows, deleted);
    let io = |source| segment::SegmentError::Io { path: path.to_path_buf(), source };
    let f = inner.vfs.open(path, OpenMode::CreateNew).map_err(io)?;
    f.write_all_at(&bytes, 0).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Writes a new segment file (synced; the caller syncs the directory) and its in-memory handle.
fn write_new_segment(
    inner: &Inner,
    arrow: &SchemaRef,
    id: u64,
    batches: &[RecordBatch],
    keys: Vec<Key>,
    vectors: Vec<Vectors>,
) -> Result<Segment, segment::SegmentError> {
    let path = inner.path(SEGMENTS_DIR, &segment_name(id));
    let sum = segment::write_segment(
        inner.vfs.as_ref(),
        &path,
        arrow,
        batches,
        inner.opts.row_group_rows,
        inner.opts.parquet_zstd_level,
    )?;
    open_new_segment(inner, arrow, id, sum, keys, vectors)
}

/// Opens the segment `id` just written (checksum `sum`) as a live [`Segment`] with every row
/// alive.
fn open_new_segment(
    inner: &Inner,
    arrow: &SchemaRef,
    id: u64,
    sum: FileSum,
    keys: Vec<Key>,
    vectors: Vec<Vectors>,
) -> Result<Segment, segment::SegmentError> {
    let path = inner.path(SEGMENTS_DIR, &segment_name(id));
    let rows = keys.len() as u64;
    let file = SegmentFile::open(inner.vfs.as_ref(), &path, sum, arrow, rows)?;
    Ok(Segment {
        meta: SegmentMeta { id, rows, bytes: sum.len, crc: sum.crc, deletes: None, indexed: false },
        file,
        deleted: Arc::new(RowSet::new(keys.len())),
        keys: keys.into(),
        deleted_count: 0,
        dirty: false,
        vectors: Some(vectors.into()),
        index: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Background work: index builds and merges
// ---------------------------------------------------------------------------------------------

fn background_loop(inner: &Arc<Inner>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let seen = {
            let w = lock(&inner.work);
            if w.shutdown {
                return;
            }
            w.generation
        };
        match background_step(inner) {
            Ok(true) => {
                *lock(&inner.background_failure) = None;
                backoff = Duration::from_millis(10);
                continue;
            }
            Ok(false) => *lock(&inner.background_failure) = None,
            Err(e) => {
                tracing::warn!("background work failed (retrying in {backoff:?}): {e}");
                *lock(&inner.background_failure) = Some(Arc::new(e));
                inner.work_cv.notify_all(); // a flush waiting on background work re-checks
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        }
        let w = lock(&inner.work);
        if w.shutdown {
            return;
        }
        if w.generation == seen {
            drop(inner.work_cv.wait_timeout(w, Duration::from_secs(1)));
        }
    }
}

/// Maps an error to a [`BackgroundError`] of step `what`.
fn bg<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> BackgroundError {
    let what = what.into();
    move |e| BackgroundError::new(what, e)
}

/// One unit of background work: a merge if one is due (so small segments are not indexed only
/// to be merged away), else an index build. Returns whether it did anything.
fn background_step(inner: &Inner) -> Result<bool, BackgroundError> {
    if inner.poisoned().is_some() {
        return Ok(false);
    }
    if drop_damaged_index(inner)? {
        inner.notify_work();
        return Ok(true);
    }
    if merge_one(inner)? {
        inner.notify_work();
        return Ok(true);
    }
    let done = index_one(inner)?.unwrap_or(false);
    if done {
        inner.notify_work();
    }
    Ok(done)
}

/// Takes one index a search found damaged out of service: reads its segment's vectors back
/// from Parquet (no lock held), commits a manifest that no longer calls the segment indexed,
/// installs the vectors (the segment is searched exactly from then on), and removes the index
/// directory. [`index_one`] then rebuilds it like any unindexed segment's.
fn drop_damaged_index(inner: &Inner) -> Result<bool, BackgroundError> {
    let Some((cid, sid, ix)) = lock(&inner.damaged_indexes).pop() else { return Ok(false) };
    let still_current = |st: &State| {
        st.collections.values().find(|c| c.id == cid).and_then(|c| {
            c.segment(sid)
                .filter(|s| s.index.as_ref().is_some_and(|i| Arc::ptr_eq(i, &ix)))
                .map(|s| (s.file.clone(), c.schema.clone()))
        })
    };
    let Some((file, schema)) = still_current(&inner.read()) else { return Ok(true) };
    let vectors: Arc<[Vectors]> = read_vectors(&file, &schema)
        .map_err(bg(format!("reading segment {sid:016x} back to replace its index")))?
        .into();
    let store = &mut *lock(&inner.manifest);
    if inner.poisoned().is_some() || still_current(&inner.read()).is_none() {
        return Ok(true); // merged away or dropped meanwhile: its index went with it
    }
    inner.commit(store, |b| b.set_indexed(cid, sid, false)).map_err(bg("manifest commit"))?;
    {
        let mut st = inner.write();
        let c = st.by_id_mut(cid).expect("checked under the manifest lock");
        let s = c.segment_mut(sid);
        s.meta.indexed = false;
        s.index = None;
        s.vectors = Some(vectors);
    }
    inner.remove_index_dir(sid);
    tracing::warn!(
        "segment {sid:016x}: damaged index dropped; it is searched exactly until rebuilt"
    );
    Ok(true)
}

/// Builds the index of the oldest segment that needs one.
fn index_one(inner: &Inner) -> Result<Option<bool>, BackgroundError> {
    let Some(idir) = inner.index_dir.clone() else { return Ok(None) };
    let job = {
        let st = inner.read();
        st.collections.values().find_map(|c| {
            c.segments
                .iter()
                .find(|s| s.index.is_none() && s.meta.rows as usize >= inner.opts.min_index_rows)
                .map(|s| (c.id, s.meta.clone(), c.schema.clone(), s.vectors.clone()))
        })
    };
    let Some((cid, meta, schema, vectors)) = job else { return Ok(None) };
    let sid = meta.id;
    let what = format!("index build of segment {sid:016x}");
    let vectors =
        vectors.ok_or("an unindexed segment without resident vectors").map_err(bg(what.clone()))?;
    let set = Vectors::concat(&vectors).to_vector_set(schema.dim()).map_err(bg(what.clone()))?;
    drop(vectors);
    let tmp = idir.join(format!("{}.tmp", index_name(sid)));
    let fin = idir.join(index_name(sid));
    let _ = std::fs::remove_dir_all(&tmp);
    let t = Instant::now();
    let built = crate::diskgraph::index::build_index(
        set,
        schema.metric(),
        &inner.opts.index_params,
        &tmp,
        &|_, _| {},
    )
    .map_err(bg(what.clone()))
    .and_then(|_| index_source::write(&tmp, source_of(&meta)).map_err(bg(what.clone())));
    if let Err(e) = built {
        // A failed build (ENOSPC, say) leaves nothing behind.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&fin);
    std::fs::rename(&tmp, &fin).map_err(bg(fin.display().to_string()))?;
    std::fs::File::open(&idir)
        .and_then(|d| d.sync_all())
        .map_err(bg(idir.display().to_string()))?;
    let index = DiskIndex::open(&fin, inner.opts.index_open).map_err(bg(what))?;
    tracing::info!("indexed segment {sid:016x} in {:.1} s", t.elapsed().as_secs_f64());

    let mut store = lock(&inner.manifest);
    if inner.poisoned().is_some() {
        return Ok(Some(false));
    }
    let still_there = inner
        .read()
        .collections
        .values()
        .any(|c| c.id == cid && c.segment(sid).is_some_and(|s| s.index.is_none()));
    if !still_there {
        drop(store);
        inner.remove_index_dir(sid);
        return Ok(Some(true));
    }
    inner.commit(&mut store, |b| b.set_indexed(cid, sid, true)).map_err(bg("manifest commit"))?;
    let mut st = inner.write();
    let c = st.by_id_mut(cid).expect("checked under the manifest lock");
    let s = c.segment_mut(sid);
    s.meta.indexed = true;
    s.index = Some(Arc::new(index));
    s.vectors = None;
    Ok(Some(true))
}

/// The segments of `c` to merge next, oldest first; empty if none is due. Size-tiered: segments
/// of at most [`Options::merge_max_rows`] rows fall in tiers by live rows (powers of 4); the
/// lowest tier holding [`Options::merge_min_segments`] segments is merged (at most 16 at a
/// time), so each row is rewritten about log₄(size) times. Failing that, a segment that is
/// more than a fifth deletions is rewritten alone.
fn merge_candidates<'a>(c: &'a Collection, opts: &Options) -> Vec<&'a Segment> {
    let min = opts.merge_min_segments;
    if min == 0 {
        return Vec::new();
    }
    let mut tiers: BTreeMap<u32, Vec<&Segment>> = BTreeMap::new();
    for s in c.segments.iter().filter(|s| s.meta.rows <= opts.merge_max_rows) {
        let live = (s.meta.rows - s.deleted_count).max(1);
        tiers.entry(live.ilog2() / 2).or_default().push(s);
    }
    if let Some(mut pick) = tiers.into_values().find(|t| t.len() >= min.max(2)) {
        pick.truncate(16);
        return pick;
    }
    c.segments.iter().filter(|s| s.deleted_count * 5 > s.meta.rows).take(1).collect()
}

/// One segment a merge reads, as it was when the merge began.
struct MergeInput {
    id: u64,
    file: SegmentFile,
    /// Its live rows then.
    live: Vec<u32>,
    keys: Arc<[Key]>,
    vectors: Option<Arc<[Vectors]>>,
}

impl MergeInput {
    /// Whether every row was live, so the merge copies the file's row groups as they are.
    fn whole(&self) -> bool {
        self.live.len() == self.keys.len()
    }
}

/// Merges a collection's small segments (and any with many deletions) into one, dropping deleted
/// rows. Returns whether it merged.
fn merge_one(inner: &Inner) -> Result<bool, BackgroundError> {
    // Snapshot: which segments, and which of their rows are live now.
    let job = {
        let st = inner.read();
        st.collections.values().find_map(|c| {
            let pick = merge_candidates(c, &inner.opts);
            if pick.is_empty() {
                return None;
            }
            Some((
                c.id,
                c.schema.clone(),
                c.arrow.clone(),
                pick.iter()
                    .map(|s| MergeInput {
                        id: s.meta.id,
                        file: s.file.clone(),
                        live: s.live_rows(),
                        keys: s.keys.clone(),
                        vectors: s.vectors.clone(),
                    })
                    .collect::<Vec<_>>(),
            ))
        })
    };
    let Some((cid, schema, arrow, mut inputs)) = job else { return Ok(false) };
    // Segments that lost no rows are copied row group by row group, without decoding; the
    // others are re-encoded from their live rows. Encoded rows come first in the new file.
    inputs.sort_by_key(|i| i.whole());
    let new_id = inner.alloc_id();
    let path = inner.path(SEGMENTS_DIR, &segment_name(new_id));
    let build = || -> Result<Segment, BackgroundError> {
        let mut keys = Vec::new();
        let mut vectors = Vec::new();
        let all: Vec<usize> = (0..arrow.fields().len()).collect();
        let mut w = segment::SegmentWriter::create(
            inner.vfs.as_ref(),
            &path,
            &arrow,
            inner.opts.row_group_rows,
            inner.opts.parquet_zstd_level,
        )
        .map_err(bg("merge"))?;
        for input in &inputs {
            if input.whole() {
                w.copy_row_groups(&input.file).map_err(bg("merge"))?;
                keys.extend(input.keys.iter().cloned());
                match &input.vectors {
                    Some(v) => vectors.extend(v.iter().cloned()),
                    None => {
                        vectors.extend(read_vectors(&input.file, &schema).map_err(bg("merge"))?)
                    }
                }
                continue;
            }
            for chunk in input.live.chunks(SCAN_BATCH_ROWS) {
                for b in input.file.read(&all, Some(chunk), SCAN_BATCH_ROWS).map_err(bg("merge"))? {
                    keys.extend(
                        batch::keys_of(b.column(0).as_ref(), schema.id_type(), false)
                            .map_err(bg("merge"))?,
                    );
                    vectors.push(
                        batch::vectors_of(&schema, b.column(1).as_ref()).map_err(bg("merge"))?,
                    );
                    w.write(&b).map_err(bg("merge"))?;
                }
            }
        }
        let sum = w.finish().map_err(bg("merge"))?;
        open_new_segment(inner, &arrow, new_id, sum, keys, vectors).map_err(bg("merge"))
    };
    let mut seg = match build() {
        Ok(s) => s,
        Err(e) => {
            inner.remove_quietly(&path);
            return Err(e);
        }
    };
    let d = inner.dir.join(SEGMENTS_DIR);
    inner.vfs.sync_dir(&d).map_err(bg(d.display().to_string()))?;

    let mut store = lock(&inner.manifest);
    let abandon = |why: &str| {
        tracing::info!("merge into {new_id:016x} abandoned: {why}");
        inner.remove_quietly(&path);
        Ok(false)
    };
    if inner.poisoned().is_some() {
        return abandon("the database is poisoned");
    }
    // Rows deleted since the snapshot are deleted in the new segment too.
    let input_ids: Vec<u64> = inputs.iter().map(|i| i.id).collect();
    {
        let st = inner.read();
        let Some(c) = st.collections.values().find(|c| c.id == cid) else {
            return abandon("the collection was dropped");
        };
        let mut row = 0u32;
        for input in &inputs {
            let Some(s) = c.segment(input.id) else {
                return abandon("an input segment is gone");
            };
            for &r in &input.live {
                if s.deleted.contains(r as usize) {
                    seg.kill(row);
                }
                row += 1;
            }
        }
    }
    let mut del_path = None;
    let del_meta = if seg.deleted_count > 0 {
        let file = inner.alloc_id();
        let p = inner.path(DELETES_DIR, &delete_name(file));
        if let Err(e) = write_deletes(inner, &p, new_id, seg.meta.rows, &seg.deleted_rows())
            .map_err(bg("merge"))
            .and_then(|()| {
                let dd = inner.dir.join(DELETES_DIR);
                inner.vfs.sync_dir(&dd).map_err(bg(dd.display().to_string()))
            })
        {
            inner.remove_quietly(&p);
            inner.remove_quietly(&path);
            return Err(e);
        }
        del_path = Some(p);
        Some(DeleteMeta { file, count: seg.deleted_count })
    } else {
        None
    };
    seg.meta.deletes = del_meta;
    seg.dirty = false;
    {
        let meta = seg.meta.clone();
        if let Err(e) = inner.commit(&mut store, |b| {
            let c = b.collections.iter_mut().find(|c| c.id == cid).expect("checked");
            c.segments.retain(|s| !input_ids.contains(&s.id));
            c.segments.push(meta);
            c.segments.sort_by_key(|s| s.id);
        }) {
            if !store.is_poisoned() {
                // The old manifest stands: nothing names the merged files.
                inner.remove_quietly(&path);
                if let Some(p) = &del_path {
                    inner.remove_quietly(p);
                }
            }
            return Err(bg("merge commit")(e));
        }
    }
    // Install: repoint keys, swap segments.
    let mut obsolete = Vec::new();
    {
        let mut st = inner.write();
        let c = st.by_id_mut(cid).expect("checked under the manifest lock");
        // Writers do not wait for merges: a delete or upsert applied since the deletions were
        // copied above moved its key off the input row. Such a row is dead in the new segment
        // too; the segment becomes dirty, so the next flush persists its deletion file (until
        // then the write is in the WAL after the checkpoint, and replay re-applies it).
        let mut row = 0u32;
        let mut late = 0usize;
        for input in &inputs {
            for &r in &input.live {
                if !seg.deleted.contains(row as usize) {
                    let k = &seg.keys[row as usize];
                    match c.keys.get_mut(k) {
                        Some(loc) if *loc == Loc::Seg(input.id, r) => {
                            *loc = Loc::Seg(new_id, row);
                        }
                        _ => {
                            seg.kill(row);
                            late += 1;
                        }
                    }
                }
                row += 1;
            }
        }
        if late > 0 {
            tracing::debug!("merge into {new_id:016x}: {late} rows written meanwhile");
        }
        let mut removed = Vec::new();
        c.segments.retain(|s| {
            if input_ids.contains(&s.meta.id) {
                removed.push((s.meta.id, s.meta.deletes));
                false
            } else {
                true
            }
        });
        c.segments.push(seg);
        c.segments.sort_by_key(|s| s.meta.id);
        for (sid, d) in removed {
            obsolete.push((sid, d));
        }
    }
    drop(store);
    for (sid, d) in obsolete {
        inner.remove_quietly(&inner.path(SEGMENTS_DIR, &segment_name(sid)));
        if let Some(d) = d {
            inner.remove_quietly(&inner.path(DELETES_DIR, &delete_name(d.file)));
        }
        inner.remove_index_dir(sid);
    }
    Ok(true)
}

impl Database {
    /// Runs background work (index builds, merges) on this thread until none is left. For
    /// databases opened with [`Options::background`] off, and for tests.
    ///
    /// # Errors
    /// The first failure, as text.
    pub fn run_background(&self) -> Result<(), BackgroundError> {
        while background_step(&self.inner)? {}
        Ok(())
    }

    /// Waits until background work has nothing left to do (no segment awaits an index or a
    /// merge), or `timeout` passes. Returns whether it is idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if !self.background_pending() {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            if self.worker.is_none() {
                if self.run_background().is_err() {
                    return false;
                }
                continue;
            }
            let w = lock(&self.inner.work);
            drop(self.inner.work_cv.wait_timeout(w, Duration::from_millis(50)));
        }
    }

    /// Whether some acknowledged row is not yet where searches reach it through a disk index:
    /// rows still in the in-memory table, or segments awaiting an index or a merge. (Segments
    /// below [`Options::min_index_rows`] are searched exactly by design and do not count.)
    pub fn indexing_pending(&self) -> bool {
        self.has_in_memory_rows() || self.background_pending()
    }

    /// Whether any collection has live rows in its in-memory table.
    fn has_in_memory_rows(&self) -> bool {
        self.inner.read().collections.values().any(|c| c.mem.live_count > 0)
    }

    /// Waits until every acknowledged row is reachable through a disk index (or sits in a
    /// segment too small for one): flushes the in-memory table, then waits for index builds and
    /// merges, up to `timeout`. Returns whether that was reached; a write arriving meanwhile
    /// lands in the in-memory table again, so the answer is for the rows written before.
    ///
    /// # Errors
    /// [`FlushError`] if the flush fails.
    pub fn wait_indexed(&self, timeout: Duration) -> Result<bool, FlushError> {
        let started = Instant::now();
        if self.has_in_memory_rows() {
            self.flush()?;
        }
        Ok(self.wait_idle(timeout.saturating_sub(started.elapsed())))
    }

    /// Whether background work is pending: a segment awaits its index or a merge, or an index
    /// found damaged awaits its replacement.
    pub fn background_pending(&self) -> bool {
        let inner = &*self.inner;
        if !lock(&inner.damaged_indexes).is_empty() {
            return true;
        }
        let st = inner.read();
        st.collections.values().any(|c| {
            let unindexed = inner.index_dir.is_some()
                && c.segments.iter().any(|s| {
                    s.index.is_none() && s.meta.rows as usize >= inner.opts.min_index_rows
                });
            unindexed || !merge_candidates(c, &inner.opts).is_empty()
        })
    }
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

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

/// A result candidate: distance, key, place.
#[derive(Clone, Debug)]
struct Cand {
    d: f32,
    key: Key,
    loc: Hit,
}

/// A row a read returns, resolved while the state lock was held: a flush renumbers in-memory
/// rows, so they are named by their batch instead, whose `RecordBatch` the read keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hit {
    /// Row `1` of in-memory batch `0`.
    Mem(u32, u32),
    /// Row `1` of segment `0`.
    Seg(u64, u32),
}

/// What a read needs of a segment, taken under the state lock and used after it is released
/// (no lock is held across a read's I/O). The segment's file stays readable through its open
/// handle even if a merge removes it meanwhile.
#[derive(Clone)]
struct SegmentView {
    id: u64,
    file: SegmentFile,
    keys: Arc<[Key]>,
    deleted: Arc<RowSet>,
    vectors: Option<Arc<[Vectors]>>,
    index: Option<Arc<DiskIndex>>,
}

impl Segment {
    fn view(&self) -> SegmentView {
        SegmentView {
            id: self.meta.id,
            file: self.file.clone(),
            keys: Arc::clone(&self.keys),
            deleted: Arc::clone(&self.deleted),
            vectors: self.vectors.clone(),
            index: self.index.clone(),
        }
    }
}

/// What a read needs of a collection, taken under the state lock.
struct CollectionView {
    id: u64,
    name: String,
    schema: Arc<CollectionSchema>,
    arrow: SchemaRef,
    index_failures: Arc<AtomicU64>,
}

impl Collection {
    fn view(&self) -> CollectionView {
        CollectionView {
            id: self.id,
            name: self.name.clone(),
            schema: Arc::clone(&self.schema),
            arrow: Arc::clone(&self.arrow),
            index_failures: Arc::clone(&self.index_failures),
        }
    }

    /// Where the rows at `locs` are, for a read that releases the lock: in-memory rows by batch
    /// (with those batches), segment rows by segment (with views of those segments).
    fn resolve(&self, locs: &[Loc]) -> (Vec<Hit>, ReadSources) {
        let hits: Vec<Hit> = locs
            .iter()
            .map(|l| match *l {
                Loc::Mem(r) => {
                    let (b, i) = self.mem.locs[r as usize];
                    Hit::Mem(b, i)
                }
                Loc::Seg(sid, r) => Hit::Seg(sid, r),
            })
            .collect();
        let sources = self.sources_of(&hits);
        (hits, sources)
    }

    /// The in-memory batches and segment files `hits` name.
    fn sources_of(&self, hits: &[Hit]) -> ReadSources {
        let mut sources = ReadSources::default();
        for h in hits {
            match *h {
                Hit::Mem(b, _) => {
                    sources
                        .batches
                        .entry(b)
                        .or_insert_with(|| self.mem.batches[b as usize].clone());
                }
                Hit::Seg(sid, _) => {
                    sources.files.entry(sid).or_insert_with(|| {
                        self.segment(sid).expect("a live row's segment exists").file.clone()
                    });
                }
            }
        }
        sources
    }
}

/// The in-memory batches and segment files a read takes rows from, kept past the lock.
#[derive(Default)]
struct ReadSources {
    batches: HashMap<u32, RecordBatch>,
    files: HashMap<u64, SegmentFile>,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.d.total_cmp(&o.d).then_with(|| self.key.cmp(&o.key))
    }
}

/// Keeps the `k` smallest candidates.
struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<Cand>,
}

impl TopK {
    fn push(&mut self, c: Cand) {
        if self.heap.len() < self.k {
            self.heap.push(c);
        } else if self.heap.peek().is_some_and(|w| c < *w) {
            self.heap.pop();
            self.heap.push(c);
        }
    }

    fn would_take(&self, d: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|w| d <= w.d)
    }

    /// Offers every live row of `v` by exact distance; row `i` of `v` is row `base + i` of the
    /// source whose keys are `keys`, liveness `live` and place `loc`.
    #[allow(clippy::too_many_arguments)]
    fn offer_exact(
        &mut self,
        metric: Metric,
        q: &Query,
        v: &Vectors,
        dim: usize,
        base: usize,
        keys: &[Key],
        live: impl Fn(usize) -> bool,
        loc: impl Fn(u32) -> Hit,
        scratch: &mut Vec<f32>,
    ) {
        for i in 0..v.values() / dim {
            let r = base + i;
            if live(r) {
                let d = exact_distance(metric, q, v.row(i, dim), scratch);
                if self.would_take(d) {
                    self.push(Cand { d, key: keys[r].clone(), loc: loc(r as u32) });
                }
            }
        }
    }
}

/// A query in every form a kernel may want: f32, and the stored integer type when the query's
/// values are all integers in its range (then the integer kernel gives the same distances).
/// Offers every live row of segment `s` to `top`, reading its vectors from the Parquet file:
/// the exhaustive search of an indexed segment, and the fallback when its index fails.
fn offer_segment_file(
    c: &CollectionView,
    s: &SegmentView,
    metric: Metric,
    q: &Query,
    top: &mut TopK,
    scratch: &mut Vec<f32>,
) -> Result<(), ReadError> {
    let id = s.id;
    let mut base = 0usize;
    for b in s.file.read(&[1], None, 65_536)? {
        let v = batch::vectors_of(&c.schema, b.column(0).as_ref())?;
        let live = |r: usize| !s.deleted.contains(r);
        let loc = |r: u32| Hit::Seg(id, r);
        top.offer_exact(metric, q, &v, c.schema.dim(), base, &s.keys, live, loc, scratch);
        base += b.num_rows();
    }
    Ok(())
}

struct Query {
    f: Vec<f32>,
    u8: Option<Vec<u8>>,
    i8: Option<Vec<i8>>,
}

impl Query {
    fn new(f: Vec<f32>) -> Query {
        let integral = |lo: f32, hi: f32| f.iter().all(|&x| x.fract() == 0.0 && x >= lo && x <= hi);
        let u8 = integral(0.0, 255.0).then(|| f.iter().map(|&x| x as u8).collect());
        let i8 = integral(-128.0, 127.0).then(|| f.iter().map(|&x| x as i8).collect());
        Query { f, u8, i8 }
    }

    /// The form to give a disk index of `elem`.
    fn row(&self, elem: crate::diskgraph::data::ElemType) -> Row<'_> {
        use crate::diskgraph::data::ElemType;
        match (elem, &self.u8, &self.i8) {
            (ElemType::U8, Some(q), _) => Row::U8(q),
            (ElemType::I8, _, Some(q)) => Row::I8(q),
            _ => Row::F32(&self.f),
        }
    }
}

fn exact_distance(metric: Metric, q: &Query, row: Row<'_>, scratch: &mut Vec<f32>) -> f32 {
    match (row, &q.u8, &q.i8) {
        (Row::F32(x), _, _) => distance_active(metric, Row::F32(&q.f), Row::F32(x)),
        (Row::U8(x), Some(qu), _) => distance_active(metric, Row::U8(qu), Row::U8(x)),
        (Row::I8(x), _, Some(qi)) => distance_active(metric, Row::I8(qi), Row::I8(x)),
        (other, _, _) => {
            scratch.clear();
            scratch.extend(other.to_f32());
            distance_active(metric, Row::F32(&q.f), Row::F32(scratch))
        }
    }
}

impl Database {
    /// The `params.k` live rows nearest to `query` (`dim` floats, whatever the element type), as
    /// a batch of `id`, `_distance` (squared L2, negated inner product or cosine distance; smaller
    /// is nearer) and the requested columns, nearest first. Searches the in-memory table and
    /// unindexed segments exactly and indexed segments through their disk index, skips deleted
    /// rows, and ranks by exact distance.
    ///
    /// # Errors
    /// [`ReadError`]: unknown collection or column, a bad query or parameters, or an I/O
    /// failure.
    pub fn search(
        &self,
        collection: &str,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<RecordBatch, ReadError> {
        if params.k == 0 || params.k > MAX_K {
            return Err(ReadError::Query(format!("k = {} is outside 1..={MAX_K}", params.k)));
        }
        let max_beam = crate::diskgraph::search::MAX_BEAM_WIDTH;
        if params.list_size == 0
            || params.list_size > MAX_LIST_SIZE
            || params.beam_width == 0
            || params.beam_width > max_beam
        {
            return Err(ReadError::Query(format!(
                "list size {} must be in 1..={MAX_LIST_SIZE} and beam width {} in 1..={max_beam}",
                params.list_size, params.beam_width
            )));
        }
        // Under the state lock: validation, the in-memory rows (no I/O), and views of the
        // segments. Then the segments' searches and the result's reads, with no lock held.
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::NotFound(collection.to_string()))?;
        let dim = c.schema.dim();
        if query.len() != dim {
            return Err(ReadError::Query(format!(
                "the query has {} values, the collection's vectors {dim}",
                query.len()
            )));
        }
        if let Some(v) = query.iter().find(|x| !x.is_finite()) {
            return Err(ReadError::Query(format!("the query has the non-finite value {v}")));
        }
        let metric = c.schema.metric();
        let limit = batch::max_magnitude(dim);
        if metric != Metric::Cosine
            && let Some(v) = query.iter().find(|x| x.abs() > limit)
        {
            return Err(ReadError::Query(format!(
                "the query has the value {v}, beyond the largest magnitude {limit:e} this dimension allows (larger values make squared distances overflow f32)"
            )));
        }
        let columns: Vec<usize> =
            params.columns.iter().map(|n| c.column_index(n)).collect::<Result<_, _>>()?;
        let mut q = query.to_vec();
        if metric == Metric::Cosine && !batch::normalize(&mut q) {
            return Err(ReadError::Query("a zero query has no cosine distance".into()));
        }
        let q = Query::new(q);
        let raw = Query::new(query.to_vec());
        let mut top = TopK { k: params.k, heap: std::collections::BinaryHeap::new() };
        let mut scratch = Vec::new();
        // In-memory rows.
        let mem = &c.mem;
        let mut base = 0;
        for v in &mem.vectors {
            top.offer_exact(
                metric,
                &q,
                v,
                dim,
                base,
                &mem.keys,
                |r| mem.live[r],
                |r| {
                    let (b, i) = mem.locs[r as usize];
                    Hit::Mem(b, i)
                },
                &mut scratch,
            );
            base += v.values() / dim;
        }
        let in_memory: Vec<Hit> = top.heap.iter().map(|c| c.loc).collect();
        let mut sources = c.sources_of(&in_memory);
        let segments: Vec<SegmentView> = c.segments.iter().map(Segment::view).collect();
        let c = c.view();
        drop(st);

        for s in &segments {
            let id = s.id;
            match (&s.index, &s.vectors) {
                (Some(ix), _) if !params.exact => {
                    // Deleted rows are waypoints: walked through, never returned, so a
                    // segment's deletions cost no wider search.
                    let sp = crate::diskgraph::search::SearchParams {
                        k: params.k,
                        list_size: params.list_size.max(params.k),
                        beam_width: params.beam_width,
                    };
                    let live = |label: u32| !s.deleted.contains(label as usize);
                    let mut searcher = self.inner.searcher(ix)?;
                    let found = searcher.search_accepting(
                        raw.row(c.schema.vector_type().search_elem()),
                        sp,
                        &live,
                    );
                    self.inner.return_search_state(searcher.into_state());
                    match found {
                        Ok((found, _)) => {
                            for n in found {
                                top.push(Cand {
                                    d: n.distance,
                                    key: s.keys[n.id as usize].clone(),
                                    loc: Hit::Seg(id, n.id),
                                });
                            }
                        }
                        Err(crate::diskgraph::search::SearchError::Layout(e)) => {
                            // The index is derived data: answer from the segment's Parquet
                            // file (correct, slower) and have a damaged index rebuilt.
                            self.inner.index_failed(&c, s, ix, &e);
                            offer_segment_file(&c, s, metric, &q, &mut top, &mut scratch)?;
                        }
                        Err(e) => return Err(ReadError::Index(e.to_string())),
                    }
                }
                (_, Some(chunks)) => {
                    let live = |r: usize| !s.deleted.contains(r);
                    let loc = |r: u32| Hit::Seg(id, r);
                    let mut base = 0;
                    for v in chunks.iter() {
                        top.offer_exact(metric, &q, v, dim, base, &s.keys, live, loc, &mut scratch);
                        base += v.values() / dim;
                    }
                }
                // Exhaustive search of an indexed segment: read its vectors back.
                _ => offer_segment_file(&c, s, metric, &q, &mut top, &mut scratch)?,
            }
        }
        let results = top.heap.into_sorted_vec();
        let hits: Vec<Hit> = results.iter().map(|c| c.loc).collect();
        for s in &segments {
            if hits.iter().any(|h| matches!(h, Hit::Seg(sid, _) if *sid == s.id)) {
                sources.files.entry(s.id).or_insert_with(|| s.file.clone());
            }
        }
        let mut fields = vec![
            Field::new(ID_COLUMN, c.schema.id_type().arrow_type(), false),
            Field::new(DISTANCE_COLUMN, arrow_schema::DataType::Float32, false),
        ];
        let mut arrays: Vec<ArrayRef> = vec![
            batch::keys_to_array(
                &results.iter().map(|c| c.key.clone()).collect::<Vec<_>>(),
                c.schema.id_type(),
            ),
            Arc::new(Float32Array::from_iter_values(results.iter().map(|c| c.d))),
        ];
        for (i, a) in gather(&c.arrow, &sources, &hits, &columns)?.into_iter().enumerate() {
            fields.push(c.arrow.field(columns[i]).clone());
            arrays.push(a);
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
    }

    /// The live rows with these ids (an array of the collection's id type), all columns, in the
    /// order asked; ids not present are skipped, and an id asked twice is returned once.
    ///
    /// # Errors
    /// [`ReadError`]: unknown collection, ids of the wrong type or with nulls, or an I/O failure.
    pub fn get(&self, collection: &str, ids: &dyn Array) -> Result<RecordBatch, ReadError> {
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::NotFound(collection.to_string()))?;
        let keys = batch::delete_keys(ids, c.schema.id_type())?;
        let locs: Vec<Loc> = keys.iter().filter_map(|k| c.keys.get(k).copied()).collect();
        let (hits, sources) = c.resolve(&locs);
        let arrow = c.arrow.clone();
        drop(st); // the segment reads happen without the state lock
        let all: Vec<usize> = (0..arrow.fields().len()).collect();
        Ok(RecordBatch::try_new(arrow.clone(), gather(&arrow, &sources, &hits, &all)?)?)
    }

    /// Every live row, columns `columns` (all if `None`), as a stream of batches: from segments
    /// [`SCAN_BATCH_ROWS`] rows at a time (see [`Scan::set_batch_rows`]), then the in-memory
    /// rows in the batches they were inserted in. The scan sees the collection as it was when
    /// called.
    ///
    /// # Errors
    /// [`ReadError`]: unknown collection or column. Read failures come from the iterator.
    pub fn scan(&self, collection: &str, columns: Option<&[&str]>) -> Result<Scan, ReadError> {
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::NotFound(collection.to_string()))?;
        let projection: Vec<usize> = match columns {
            Some(cols) => cols.iter().map(|n| c.column_index(n)).collect::<Result<_, _>>()?,
            None => (0..c.arrow.fields().len()).collect(),
        };
        let schema = Arc::new(c.arrow.project(&projection)?);
        let segments: VecDeque<(SegmentFile, Vec<u32>)> =
            c.segments.iter().map(|s| (s.file.clone(), s.live_rows())).collect();
        let memtable = c
            .mem
            .live_batches(c.mem.batches.len())?
            .into_iter()
            .map(|b| b.project(&projection))
            .collect::<Result<VecDeque<_>, _>>()?;
        Ok(Scan {
            schema,
            projection,
            segments,
            current: None,
            leftover: None,
            memtable,
            batch_rows: SCAN_BATCH_ROWS,
        })
    }
}

/// Columns `columns` (of `arrow`) of the rows `hits`, in that order, from `sources`. Reads
/// segment files: called with no lock held.
fn gather(
    arrow: &SchemaRef,
    sources: &ReadSources,
    hits: &[Hit],
    columns: &[usize],
) -> Result<Vec<ArrayRef>, ReadError> {
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    if hits.is_empty() {
        // No row to take (absent ids, or none asked): interleave needs at least one source.
        return Ok(columns
            .iter()
            .map(|&i| arrow_array::new_empty_array(arrow.field(i).data_type()))
            .collect());
    }
    // Sources: the in-memory batches named, then one batch per segment touched.
    let mut inputs: Vec<RecordBatch> = Vec::new();
    let mut batch_input: HashMap<u32, usize> = HashMap::new();
    for (b, rb) in &sources.batches {
        batch_input.insert(*b, inputs.len());
        inputs.push(rb.project(columns)?);
    }
    let mut by_seg: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for h in hits {
        if let Hit::Seg(s, r) = h {
            by_seg.entry(*s).or_default().push(*r);
        }
    }
    let schema = Arc::new(arrow.project(columns)?);
    let mut seg_input: HashMap<u64, (usize, Vec<u32>)> = HashMap::new();
    for (sid, mut rows) in by_seg {
        rows.sort_unstable();
        rows.dedup();
        let file = sources.files.get(&sid).expect("a read keeps the files of its rows");
        let batches = file.read(columns, Some(&rows), rows.len())?;
        let b = arrow_select::concat::concat_batches(&schema, &batches)?;
        if b.num_rows() != rows.len() {
            return Err(ReadError::Segment(segment::SegmentError::Corrupt {
                path: file.path().to_path_buf(),
                reason: format!("read {} rows, asked for {}", b.num_rows(), rows.len()),
            }));
        }
        seg_input.insert(sid, (inputs.len(), rows));
        inputs.push(b);
    }
    let indices: Vec<(usize, usize)> = hits
        .iter()
        .map(|h| match *h {
            Hit::Mem(b, i) => (batch_input[&b], i as usize),
            Hit::Seg(s, r) => {
                let (input, rows) = &seg_input[&s];
                (*input, rows.binary_search(&r).expect("row was read"))
            }
        })
        .collect();
    let mut out = Vec::with_capacity(columns.len());
    for i in 0..columns.len() {
        let arrays: Vec<&dyn Array> = inputs.iter().map(|b| b.column(i).as_ref()).collect();
        out.push(arrow_select::interleave::interleave(&arrays, &indices)?);
    }
    Ok(out)
}

/// A stream of a collection's live rows (see [`Database::scan`]).
#[derive(Debug)]
pub struct Scan {
    schema: SchemaRef,
    projection: Vec<usize>,
    segments: VecDeque<(SegmentFile, Vec<u32>)>,
    /// The segment being read: one pass over its live rows, in batches of about 1 MiB.
    current: Option<segment::SegmentBatches>,
    /// Rows read from `current` but not returned yet.
    leftover: Option<RecordBatch>,
    memtable: VecDeque<RecordBatch>,
    batch_rows: usize,
}

impl Scan {
    /// The schema of the batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Read at most `rows` rows (at least 1, at most [`MAX_SCAN_BATCH_ROWS`]) from a segment per
    /// batch from now on; the default is [`SCAN_BATCH_ROWS`]. A caller that wants its first batch
    /// quickly starts small and grows. In-memory rows come in the batches they were inserted in.
    pub fn set_batch_rows(&mut self, rows: usize) {
        self.batch_rows = rows.clamp(1, MAX_SCAN_BATCH_ROWS);
    }
}

impl Iterator for Scan {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Gather `batch_rows` rows from the segments' single-pass readers (a reader per call
        // would decode each row group again from its start for every batch).
        let want = self.batch_rows;
        let Scan { projection, segments, current, leftover, .. } = self;
        let parts = segment::gather_rows(leftover, want, |need| {
            loop {
                if current.is_none() {
                    let Some((file, live)) = segments.pop_front() else { return Ok(None) };
                    let all = live.len() as u64 == file.rows();
                    let selection = if all { None } else { Some(live.as_slice()) };
                    *current = Some(file.batches(projection, selection, MAX_SCAN_BATCH_ROWS)?);
                }
                let r = current.as_mut().expect("opened above");
                // A read that can cut batches to size does (no concatenation below).
                r.set_batch_rows(need);
                match r.next() {
                    Some(Ok(b)) => return Ok(Some(b)),
                    Some(Err(e)) => {
                        *current = None;
                        return Err(e);
                    }
                    None => *current = None,
                }
            }
        });
        let mut parts = match parts {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e.into())),
        };
        match parts.len() {
            0 => self.memtable.pop_front().map(Ok),
            1 => parts.pop().map(Ok),
            _ => Some(
                arrow_select::concat::concat_batches(&self.schema, &parts).map_err(ReadError::from),
            ),
        }
    }
}
