//! Nearest-neighbour search over every source of a collection: the memtable and unindexed
//! segments exactly, indexed segments through their disk index, ranked by exact distance.
//!
//! A search runs in four steps:
//!
//! 1. [`prepare_query`]: the query is validated and normalised once, in one place, and every
//!    source is searched with the same [`PreparedQuery`].
//! 2. Under a brief read lock: the in-memory rows are searched (no I/O), and views of the
//!    segments taken.
//! 3. With no lock held: every segment is searched ([`search_segment`]) for its own `k` best.
//!    The largest index walk and the exact scans run on the calling thread; further index walks
//!    run beside them on the database's search pool ([`search_segments`]).
//! 4. The candidates are merged, and the result's columns gathered.
//!
//! A filter ([`SearchParams::filter`]) is applied as candidates enter a top-k: in-memory rows
//! and exactly searched segments are masked before their distances are taken; an index walk
//! keeps deleted rows as waypoints and hands back its ranked list, whose rows are then checked
//! against the filter, widening that segment's walk alone while too few pass.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, RecordBatch};
use arrow_schema::{Field, Schema};
use rayon::prelude::*;

use crate::batch::{self, Key, Vectors};
use crate::error::{QueryError, ReadError};
use crate::filter::{Filter, Predicate};
use crate::rowset::RowSet;
use crate::schema::{CollectionSchema, DISTANCE_COLUMN, ID_COLUMN};
use crate::segment::SegmentError;
use quiver_diskgraph::data::{ElemType, Metric, Row, distance_active};
use quiver_diskgraph::layout::LayoutError;
use quiver_diskgraph::search::{
    DiskIndex, MAX_BEAM_WIDTH, Neighbour, SearchError, SearchState, Searcher,
};

use super::inner::Inner;
use super::label_graphs::{label_graph_for, label_search};
use super::model::Segment;
use super::read::{CollectionView, Hit, SegmentView, gather};
use super::{Database, MAX_BATCH_QUERIES, MAX_K, MAX_LIST_SIZE};

/// Search parameters. `Default`: k = 10, list size 100, beam width 4, approximate, no extra
/// columns, no filter.
#[derive(Clone, Debug)]
pub struct SearchParams {
    /// Results wanted (1..=[`MAX_K`]).
    pub k: usize,
    /// The disk index's candidate list size `L` (raised to `k` if smaller).
    pub list_size: usize,
    /// The disk index's beam width `W`: reads kept in flight per search
    /// (1..=[`MAX_BEAM_WIDTH`](quiver_diskgraph::search::MAX_BEAM_WIDTH)).
    pub beam_width: usize,
    /// Exhaustive search: every live row's exact distance, ignoring the indexes (slow; for
    /// ground truth and tests).
    pub exact: bool,
    /// Columns returned besides `id` and `_distance` (attributes or `vector`).
    pub columns: Vec<String>,
    /// Only rows for which this holds are returned.
    pub filter: Option<Predicate>,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            k: 10,
            list_size: 100,
            beam_width: 4,
            exact: false,
            columns: Vec::new(),
            filter: None,
        }
    }
}

/// A result candidate: distance, key, place.
#[derive(Clone, Debug)]
pub(super) struct Cand {
    pub(super) d: f32,
    pub(super) key: Key,
    pub(super) loc: Hit,
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
pub(super) struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<Cand>,
}

impl TopK {
    pub(super) fn new(k: usize) -> TopK {
        TopK { k, heap: std::collections::BinaryHeap::with_capacity(k + 1) }
    }

    pub(super) fn push(&mut self, c: Cand) {
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

    pub(super) fn into_sorted_vec(self) -> Vec<Cand> {
        self.heap.into_sorted_vec()
    }

    /// Offers every row `r` of `v` for which `pass(base + r)` holds, by exact distance; row `i`
    /// of `v` is row `base + i` of the source whose keys are `keys` and places `loc`.
    #[allow(clippy::too_many_arguments)]
    fn offer_exact(
        &mut self,
        q: &PreparedQuery,
        v: &Vectors,
        base: usize,
        key: impl Fn(usize) -> Result<Key, SegmentError>,
        pass: impl Fn(usize) -> bool,
        loc: impl Fn(u32) -> Hit,
        scratch: &mut Vec<f32>,
    ) -> Result<(), SegmentError> {
        for i in 0..v.values() / q.dim {
            let r = base + i;
            if pass(r) {
                let d = q.exact_distance(v.row(i, q.dim), v.scale(i), scratch);
                if self.would_take(d) {
                    self.push(Cand { d, key: key(r)?, loc: loc(r as u32) });
                }
            }
        }
        Ok(())
    }
}

/// A query in every form a kernel may want: f32, and the stored integer type when the query's
/// values are all integers in its range (then the integer kernel gives the same distances).
struct Forms {
    f: Vec<f32>,
    u8: Option<Vec<u8>>,
    i8: Option<Vec<i8>>,
}

impl Forms {
    fn new(f: Vec<f32>) -> Forms {
        let integral = |lo: f32, hi: f32| f.iter().all(|&x| x.fract() == 0.0 && x >= lo && x <= hi);
        let u8 = integral(0.0, 255.0).then(|| f.iter().map(|&x| x as u8).collect());
        let i8 = integral(-128.0, 127.0).then(|| f.iter().map(|&x| x as i8).collect());
        Forms { f, u8, i8 }
    }

    /// The form to give a disk index of `elem`.
    fn row(&self, elem: ElemType) -> Row<'_> {
        match (elem, &self.u8, &self.i8) {
            (ElemType::U8, Some(q), _) => Row::U8(q),
            (ElemType::I8, _, Some(q)) => Row::I8(q),
            _ => Row::F32(&self.f),
        }
    }
}

/// A query validated once and prepared for every source. Exact distances are taken against
/// `exact` (for cosine, the query at unit length); disk indexes take `as_given` and normalise it
/// with the same function ([`unit_length`](quiver_diskgraph::data::unit_length)), so every
/// source ranks against the same bits.
pub(super) struct PreparedQuery {
    metric: Metric,
    dim: usize,
    as_given: Forms,
    exact: Forms,
}

impl PreparedQuery {
    /// The query as a disk index of element type `elem` takes it.
    pub(super) fn index_row(&self, elem: ElemType) -> Row<'_> {
        self.as_given.row(elem)
    }

    /// The distance from the query to `row`, whose own length is `1 / scale` under cosine (rows
    /// are kept as given; the query is at unit length): `1 − q·row · scale`. Other metrics take
    /// `scale` = 1 and ignore it.
    fn exact_distance(&self, row: Row<'_>, scale: f32, scratch: &mut Vec<f32>) -> f32 {
        let (metric, q) = (self.metric, &self.exact);
        if let (Metric::Cosine, Row::F32(x)) = (metric, row) {
            // -q·x from the inner-product kernel, then scaled: the same bits as `1 − q·x̂`
            // when the row is already at unit length (scale 1).
            return 1.0
                + distance_active(Metric::InnerProduct, Row::F32(&q.f), Row::F32(x)) * scale;
        }
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
}

/// Checks `query` against the collection and prepares it: the one place a query is validated
/// and normalised.
///
/// # Errors
/// [`ReadError::Query`]: the wrong dimension, a non-finite value, a value so large squared
/// distances overflow, or a zero query for cosine.
pub(super) fn prepare_query(
    schema: &CollectionSchema,
    query: &[f32],
) -> Result<PreparedQuery, ReadError> {
    let dim = schema.dim();
    if query.len() != dim {
        return Err(QueryError::Dimension { expected: dim, got: query.len() }.into());
    }
    if let Some(v) = query.iter().find(|x| !x.is_finite()) {
        return Err(QueryError::NonFinite(*v).into());
    }
    let metric = schema.metric();
    let limit = batch::max_magnitude(dim);
    if metric != Metric::Cosine
        && let Some(v) = query.iter().find(|x| x.abs() > limit)
    {
        return Err(QueryError::Magnitude { value: *v, limit }.into());
    }
    let mut unit = query.to_vec();
    if metric == Metric::Cosine && !batch::normalize(&mut unit) {
        return Err(QueryError::ZeroCosine.into());
    }
    Ok(PreparedQuery { metric, dim, as_given: Forms::new(query.to_vec()), exact: Forms::new(unit) })
}

/// Checks the parameters that do not depend on the collection.
fn check_params(params: &SearchParams) -> Result<(), ReadError> {
    if params.k == 0 || params.k > MAX_K {
        return Err(QueryError::K(params.k).into());
    }
    if params.list_size == 0
        || params.list_size > MAX_LIST_SIZE
        || params.beam_width == 0
        || params.beam_width > MAX_BEAM_WIDTH
    {
        let (list_size, beam_width) = (params.list_size, params.beam_width);
        return Err(QueryError::Walk { list_size, beam_width }.into());
    }
    Ok(())
}

/// What one search works with after the state lock is released.
struct Snapshot {
    collection: CollectionView,
    query: PreparedQuery,
    filter: Option<Filter>,
    /// Result columns (indices in the collection's schema).
    columns: Vec<usize>,
    segments: Vec<SegmentView>,
    /// The in-memory rows' best candidates, and the batches they are in.
    top: TopK,
    sources: super::read::ReadSources,
}

impl Database {
    /// The `params.k` live rows nearest to `query` (`dim` floats, whatever the element type)
    /// that pass `params.filter`, as a batch of `id`, `_distance` (squared L2, negated inner
    /// product or cosine distance; smaller is nearer) and the requested columns, nearest first.
    /// Searches the in-memory table and unindexed segments exactly and indexed segments through
    /// their disk index (in parallel when there are several), skips deleted rows, and ranks by
    /// exact distance.
    ///
    /// # Errors
    /// [`ReadError`]: unknown collection or column, a bad query, filter or parameters, or an
    /// I/O failure.
    pub fn search(
        &self,
        collection: &str,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<RecordBatch, ReadError> {
        check_params(params)?;
        let span = tracing::debug_span!(
            "search",
            collection,
            k = params.k,
            ranked_across = tracing::field::Empty
        );
        let _entered = span.enter();
        let Snapshot { collection: c, query: q, filter, columns, segments, mut top, mut sources } =
            self.snapshot_for_search(collection, query, params)?;
        c.counters.searches.fetch_add(1, Ordering::Relaxed);
        let search = |s: &SegmentView| {
            // Segments may be searched on the search pool's threads: name the parent.
            let _segment = tracing::debug_span!(
                parent: &span,
                "segment",
                id = s.id,
                indexed = s.index.is_some(),
                reads = tracing::field::Empty,
                plan = tracing::field::Empty
            )
            .entered();
            search_segment(&self.inner, &c, s, &q, params, &filter)
        };
        let (ranked, done) = match &filter {
            Some(f) if !params.exact => rank_across(&self.inner, &c, &segments, &q, params, f)?,
            _ => (Vec::new(), Vec::new()),
        };
        for cand in ranked {
            top.push(cand);
        }
        // The ranked segments are done; the others are searched one by one (every segment
        // stays in `segments`: the hits of both need their files below).
        let unranked: Vec<SegmentView>;
        let rest = if done.is_empty() {
            &segments[..]
        } else {
            unranked = segments.iter().filter(|s| !done.contains(&s.id)).cloned().collect();
            &unranked[..]
        };
        let found = search_segments(
            &self.inner.search_pool,
            rest,
            |s| s.index.is_some() && !params.exact,
            |s| s.keys.len(),
            search,
        )?;
        for cand in found.into_iter().flatten() {
            top.push(cand);
        }
        let results = top.into_sorted_vec();
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
        let keys: Vec<Key> = results.iter().map(|c| c.key.clone()).collect();
        let mut arrays: Vec<ArrayRef> = vec![
            batch::keys_to_array(&keys, c.schema.id_type()),
            Arc::new(Float32Array::from_iter_values(results.iter().map(|c| c.d))),
        ];
        for (i, a) in gather(&c.arrow, &sources, &hits, &columns)?.into_iter().enumerate() {
            fields.push(c.arrow.field(columns[i]).clone());
            arrays.push(a);
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
    }

    /// [`search`](Database::search) for each of `queries` with the same `params`, the queries
    /// spread over the database's search pool (a thread per core): a batch of queries keeps
    /// every core busy from one calling thread, and pays a caller's per-call costs (a network
    /// round trip, a request's decoding) once. Results are in the order of `queries`, each
    /// query's own: a bad query fails alone. At most [`MAX_BATCH_QUERIES`] queries.
    ///
    /// # Errors
    /// The outer [`ReadError::Query`] when the batch is empty or larger than
    /// [`MAX_BATCH_QUERIES`], or `params` are out of range; each query's as in
    /// [`search`](Database::search).
    pub fn search_batch<Q: AsRef<[f32]> + Sync>(
        &self,
        collection: &str,
        queries: &[Q],
        params: &SearchParams,
    ) -> Result<Vec<Result<RecordBatch, ReadError>>, ReadError> {
        if queries.is_empty() || queries.len() > MAX_BATCH_QUERIES {
            return Err(QueryError::BatchSize(queries.len()).into());
        }
        check_params(params)?;
        let search = |q: &Q| self.search(collection, q.as_ref(), params);
        if queries.len() == 1 {
            return Ok(vec![search(&queries[0])]);
        }
        Ok(self.inner.search_pool.install(|| queries.par_iter().map(search).collect()))
    }

    /// Step 2 of a search, under the state's read lock: resolves the collection, prepares the
    /// query and filter, searches the in-memory rows (no I/O) and takes views of the segments.
    fn snapshot_for_search(
        &self,
        collection: &str,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Snapshot, ReadError> {
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::NotFound(collection.to_string()))?;
        let q = prepare_query(&c.schema, query)?;
        let columns: Vec<usize> =
            params.columns.iter().map(|n| c.column_index(n)).collect::<Result<_, _>>()?;
        let filter = params.filter.as_ref().map(|p| Filter::compile(p, &c.arrow)).transpose()?;
        let mut top = TopK::new(params.k);
        let mut scratch = Vec::new();
        let mem = &c.mem;
        let mut base = 0;
        for (b, v) in mem.vectors.iter().enumerate() {
            let passed = match &filter {
                Some(f) => Some(f.evaluate(&mem.batches[b].project(f.columns())?)?),
                None => None,
            };
            let pass = |r: usize| mem.live[r] && passed.as_ref().is_none_or(|m| m.value(r - base));
            let loc = |r: u32| {
                let (b, i) = mem.locs[r as usize];
                Hit::Mem(b, i)
            };
            let key = |r: usize| Ok(mem.keys[r].clone());
            top.offer_exact(&q, v, base, key, pass, loc, &mut scratch)?;
            base += v.values() / q.dim;
        }
        let in_memory: Vec<Hit> = top.heap.iter().map(|c| c.loc).collect();
        let sources = c.sources_of(&in_memory);
        let segments: Vec<SegmentView> = c.segments.iter().map(Segment::view).collect();
        Ok(Snapshot { collection: c.view(), query: q, filter, columns, segments, top, sources })
    }
}

/// Step 3's schedule: `search` once per segment, in no particular order. Only index walks
/// (`walks`) wait on I/O, so only they go to the search `pool`, and only from the second on:
/// the largest walk (by `rows`) and every exact scan (in-memory vectors, CPU only) run on the
/// calling thread. A query over one indexed segment beside small unindexed ones never waits
/// for a pool thread, which busy cores may not give it for milliseconds.
fn search_segments<S: Sync, R: Send, E: Send>(
    pool: &rayon::ThreadPool,
    segments: &[S],
    walks: impl Fn(&S) -> bool,
    rows: impl Fn(&S) -> usize,
    search: impl Fn(&S) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let mut walked: Vec<&S> = segments.iter().filter(|s| walks(s)).collect();
    walked.sort_by_key(|s| std::cmp::Reverse(rows(s)));
    let here = |first: Option<&S>| -> Result<Vec<R>, E> {
        let scans = segments.iter().filter(|s| !walks(s));
        first.into_iter().chain(scans).map(&search).collect()
    };
    match walked.split_first() {
        None => here(None),
        Some((largest, [])) => here(Some(largest)),
        Some((largest, others)) => {
            let mut on_pool = Ok(Vec::new());
            let mut on_caller = Ok(Vec::new());
            pool.in_place_scope(|scope| {
                let (pool_slot, search) = (&mut on_pool, &search);
                scope.spawn(move |_| *pool_slot = others.par_iter().map(|s| search(s)).collect());
                on_caller = here(Some(largest));
            });
            let mut found = on_caller?;
            found.extend(on_pool?);
            Ok(found)
        }
    }
}

/// Step 3 of a search: the `params.k` best rows of segment `s` that are live and pass
/// `filter`. No lock is held.
fn search_segment(
    inner: &Inner,
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    params: &SearchParams,
    filter: &Option<Filter>,
) -> Result<Vec<Cand>, ReadError> {
    let mut top = TopK::new(params.k);
    let mut scratch = Vec::new();
    match (&s.index, &s.vectors) {
        (Some(_), _) if !params.exact => {
            return walk_segment(inner, c, s, q, params, filter.as_ref());
        }
        (_, Some(chunks)) => {
            let passed = filter.as_ref().map(|f| segment_mask(c, s, f)).transpose()?;
            let pass = |r: usize| {
                !s.deleted.contains(r) && passed.as_ref().is_none_or(|m: &BooleanArray| m.value(r))
            };
            let loc = |r: u32| Hit::Seg(s.id, r);
            let mut base = 0;
            for v in chunks.iter() {
                top.offer_exact(q, v, base, |r| s.keys.key(r), pass, loc, &mut scratch)?;
                base += v.values() / q.dim;
            }
        }
        // Exhaustive search of an indexed segment: read its vectors back.
        _ => offer_segment_file(c, s, q, filter.as_ref(), &mut top)?,
    }
    Ok(top.into_sorted_vec())
}

/// Searches segment `s` through its disk index. Deleted rows are waypoints: walked through,
/// never returned, so deletions cost no wider search. A damaged index is answered from the
/// segment's Parquet file and queued for a rebuild.
///
/// With a filter, the segment's rows that pass it are found first (its columns read whole),
/// and the search is planned by how many match and what a node read costs now
/// ([`plan_filtered`]): none — nothing to search; where it costs less — they are ranked by
/// their PQ codes and the nearest `L` read and ranked exactly ([`rank_passing`]); else a walk
/// in which rows that fail the filter are waypoints like deleted ones, its list widened by
/// [`WALK_WIDENING`] times the inverse of the fraction that passes (the accepted rows a walk
/// meets thin out with it), and widened again (4×) while fewer than `k` come back, until the
/// segment is read exactly.
fn walk_segment(
    inner: &Inner,
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    params: &SearchParams,
    filter: Option<&Filter>,
) -> Result<Vec<Cand>, ReadError> {
    let ix = s.index.as_ref().expect("walked only when indexed");
    let (passed, mut list) = match filter {
        None => (None, params.list_size.max(params.k)),
        Some(f) => {
            let read_ns = read_cost_ns(inner);
            if let Some(found) = label_search(inner, c, s, q, params, f, read_ns)? {
                return Ok(found);
            }
            let passing = passing_rows(inner, c, s, f)?;
            let live = s.keys.len() - s.deleted.count();
            match plan_filtered(passing.count(), live, params, read_ns) {
                FilteredPlan::Nothing => {
                    tracing::Span::current().record("plan", "nothing");
                    return Ok(Vec::new());
                }
                FilteredPlan::Rank => {
                    tracing::Span::current().record("plan", "ranked");
                    c.counters.filtered_ranked.fetch_add(1, Ordering::Relaxed);
                    return rank_passing(inner, c, s, q, params, &passing);
                }
                FilteredPlan::Walk { list } => {
                    tracing::Span::current().record("plan", "walk");
                    c.counters.filtered_walks.fetch_add(1, Ordering::Relaxed);
                    (Some(passing), list)
                }
            }
        }
    };
    // Live, and passing the filter if there is one (`passed` holds only live rows).
    let accept = |label: u32| match &passed {
        Some(passing) => passing.contains(label as usize),
        None => !s.deleted.contains(label as usize),
    };
    loop {
        let found = match walk_index(inner, c, s.id, ix, q, params, list, &accept)? {
            Ok(found) => found,
            Err(e) => {
                // The index is derived data: answer from the segment's Parquet file (correct,
                // slower) and have a damaged index rebuilt.
                inner.index_failed(c, s, ix, &e);
                let mut top = TopK::new(params.k);
                offer_segment_file(c, s, q, filter, &mut top)?;
                return Ok(top.into_sorted_vec());
            }
        };
        let cands: Vec<Cand> = found
            .iter()
            .map(|n| {
                let key = s.keys.key(n.id as usize)?;
                Ok(Cand { d: n.distance, key, loc: Hit::Seg(s.id, n.id) })
            })
            .collect::<Result<_, SegmentError>>()?;
        // Fewer than k accepted rows within the walk's list (the matching rows are far from
        // the query, or sparse around it): widen it, or read them all once that would cover
        // most of the segment.
        let Some(passing) = passed.as_ref().filter(|_| cands.len() < params.k) else {
            return Ok(cands);
        };
        list = list.saturating_mul(4);
        let live_rows = s.keys.len() - s.deleted.count();
        if list >= MAX_LIST_SIZE || list * 2 >= live_rows {
            tracing::Span::current().record("plan", "scan");
            c.counters.filtered_scans.fetch_add(1, Ordering::Relaxed);
            let mut top = TopK::new(params.k);
            offer_rows(c, s, q, passing, &mut top)?;
            return Ok(top.into_sorted_vec());
        }
    }
}

/// One walk of disk index `ix` (segment `segment`'s, or one of its label graphs) with a list
/// of `list` for the `params.k` nearest nodes `accept` takes by label: a search state from the
/// pool and back, the walk and its reads counted and traced. The inner `Err` is a damaged index
/// (a sector that fails its checksum), left to the caller to answer another way; a bad query
/// or a failed read is the search's error.
#[allow(clippy::too_many_arguments)]
pub(super) fn walk_index(
    inner: &Inner,
    c: &CollectionView,
    segment: u64,
    ix: &DiskIndex,
    q: &PreparedQuery,
    params: &SearchParams,
    list: usize,
    accept: &dyn Fn(u32) -> bool,
) -> Result<Result<Vec<Neighbour>, LayoutError>, ReadError> {
    let sp = quiver_diskgraph::search::SearchParams {
        k: params.k,
        list_size: list,
        beam_width: params.beam_width,
    };
    let mut searcher = inner.searcher(segment, ix)?;
    let found =
        searcher.search_accepting(q.index_row(c.schema.vector_type().search_elem()), sp, accept);
    inner.return_search_state(searcher.into_state());
    match found {
        Ok((found, stats)) => {
            c.counters.index_walks.fetch_add(1, Ordering::Relaxed);
            c.counters.index_reads.fetch_add(stats.ios, Ordering::Relaxed);
            tracing::Span::current().record("reads", stats.ios);
            Ok(Ok(found))
        }
        Err(SearchError::Layout(e)) => Ok(Err(e)),
        Err(SearchError::Query(e)) => Err(QueryError::Index(e).into()),
        Err(source) => Err(ReadError::Search { segment, source }),
    }
}

/// The `params.k` nearest of segment `s`'s `passing` rows (live, passing the filter), at exact
/// distances, their vectors read from the segment's index (a read per sector that holds
/// some): the exact plan of a filtered search when few rows pass. A damaged index is answered
/// from the segment's Parquet file and queued for a rebuild, as a walk is.
fn rank_passing(
    inner: &Inner,
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    params: &SearchParams,
    passing: &RowSet,
) -> Result<Vec<Cand>, ReadError> {
    let ix = s.index.as_ref().expect("ranked through the index only when indexed");
    let rows: Vec<u32> = passing.rows().collect();
    let sp = quiver_diskgraph::search::SearchParams {
        k: params.k,
        list_size: params.list_size.max(params.k),
        beam_width: params.beam_width,
    };
    let mut searcher = inner.searcher(s.id, ix)?;
    let query = q.as_given.row(c.schema.vector_type().search_elem());
    let found = searcher.search_among(query, &rows, sp);
    inner.return_search_state(searcher.into_state());
    match found {
        Ok((found, stats)) => {
            c.counters.index_reads.fetch_add(stats.ios, Ordering::Relaxed);
            let cand = |n: &quiver_diskgraph::search::Neighbour| {
                let key = s.keys.key(n.id as usize)?;
                Ok(Cand { d: n.distance, key, loc: Hit::Seg(s.id, n.id) })
            };
            Ok(found.iter().map(cand).collect::<Result<_, SegmentError>>()?)
        }
        Err(SearchError::Layout(e)) => {
            inner.index_failed(c, s, ix, &e);
            let mut top = TopK::new(params.k);
            offer_rows(c, s, q, passing, &mut top)?;
            Ok(top.into_sorted_vec())
        }
        Err(SearchError::Query(e)) => Err(QueryError::Index(e).into()),
        Err(source) => Err(ReadError::Search { segment: s.id, source }),
    }
}

/// A filtered search's ranked segments, ranked together: when every indexed segment (one or
/// more) would rank its passing rows ([`plan_filtered`]) and their indexes share one codebook
/// (a collection's do), every one's passing rows are scored by PQ
/// ([`quiver_diskgraph::search::Searcher::pq_nearest_among`]: distances that compare across
/// them), and only the nearest `L` of them all are read and ranked exactly, where ranking each
/// segment alone reads `L` of every one. A single ranked index goes this way too: its passing
/// rows, found here, are not found and listed again by the per-segment path (a fifth of a 0.1%
/// search of a 1M-row index). Returns the candidates and the segments it searched
/// (nothing when it does not apply, or when an index fails: the per-segment path then
/// searches them, and handles the failure).
fn rank_across(
    inner: &Inner,
    c: &CollectionView,
    segments: &[SegmentView],
    q: &PreparedQuery,
    params: &SearchParams,
    filter: &Filter,
) -> Result<(Vec<Cand>, Vec<u64>), ReadError> {
    let none = || Ok((Vec::new(), Vec::new()));
    let read_ns = read_cost_ns(inner);
    let mut ranked: Vec<(&SegmentView, &DiskIndex, Vec<u32>)> = Vec::new();
    for s in segments {
        let Some(ix) = s.index.as_ref() else { continue };
        if label_graph_for(inner, s, filter)?.is_some() {
            return none(); // it may walk a label graph: planned apart
        }
        let passing = passing_rows(inner, c, s, filter)?;
        let live = s.keys.len() - s.deleted.count();
        match plan_filtered(passing.count(), live, params, read_ns) {
            FilteredPlan::Rank => ranked.push((s, ix, passing.rows().collect())),
            FilteredPlan::Nothing => {}
            // A segment that walks: the segments are planned apart (their passing rows, found
            // here, are remembered for that). Stopping at the first keeps a walking query's
            // cost of this check to one segment's.
            FilteredPlan::Walk { .. } => return none(),
        }
    }
    if ranked.is_empty()
        || !ranked.iter().all(|r| Arc::ptr_eq(r.1.shared_pq(), ranked[0].1.shared_pq()))
    {
        return none();
    }
    let keep = params.list_size.max(params.k);
    let row = q.as_given.row(c.schema.vector_type().search_elem());
    // One search state through every index: the query's PQ table is made once.
    let mut state: Option<SearchState> = None;
    let mut nearest: Vec<(f32, usize, u32)> = Vec::new();
    for (at, (s, ix, rows)) in ranked.iter().enumerate() {
        let mut searcher = searcher_with_state(inner, &mut state, s.id, ix)?;
        let found = searcher.pq_nearest_among(row, rows, keep);
        state = Some(searcher.into_state());
        match found {
            Ok(found) => nearest.extend(found.into_iter().map(|(p, d)| (d, at, p))),
            Err(_) => {
                inner.return_search_state(state.take().expect("just kept"));
                return none();
            }
        }
    }
    nearest.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    nearest.truncate(keep);
    let sp = quiver_diskgraph::search::SearchParams {
        k: params.k,
        list_size: keep,
        beam_width: params.beam_width,
    };
    let mut cands = Vec::new();
    for (at, (s, ix, _)) in ranked.iter().enumerate() {
        let mut positions: Vec<u32> = nearest.iter().filter(|n| n.1 == at).map(|n| n.2).collect();
        positions.sort_unstable();
        if positions.is_empty() {
            continue;
        }
        let mut searcher = searcher_with_state(inner, &mut state, s.id, ix)?;
        let found = searcher.rank_positions(row, &positions, sp);
        state = Some(searcher.into_state());
        let Ok((found, stats)) = found else {
            inner.return_search_state(state.take().expect("just kept"));
            return none();
        };
        c.counters.index_reads.fetch_add(stats.ios, Ordering::Relaxed);
        for n in &found {
            let key = s.keys.key(n.id as usize)?;
            cands.push(Cand { d: n.distance, key, loc: Hit::Seg(s.id, n.id) });
        }
    }
    if let Some(st) = state {
        inner.return_search_state(st);
    }
    c.counters.filtered_ranked.fetch_add(ranked.len() as u64, Ordering::Relaxed);
    tracing::Span::current().record("ranked_across", ranked.len());
    Ok((cands, ranked.iter().map(|(s, _, _)| s.id).collect()))
}

/// A searcher of `ix` (segment `segment`) with the search state `state` holds (its PQ table
/// serves every index of the same codebook), else one from the pool.
fn searcher_with_state<'a>(
    inner: &Inner,
    state: &mut Option<SearchState>,
    segment: u64,
    ix: &'a DiskIndex,
) -> Result<Searcher<'a>, ReadError> {
    match state.take() {
        Some(st) => ix.searcher_with(st).map_err(|source| ReadError::Index { segment, source }),
        None => inner.searcher(segment, ix),
    }
}

/// How a filtered search of one indexed segment goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilteredPlan {
    /// No live row passes: nothing to search.
    Nothing,
    /// Ranked by PQ, the nearest `L` of them read and ranked exactly: few pass, or reads are
    /// dear.
    Rank,
    /// A walk with rows that fail the filter as waypoints, with this list size.
    Walk { list: usize },
}

/// Passing rows ranked by PQ whatever share of the segment they are.
const RANK_ALWAYS: usize = 4_096;
/// A filtered walk's list is this times `L · live / passing`: long enough that the walk meets
/// as many passing rows as an unfiltered walk of `L` meets rows, so `L` buys about the same
/// recall with a filter as without. Measured on 1M SIFT rows in 4 segments (random and
/// image-correlated filters, k 10): with the full `L · live / passing` a filter of 10% gave
/// recall 0.99 at L 10 where the unfiltered walk gives 0.94, at twice the reads; at 0.7, 0.96–0.98
/// at 10% and 0.94–0.95 at 50% (L 20: 0.99 and 0.99, against 0.98 unfiltered); at 0.5, 0.88–0.93.
const WALK_WIDENING: f64 = 0.7;
/// What ranking one passing row by its PQ code costs, in nanoseconds: finding its position,
/// its byte-table sum, its place among the nearest (about 10 ns a row measured on 1M SIFT
/// rows, 25k passing in each of 4 segments, both x86 machines).
const RANK_ROW_NS: f64 = 10.0;
/// What a node costs a search when its sectors come from the sector cache, in nanoseconds: the
/// copy and checksum of a sector, the node's exact distance, its neighbours' PQ scores (a
/// walk of a list of 100 took about 190 µs with every read a cache hit).
const CACHED_READ_NS: f64 = 1_900.0;
/// What a node costs when its sectors come from the disk: an NVMe read of 4 KiB takes about
/// 100 µs, four in flight (the beam width) overlap.
const DISK_READ_NS: f64 = 25_000.0;

/// The expected cost of reading a node now, in nanoseconds: [`Options::node_read_cost`] if
/// set, else the cached and the disk cost weighed by the sector cache's recent hit rate (no
/// cache: every read from disk).
///
/// [`Options::node_read_cost`]: crate::Options::node_read_cost
fn read_cost_ns(inner: &Inner) -> f64 {
    if let Some(fixed) = inner.opts.node_read_cost {
        return fixed.as_nanos() as f64;
    }
    let hits = inner.opts.index_open.sector_cache.as_ref().map_or(0.0, |c| c.recent_hit_rate());
    hits * CACHED_READ_NS + (1.0 - hits) * DISK_READ_NS
}

/// The plan for a filtered search of a segment with `live` live rows of which `matching` pass,
/// when a node read costs `read_ns`: the cheaper of ranking them ([`FilteredPlan::Rank`]: a PQ
/// ranking of every passing row, then `L` reads) and a walk ([`FilteredPlan::Walk`]: a list
/// of [`WALK_WIDENING`] `· L · live / matching`, about a read for each entry), or ranking when
/// at most [`RANK_ALWAYS`] pass. So a walk wins only where reads are cheap (the index in the
/// sector cache) or most rows pass: for a segment of 250k live rows and L 10, it walks from
/// about 7% passing when every read hits the cache, and ranks up to about 22% when every read
/// goes to the disk — the ranking reads `L` nodes where such a walk reads three times as many
/// or more.
fn plan_filtered(
    matching: usize,
    live: usize,
    params: &SearchParams,
    read_ns: f64,
) -> FilteredPlan {
    if matching == 0 {
        return FilteredPlan::Nothing;
    }
    let list = walk_list(matching, live, params);
    let (walk, rank) = plan_costs(matching, list, params, read_ns);
    if matching <= RANK_ALWAYS || rank <= walk {
        return FilteredPlan::Rank;
    }
    FilteredPlan::Walk { list }
}

/// The list of a filtered walk among `live` rows of which `matching` pass:
/// [`WALK_WIDENING`] `· L · live / matching`, at least `L` (and `k`), at most
/// [`MAX_LIST_SIZE`].
pub(super) fn walk_list(matching: usize, live: usize, params: &SearchParams) -> usize {
    let asked = params.list_size.max(params.k);
    let widened = (WALK_WIDENING * asked as f64 * live as f64 / matching.max(1) as f64).ceil();
    (widened as usize).clamp(asked, MAX_LIST_SIZE)
}

/// The expected costs, in nanoseconds, of a filtered walk with a list of `list` (a read an
/// entry) and of ranking `matching` passing rows by PQ then reading `L`: `(walk, rank)`.
pub(super) fn plan_costs(
    matching: usize,
    list: usize,
    params: &SearchParams,
    read_ns: f64,
) -> (f64, f64) {
    let asked = params.list_size.max(params.k);
    let rank = matching as f64 * RANK_ROW_NS + asked as f64 * read_ns;
    (list as f64 * read_ns, rank)
}

/// Segment `s`'s live rows that pass `filter`: the filter's result over the file is
/// remembered by the segment's file (`SegmentFile::remembered_mask`), so the same filter asked again
/// costs the deletions' words, not a read of its columns. A filter on one low-cardinality
/// column is answered by its label index (`SegmentFile::label_rows`: the rows of the values
/// that pass, read from disk); others read and evaluate the filter's columns over the file.
pub(super) fn passing_rows(
    inner: &Inner,
    c: &CollectionView,
    s: &SegmentView,
    filter: &Filter,
) -> Result<RowSet, ReadError> {
    let counted = |counter: &std::sync::atomic::AtomicU64| {
        counter.fetch_add(1, Ordering::Relaxed);
    };
    let all = match s.file.remembered_mask(filter.key()) {
        Some(all) => {
            counted(&c.counters.filter_rows_remembered);
            all
        }
        None => {
            let all = match s.file.label_rows(inner.vfs.as_ref(), filter)? {
                Some(rows) => {
                    counted(&c.counters.filter_rows_labelled);
                    rows
                }
                None => {
                    counted(&c.counters.filter_rows_read);
                    RowSet::of_mask(&segment_mask(c, s, filter)?)
                }
            };
            let all = Arc::new(all);
            s.file.remember_mask(filter.key(), Arc::clone(&all));
            all
        }
    };
    Ok(s.deleted.outside(&all))
}

/// Which rows of segment `s` pass `filter`, all of them: reads the filter's columns, in the
/// row groups whose statistics do not rule every row out (`SegmentFile::zones_may_pass`).
fn segment_mask(
    c: &CollectionView,
    s: &SegmentView,
    filter: &Filter,
) -> Result<BooleanArray, ReadError> {
    let zones = s.file.zones_may_pass(filter).map(|(kept, skipped)| {
        c.counters.filter_zones_skipped.fetch_add(skipped as u64, Ordering::Relaxed);
        kept
    });
    let rows: Option<Vec<u32>> = zones
        .as_ref()
        .map(|kept| kept.iter().flat_map(|&(first, n)| first as u32..(first + n) as u32).collect());
    let mut parts = Vec::new();
    if rows.as_ref().is_none_or(|r| !r.is_empty()) {
        for b in s.file.read(filter.columns(), rows.as_deref(), 65_536)? {
            parts.push(filter.evaluate(&b)?);
        }
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a as &dyn Array).collect();
    let read = if refs.is_empty() {
        BooleanArray::from(Vec::<bool>::new())
    } else {
        let joined = arrow_select::concat::concat(&refs)?;
        joined.as_any().downcast_ref::<BooleanArray>().expect("a boolean mask").clone()
    };
    let wanted = rows.as_ref().map_or(s.keys.len(), Vec::len);
    if read.len() != wanted {
        return Err(ReadError::Segment(crate::segment::SegmentError::Corrupt {
            path: s.file.path().to_path_buf(),
            reason: format!("{} filter values for {wanted} rows", read.len()),
        }));
    }
    let Some(kept) = zones else { return Ok(read) };
    let file_rows = kept.last().map_or(0, |&(first, n)| first + n);
    if file_rows > s.keys.len() as u64 {
        return Err(ReadError::Segment(crate::segment::SegmentError::Corrupt {
            path: s.file.path().to_path_buf(),
            reason: format!("a row group ends at row {file_rows} of {}", s.keys.len()),
        }));
    }
    // The rows of skipped groups fail; the others take what was read.
    let mut mask = arrow_buffer::BooleanBufferBuilder::new(s.keys.len());
    let (mut at, mut next) = (0usize, 0u64);
    for (first, n) in kept {
        mask.append_n((first - next) as usize, false);
        for i in at..at + n as usize {
            mask.append(read.value(i));
        }
        at += n as usize;
        next = first + n;
    }
    mask.append_n(s.keys.len().saturating_sub(next as usize), false);
    Ok(BooleanArray::new(mask.finish(), None))
}

/// Offers segment `s`'s `passing` rows to `top`, reading only their vectors from the Parquet
/// file (the pages that hold them).
fn offer_rows(
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    passing: &RowSet,
    top: &mut TopK,
) -> Result<(), ReadError> {
    let rows: Vec<u32> = passing.rows().collect();
    if rows.is_empty() {
        return Ok(());
    }
    let loc = |r: u32| Hit::Seg(s.id, r);
    let mut scratch = Vec::new();
    let mut at = 0usize;
    for b in s.file.read(&[1], Some(&rows), 4_096)? {
        let v = batch::vectors_of(&c.schema, b.column(0).as_ref())?;
        let got = b.num_rows();
        if at + got > rows.len() {
            return Err(read_mismatch(s, at + got, rows.len()));
        }
        let picked = &rows[at..at + got];
        // Batch row `i` is segment row `picked[i]`.
        top.offer_exact(
            q,
            &v,
            0,
            |i| s.keys.key(picked[i] as usize),
            |_| true,
            |i| loc(picked[i as usize]),
            &mut scratch,
        )?;
        at += got;
    }
    if at != rows.len() {
        return Err(read_mismatch(s, at, rows.len()));
    }
    Ok(())
}

/// A segment file that gave back another number of rows than were asked for.
fn read_mismatch(s: &SegmentView, got: usize, asked: usize) -> ReadError {
    ReadError::Segment(crate::segment::SegmentError::Corrupt {
        path: s.file.path().to_path_buf(),
        reason: format!("read {got} rows, asked for {asked}"),
    })
}

/// Offers every live row of segment `s` that passes `filter` to `top`, reading its vectors from
/// the Parquet file: the exhaustive search of an indexed segment, and the fallback when its
/// index fails.
fn offer_segment_file(
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    filter: Option<&Filter>,
    top: &mut TopK,
) -> Result<(), ReadError> {
    let passed = filter.map(|f| segment_mask(c, s, f)).transpose()?;
    let pass = |r: usize| !s.deleted.contains(r) && passed.as_ref().is_none_or(|m| m.value(r));
    let loc = |r: u32| Hit::Seg(s.id, r);
    let mut scratch = Vec::new();
    let mut base = 0usize;
    for b in s.file.read(&[1], None, 65_536)? {
        let v = batch::vectors_of(&c.schema, b.column(0).as_ref())?;
        top.offer_exact(q, &v, base, |r| s.keys.key(r), pass, loc, &mut scratch)?;
        base += b.num_rows();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The segment schedule of a search: each segment searched exactly once, and a hop to the
    //! search pool (a wake-up that busy cores delay) only for a second index walk.
    use super::search_segments;

    /// Segments given as (rows, walked); each search answers (segment, ran on a pool thread),
    /// or fails for segment `fail`.
    fn run(segments: &[(usize, bool)], fail: Option<usize>) -> Result<Vec<(usize, bool)>, usize> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a pool");
        let numbered: Vec<(usize, usize, bool)> =
            segments.iter().enumerate().map(|(i, &(rows, walked))| (i, rows, walked)).collect();
        let mut found = search_segments(
            &pool,
            &numbered,
            |s| s.2,
            |s| s.1,
            |s| match fail {
                Some(f) if f == s.0 => Err(f),
                _ => Ok((s.0, rayon::current_thread_index().is_some())),
            },
        )?;
        found.sort_unstable();
        Ok(found)
    }

    #[test]
    fn one_index_walk_beside_exact_scans_never_waits_for_a_pool_thread() {
        let found = run(&[(10, false), (1_000, true), (20, false)], None);
        assert_eq!(found, Ok(vec![(0, false), (1, false), (2, false)]));
    }

    #[test]
    fn the_largest_walk_stays_on_the_caller_and_further_walks_go_to_the_pool() {
        let found = run(&[(100, true), (1_000, true), (5, false), (200, true)], None);
        assert_eq!(found, Ok(vec![(0, true), (1, false), (2, false), (3, true)]));
    }

    #[test]
    fn a_failed_segment_fails_the_search_wherever_it_ran() {
        let segments = [(100, true), (1_000, true), (5, false)];
        for fail in 0..segments.len() {
            assert_eq!(run(&segments, Some(fail)), Err(fail));
        }
    }

    #[test]
    fn a_search_over_no_segments_finds_nothing() {
        assert_eq!(run(&[], None), Ok(Vec::new()));
    }
}

#[cfg(test)]
mod plan_tests {
    //! The filtered planner's choice: a ranking where reads are dear or few rows pass, a walk
    //! where reads come from RAM and many pass. A planner that ignored what reads cost would
    //! walk (ten times the reads) out of core, or rank 100k rows a query in RAM.
    use super::{CACHED_READ_NS, DISK_READ_NS, FilteredPlan, RANK_ALWAYS, plan_filtered};
    use crate::SearchParams;

    fn params(list_size: usize) -> SearchParams {
        SearchParams { k: 10, list_size, ..SearchParams::default() }
    }

    #[test]
    fn reads_from_disk_rank_up_to_a_fifth_and_reads_from_ram_walk_from_a_tenth() {
        let live = 250_000;
        let plan = |share: f64, read_ns: f64, list: usize| {
            plan_filtered((live as f64 * share) as usize, live, &params(list), read_ns)
        };
        for share in [0.001, 0.01, 0.1, 0.2] {
            assert_eq!(plan(share, DISK_READ_NS, 10), FilteredPlan::Rank, "{share} from disk");
        }
        assert_eq!(plan(0.5, DISK_READ_NS, 10), FilteredPlan::Walk { list: 14 });
        assert_eq!(plan(0.01, CACHED_READ_NS, 10), FilteredPlan::Rank);
        assert_eq!(plan(0.1, CACHED_READ_NS, 10), FilteredPlan::Walk { list: 70 });
        assert_eq!(plan(0.5, CACHED_READ_NS, 50), FilteredPlan::Walk { list: 70 });
        // Never shorter than asked, however many pass.
        assert_eq!(plan(0.99, CACHED_READ_NS, 10), FilteredPlan::Walk { list: 10 });
        // A longer list makes the walk dearer: 10% in RAM at L 50 ranks.
        assert_eq!(plan(0.1, CACHED_READ_NS, 50), FilteredPlan::Rank);
    }

    #[test]
    fn few_passing_rows_are_ranked_and_none_is_nothing_to_do() {
        assert_eq!(plan_filtered(0, 1_000, &params(10), CACHED_READ_NS), FilteredPlan::Nothing);
        // Half of a small segment: a walk would be cheaper, but so few rank at once.
        assert_eq!(plan_filtered(RANK_ALWAYS, 8_192, &params(10), 0.0), FilteredPlan::Rank);
        assert_eq!(
            plan_filtered(RANK_ALWAYS + 1, 8_194, &params(10), CACHED_READ_NS),
            FilteredPlan::Walk { list: 14 }
        );
    }
}
