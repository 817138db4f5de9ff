//! Merges: size-tiered picks of a collection's segments, rewritten into one without their
//! deleted rows, while writers and readers go on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_schema::SchemaRef;
use quiver_diskgraph::data::Metric;
use quiver_diskgraph::search::DiskIndex;

use crate::batch::{self, Vectors};
use crate::error::BackgroundError;
use crate::options::Options;
use crate::schema::CollectionSchema;
use crate::segment::{self, SegmentFile};

use super::background::{Progress, io_error, too_small_for_index};
use super::body::{DeleteMeta, delete_name, segment_name};
use super::budget::{GrowAsk, build_allowance, grow_fits, merge_fits, room_to_grow};
use super::flush::{open_new_segment, write_deletes};
use super::id_file::ids_name;
use super::index_build::{GrowFrom, IndexInput};
use super::inner::{Inner, lock};
use super::install::install_segment;
use super::keys::KeysBuilder;
use super::keys::SegmentKeys;
use super::model::{Collection, GrowCodebook, Loc, Segment};
use super::open::for_each_vectors;
use super::{DELETES_DIR, SEGMENTS_DIR};

/// The segments of `c` to merge next, oldest first; empty if none is due. First a growth of the
/// collection's largest index, if due ([`absorb_pick`]); then two or more segments too small
/// for an index ([`small_pick`]). Then size-tiered: segments of at most [`Options::merge_max_rows`] rows fall in tiers by live rows (powers of 4); the
/// lowest tier holding [`Options::merge_min_segments`] segments is merged (at most 16 at a
/// time), so each row is rewritten about log₄(size) times. Failing that, a segment that is
/// more than a fifth deletions is rewritten alone. Under a memory budget, `allowance` is what
/// an index build may use ([`super::budget::build_allowance`]): a pick whose merged segment's
/// index would not fit (its growth's peak when it grows an input's index, else its rebuild's
/// plan) is cut to the most segments that fit, and dropped below two.
pub(super) fn merge_candidates<'a>(
    inner: &Inner,
    c: &'a Collection,
    allowance: Option<u64>,
) -> Vec<&'a Segment> {
    let opts: &Options = &inner.opts;
    let min = opts.merge_min_segments;
    if min == 0 {
        return Vec::new();
    }
    // Whether the merge's index fits the allowance: its growth's peak if it will grow an input's
    // index (as `grown_input` decides), else its rebuild's plan. Judging every merge as a
    // rebuild kept equal indexed segments apart for good under a tight budget (a pair grows
    // within a few MB where its rebuild plans several times that): 41 of them at 1024-d under
    // 16 MiB, each searched on its own.
    let fits = |pick: &[&Segment]| {
        let rows: usize = pick.iter().map(|s| live(s)).sum();
        let Some(a) = allowance else { return true };
        if inner.index_dir.is_none() || rows < opts.min_index_rows {
            return true;
        }
        let rebuild_fits = || merge_fits(inner, &c.schema, rows, a);
        match grown_segment(c.schema.metric(), pick, rows, opts.max_growth_share, &rebuild_fits) {
            Some((base, index)) => {
                let added = (rows - live(base)) as u64;
                grow_fits(inner, index, &ask(c, base, index, added), a)
            }
            None => merge_fits(inner, &c.schema, rows, a),
        }
    };
    if let Some(pick) = absorb_pick(inner, c, &fits) {
        return pick;
    }
    if let Some(pick) = small_pick(inner, c) {
        return pick;
    }
    let base = growth_base(inner, c).map(|b| b.meta.id);
    let mut tiers: BTreeMap<u32, Vec<&Segment>> = BTreeMap::new();
    let tiered = |s: &&Segment| s.meta.rows <= opts.merge_max_rows && Some(s.meta.id) != base;
    for s in c.segments.iter().filter(tiered) {
        tiers.entry((live(s) as u64).max(1).ilog2() / 2).or_default().push(s);
    }
    for mut pick in tiers.into_values().filter(|t| t.len() >= min.max(2)) {
        pick.truncate(16);
        while pick.len() >= 2 && !fits(&pick) {
            pick.pop();
        }
        if pick.len() >= 2 {
            return pick;
        }
    }
    c.segments.iter().filter(|s| s.deleted_count * 5 > s.meta.rows && fits(&[*s])).take(1).collect()
}

/// Segments too small for an index of their own ([`too_small_for_index`]), oldest first, as
/// soon as two of them exist: as many as it takes for the merged rows to reach
/// [`Options::min_index_rows`] (the merge then indexes them), or all of them. Not subject to
/// the budget's build allowance: the merged segment is at most `min_index_rows` rows and one
/// small segment, and its build runs over the allowance when no plan fits, as a flushed
/// segment's does ([`super::budget::build_params`]). Left to the size tiers, such segments
/// waited for `merge_min_segments` of one tier, or for good when the index of the tier's merge
/// did not fit the allowance, each holding its vectors in RAM.
fn small_pick<'a>(inner: &Inner, c: &'a Collection) -> Option<Vec<&'a Segment>> {
    let mut pick = Vec::new();
    let mut rows = 0;
    for s in c.segments.iter().filter(|s| too_small_for_index(inner, s)) {
        pick.push(s);
        rows += live(s);
        if rows >= inner.opts.min_index_rows {
            break;
        }
    }
    (pick.len() >= 2).then_some(pick)
}

/// Live rows of `s`.
fn live(s: &Segment) -> usize {
    (s.meta.rows - s.deleted_count) as usize
}

/// The segment of `c` whose index merges grow ([`quiver_diskgraph::grow`]): the indexed
/// segment with the most live rows, if at least half of its rows are live (past that, a
/// rebuild is cheaper than consolidating the deletions) and the metric allows growth (inner
/// product does not).
fn growth_base<'a>(inner: &Inner, c: &'a Collection) -> Option<&'a Segment> {
    inner.index_dir.as_ref()?;
    let metric = c.schema.metric();
    let growable =
        |s: &&Segment| grows_from(metric, s.index.is_some(), live(s), s.meta.rows as usize);
    c.segments.iter().filter(growable).max_by_key(|s| (live(s), std::cmp::Reverse(s.meta.id)))
}

/// Whether a segment can be grown from: it has an index, at least half of its `rows` are
/// `live` (past that, consolidating the deletions costs more than a rebuild), and the metric
/// is not inner product (whose stored vectors are scaled by the norms seen at build time).
fn grows_from(metric: Metric, indexed: bool, live: usize, rows: usize) -> bool {
    indexed && live * 2 >= rows && metric != Metric::InnerProduct
}

/// A merge into the collection's largest index ([`growth_base`]) of the other segments,
/// oldest first, at most [`MAX_ABSORBED`] of them; under a memory budget, no more than
/// `fits` allows. No row cap: the base grows with the collection. While the others add at
/// most [`Options::max_growth_share`] of the base's live rows, the merge grows the base's
/// index (a pass over it plus a search of it for each added row); past that it rebuilds
/// ([`growth_input`]), which then costs less, and leaves one index where there were several
/// of a size (the segments flushed while the first was being indexed).
///
/// Due once there are [`Options::merge_min_segments`]` − 1` of them (at least one), so a
/// search walks at most `merge_min_segments` graphs, and they hold at least
/// 1/[`ABSORB_MIN_FRACTION`] of the base's rows: each growth rewrites the whole base, so tiny
/// segments (an idle flush of a few rows) wait, merged among themselves by the tiers, until
/// they are worth a pass — or until [`MAX_ABSORBED`] of them are waiting. Due with half as
/// many others (two at the default of four) when they hold more rows than the base: that merge
/// is a rebuild, and a row is rebuilt at most once each time the collection doubles.
fn absorb_pick<'a>(
    inner: &Inner,
    c: &'a Collection,
    fits: &dyn Fn(&[&Segment]) -> bool,
) -> Option<Vec<&'a Segment>> {
    let base = growth_base(inner, c)?;
    let others = c.segments.iter().filter(|s| s.meta.id != base.meta.id);
    let mut pick: Vec<&Segment> = std::iter::once(base).chain(others.take(MAX_ABSORBED)).collect();
    while pick.len() >= 2 && !fits(&pick) {
        pick.pop();
    }
    let others = pick.len() - 1;
    let added: usize = pick[1..].iter().map(|s| live(s)).sum();
    let min = inner.opts.merge_min_segments;
    let enough_segments = others >= min.saturating_sub(1).max(1);
    let enough_rows = added * ABSORB_MIN_FRACTION >= live(base) || others >= MAX_ABSORBED;
    // Others that outnumber the base are rebuilt with it into one index once half as many wait
    // (two at the default): left apart, each is walked by every search.
    let outnumbered = 2 * others + 1 >= min && added > live(base);
    (enough_segments && enough_rows || outnumbered).then_some(pick)
}

/// What growing `base`'s `index` by `added` rows asks: its deleted rows dropped, and what
/// becomes of its codebook ([`Collection::growth_codebook`]).
fn ask(c: &Collection, base: &Segment, index: &DiskIndex, added: u64) -> GrowAsk {
    let rows = live(base) as u64 + added;
    GrowAsk { dropped: base.deleted_count, added, codebook: c.growth_codebook(index, rows) }
}

/// Most segments one growth absorbs.
const MAX_ABSORBED: usize = 15;
/// A growth is due once the other segments hold at least 1/this of the base's live rows.
const ABSORB_MIN_FRACTION: usize = 64;

/// One segment a merge reads, as it was when the merge began.
pub(super) struct MergeInput {
    pub(super) id: u64,
    pub(super) file: SegmentFile,
    /// Its live rows then.
    pub(super) live: Vec<u32>,
    pub(super) keys: SegmentKeys,
    /// Its slot in the collection (stable while it exists).
    pub(super) slot: u32,
    pub(super) vectors: Option<Arc<[Vectors]>>,
    /// Its disk index, if it has one.
    pub(super) index: Option<Arc<DiskIndex>>,
}

impl MergeInput {
    /// Whether every row was live and the file holds every column of the collection, so the
    /// merge copies the file's row groups as they are (a file written before columns were
    /// added is re-encoded, with nulls in them).
    pub(super) fn whole(&self) -> bool {
        self.live.len() == self.keys.len() && self.file.holds_every_column()
    }
}

/// What a merge works from, taken under a brief read lock when it begins.
struct MergeJob {
    collection: u64,
    schema: Arc<CollectionSchema>,
    arrow: SchemaRef,
    /// Whole inputs (copied row group by row group) last; see [`MergeInput::whole`].
    inputs: Vec<MergeInput>,
    /// The collection's codebook when the merge was planned: a rebuilt index is built with it.
    codebook: Option<Arc<quiver_diskgraph::pq::PqCodebook>>,
    /// The input whose index the merged segment's grows from ([`grown_input`]), and what
    /// becomes of its codebook ([`Collection::growth_codebook`]); `None`: a rebuild.
    grow: Option<(usize, GrowCodebook)>,
}

impl MergeJob {
    /// Where each row of the merged segment was copied from, in the merged segment's order.
    fn origins(&self) -> impl Iterator<Item = Loc> + '_ {
        self.inputs.iter().flat_map(|i| i.live.iter().map(move |&r| Loc::seg(i.slot, r)))
    }

    fn input_ids(&self) -> Vec<u64> {
        self.inputs.iter().map(|i| i.id).collect()
    }
}

/// Records a merge's inputs in [`Inner::merging`] while it runs.
struct Merging<'a>(&'a Inner);

impl<'a> Merging<'a> {
    fn start(inner: &'a Inner, inputs: Vec<u64>) -> Merging<'a> {
        *lock(&inner.merging) = inputs;
        Merging(inner)
    }
}

impl Drop for Merging<'_> {
    fn drop(&mut self) {
        lock(&self.0.merging).clear();
        self.0.work_cv.notify_all(); // waiters on background work look again
    }
}

/// Why a merge gave up after writing its segment (nothing to report as an error).
struct Abandoned(&'static str);

/// Merges a collection's small segments (and any with many deletions) into one, dropping
/// deleted rows.
///
/// 1. [`plan_merge`]: which segments, and which of their rows are live, under a brief read lock.
/// 2. [`write_merged`]: the new segment file, with no lock held; writers and readers go on.
///    When the merged segment is large enough for an index, its vectors stream to the index
///    build's input file rather than into memory, and its index is built before the commit:
///    searches go on using the inputs' indexes meanwhile, and the merged segment is never
///    searched exactly nor held in RAM.
/// 3. Under the manifest lock: [`carry_deletions`] made since step 1 into the new segment, and
///    write its deletion file; commit the manifest (the inputs out, the new segment in).
/// 4. [`install_segment`] under the write lock, then remove the inputs' files.
///
/// A failure or a crash before the commit leaves the inputs as they were; the new files are
/// removed at once, or by the next open's orphan sweep.
pub(super) fn merge_one(inner: &Inner) -> Result<Progress, BackgroundError> {
    let Some(job) = plan_merge(inner) else { return Ok(Progress::Idle) };
    let _span = tracing::debug_span!("merge", inputs = job.inputs.len()).entered();
    let _merging = Merging::start(inner, job.input_ids());
    let new_id = inner.alloc_id();
    let remove_segment = || {
        inner.remove_segment_files(new_id);
        inner.remove_index_dir(new_id);
    };
    let (mut seg, grown) = write_merged(inner, &job, new_id).inspect_err(|_| remove_segment())?;

    let mut store = lock(&inner.manifest);
    let prepared = match carry_deletions(inner, &job, &mut seg) {
        Ok(()) => write_merge_deletes(inner, &mut seg),
        Err(Abandoned(why)) => {
            tracing::info!("merge into {new_id:016x} abandoned: {why}");
            remove_segment();
            return Ok(Progress::Idle);
        }
    };
    let del_path = prepared.inspect_err(|_| remove_segment())?;
    let remove_new_files = || {
        remove_segment();
        if let Some(p) = &del_path {
            inner.remove_quietly(p);
        }
    };
    let input_ids = job.input_ids();
    let meta = seg.meta.clone();
    let committed = inner.commit(&mut store, |b| {
        let c = b.collections.iter_mut().find(|c| c.id == job.collection).expect("checked");
        c.segments.retain(|s| !input_ids.contains(&s.id));
        c.segments.push(meta);
        c.segments.sort_by_key(|s| s.id);
    });
    if let Err(e) = committed {
        if !store.is_poisoned() {
            remove_new_files(); // the old manifest stands: nothing names the merged files
        }
        return Err(e.into());
    }
    let installed = {
        let mut st = inner.write();
        let c = st.by_id_mut(job.collection).expect("checked under the manifest lock");
        install_segment(c, seg, job.origins(), &input_ids)
    };
    drop(store);
    inner.merges.fetch_add(1, Ordering::Relaxed);
    inner.index_grows.fetch_add(u64::from(grown), Ordering::Relaxed);
    let retrained =
        grown && job.grow.as_ref().is_some_and(|(_, c)| matches!(c, GrowCodebook::Train));
    inner.index_retrains.fetch_add(u64::from(retrained), Ordering::Relaxed);
    if installed.late > 0 {
        tracing::debug!("merge into {new_id:016x}: {} rows written meanwhile", installed.late);
    }
    for (sid, d) in installed.replaced {
        inner.remove_segment_files(sid);
        if let Some(d) = d {
            inner.remove_quietly(&inner.path(DELETES_DIR, &delete_name(d.file)));
        }
        inner.remove_index_dir(sid);
    }
    Ok(Progress::Worked)
}

/// Step 1 of a merge: the first collection with segments due, and a snapshot of those.
fn plan_merge(inner: &Inner) -> Option<MergeJob> {
    let st = inner.read();
    let allowance = build_allowance(inner, &st);
    st.collections.values().find_map(|c| {
        let pick = merge_candidates(inner, c, allowance);
        if pick.is_empty() {
            return None;
        }
        let inputs: Vec<MergeInput> = pick
            .iter()
            .map(|s| MergeInput {
                id: s.meta.id,
                file: s.file.clone(),
                live: s.live_rows(),
                keys: s.keys.clone(),
                slot: s.slot,
                vectors: s.vectors.clone(),
                index: s.index.clone(),
            })
            .collect();
        let mut inputs = inputs;
        // Segments that lost no rows are copied row group by row group, without decoding; the
        // others are re-encoded from their live rows. Encoded rows come first in the new file.
        inputs.sort_by_key(MergeInput::whole);
        let rows: usize = inputs.iter().map(|i| i.live.len()).sum();
        let rebuild_fits = || allowance.is_none_or(|a| merge_fits(inner, &c.schema, rows, a));
        let share = inner.opts.max_growth_share;
        let grow = grown_input(&c.schema, &inputs, rows, share, &rebuild_fits).map(|b| {
            let index = inputs[b].index.as_deref().expect("a grown input has an index");
            (b, c.growth_codebook(index, rows as u64))
        });
        Some(MergeJob {
            collection: c.id,
            schema: c.schema.clone(),
            arrow: c.arrow.clone(),
            codebook: c.codebook_for(rows as u64),
            inputs,
            grow,
        })
    })
}

/// Where a merge puts its rows' search vectors.
enum MergedVectors {
    /// Kept, for a merged segment searched exactly (too small for an index, or indexing off).
    Resident(Vec<Vectors>),
    /// Streamed to the merged segment's index build.
    Input(IndexInput),
}

impl MergedVectors {
    fn push(&mut self, v: Vectors) -> Result<(), BackgroundError> {
        match self {
            MergedVectors::Resident(all) => all.push(v),
            MergedVectors::Input(input) => input.push(&v)?,
        }
        Ok(())
    }
}

/// Step 2 of a merge: writes segment `new_id` from the job's live rows (synced, directory
/// too) and opens it with every row alive; if it is large enough for an index and indexing
/// is on, builds the index too (from a file its vectors streamed to), or grows it from an
/// input's ([`grown_input`]; returns whether it did). No lock is held.
fn write_merged(
    inner: &Inner,
    job: &MergeJob,
    new_id: u64,
) -> Result<(Segment, bool), BackgroundError> {
    let MergeJob { schema, arrow, inputs, .. } = job;
    let path = inner.path(SEGMENTS_DIR, &segment_name(new_id));
    let rows: usize = inputs.iter().map(|i| i.live.len()).sum();
    let index_dir = inner.index_dir.as_deref().filter(|_| rows >= inner.opts.min_index_rows);
    let grow = index_dir.and(job.grow.as_ref());
    // A grown index needs only the other inputs' vectors: the base's are in its index.
    let input_rows = rows - grow.map_or(0, |(b, _)| inputs[*b].live.len());
    let mut vectors = match index_dir {
        Some(idir) => MergedVectors::Input(IndexInput::create(idir, new_id, schema, input_rows)?),
        None => MergedVectors::Resident(Vec::new()),
    };
    let ids_path = inner.path(SEGMENTS_DIR, &ids_name(new_id));
    let mut keys =
        KeysBuilder::new(inner.vfs.as_ref(), &ids_path, schema.id_type(), rows as u64, None)?;
    let all: Vec<usize> = (0..arrow.fields().len()).collect();
    let mut w = segment::SegmentWriter::create(
        inner.vfs.as_ref(),
        &path,
        arrow,
        inner.row_group_rows(schema),
        inner.opts.parquet_zstd_level,
    )?;
    let batch_rows = inner.read_batch_rows(schema);
    for (k, input) in inputs.iter().enumerate() {
        let feed = grow.map(|(b, _)| *b) != Some(k);
        if input.whole() {
            w.copy_row_groups(&input.file)?;
            input.keys.push_all(&mut keys)?;
            match &input.vectors {
                _ if !feed => {}
                Some(v) => v.iter().cloned().try_for_each(|v| vectors.push(v))?,
                None => for_each_vectors(&input.file, schema, batch_rows, |v| vectors.push(v))?,
            }
            continue;
        }
        for chunk in input.live.chunks(batch_rows) {
            for b in input.file.read(&all, Some(chunk), batch_rows)? {
                for k in &batch::keys_of(b.column(0).as_ref(), schema.id_type())? {
                    keys.push(k)?;
                }
                if feed {
                    vectors.push(batch::vectors_of(schema, b.column(1).as_ref())?)?;
                }
                w.write(&b)?;
            }
        }
    }
    let sum = w.finish()?;
    let (resident, input) = match vectors {
        MergedVectors::Resident(all) => (Some(all.into()), None),
        MergedVectors::Input(input) => (None, Some(input)),
    };
    let mut seg = open_new_segment(inner, arrow, new_id, sum, keys, resident)?;
    let d = inner.dir.join(SEGMENTS_DIR);
    inner.vfs.sync_dir(&d).map_err(io_error(&d))?;
    if let (Some(input), Some(idir)) = (input, index_dir) {
        let index = match grow {
            Some((base, codebook)) => {
                let base = (*base, codebook);
                grow_index_of(inner, idir, &seg.meta, schema, inputs, base, input)?
            }
            None => input.build(inner, idir, &seg.meta, schema, job.codebook.as_ref())?,
        };
        seg.meta.indexed = true;
        seg.index = Some(Arc::new(index));
    }
    Ok((seg, grow.is_some()))
}

/// The input whose index the merged segment's grows from: the one [`growth_base`] would
/// choose among the inputs (most live rows, at least half of them live), as [`growth_input`]
/// decides. `None` means a rebuild.
fn grown_input(
    schema: &CollectionSchema,
    inputs: &[MergeInput],
    rows: usize,
    share: f64,
    rebuild_fits: &dyn Fn() -> bool,
) -> Option<usize> {
    let shapes = inputs.iter().map(|i| (i.index.is_some(), i.live.len(), i.keys.len()));
    growth_input(schema.metric(), shapes, rows, share, rebuild_fits)
}

/// The segment of `pick` whose index a merge of it would grow, with that index: as
/// [`grown_input`] chooses among the merge's inputs.
fn grown_segment<'a>(
    metric: Metric,
    pick: &[&'a Segment],
    rows: usize,
    share: f64,
    rebuild_fits: &dyn Fn() -> bool,
) -> Option<(&'a Segment, &'a DiskIndex)> {
    let shapes = pick.iter().map(|s| (s.index.is_some(), live(s), s.meta.rows as usize));
    let base = pick[growth_input(metric, shapes, rows, share, rebuild_fits)?];
    Some((base, base.index.as_deref().expect("growable: indexed")))
}

/// Which of a merge's inputs, each `(indexed, live rows, rows)`, its index grows from: the
/// growable one ([`grows_from`]) with the most live rows (the last of equals), if the others
/// add at most `share` of its live rows ([`Options::max_growth_share`]) to the merged `rows`;
/// past that share, a rebuild costs less and is chosen, unless it does not fit a memory
/// budget (`rebuild_fits`) while the others add no more rows than the base holds: then the
/// growth, whose peak a budget bounds by linking a chunk at a time.
fn growth_input(
    metric: Metric,
    inputs: impl Iterator<Item = (bool, usize, usize)>,
    rows: usize,
    share: f64,
    rebuild_fits: &dyn Fn() -> bool,
) -> Option<usize> {
    let (k, live) = inputs
        .enumerate()
        .filter(|&(_, (indexed, live, all))| grows_from(metric, indexed, live, all))
        .map(|(k, (_, live, _))| (k, live))
        .max_by_key(|&(_, live)| live)?;
    let added = rows.saturating_sub(live);
    let cheaper = added as f64 <= share * live as f64;
    (cheaper || added <= live && !rebuild_fits()).then_some(k)
}

/// Grows input `base`'s index into the merged segment's: the base's live rows keep their
/// order at their place in the merged file, the other inputs' rows (streamed to `input`) are
/// added under theirs; its codebook becomes what `codebook` says.
fn grow_index_of(
    inner: &Inner,
    idir: &std::path::Path,
    meta: &super::body::SegmentMeta,
    schema: &CollectionSchema,
    inputs: &[MergeInput],
    (base, codebook): (usize, &GrowCodebook),
    input: IndexInput,
) -> Result<DiskIndex, BackgroundError> {
    let (mut offset, mut base_offset, mut labels) = (0u32, 0u32, Vec::new());
    for (k, i) in inputs.iter().enumerate() {
        let n = i.live.len() as u32;
        if k == base {
            base_offset = offset;
        } else {
            labels.extend(offset..offset + n);
        }
        offset += n;
    }
    let live = &inputs[base].live;
    let relabel = |l: u32| live.binary_search(&l).ok().map(|r| base_offset + r as u32);
    let index = inputs[base].index.as_deref().expect("a grown input has an index");
    let dropped = (inputs[base].keys.len() - live.len()) as u64;
    let ask = GrowAsk { dropped, added: labels.len() as u64, codebook: codebook.clone() };
    let (chunk_rows, train_rows) = room_to_grow(inner, index, &ask);
    let (relabel, labels) = (&relabel, &labels[..]);
    let from = GrowFrom { base: index, relabel, labels, chunk_rows, codebook, train_rows };
    input.grow(inner, idir, meta, schema, from)
}

/// Step 3 of a merge, under the manifest lock: rows deleted from the inputs since the snapshot
/// are deleted in the new segment too. Gives up if the database was poisoned, or the
/// collection or an input is gone.
fn carry_deletions(inner: &Inner, job: &MergeJob, seg: &mut Segment) -> Result<(), Abandoned> {
    if inner.poisoned().is_some() {
        return Err(Abandoned("the database is poisoned"));
    }
    let st = inner.read();
    let Some(c) = st.collections.values().find(|c| c.id == job.collection) else {
        return Err(Abandoned("the collection was dropped"));
    };
    let mut row = 0u32;
    for input in &job.inputs {
        let Some(s) = c.segment(input.id) else {
            return Err(Abandoned("an input segment is gone"));
        };
        for &r in &input.live {
            if s.deleted.contains(r as usize) {
                seg.kill(row);
            }
            row += 1;
        }
    }
    Ok(())
}

/// Step 3 of a merge: writes the new segment's deletion file if it has deleted rows (synced,
/// directory too) and records it in the segment's metadata. Returns its path.
fn write_merge_deletes(
    inner: &Inner,
    seg: &mut Segment,
) -> Result<Option<PathBuf>, BackgroundError> {
    seg.dirty = false;
    if seg.deleted_count == 0 {
        return Ok(None);
    }
    let file = inner.alloc_id();
    let p = inner.path(DELETES_DIR, &delete_name(file));
    let written = write_deletes(inner, &p, seg.meta.id, seg.meta.rows, &seg.deleted_rows())
        .map_err(BackgroundError::from)
        .and_then(|()| {
            let dd = inner.dir.join(DELETES_DIR);
            inner.vfs.sync_dir(&dd).map_err(io_error(&dd))
        });
    if let Err(e) = written {
        inner.remove_quietly(&p);
        return Err(e);
    }
    seg.meta.deletes = Some(DeleteMeta { file, count: seg.deleted_count });
    Ok(Some(p))
}
