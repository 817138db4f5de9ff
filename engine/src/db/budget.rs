//! The memory budget ([`Options::memory_budget`](crate::Options::memory_budget)): what an index
//! build may use, and what the sector cache gets, once the fixed shares
//! ([`budget_shares`]) and the structures that grow with the data are counted.
//!
//! The structures that grow (key maps, segment keys, deletion sets, index codes: the
//! [`ResidentBytes`](crate::ResidentBytes) fields other than the memtable and unindexed
//! vectors) are counted as they are, after every flush, merge, index build and drop:
//!
//! - the sector cache gets `budget − reserved − grown`, where `reserved` is the transient
//!   shares (in-memory tables, unindexed segments, a build, a row group:
//!   [`budget_shares::RESERVED_32NDS`]);
//! - an index build (of a flushed segment, or inside a merge) may use what the budget leaves
//!   besides the tables, unindexed segments, ingest buffers and a row group, and the growing
//!   structures — at least its own share — and
//!   while it runs the cache gives up what the build's plan expects to use;
//! - a merge whose build would not fit that is not attempted: its segments stay apart (more
//!   segments to search, memory kept). A merge that grows its largest input's index rather
//!   than rebuilding it is held to the growth's own peak ([`GrowShape::peak_bytes`]: 4 bytes
//!   per old row, the codes, and one chunk of the added rows: [`GrowShape::chunk_rows`] picks
//!   the largest chunk that fits), which does not grow with the old index's vectors.

use std::sync::atomic::Ordering;

use quiver_diskgraph::grow::{GrowShape, MIN_CHUNK_ROWS, MIN_RETRAIN_ROWS};
use quiver_diskgraph::index::{BuildParams, plan_build};
use quiver_diskgraph::plan::{Plan, PlanError};
use quiver_diskgraph::search::DiskIndex;

use crate::options::budget_shares;
use crate::schema::CollectionSchema;

use super::catalog::resident_bytes;
use super::inner::Inner;
use super::model::{GrowCodebook, State};

/// Bytes of the structures that grow with the data, over every collection.
pub(super) fn grown_bytes(st: &State) -> u64 {
    st.collections
        .values()
        .map(|c| {
            let r = resident_bytes(c);
            r.key_map + r.segment_keys + r.deletion_sets + r.indexes
        })
        .sum()
}

/// What an index build may use now, given the state `st` (its growing structures are counted
/// only under a budget): `None` without a budget (the build's own `ram_budget`, if any,
/// stands).
pub(super) fn build_allowance(inner: &Inner, st: &State) -> Option<u64> {
    let budget = inner.opts.memory_budget? as u64;
    let grown = grown_bytes(st);
    let share = budget / budget_shares::BUILD as u64;
    Some(build_room(budget, grown).max(share))
}

/// What a `budget` leaves an index build and the cache together once its other shares and
/// `grown` bytes of growing structures are taken.
fn build_room(budget: u64, grown: u64) -> u64 {
    (budget - budget / 32 * budget_shares::NOT_BUILD_32NDS as u64).saturating_sub(grown)
}

/// The build parameters for an index of `rows` rows of `schema`: the database's, with the
/// RAM budget set to [`build_allowance`] under a memory budget. While the build runs, the cache
/// keeps only what the allowance leaves beside the plan's estimated peak
/// ([`fit_cache_to_budget`] gives it back afterwards).
///
/// A build no plan fits within the allowance (a flushed segment, once the structures have
/// grown: merges that would not fit are not started) runs in memory anyway, with the cache
/// emptied and a warning: it is at most a table's rows, and a segment left unindexed would
/// hold its vectors and stall writers for good.
pub(super) fn build_params(inner: &Inner, schema: &CollectionSchema, rows: usize) -> BuildParams {
    let mut params = inner.opts.index_params;
    let Some(allowance) = build_allowance(inner, &inner.read()) else {
        return params;
    };
    params.ram_budget = Some(allowance);
    let peak = match plan_within(inner, schema, rows, allowance) {
        Ok(plan) => plan.estimated_peak,
        Err(e) => {
            // The first one warns; the rest are counted (`DatabaseStats::over_budget_builds`):
            // under a tight budget every flushed table's build may be one.
            let earlier = inner.over_budget_builds.fetch_add(1, Ordering::Relaxed);
            if earlier == 0 {
                tracing::warn!(
                    "the memory budget leaves {allowance} bytes for an index build of {rows} \
                     rows, too few ({e}): building it in memory, over the budget; give the \
                     database more memory (later such builds are counted in the stats' \
                     over_budget_builds, not logged)"
                );
            } else {
                tracing::debug!("index build of {rows} rows over the budget: {e}");
            }
            params.ram_budget = None;
            u64::MAX
        }
    };
    tracing::debug!("index build of {rows} rows: {allowance} bytes allowed, plan's peak {peak}");
    make_room(inner, allowance, peak);
    params
}

/// While a build expected to peak at `peak` runs with `allowance`, the cache keeps only what
/// is left beside it ([`fit_cache_to_budget`] gives the rest back afterwards).
fn make_room(inner: &Inner, allowance: u64, peak: u64) {
    if let Some(cache) = cache_from_budget(inner) {
        inner.build_reserve.store(peak.min(allowance), Ordering::Relaxed);
        let keep = allowance.saturating_sub(peak) as usize;
        if cache.capacity() > keep {
            cache.set_capacity(keep);
        }
    }
}

/// What a merge that grows an index asks of it: rows dropped from the base, rows added, and
/// what it does with its codebook ([`super::model::Collection::growth_codebook`]).
#[derive(Clone, Debug)]
pub(super) struct GrowAsk {
    pub(super) dropped: u64,
    pub(super) added: u64,
    pub(super) codebook: GrowCodebook,
}

/// The shape of growing `base` as `ask` says within `allowance`, its codebook's sample (if it
/// retrains one, [`GrowShape::sample_rows`]: at most `max_samples`) cut to what fits; `None`
/// if not even the least sample does.
fn grow_shape(
    base: &DiskIndex,
    ask: &GrowAsk,
    allowance: u64,
    max_samples: u64,
) -> Option<GrowShape> {
    let shape = GrowShape::of(base, ask.dropped, ask.added);
    match ask.codebook {
        GrowCodebook::Keep => Some(shape),
        GrowCodebook::Use(_) => Some(shape.recoding()),
        GrowCodebook::Train => {
            shape.sample_rows(allowance, max_samples).map(|rows| shape.retraining(rows))
        }
    }
}

/// Whether growing `base` as `ask` says fits `allowance`, a chunk at a time if need be
/// ([`GrowShape::chunk_rows`]), with a sample cut to fit if it retrains its codebook.
pub(super) fn grow_fits(inner: &Inner, base: &DiskIndex, ask: &GrowAsk, allowance: u64) -> bool {
    let max_samples = inner.opts.index_params.pq.max_samples as u64;
    grow_shape(base, ask, allowance, max_samples)
        .is_some_and(|shape| shape.chunk_rows(allowance).is_some())
}

/// How growing `base` as `ask` says goes: the added rows it links at a time (0: all at once)
/// and the rows a new codebook is trained on (0: kept). Under a memory budget, the most its
/// allowance now holds (at least the least chunk and sample: the merge was judged to fit when
/// planned), with room made in the cache for it; else under the build's `ram_budget`, if any,
/// or unbounded.
pub(super) fn room_to_grow(inner: &Inner, base: &DiskIndex, ask: &GrowAsk) -> (usize, usize) {
    let max_samples = inner.opts.index_params.pq.max_samples as u64;
    let least = GrowShape::of(base, ask.dropped, ask.added);
    let least = match ask.codebook {
        GrowCodebook::Keep => least,
        GrowCodebook::Use(_) => least.recoding(),
        GrowCodebook::Train => least.retraining(MIN_RETRAIN_ROWS),
    };
    let pick = |allowance: u64| {
        let shape = grow_shape(base, ask, allowance, max_samples).unwrap_or(least);
        (shape, shape.chunk_rows(allowance).unwrap_or(MIN_CHUNK_ROWS))
    };
    if let Some(allowance) = build_allowance(inner, &inner.read()) {
        let (shape, chunk) = pick(allowance);
        make_room(inner, allowance, shape.peak_bytes(chunk));
        return (chunk as usize, shape.train_rows as usize);
    }
    match inner.opts.index_params.ram_budget {
        Some(allowance) => {
            let (shape, chunk) = pick(allowance);
            (chunk as usize, shape.train_rows as usize)
        }
        None => {
            let shape = grow_shape(base, ask, u64::MAX, max_samples).unwrap_or(least);
            (0, shape.train_rows as usize)
        }
    }
}

/// Whether a merged segment of `rows` rows of `schema` could be indexed within `allowance`.
pub(super) fn merge_fits(
    inner: &Inner,
    schema: &CollectionSchema,
    rows: usize,
    allowance: u64,
) -> bool {
    plan_within(inner, schema, rows, allowance).is_ok()
}

/// The plan an index build of `rows` rows of `schema` would follow with the database's build
/// parameters and `allowance` bytes.
fn plan_within(
    inner: &Inner,
    schema: &CollectionSchema,
    rows: usize,
    allowance: u64,
) -> Result<Plan, PlanError> {
    let params = BuildParams { ram_budget: Some(allowance), ..inner.opts.index_params };
    let elem = schema.vector_type().search_elem();
    plan_build(rows, schema.dim(), elem, schema.metric(), &params)
}

fn cache_from_budget(inner: &Inner) -> Option<&quiver_diskgraph::cache::SectorCache> {
    let opts = &inner.opts;
    if opts.memory_budget.is_some() && opts.cache_from_budget {
        opts.index_open.sector_cache.as_deref()
    } else {
        None
    }
}

/// With the cache sized from the budget: gives it `budget − reserved − grown`, and while an
/// index build or growth runs, no more than what its allowance leaves beside its plan's peak
/// ([`Inner::build_reserve`]). Called at open and after every flush, merge, index build and
/// drop, so the cache shrinks as the collection grows. A flush during a growth once gave the
/// cache back what the growth was using: 5 MB over a 16 MiB budget (heaptrack, 1024-d rows).
pub(super) fn fit_cache_to_budget(inner: &Inner) {
    let (Some(budget), Some(cache)) = (inner.opts.memory_budget, cache_from_budget(inner)) else {
        return;
    };
    let grown = grown_bytes(&inner.read());
    let reserved = budget / 32 * budget_shares::RESERVED_32NDS;
    let mut left = budget.saturating_sub(reserved).saturating_sub(grown as usize);
    let building = inner.build_reserve.load(Ordering::Relaxed);
    if building > 0 {
        left = left.min(build_room(budget as u64, grown).saturating_sub(building) as usize);
    }
    if cache.capacity() != left {
        cache.set_capacity(left);
    }
}
