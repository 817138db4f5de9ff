//! Exact ranking of a given set of nodes: what a filtered search does when a small share of
//! the rows pass its filter ([`Searcher::search_among`]).
//!
//! The set can be a tenth of a million-row index, so the work a query does for each member is
//! kept to a bit set, a PQ score and a compare: the members' positions are found in ascending
//! order (a bit per node, set by label and read in order, so no sort and no duplicates), their
//! codes are scored in that order (the codes are read front to back, and an index's code
//! pieces split the list into runs without a sort), and the nearest by PQ are kept in a heap
//! as long as the list, most members rejected by one comparison with its worst.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

use quiver_simd::{Isa, PqQuantization, PqTable, PqTableU8, quantize_pq_table};

use super::{
    LayoutError, MAX_BEAM_WIDTH, Neighbour, QueryError, QueryStats, Row, SearchError, SearchParams,
    Searcher, exact_distance, prepare_query,
};
use crate::codes::Codes;
use crate::layout::{NodeLocation, SECTOR, node_from_verified, parse_node, verify_sectors};

/// Fewer labels than one in this many of the index's nodes are put in order by a sort; more,
/// through a bit per node (whose clearing and reading cost a word per 64 nodes).
const SORT_BELOW_SHARE: usize = 1024;

/// Scratch of [`Searcher::search_among`], kept in the [`super::SearchState`] across queries.
#[derive(Default)]
pub(super) struct AmongScratch {
    /// A bit per node position.
    bits: Vec<u64>,
    /// The members' positions, ascending.
    positions: Vec<u32>,
    /// Their PQ distances.
    distances: Vec<f32>,
    /// Scratch of the ranking through a byte table.
    bytes: ByteScratch,
}

/// The byte table of a search state's `f32` PQ table, made on first use after that table
/// changed ([`quantize_pq_table`]); kept beside it in the [`super::SearchState`], and dropped
/// when it is made again.
#[derive(Default)]
pub(super) struct ByteTable {
    /// How its sums map to distances, once made (`None`: to be made).
    made: Option<PqQuantization>,
    bytes: Vec<u8>,
}

impl ByteTable {
    /// Drops the byte table: the `f32` table it was made from changed.
    pub(super) fn forget(&mut self) {
        self.made = None;
    }

    /// The byte table of `table` (the `f32` table it stands for), made now unless it was
    /// since the last [`ByteTable::forget`]; `None` if `table` cannot be quantised.
    fn of(&mut self, table: PqTable<'_>) -> Option<(PqQuantization, PqTableU8<'_>)> {
        let made = match self.made {
            Some(made) => made,
            None => *self.made.insert(quantize_pq_table(table, &mut self.bytes)?),
        };
        Some((made, PqTableU8::new(&self.bytes, table.subspaces())))
    }
}

/// Scratch of [`nearest_through_bytes`].
#[derive(Default)]
pub(super) struct ByteScratch {
    /// Each member's byte sum.
    sums: Vec<u16>,
    /// How many members have each sum.
    counts: Vec<u32>,
    /// The members within the margin, and their `f32` distances.
    kept: Vec<u32>,
    kept_distances: Vec<f32>,
}

impl Searcher<'_> {
    /// The `params.k` nearest to `query` of the nodes labelled `labels`: all of them scored by
    /// their PQ codes (in RAM), the `params.list_size` nearest by PQ read from the index (a
    /// sector once however many of them it holds, from the caches when they hold it, else
    /// `params.beam_width` reads in flight) and ranked by exact distance. What a filtered
    /// search does when a small share of the rows pass: about as many reads as an unfiltered
    /// search with the same list, however few pass. A list at least as long as `labels` ranks
    /// them all exactly; a label given twice is ranked once. The first call on an index scans
    /// its graph file once to learn where each label lies.
    ///
    /// # Errors
    /// [`QueryError::Label`] for a label not in the index, and as [`Searcher::search`].
    pub fn search_among(
        &mut self,
        query: Row<'_>,
        labels: &[u32],
        params: SearchParams,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        let started = Instant::now();
        check_ranking(params)?;
        let (qf, native) = prepare_query(&self.index.header, query)?;
        let mut scratch = std::mem::take(&mut self.state.among);
        let mut stats = QueryStats::default();
        let wanted = self.nearest_by_pq(&qf, labels, params, &mut scratch, &mut stats);
        self.state.among = scratch;
        let found = self.rank_exactly(query, &qf, native, &wanted?, params, &mut stats)?;
        stats.latency_us = started.elapsed().as_secs_f64() * 1e6;
        Ok((found, stats))
    }

    /// Phase one of a ranking split across indexes that share a codebook (a collection's
    /// segments): of the nodes labelled `labels`, the `keep` nearest to `query` by PQ
    /// distance (all of them when they are no more), as (position, PQ distance), ascending by
    /// position. Their PQ distances compare across every index of the same codebook, so a
    /// caller can take the nearest `L` of several indexes' candidates and read only those
    /// ([`Searcher::rank_positions`]), where [`Searcher::search_among`] on each would read
    /// `L` of every one.
    ///
    /// # Errors
    /// [`QueryError::Label`] for a label not in the index, [`QueryError::Zero`] for `keep` 0,
    /// and as [`Searcher::search`].
    pub fn pq_nearest_among(
        &mut self,
        query: Row<'_>,
        labels: &[u32],
        keep: usize,
    ) -> Result<Vec<(u32, f32)>, SearchError> {
        if keep == 0 {
            return Err(QueryError::Zero { k: 0, list_size: 0, beam_width: 1 }.into());
        }
        let (qf, _) = prepare_query(&self.index.header, query)?;
        let mut scratch = std::mem::take(&mut self.state.among);
        let mut stats = QueryStats::default();
        let params = SearchParams { k: keep, list_size: keep, beam_width: 1 };
        let wanted = self.nearest_by_pq(&qf, labels, params, &mut scratch, &mut stats);
        self.state.among = scratch;
        let wanted = wanted?;
        self.fill_table(&qf);
        let table = PqTable::new(&self.state.table, self.index.pq.bytes());
        let mut distances = vec![0.0; wanted.len()];
        self.index.codes.score_ids(Isa::active(), table, &wanted, &mut distances);
        Ok(wanted.into_iter().zip(distances).collect())
    }

    /// Phase two of a split ranking: reads the nodes at `positions` (ascending, each once, as
    /// [`Searcher::pq_nearest_among`] gave them) and returns the `params.k` nearest by exact
    /// distance, with their labels.
    ///
    /// # Errors
    /// [`QueryError::Position`] for positions out of order or past the index, and as
    /// [`Searcher::search`].
    pub fn rank_positions(
        &mut self,
        query: Row<'_>,
        positions: &[u32],
        params: SearchParams,
    ) -> Result<(Vec<Neighbour>, QueryStats), SearchError> {
        let started = Instant::now();
        check_ranking(params)?;
        let n = self.index.header.n;
        // Past the index, or not above the position before it.
        let bad = positions.iter().enumerate().find(|&(i, &p)| {
            u64::from(p) >= n || i.checked_sub(1).is_some_and(|j| positions[j] >= p)
        });
        if let Some((_, &position)) = bad {
            return Err(QueryError::Position { position, n }.into());
        }
        let (qf, native) = prepare_query(&self.index.header, query)?;
        let mut stats = QueryStats::default();
        let found = self.rank_exactly(query, &qf, native, positions, params, &mut stats)?;
        stats.latency_us = started.elapsed().as_secs_f64() * 1e6;
        Ok((found, stats))
    }

    /// The positions to read: of the nodes labelled `labels`, the `list_size` (at least `k`)
    /// nearest to the query `qf` by PQ distance, or all of them when they are no more; each
    /// once, ascending.
    fn nearest_by_pq(
        &mut self,
        qf: &[f32],
        labels: &[u32],
        params: SearchParams,
        scratch: &mut AmongScratch,
        stats: &mut QueryStats,
    ) -> Result<Vec<u32>, SearchError> {
        let ix = self.index;
        let where_is = ix.label_positions()?;
        let AmongScratch { bits, positions, distances, bytes } = scratch;
        positions_in_order(where_is, labels, bits, positions)?;
        let reread = params.list_size.max(params.k);
        if positions.len() <= reread {
            return Ok(positions.clone());
        }
        self.fill_table(qf);
        let table = PqTable::new(&self.state.table, ix.pq.bytes());
        let kernels = Isa::active();
        if kernels.has_fast_byte_tables()
            && positions.len() >= (BYTES_FROM_SHARE * reread).max(BYTES_FROM_ROWS)
            && let Some(nearest) = nearest_through_bytes(
                kernels,
                &ix.codes,
                (table, &mut self.state.byte_table),
                positions,
                reread,
                bytes,
                stats,
            )
        {
            return Ok(nearest);
        }
        distances.resize(positions.len(), 0.0);
        ix.codes.score_ids(kernels, table, positions, distances);
        stats.pq_distances += positions.len() as u64;
        Ok(nearest(positions, distances, reread))
    }

    /// Reads the nodes at `wanted` (ascending: one read per sector, or per node for nodes that
    /// span sectors, in file order) and returns the `params.k` nearest by exact distance to
    /// the query, nearest first (ties by label).
    fn rank_exactly(
        &mut self,
        query: Row<'_>,
        qf: &[f32],
        native: bool,
        wanted: &[u32],
        params: SearchParams,
        stats: &mut QueryStats,
    ) -> Result<Vec<Neighbour>, SearchError> {
        let ix = self.index;
        let h = ix.header;
        let kernels = Isa::active();
        let mut reads: Vec<(NodeLocation, std::ops::Range<usize>)> = Vec::new();
        for (at, &p) in wanted.iter().enumerate() {
            let loc = h.locate(p);
            match reads.last_mut() {
                Some((last, span)) if last.sector == loc.sector => span.end = at + 1,
                _ => reads.push((loc, at..at + 1)),
            }
        }
        let width = params.beam_width;
        let io_error = |e| LayoutError::Io { path: ix.path.clone(), source: e };
        self.state.io.prepare(width, h.sectors_per_node()).map_err(io_error)?;
        let mut found = Vec::with_capacity(wanted.len());
        // Ranks the wanted nodes of read `r`, whose sectors are in `buf`, verified.
        let mut rank = |r: usize, buf: &[u8], stats: &mut QueryStats| {
            let (loc, span) = (reads[r].0, reads[r].1.clone());
            let first = wanted[span.start];
            let node = node_from_verified(&h, &ix.path, first, loc, buf)?;
            let mut take = |label: u32, vector: &[u8]| {
                stats.exact_distances += 1;
                let d = exact_distance(kernels, &h, native, query, qf, vector);
                found.push(Neighbour { id: label, distance: d });
            };
            take(node.label, node.vector);
            let size = h.node_size();
            let mates = h.sector_mates(first);
            for &p in &wanted[span.start + 1..span.end] {
                let at = (p - mates.start) as usize * size;
                let node = parse_node(&h, p, &buf[at..at + size]).map_err(|e| {
                    let reason = format!("node {p} (sector {}): {e}", loc.sector);
                    LayoutError::Corrupt { path: ix.path.clone(), reason }
                })?;
                take(node.label, node.vector);
            }
            Ok::<(), LayoutError>(())
        };
        let mut flight = std::collections::VecDeque::with_capacity(width);
        let mut next = 0;
        while next < reads.len() || !flight.is_empty() {
            while next < reads.len() && flight.len() < width {
                let sector = reads[next].0.sector;
                // A cached sector is ranked at once.
                if let Some(verified) = ix.cached_sector(sector) {
                    stats.cache_hits += 1;
                    rank(next, &verified, stats)?;
                    next += 1;
                    continue;
                }
                let slot = (0..width).find(|s| !flight.iter().any(|&(f, _)| f == *s));
                let slot = slot.expect("fewer reads in flight than slots");
                self.state.io.submit(&ix.file, slot, sector * SECTOR as u64).map_err(io_error)?;
                stats.ios += reads[next].0.sectors as u64;
                flight.push_back((slot, next));
                next += 1;
            }
            let Some((slot, r)) = flight.pop_front() else { continue };
            let buf = self.state.io.wait(&ix.file, slot).map_err(io_error)?;
            stats.hops += 1;
            verify_sectors(&ix.path, reads[r].0, buf)?;
            rank(r, buf, stats)?;
            if let Some((cache, key)) = &ix.shared {
                // Verified, and `rank` found the nodes well formed.
                cache.insert(*key, reads[r].0.sector, buf);
            }
        }
        found.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        found.truncate(params.k);
        Ok(found)
    }
}

/// The parameters a ranking of given nodes needs: `k` and a beam width of at least one, the
/// beam no wider than [`MAX_BEAM_WIDTH`] (the list size only bounds the reads).
fn check_ranking(params: SearchParams) -> Result<(), QueryError> {
    if params.k == 0 || params.beam_width == 0 {
        let SearchParams { k, list_size, beam_width } = params;
        return Err(QueryError::Zero { k, list_size, beam_width });
    }
    if params.beam_width > MAX_BEAM_WIDTH {
        return Err(QueryError::BeamWidth(params.beam_width));
    }
    Ok(())
}

/// The positions of the nodes labelled `labels` (`where_is[label]`), each once, ascending,
/// into `out`.
///
/// # Errors
/// [`QueryError::Label`] for a label past `where_is`.
fn positions_in_order(
    where_is: &[u32],
    labels: &[u32],
    bits: &mut Vec<u64>,
    out: &mut Vec<u32>,
) -> Result<(), QueryError> {
    let n = where_is.len();
    let position = |label: u32| {
        let p = where_is.get(label as usize).copied();
        p.ok_or(QueryError::Label { label, n: n as u64 })
    };
    out.clear();
    if labels.len() < n / SORT_BELOW_SHARE {
        for &label in labels {
            out.push(position(label)?);
        }
        out.sort_unstable();
        out.dedup();
        return Ok(());
    }
    bits.clear();
    bits.resize(n.div_ceil(64), 0);
    for &label in labels {
        let p = position(label)? as usize;
        bits[p / 64] |= 1 << (p % 64);
    }
    for (w, &word) in bits.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            out.push((w * 64) as u32 + rest.trailing_zeros());
            rest &= rest - 1;
        }
    }
    Ok(())
}

/// Members are ranked through a byte table when they are at least this many times the list
/// and at least [`BYTES_FROM_ROWS`]: fewer, and the `f32` scoring of them all costs about what
/// making the byte table does (about 13 µs at 32 subspaces, once a query and codebook).
const BYTES_FROM_SHARE: usize = 16;
/// See [`BYTES_FROM_SHARE`].
const BYTES_FROM_ROWS: usize = 4_096;

/// The `count` of `positions` (ascending) nearest by the `f32` table `table`, as [`nearest`]
/// finds them, found through its byte table ([`quantize_pq_table`]) at a fraction of the cost:
/// every member's byte sum (exact integers, several times faster than `f32` lookups), the
/// `count`-th smallest sum, and then the `f32` distances of only the members whose sums are
/// within the quantisation's margin of it — a set that holds every one of the `count` nearest
/// by `f32` distance ([`PqQuantization::margin`]), so the result is [`nearest`]'s. `None` when
/// the table cannot be quantised (too many subspaces). `tables` is the `f32` table and its
/// byte table (made here if it is not yet).
fn nearest_through_bytes(
    kernels: Isa,
    codes: &Codes,
    tables: (PqTable<'_>, &mut ByteTable),
    positions: &[u32],
    count: usize,
    scratch: &mut ByteScratch,
    stats: &mut QueryStats,
) -> Option<Vec<u32>> {
    debug_assert!(count > 0 && positions.len() > count);
    let (table, byte_table) = tables;
    let (quantization, bytes) = byte_table.of(table)?;
    let m = table.subspaces();
    let ByteScratch { sums, counts, kept, kept_distances } = scratch;
    sums.resize(positions.len(), 0);
    codes.score_ids_u8(kernels, bytes, positions, sums);
    stats.pq_distances += positions.len() as u64;
    // The `count`-th smallest sum, by counting: sums are at most `255 · m`.
    counts.clear();
    counts.resize(255 * m + 1, 0);
    for &sum in sums.iter() {
        counts[usize::from(sum)] += 1;
    }
    let mut below = 0usize;
    let kth = counts.iter().position(|&n| {
        below += n as usize;
        below >= count
    });
    let kth = kth.expect("more members than the count") as u32;
    let limit = kth + quantization.margin();
    kept.clear();
    kept.extend(
        positions.iter().zip(sums.iter()).filter(|&(_, &s)| u32::from(s) <= limit).map(|(&p, _)| p),
    );
    kept_distances.resize(kept.len(), 0.0);
    codes.score_ids(kernels, table, kept, kept_distances);
    stats.pq_distances += kept.len() as u64;
    Some(nearest(kept, kept_distances, count))
}

/// A position with its PQ distance, ordered by distance, then position.
#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The `count` of `positions` nearest by `distances` (ties to the lower position), ascending
/// by position.
fn nearest(positions: &[u32], distances: &[f32], count: usize) -> Vec<u32> {
    debug_assert_eq!(positions.len(), distances.len());
    let mut kept: BinaryHeap<Scored> = BinaryHeap::with_capacity(count + 1);
    for (&p, &d) in positions.iter().zip(distances) {
        let candidate = Scored(d, p);
        if kept.len() < count {
            kept.push(candidate);
        } else if kept.peek().is_some_and(|worst| candidate < *worst) {
            kept.pop();
            kept.push(candidate);
        }
    }
    let mut out: Vec<u32> = kept.into_iter().map(|Scored(_, p)| p).collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_come_out_ascending_and_once_whichever_way_they_are_ordered() {
        // Labels 0..4096 at reversed positions: few labels take the sort, many the bit set.
        let where_is: Vec<u32> = (0..4096u32).rev().collect();
        let (mut bits, mut out) = (Vec::new(), Vec::new());
        for labels in [vec![7u32, 3, 7, 4000], (0..4096u32).step_by(3).chain([9, 9]).collect()] {
            positions_in_order(&where_is, &labels, &mut bits, &mut out).unwrap();
            let mut expected: Vec<u32> = labels.iter().map(|&l| 4095 - l).collect();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn a_label_past_the_index_is_refused_not_wrapped() {
        let where_is: Vec<u32> = (0..2048u32).collect();
        let (mut bits, mut out) = (Vec::new(), Vec::new());
        for labels in [vec![2048u32], (0..2049u32).collect()] {
            let e = positions_in_order(&where_is, &labels, &mut bits, &mut out).unwrap_err();
            assert!(matches!(e, QueryError::Label { label: 2048, n: 2048 }), "{e}");
        }
    }

    #[test]
    fn ranking_through_bytes_finds_what_the_f32_table_finds() {
        // The byte table only narrows the members whose `f32` distances are taken: the
        // result must be `nearest`'s over every member, ties included, whatever the table's
        // spread (one wide subspace makes the step coarse for all the others).
        let (m, n) = (32usize, 5_000u32);
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        let codes = Codes::whole(m, (0..n as usize * m).map(|_| next() as u8).collect());
        let kernels = Isa::active();
        for (round, count) in [(0, 10usize), (1, 50), (2, 1), (3, 200)] {
            let table: Vec<f32> = (0..m * 256)
                .map(|i| {
                    let wide = if round == 2 && i / 256 == 5 { 1e4 } else { 1.0 };
                    // Coarse values on round 1, so that many codes tie.
                    let x = (next() % 1000) as f32 * wide;
                    if round == 1 { (x / 100.0).floor() } else { x }
                })
                .collect();
            let table = PqTable::new(&table, m);
            let positions: Vec<u32> = (0..n).filter(|_| next() % 3 == 0).collect();
            let mut distances = vec![0.0; positions.len()];
            codes.score_ids(kernels, table, &positions, &mut distances);
            let want = nearest(&positions, &distances, count);
            let (mut scratch, mut stats) = (ByteScratch::default(), QueryStats::default());
            let got = nearest_through_bytes(
                kernels,
                &codes,
                (table, &mut ByteTable::default()),
                &positions,
                count,
                &mut scratch,
                &mut stats,
            );
            assert_eq!(got.as_deref(), Some(&want[..]), "round {round}, {count} nearest");
            // It took the `f32` distances of a few members only.
            let exact = stats.pq_distances as usize - positions.len();
            assert!(exact >= count && exact < positions.len() / 2, "round {round}: {exact} taken");
        }
    }

    #[test]
    fn nearest_keeps_the_smallest_distances_with_ties_to_the_lower_position() {
        let positions: Vec<u32> = (10..30).collect();
        let distances: Vec<f32> = (0..20).map(|i| ((i * 7) % 5) as f32).collect();
        // Distance 0 at i = 0, 5, 10, 15 (positions 10, 15, 20, 25); distance 1 at i = 3, 8, …
        assert_eq!(nearest(&positions, &distances, 4), vec![10, 15, 20, 25]);
        assert_eq!(nearest(&positions, &distances, 5), vec![10, 13, 15, 20, 25]);
        let mut brute: Vec<(f32, u32)> = distances.iter().copied().zip(positions.clone()).collect();
        brute.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut want: Vec<u32> = brute[..9].iter().map(|&(_, p)| p).collect();
        want.sort_unstable();
        assert_eq!(nearest(&positions, &distances, 9), want);
    }
}
