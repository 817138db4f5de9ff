//! Open and recovery: take the directory lock, load and check the manifest and every file it
//! names, scan the WAL before repairing anything, sweep orphans only once all of that agrees,
//! replay the WAL after the checkpoint, and start the background threads.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use arrow_schema::SchemaRef;

use quiver_wal::vfs::{OpenMode, Vfs};
use quiver_wal::{Wal, WalOptions};

use crate::batch::{self, Vectors, kind};
use crate::error::OpenError;
use crate::index_source;
use crate::lock::DirLock;
use crate::manifest::ManifestStore;
use crate::names::validate_collection_name;
use crate::options::Options;
use crate::rowset::RowSet;
use crate::schema::{CollectionSchema, ID_COLUMN};
use crate::segment::{self, FileSum, SegmentFile};
use quiver_diskgraph::cache::SectorCache;
use quiver_diskgraph::search::DiskIndex;

use super::background::background_loop;
use super::body::{
    BODY_FORMAT, Body, CollectionMeta, SegmentMeta, delete_name, index_name, segment_name,
};
use super::budget::fit_cache_to_budget;
use super::flush::flush_loop;
use super::id_file::ids_name;
use super::inner::{FlushCtl, Inner, Order, WAL_BUFFER_POOL, Work};
use super::keys::{KeysBuilder, KeysError};
use super::memtable::Memtable;
use super::model::{Collection, KeyMap, Op, Segment, State};
use super::pace::Pace;
use super::{DELETES_DIR, Database, INDEXES_DIR, MAX_SCAN_BATCH_ROWS, SEGMENTS_DIR, WAL_DIR};
use crate::options::budget_shares;

impl Database {
    /// Opens (creating if needed) the database in `path`: takes the directory lock, loads the
    /// manifest, opens and verifies every segment and deletion file it names, removes files it
    /// does not name (work in flight at a crash), replays the WAL after the manifest's
    /// checkpoint, and starts background work.
    ///
    /// # Errors
    /// [`OpenError`]: the directory is locked or unreadable, or a file is damaged.
    pub fn open(path: impl AsRef<Path>, mut opts: Options) -> Result<Database, OpenError> {
        if opts.index_open.sector_cache.is_none() {
            if opts.cache_from_budget {
                // Sized from the budget once the collections are loaded (fit_cache_to_budget).
                opts.index_open.sector_cache = Some(Arc::new(SectorCache::new(0)));
            } else if opts.sector_cache_bytes > 0 {
                let cache = SectorCache::new(opts.sector_cache_bytes);
                opts.index_open.sector_cache = Some(Arc::new(cache));
            }
        }
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
        // Unindexed segments that may hold their vectors in RAM; the others are searched from
        // their files until indexed.
        let mut resident = opts.max_unindexed_segments;
        for cm in &body.collections {
            validate_collection_name(&cm.name)
                .map_err(|e| OpenError::ManifestBody(format!("collection name: {e}")))?;
            let c = load_collection(&vfs, &dir, index_dir.as_deref(), &opts, cm, &mut resident)?;
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
        // Under a memory budget the pooled buffers share budget / WAL_POOL: four of at most a
        // quarter of it each (a larger record's buffer is freed, not kept).
        let wal_pool = match opts.memory_budget {
            Some(b) => (4, b / budget_shares::WAL_POOL / 4),
            None => WAL_BUFFER_POOL,
        };
        let wal_opts = WalOptions::default()
            .vfs(vfs.clone())
            .sync(opts.wal_sync)
            .segment_bytes(opts.wal_segment_bytes)
            .compression(opts.wal_compression)
            .direct_io(opts.wal_direct_io)
            .buffer_pool(wal_pool.0, wal_pool.1)
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
            let (cid, b) = batch::decode_payload(&rec.payload).map_err(|e| bad(e.to_string()))?;
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

        let pool_error = |e| OpenError::Io { path: dir.clone(), source: std::io::Error::other(e) };
        let search_pool = thread_pool("quiver-search", 0, |_| {}).map_err(pool_error)?;
        let pace = Arc::new(Pace::new(opts.background_idle, opts.background_nice));
        let build_pool = {
            let pace = Arc::clone(&pace);
            thread_pool("quiver-build", opts.background_threads, move |_| pace.enter())
                .map_err(pool_error)?
        };
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
            merging: Mutex::new(Vec::new()),
            over_budget_builds: AtomicU64::new(0),
            build_reserve: AtomicU64::new(0),
            merges: AtomicU64::new(0),
            index_grows: AtomicU64::new(0),
            label_graphs_built: AtomicU64::new(0),
            label_graph_failures: AtomicU64::new(0),
            index_retrains: AtomicU64::new(0),
            search_states: Mutex::new(Vec::new()),
            search_pool,
            build_pool,
            pace,
            last_write: Mutex::new(Instant::now()),
            _lock: lock,
            opts,
        });
        fit_cache_to_budget(&inner);
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

/// A pool of `threads` threads (0: a thread per core; at most [`MAX_POOL_THREADS`]) named
/// `{name}-{i}`, each running `start` first: the segment-search pool (`quiver-search`) and the
/// background worker's build pool (`quiver-build`, whose threads enter their scheduling class,
/// `pace.rs`).
fn thread_pool(
    name: &'static str,
    threads: usize,
    start: impl Fn(usize) + Send + Sync + 'static,
) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = if threads == 0 { cores } else { threads };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.min(MAX_POOL_THREADS))
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(start)
        .build()
}

/// The most threads each of a database's pools (segment search, background builds) has.
const MAX_POOL_THREADS: usize = 16;

pub(super) fn load_collection(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_dir: Option<&Path>,
    opts: &Options,
    cm: &CollectionMeta,
    resident: &mut usize,
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
        keys: KeyMap::for_ids(schema.id_type()),
        slots: Vec::new(),
        counters: Arc::default(),
        codebook: None,
    };
    let mut last = None;
    let mut codebooks = Vec::new();
    for sm in &cm.segments {
        if last.is_some_and(|l| l >= sm.id) {
            return Err(OpenError::ManifestBody(format!(
                "segments of {:?} are not in ascending id order",
                cm.name
            )));
        }
        last = Some(sm.id);
        let mut seg = load_segment(vfs, dir, index_dir, opts, &schema, &arrow, sm.clone())?;
        // An unindexed segment's vectors are loaded while `resident` allows (always with
        // indexing off); the others wait, cold, for the background worker, which reads them
        // back to build.
        if seg.index.is_none() && (index_dir.is_none() || *resident > 0) {
            if index_dir.is_some() {
                *resident -= 1;
            }
            seg.vectors = Some(read_vectors(&seg.file, &schema)?.into());
        }
        if let Some(index) = seg.index.as_mut() {
            let index = Arc::get_mut(index).expect("an index just opened has no other owner");
            // Indexes built with one codebook (the collection's, or one it had before) share
            // one copy of it.
            if !codebooks.iter().any(|pq| index.share_pq(pq)) {
                codebooks.push(Arc::clone(index.shared_pq()));
            }
            c.adopt_codebook(index);
        }
        seg.slot = c.take_slot(sm.id);
        for earlier in &c.segments {
            let (here, there) = (&seg.deleted, &earlier.deleted);
            let live_here = |r: u32| !here.contains(r as usize);
            let live_there = |r: u32| !there.contains(r as usize);
            if let Some(k) = seg.keys.first_shared_live(live_here, &earlier.keys, live_there)? {
                return Err(OpenError::ManifestBody(format!(
                    "id {} of collection {:?} is live in two segments",
                    batch::key_to_string(&k, schema.id_type()),
                    cm.name
                )));
            }
        }
        c.segments.push(seg);
    }
    Ok(c)
}

pub(super) fn load_segment(
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
    // The ids are read a batch at a time and hashed (string ids kept on disk, in the segment's
    // ids file, written again if it does not verify), never all held as keys.
    let ids_path = dir.join(SEGMENTS_DIR).join(ids_name(meta.id));
    let mut keys =
        KeysBuilder::new(vfs.as_ref(), &ids_path, schema.id_type(), meta.rows, Some(meta.crc))?;
    for b in file.read(&[0], None, 65_536)? {
        let batch_keys = batch::keys_of(b.column(0).as_ref(), schema.id_type())
            .map_err(|e| corrupt(e.to_string()))?;
        if (keys.len() + batch_keys.len()) as u64 > meta.rows {
            return Err(corrupt(format!("more ids than its {} rows", meta.rows)).into());
        }
        for k in &batch_keys {
            keys.push(k)?;
        }
    }
    if keys.len() as u64 != meta.rows {
        return Err(corrupt(format!("{} ids for {} rows", keys.len(), meta.rows)).into());
    }
    let mut deleted = RowSet::new(meta.rows as usize);
    let mut deleted_count = 0;
    if let Some(d) = meta.deletes {
        let p = dir.join(DELETES_DIR).join(delete_name(d.file));
        let bytes = vfs
            .open(&p, OpenMode::Read)
            .and_then(|f| f.read_to_vec())
            .map_err(|source| segment::SegmentError::Io { path: p.clone(), source })?;
        let rows = segment::decode_deletes(&bytes, meta.id, meta.rows).map_err(|e| {
            segment::SegmentError::Corrupt { path: p.clone(), reason: e.to_string() }
        })?;
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
            Some(idir) => {
                let path = idir.join(index_name(meta.id));
                match DiskIndex::open(&path, opts.index_open.clone()) {
                    Ok(ix) if ix.header().n == meta.rows => {
                        match index_source::check(&path, source_of(&meta)) {
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
                }
            }
            None => tracing::info!(
                "segment {:016x} has an index, but indexing is off here: searching it exactly",
                meta.id
            ),
        }
        if index.is_none() {
            meta.indexed = false;
        }
    }
    let keys = keys.finish(meta.crc).map_err(|e| match e {
        KeysError::Twice(k) => crate::SegmentError::Corrupt {
            path: path.clone(),
            reason: format!("id {} is in two rows", batch::key_to_string(&k, schema.id_type())),
        },
        KeysError::File(e) => e,
    })?;
    Ok(Segment {
        meta,
        file,
        keys,
        deleted: Arc::new(deleted),
        deleted_count,
        dirty: false,
        vectors: None, // the caller loads an unindexed segment's
        index,
        label_graphs: None,
        slot: u32::MAX, // given by the caller
    })
}

/// What an index built from the segment `meta` records of it.
pub(super) fn source_of(meta: &SegmentMeta) -> index_source::Source {
    index_source::Source { segment: meta.id, rows: meta.rows, bytes: meta.bytes, crc: meta.crc }
}

/// The search vectors of every row of `file`, a chunk per batch read.
pub(super) fn read_vectors(
    file: &SegmentFile,
    schema: &CollectionSchema,
) -> Result<Vec<Vectors>, segment::SegmentError> {
    let mut all = Vec::new();
    for_each_vectors(file, schema, MAX_SCAN_BATCH_ROWS, |v| {
        all.push(v);
        Ok::<(), segment::SegmentError>(())
    })?;
    Ok(all)
}

/// Hands `each` the search vectors of every row of `file`, a chunk of at most `batch_rows` rows
/// at a time, in row order; stops at its first error.
pub(super) fn for_each_vectors<E: From<segment::SegmentError>>(
    file: &SegmentFile,
    schema: &CollectionSchema,
    batch_rows: usize,
    mut each: impl FnMut(Vectors) -> Result<(), E>,
) -> Result<(), E> {
    for b in file.batches(&[1], None, batch_rows)? {
        let b = b?;
        let v = batch::vectors_of(schema, b.column(0).as_ref()).map_err(|e| {
            segment::SegmentError::Corrupt {
                path: file.path().to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        each(v)?;
    }
    Ok(())
}

/// Refuses to open a directory as a new database when `MANIFEST` is missing but data is there:
/// a manifest, once committed, is only ever replaced, never removed, so segment, deletion or
/// index files, or a WAL that has been written to, prove the manifest was lost. Opening it as
/// new would sweep those files as orphans and skip the WAL's records.
pub(super) fn refuse_if_data_without_manifest(
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

/// The segment id and whether it is a temporary file, for a label index's file name:
/// `{id:016x}.{column}.labels`, or `{id:016x}.{column}.labels.{pid}.{n}.tmp` while one is
/// written.
fn label_file_id(name: &str) -> Option<(u64, bool)> {
    let (stem, tmp) = crate::segment::label_file_stem(name)?;
    Some((hex_id(stem)?, tmp))
}

/// The id a file name's stem spells: 16 lowercase hex digits.
fn hex_id(stem: &str) -> Option<u64> {
    if stem.len() != 16 || !stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// The id in a file name this engine writes in `sub` (`{id:016x}.parquet`, `{id:016x}.ids`,
/// a label index `{id:016x}.{column}.labels` or its temporary file, `{id:016x}.del`, or
/// an index directory `{id:016x}` / `{id:016x}.tmp`), or `None` for a name it never writes.
pub(super) fn engine_file_id(sub: &str, name: &str) -> Option<u64> {
    if sub == SEGMENTS_DIR
        && let Some((id, _)) = label_file_id(name)
    {
        return Some(id);
    }
    let stem = match sub {
        SEGMENTS_DIR => name.strip_suffix(".parquet").or_else(|| name.strip_suffix(".ids"))?,
        DELETES_DIR => name.strip_suffix(".del")?,
        INDEXES_DIR => {
            name.strip_suffix(".tmp").or_else(|| name.strip_suffix(".input")).unwrap_or(name)
        }
        _ => return None,
    };
    hex_id(stem)
}

/// Removes the segment, deletion and index files that the committed manifest proves are
/// orphans: names this engine writes, with an id it allocated (every id is allocated from the
/// manifest's counter, so a file of the engine's own naming that the committed manifest does
/// not name is either one it replaced or work that was never committed). Anything else in those
/// directories is reported and left alone. Called only once the manifest, the files it names
/// and the WAL have all been checked.
pub(super) fn remove_orphans(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_dir: Option<&Path>,
    body: &Body,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut keep = std::collections::HashSet::new();
    let mut keep_index = std::collections::HashSet::new();
    let mut live = std::collections::HashSet::new();
    for c in &body.collections {
        for s in &c.segments {
            live.insert(s.id);
            keep.insert(segment_name(s.id));
            keep.insert(ids_name(s.id));
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
            // A live segment's label index is kept (its temporary files are not: a write
            // that a crash cut short).
            let live_labels = sub == SEGMENTS_DIR
                && label_file_id(&name).is_some_and(|(id, tmp)| live.contains(&id) && !tmp);
            if keep.contains(&name) || live_labels {
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
