//! Nearest-neighbour search over every source of a collection: the memtable and unindexed
//! segments exactly, indexed segments through their disk index, ranked by exact distance.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch};
use arrow_schema::{Field, Schema};

use crate::batch::{self, Key, Vectors};
use crate::diskgraph::data::{Metric, Row, distance_active};
use crate::error::ReadError;
use crate::schema::{DISTANCE_COLUMN, ID_COLUMN};

use super::model::Segment;
use super::read::{CollectionView, Hit, SegmentView, gather};
use super::{Database, MAX_K, MAX_LIST_SIZE};

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
    pub(super) k: usize,
    pub(super) heap: std::collections::BinaryHeap<Cand>,
}

impl TopK {
    pub(super) fn push(&mut self, c: Cand) {
        if self.heap.len() < self.k {
            self.heap.push(c);
        } else if self.heap.peek().is_some_and(|w| c < *w) {
            self.heap.pop();
            self.heap.push(c);
        }
    }

    pub(super) fn would_take(&self, d: f32) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|w| d <= w.d)
    }

    /// Offers every live row of `v` by exact distance; row `i` of `v` is row `base + i` of the
    /// source whose keys are `keys`, liveness `live` and place `loc`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn offer_exact(
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

/// Offers every live row of segment `s` to `top`, reading its vectors from the Parquet file:
/// the exhaustive search of an indexed segment, and the fallback when its index fails.
pub(super) fn offer_segment_file(
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

/// A query in every form a kernel may want: f32, and the stored integer type when the query's
/// values are all integers in its range (then the integer kernel gives the same distances).
pub(super) struct Query {
    pub(super) f: Vec<f32>,
    pub(super) u8: Option<Vec<u8>>,
    pub(super) i8: Option<Vec<i8>>,
}

impl Query {
    pub(super) fn new(f: Vec<f32>) -> Query {
        let integral = |lo: f32, hi: f32| f.iter().all(|&x| x.fract() == 0.0 && x >= lo && x <= hi);
        let u8 = integral(0.0, 255.0).then(|| f.iter().map(|&x| x as u8).collect());
        let i8 = integral(-128.0, 127.0).then(|| f.iter().map(|&x| x as i8).collect());
        Query { f, u8, i8 }
    }

    /// The form to give a disk index of `elem`.
    pub(super) fn row(&self, elem: crate::diskgraph::data::ElemType) -> Row<'_> {
        use crate::diskgraph::data::ElemType;
        match (elem, &self.u8, &self.i8) {
            (ElemType::U8, Some(q), _) => Row::U8(q),
            (ElemType::I8, _, Some(q)) => Row::I8(q),
            _ => Row::F32(&self.f),
        }
    }
}

pub(super) fn exact_distance(
    metric: Metric,
    q: &Query,
    row: Row<'_>,
    scratch: &mut Vec<f32>,
) -> f32 {
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
                    let mut searcher = self.inner.searcher(id, ix)?;
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
                        Err(e) => return Err(ReadError::Query(e.to_string())),
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
}
