//! Flush: freeze the memtables, write their rows as Parquet segments and pending deletions as
//! deletion files, commit the manifest, install. The flusher thread runs it when the memtables
//! fill or ingest goes quiet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use quiver_wal::Lsn;
use quiver_wal::vfs::OpenMode;

use crate::batch::{Key, Vectors};
use crate::error::FlushError;
use crate::manifest::{ManifestError, ManifestStore};
use crate::rowset::RowSet;
use crate::segment::{self, FileSum, SegmentFile};

use super::body::{DeleteMeta, SegmentMeta, delete_name, segment_name};
use super::budget::fit_cache_to_budget;
use super::id_file::ids_name;
use super::inner::{Inner, lock};
use super::install::install_segment;
use super::keys::{KeysBuilder, KeysError};
use super::memtable::Frozen;
use super::model::{Loc, Segment, State};
use super::{DELETES_DIR, Database, SEGMENTS_DIR};
use crate::schema::IdType;

/// What a flush writes, taken when it freezes the memtables.
pub(super) struct FlushPlan {
    /// Per collection with frozen rows: the new segment's id and the frozen rows it holds.
    pub(super) segments: Vec<PlannedSegment>,
    /// Per segment with deletions not yet in a deletion file: what to write.
    pub(super) deletes: Vec<PlannedDeletes>,
}

pub(super) struct PlannedSegment {
    pub(super) collection: u64,
    pub(super) id: u64,
    pub(super) arrow: SchemaRef,
    /// Rows per row group ([`Inner::row_group_rows`]).
    pub(super) row_group_rows: usize,
    /// The frozen memtable rows written, in order (segment row i is memtable row `rows[i]`).
    pub(super) rows: Vec<u32>,
    pub(super) batches: Vec<RecordBatch>,
    pub(super) keys: Vec<Key>,
    /// The collection's id kind.
    pub(super) id_type: IdType,
    pub(super) vectors: Vec<Vectors>,
}

pub(super) struct PlannedDeletes {
    pub(super) collection: u64,
    pub(super) segment: u64,
    pub(super) file: u64,
    pub(super) rows: u64,
    pub(super) deleted: Vec<u32>,
}

impl PlannedDeletes {
    /// What the manifest records of this deletion file.
    fn meta(&self) -> DeleteMeta {
        DeleteMeta { file: self.file, count: self.deleted.len() as u64 }
    }
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
}

/// The flusher thread: flushes whenever the memtables' unfrozen rows fill their budget.
pub(super) fn flush_loop(inner: &Arc<Inner>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        {
            let mut ctl = lock(&inner.flush_ctl);
            if ctl.shutdown {
                return;
            }
            let rotate = std::mem::take(&mut ctl.rotate);
            let due = {
                let st = inner.read();
                let unfrozen = st.mem_bytes - st.frozen_bytes;
                let quiet = inner
                    .opts
                    .idle_flush
                    .is_some_and(|after| lock(&inner.last_write).elapsed() >= after);
                unfrozen >= inner.opts.memtable_bytes || (unfrozen > 0 && (quiet || rotate))
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
        let result = flush_once(inner);
        lock(&inner.flush_ctl).failing = result.is_err();
        // Whatever came of it (nothing to freeze, a failure), writers waiting for room re-check.
        inner.notify_flushed();
        match result {
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
/// 1. [`freeze`]: under the manifest lock (held throughout, so no merge, index install, create
///    or drop interleaves) and briefly the `order` lock: sync the WAL, apply every queued write,
///    take the checkpoint (the next LSN) and freeze every memtable. Writers then go on,
///    appending after the frozen rows.
/// 2. [`write_flush`], without `order` or `state` held: write the frozen live rows as new
///    segments and each dirty segment's deletion file, synced, then sync the directories.
/// 3. [`commit_flush`] the manifest (new segments, deletion files, checkpoint) with no state lock
///    held, then [`install_flush`] under the state lock: the new segments take over their rows'
///    keys through [`install_segment`] (rows killed during step 2 — deleted or upserted; their
///    writes are after the checkpoint, so replay re-applies them — are killed in the new
///    segment, which stays dirty); the frozen prefix is dropped and the rows after it
///    re-pointed. A segment deleted from during step 2 stays dirty likewise.
/// 4. Truncate the WAL before the checkpoint.
pub(super) fn flush_once(inner: &Inner) -> Result<(), FlushError> {
    if let Some(p) = inner.poisoned() {
        return Err(FlushError::Poisoned(p));
    }
    let mut store = lock(&inner.manifest);
    if let Some(p) = inner.poisoned() {
        return Err(FlushError::Poisoned(p));
    }
    let Some(checkpoint) = freeze(inner)? else { return Ok(()) };
    // Writers waiting for room have it now, in a fresh table: wake them rather than leave them
    // until the frozen rows are written.
    inner.notify_flushed();
    let _span = tracing::debug_span!("flush", checkpoint).entered();
    let plan = plan_flush(inner, &inner.read()).inspect_err(|_| thaw(inner))?;
    let written = write_flush(inner, plan).inspect_err(|_| thaw(inner))?;
    if let Err(e) = commit_flush(inner, &mut store, checkpoint, &written) {
        // After a commit whose outcome is unknown the new manifest may be durable (the rename
        // may have reached the disk), so the files it names stay; open removes them if it was
        // not. The database is poisoned, so the frozen rows stay frozen. A commit that failed
        // before its rename (a full disk) left the old manifest in force: the new files are
        // removed and the rows thawed, as after a failed write, and a later flush retries.
        if !store.is_poisoned() {
            written.remove_files(inner);
            thaw(inner);
        }
        return Err(e.into());
    }
    let obsolete = install_flush(inner, checkpoint, written);
    drop(store);
    for p in obsolete {
        inner.remove_quietly(&p);
    }
    if let Err(e) = inner.wal.truncate_before(checkpoint) {
        tracing::warn!("WAL truncation failed (retried at the next flush): {e}");
    }
    fit_cache_to_budget(inner);
    inner.notify_work();
    inner.notify_flushed();
    Ok(())
}

/// Step 1 of a flush: makes every submitted write durable and applied, and freezes every
/// memtable. Returns the checkpoint (every record below it is in what the flush writes), or
/// `None` if there is nothing to flush. The caller holds the manifest lock.
fn freeze(inner: &Inner) -> Result<Option<Lsn>, FlushError> {
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
        return Ok(None);
    }
    let mut frozen = 0;
    for c in st.collections.values_mut() {
        frozen += c.mem.freeze().bytes;
    }
    st.frozen_bytes = frozen;
    Ok(Some(checkpoint))
}

/// What step 2 of a flush wrote: the new segments (each with the memtable rows it copied) and
/// the deletion files, every file synced.
struct Written {
    segments: Vec<(PlannedSegment, Segment)>,
    deletes: Vec<PlannedDeletes>,
    paths: Vec<PathBuf>,
}

impl Written {
    /// Removes every file written (the commit did not happen).
    fn remove_files(&self, inner: &Inner) {
        for p in &self.paths {
            inner.remove_quietly(p);
        }
    }
}

/// Step 2 of a flush: writes the planned segments and deletion files, synced, with no lock
/// held. On failure, removes what it wrote.
fn write_flush(inner: &Inner, plan: FlushPlan) -> Result<Written, FlushError> {
    let mut written = Written { segments: Vec::new(), deletes: Vec::new(), paths: Vec::new() };
    let result = (|| -> Result<(), FlushError> {
        for mut p in plan.segments {
            written.paths.push(inner.path(SEGMENTS_DIR, &segment_name(p.id)));
            written.paths.push(inner.path(SEGMENTS_DIR, &ids_name(p.id)));
            let keys = std::mem::take(&mut p.keys);
            let vectors = std::mem::take(&mut p.vectors);
            let seg = write_new_segment(inner, &p, keys, vectors)?;
            p.batches.clear();
            written.segments.push((p, seg));
        }
        for d in plan.deletes {
            let path = inner.path(DELETES_DIR, &delete_name(d.file));
            written.paths.push(path.clone());
            write_deletes(inner, &path, d.segment, d.rows, &d.deleted)?;
            written.deletes.push(d);
        }
        for sub in [SEGMENTS_DIR, DELETES_DIR] {
            let d = inner.dir.join(sub);
            inner.vfs.sync_dir(&d).map_err(|source| FlushError::Io { path: d, source })?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(written),
        Err(e) => {
            written.remove_files(inner);
            Err(e)
        }
    }
}

/// Step 3 of a flush, the commit: the manifest gains the new segments and deletion files and
/// moves its checkpoint. No state lock is held during its writes and syncs.
fn commit_flush(
    inner: &Inner,
    store: &mut ManifestStore,
    checkpoint: Lsn,
    written: &Written,
) -> Result<(), ManifestError> {
    inner.commit(store, |b| {
        b.wal_checkpoint = checkpoint;
        for c in &mut b.collections {
            for (p, seg) in written.segments.iter().filter(|(p, _)| p.collection == c.id) {
                debug_assert_eq!(p.id, seg.meta.id);
                c.segments.push(seg.meta.clone());
            }
            for d in written.deletes.iter().filter(|d| d.collection == c.id) {
                let s = c.segments.iter_mut().find(|s| s.id == d.segment).expect("segment");
                s.deletes = Some(d.meta());
            }
        }
    })
}

/// Step 3 of a flush, the install (after the commit), under the state lock: the deletion files
/// replace the segments' old ones, the new segments take over their rows, and the frozen
/// prefixes go. Returns the files made obsolete.
fn install_flush(inner: &Inner, checkpoint: Lsn, written: Written) -> Vec<PathBuf> {
    let mut obsolete = Vec::new();
    let mut st = inner.write();
    st.checkpoint = checkpoint;
    for d in &written.deletes {
        let c = st.by_id_mut(d.collection).expect("no drop during a flush");
        let s = c.segment_mut(d.segment);
        let meta = d.meta();
        if let Some(old) = s.meta.deletes.replace(meta) {
            obsolete.push(inner.path(DELETES_DIR, &delete_name(old.file)));
        }
        // Deleted from since the plan: the deletions are in the WAL after the checkpoint.
        s.dirty = s.deleted_count != meta.count;
    }
    for (p, mut seg) in written.segments {
        if inner.index_dir.is_some() && resident_unindexed(&st) >= inner.opts.max_unindexed_segments
        {
            // Cold: searched from its file, read back by the index build. Writers never wait
            // for background work; memory stays bounded.
            seg.vectors = None;
        }
        let c = st.by_id_mut(p.collection).expect("no drop during a flush");
        let id = seg.meta.id;
        let origins = p.rows.iter().map(|&r| Loc::mem(r));
        let outcome = install_segment(c, seg, origins, &[]);
        if outcome.late > 0 {
            tracing::debug!("flush of {id:016x}: {} rows written meanwhile", outcome.late);
        }
    }
    let mut freed = 0;
    for c in st.collections.values_mut() {
        freed += c.mem.drain_frozen();
        c.remap_table();
    }
    st.mem_bytes -= freed;
    st.frozen_bytes = 0;
    obsolete
}

/// What to write for the frozen rows and the dirty segments (taken under the state lock).
pub(super) fn plan_flush(inner: &Inner, st: &State) -> Result<FlushPlan, FlushError> {
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
                row_group_rows: inner.row_group_rows(&c.schema),
                id_type: c.schema.id_type(),
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
pub(super) fn thaw(inner: &Inner) {
    let mut st = inner.write();
    for c in st.collections.values_mut() {
        c.mem.frozen = Frozen::default();
    }
    st.frozen_bytes = 0;
    drop(st);
    inner.notify_flushed();
}

/// Unindexed segments holding their search vectors in RAM, in every collection. At most
/// [`crate::Options::max_unindexed_segments`] do, once indexing is on: a flush past that
/// installs its segment cold (searched from its file until indexed), where it used to wait for
/// index builds — and the puts behind it with it (a put waited 158 s for a build of 600k rows
/// on two cores).
pub(super) fn resident_unindexed(st: &super::model::State) -> usize {
    let held = |s: &&Segment| s.index.is_none() && s.vectors.is_some();
    st.collections.values().map(|c| c.segments.iter().filter(held).count()).sum()
}

pub(super) fn write_deletes(
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
    p: &PlannedSegment,
    keys: Vec<Key>,
    vectors: Vec<Vectors>,
) -> Result<Segment, segment::SegmentError> {
    let path = inner.path(SEGMENTS_DIR, &segment_name(p.id));
    let sum = segment::write_segment(
        inner.vfs.as_ref(),
        &path,
        &p.arrow,
        &p.batches,
        p.row_group_rows,
        inner.opts.parquet_zstd_level,
    )?;
    let ids_path = inner.path(SEGMENTS_DIR, &ids_name(p.id));
    let mut builder =
        KeysBuilder::new(inner.vfs.as_ref(), &ids_path, p.id_type, keys.len() as u64, None)?;
    for k in &keys {
        builder.push(k)?;
    }
    drop(keys);
    open_new_segment(inner, &p.arrow, p.id, sum, builder, Some(vectors.into()))
}

/// Opens the segment `id` just written (checksum `sum`) as a live [`Segment`] with every row
/// alive, holding `vectors` if it is to be searched exactly (`None`: its index comes next).
pub(super) fn open_new_segment(
    inner: &Inner,
    arrow: &SchemaRef,
    id: u64,
    sum: FileSum,
    keys: KeysBuilder,
    vectors: Option<Arc<[Vectors]>>,
) -> Result<Segment, segment::SegmentError> {
    let path = inner.path(SEGMENTS_DIR, &segment_name(id));
    let rows = keys.len() as u64;
    let file = SegmentFile::open(inner.vfs.as_ref(), &path, sum, arrow, rows)?;
    // A flush writes live rows, a merge its inputs' live rows: one row per id.
    let keys = match keys.finish(sum.crc) {
        Ok(keys) => keys,
        Err(KeysError::File(e)) => return Err(e),
        Err(KeysError::Twice(k)) => panic!("segment {id:016x}: {k:?} twice"),
    };
    Ok(Segment {
        meta: SegmentMeta { id, rows, bytes: sum.len, crc: sum.crc, deletes: None, indexed: false },
        file,
        deleted: Arc::new(RowSet::new(rows as usize)),
        keys,
        deleted_count: 0,
        dirty: false,
        vectors,
        index: None,
        label_graphs: None,
        slot: u32::MAX, // given by install_segment
    })
}
