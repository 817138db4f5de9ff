//! The background worker: replaces damaged indexes, merges segments, builds disk indexes, one
//! unit of work at a time, and the waits built on it (idle, indexed).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::Vectors;
use crate::error::{BackgroundError, FlushError};
use crate::schema::CollectionSchema;
use crate::segment::SegmentFile;
use quiver_diskgraph::search::DiskIndex;

use super::Database;
use super::body::SegmentMeta;
use super::budget::{build_allowance, fit_cache_to_budget};
use super::index_build::build_index_dir;
use super::inner::{Inner, lock};
use super::merge::{merge_candidates, merge_one};
use super::model::{Segment, State};
use super::open::read_vectors;

/// The background worker thread: runs [`background_step`] while it finds work, then sleeps
/// until notified (or a second passes). Failures are retried with backoff.
pub(super) fn background_loop(inner: &Arc<Inner>) {
    inner.pace.lower_worker();
    let mut backoff = Duration::from_millis(10);
    loop {
        let seen = {
            let w = lock(&inner.work);
            if w.shutdown {
                return;
            }
            w.generation
        };
        // Index builds and merges fan out on the low-priority pool, not rayon's global one.
        match paced_step(inner) {
            Ok(progress) => {
                *lock(&inner.background_failure) = None;
                if progress == Progress::Worked {
                    backoff = Duration::from_millis(10);
                    continue;
                }
            }
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

/// One [`background_step`] on the build pool, its threads' share of the CPU paced
/// (`pace.rs`) while it runs. A panic in the step is the worker's, as if run here.
fn paced_step(inner: &Arc<Inner>) -> Result<Progress, BackgroundError> {
    let (done, finished) = crossbeam_channel::bounded(1);
    let step = Arc::clone(inner);
    inner.build_pool.spawn(move || {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| background_step(&step)));
        let _ = done.send(result);
    });
    let mut period = inner.pace.sample();
    let result = loop {
        match finished.recv_timeout(super::pace::PACE_PERIOD) {
            Ok(result) => break result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => period = inner.pace.tick(period),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                unreachable!("the step sends its result before it ends")
            }
        }
    };
    inner.pace.step_done();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What a unit of background work did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Nothing was due (or the database is poisoned and nothing may change).
    Idle,
    /// Something was done, or found no longer needed: look for more.
    Worked,
}

/// An I/O error on `path`, as a [`BackgroundError`].
pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackgroundError + '_ {
    move |source| BackgroundError::Io { path: path.to_path_buf(), source }
}

/// One unit of background work: replacing a damaged index first, then a merge if one is due
/// (so small segments are not indexed only to be merged away), else an index build, else an
/// indexed segment's label graphs.
pub(super) fn background_step(inner: &Inner) -> Result<Progress, BackgroundError> {
    if inner.poisoned().is_some() {
        return Ok(Progress::Idle);
    }
    let step = || -> Result<Progress, BackgroundError> {
        let mut progress = drop_damaged_index(inner)?;
        if progress == Progress::Idle {
            progress = merge_one(inner)?;
        }
        if progress == Progress::Idle {
            progress = index_one(inner)?;
        }
        if progress == Progress::Idle {
            progress = super::label_graphs::label_graphs_one(inner)?;
        }
        Ok(progress)
    };
    let result = step();
    // Whatever the step built is done (or failed): the cache may have its room again.
    let reserved = inner.build_reserve.swap(0, std::sync::atomic::Ordering::Relaxed);
    let progress = result?;
    if progress == Progress::Worked || reserved > 0 {
        fit_cache_to_budget(inner);
    }
    if progress == Progress::Worked {
        inner.notify_work();
    }
    Ok(progress)
}

/// Whether segment `s` waits for a disk index: indexing is on, it has none, and it is large
/// enough to get one (smaller segments are searched exactly by design).
pub(super) fn awaits_index(inner: &Inner, s: &Segment) -> bool {
    inner.index_dir.is_some()
        && s.index.is_none()
        && s.meta.rows as usize >= inner.opts.min_index_rows
}

/// Whether segment `s` is too small for an index of its own: indexing is on, it has none, and
/// it has fewer than [`crate::Options::min_index_rows`] rows. It is searched exactly, its
/// vectors in RAM, until a merge takes it ([`super::merge::merge_candidates`] merges two or
/// more at once).
pub(super) fn too_small_for_index(inner: &Inner, s: &Segment) -> bool {
    inner.index_dir.is_some()
        && s.index.is_none()
        && (s.meta.rows as usize) < inner.opts.min_index_rows
}

/// Takes one index a search found damaged out of service: reads its segment's vectors back
/// from Parquet (no lock held), commits a manifest that no longer calls the segment indexed,
/// installs the vectors (the segment is searched exactly from then on), and removes the index
/// directory. [`index_one`] then rebuilds it like any unindexed segment's.
pub(super) fn drop_damaged_index(inner: &Inner) -> Result<Progress, BackgroundError> {
    let Some((cid, sid, ix)) = lock(&inner.damaged_indexes).pop() else {
        return Ok(Progress::Idle);
    };
    let still_current = |st: &State| {
        st.collections.values().find(|c| c.id == cid).and_then(|c| {
            c.segment(sid)
                .filter(|s| s.index.as_ref().is_some_and(|i| Arc::ptr_eq(i, &ix)))
                .map(|s| (s.file.clone(), c.schema.clone()))
        })
    };
    let Some((file, schema)) = still_current(&inner.read()) else { return Ok(Progress::Worked) };
    let vectors: Arc<[Vectors]> = read_vectors(&file, &schema)?.into();
    let store = &mut *lock(&inner.manifest);
    if inner.poisoned().is_some() || still_current(&inner.read()).is_none() {
        return Ok(Progress::Worked); // merged away or dropped meanwhile: its index went with it
    }
    inner.commit(store, |b| b.set_indexed(cid, sid, false))?;
    {
        let mut st = inner.write();
        let c = st.by_id_mut(cid).expect("checked under the manifest lock");
        let s = c.segment_mut(sid);
        s.meta.indexed = false;
        s.index = None;
        s.label_graphs = None;
        s.vectors = Some(vectors);
    }
    inner.remove_index_dir(sid);
    tracing::warn!(
        "segment {sid:016x}: damaged index dropped; it is searched exactly until rebuilt"
    );
    Ok(Progress::Worked)
}

/// The oldest segment waiting for an index, as an index build needs it.
struct IndexJob {
    collection: u64,
    meta: SegmentMeta,
    schema: Arc<CollectionSchema>,
    /// `None` for a cold segment (its vectors not held): read from its file for the build.
    vectors: Option<Arc<[Vectors]>>,
    file: SegmentFile,
    codebook: Option<Arc<quiver_diskgraph::pq::PqCodebook>>,
}

/// Builds the index of the oldest segment that needs one: [`build_index_dir`] with no lock
/// held (a cold segment's vectors read from its file first), then [`install_index`].
pub(super) fn index_one(inner: &Inner) -> Result<Progress, BackgroundError> {
    let Some(idir) = inner.index_dir.clone() else { return Ok(Progress::Idle) };
    let job = {
        let st = inner.read();
        st.collections.values().find_map(|c| {
            c.segments.iter().find(|s| awaits_index(inner, s)).map(|s| IndexJob {
                collection: c.id,
                meta: s.meta.clone(),
                schema: c.schema.clone(),
                vectors: s.vectors.clone(),
                file: s.file.clone(),
                codebook: c.codebook_for(s.meta.rows),
            })
        })
    };
    let Some(job) = job else { return Ok(Progress::Idle) };
    let _span =
        tracing::debug_span!("index_build", segment = job.meta.id, rows = job.meta.rows).entered();
    let t = Instant::now();
    let codebook = job.codebook.as_ref();
    let vectors = match job.vectors {
        Some(held) => held,
        None => read_vectors(&job.file, &job.schema)?.into(),
    };
    let index = build_index_dir(inner, &idir, &job.meta, &job.schema, vectors, codebook)?;
    let sid = job.meta.id;
    tracing::info!("indexed segment {sid:016x} in {:.1} s", t.elapsed().as_secs_f64());
    install_index(inner, job.collection, sid, index)
}

/// Commits segment `sid` as indexed and installs `index` in place of its resident vectors. If
/// the segment was merged away or dropped meanwhile, removes the index instead.
fn install_index(
    inner: &Inner,
    cid: u64,
    sid: u64,
    index: DiskIndex,
) -> Result<Progress, BackgroundError> {
    let mut store = lock(&inner.manifest);
    if inner.poisoned().is_some() {
        return Ok(Progress::Idle);
    }
    let still_there = inner
        .read()
        .collections
        .values()
        .any(|c| c.id == cid && c.segment(sid).is_some_and(|s| s.index.is_none()));
    if !still_there {
        drop(store);
        inner.remove_index_dir(sid);
        return Ok(Progress::Worked);
    }
    inner.commit(&mut store, |b| b.set_indexed(cid, sid, true))?;
    let mut st = inner.write();
    let c = st.by_id_mut(cid).expect("checked under the manifest lock");
    c.adopt_codebook(&index);
    let s = c.segment_mut(sid);
    s.meta.indexed = true;
    s.index = Some(Arc::new(index));
    s.label_graphs = None;
    s.vectors = None;
    Ok(Progress::Worked)
}

impl Database {
    /// Runs background work (index builds, merges) on this thread until none is left. For
    /// databases opened with [`Options::background`](crate::Options::background) off, and for tests.
    ///
    /// # Errors
    /// The first failure.
    pub fn run_background(&self) -> Result<(), BackgroundError> {
        while background_step(&self.inner)? == Progress::Worked {}
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
    /// below [`Options::min_index_rows`](crate::Options::min_index_rows) are searched exactly by design and do not count.)
    pub fn indexing_pending(&self) -> bool {
        self.has_in_memory_rows() || self.background_pending()
    }

    /// Whether any collection has live rows in its in-memory table.
    pub(super) fn has_in_memory_rows(&self) -> bool {
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

    /// The background worker's last failure, while it lasts: set when a unit of work (an index
    /// build, a merge) fails, cleared when one succeeds, and `None` once no work is pending.
    /// The worker retries with backoff meanwhile; a wait for indexing that times out can say
    /// why.
    #[must_use]
    pub fn background_error(&self) -> Option<Arc<BackgroundError>> {
        let failure = lock(&self.inner.background_failure).clone()?;
        self.background_pending().then_some(failure)
    }

    /// What the background worker has done since open.
    #[must_use]
    pub fn background_stats(&self) -> BackgroundStats {
        let inner = &*self.inner;
        BackgroundStats {
            merges: inner.merges.load(std::sync::atomic::Ordering::Relaxed),
            index_grows: inner.index_grows.load(std::sync::atomic::Ordering::Relaxed),
            index_retrains: inner.index_retrains.load(std::sync::atomic::Ordering::Relaxed),
            idle_class: inner.pace.uses_idle_class(),
            paced_raises: inner.pace.raises(),
            label_graphs_built: inner.label_graphs_built.load(std::sync::atomic::Ordering::Relaxed),
            label_graph_failures: inner
                .label_graph_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether background work is pending: a segment awaits its index or a merge, or an index
    /// found damaged awaits its replacement.
    pub fn background_pending(&self) -> bool {
        let inner = &*self.inner;
        if !lock(&inner.damaged_indexes).is_empty() || super::label_graphs::graphs_pending(inner) {
            return true;
        }
        let st = inner.read();
        let allowance = build_allowance(inner, &st);
        st.collections.values().any(|c| {
            c.segments.iter().any(|s| awaits_index(inner, s))
                || !merge_candidates(inner, c, allowance).is_empty()
        })
    }
}

/// What the background worker has done since the database opened ([`Database::background_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackgroundStats {
    /// Merges committed.
    pub merges: u64,
    /// Of those, merges whose index was grown from their largest input's index (rows dropped
    /// and added in a pass over it) instead of rebuilt.
    pub index_grows: u64,
    /// Of those, growths that trained the grown index a new PQ codebook on a sample of its rows
    /// (the collection's codebook had been trained on too few of them), which the collection
    /// then adopts.
    pub index_retrains: u64,
    /// Whether the build threads run in the idle scheduling class
    /// ([`Options::background_idle`](crate::Options::background_idle), where the process may).
    pub idle_class: bool,
    /// Half-second periods the build threads ran in the normal class because the idle class
    /// got them less than a quarter of a core (searches saturating the cores).
    pub paced_raises: u64,
    /// Label graphs built (not those reopened from disk): one per value of a declared label
    /// column with enough rows in an indexed segment
    /// ([`CollectionSchema::with_label_graph`](crate::CollectionSchema::with_label_graph)).
    pub label_graphs_built: u64,
    /// Columns whose label graphs could not be made in a segment (the reason is logged; the
    /// segment is searched the other ways).
    pub label_graph_failures: u64,
}
