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

use quiver_simd::{Isa, PqTable};

use super::{
    LayoutError, MAX_BEAM_WIDTH, Neighbour, QueryError, QueryStats, Row, SearchError, SearchParams,
    Searcher, exact_distance, prepare_query,
};
use crate::layout::{NodeLocation, SECTOR, node_from_sectors, parse_node};

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
        if params.k == 0 || params.beam_width == 0 {
            let SearchParams { k, list_size, beam_width } = params;
            return Err(QueryError::Zero { k, list_size, beam_width }.into());
        }
        if params.beam_width > MAX_BEAM_WIDTH {
            return Err(QueryError::BeamWidth(params.beam_width).into());
        }
        let (qf, native) = prepare_query(&self.index.header, query)?;
        let mut scratch = std::mem::take(&mut self.state.among);
        let mut stats = QueryStats::default();
        let wanted = self.nearest_by_pq(&qf, labels, params, &mut scratch, &mut stats);
        self.state.among = scratch;
        let mut found = self.rank_exactly(query, &qf, native, &wanted?, params, &mut stats)?;
        found.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        found.truncate(params.k);
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
        let AmongScratch { bits, positions, distances } = scratch;
        positions_in_order(where_is, labels, bits, positions)?;
        let reread = params.list_size.max(params.k);
        if positions.len() <= reread {
            return Ok(positions.clone());
        }
        ix.pq.query_table(qf, &mut self.state.table);
        let table = PqTable::new(&self.state.table, ix.pq.bytes());
        distances.resize(positions.len(), 0.0);
        ix.codes.score_ids(Isa::active(), table, positions, distances);
        stats.pq_distances += positions.len() as u64;
        Ok(nearest(positions, distances, reread))
    }

    /// Reads the nodes at `wanted` (ascending: one read per sector, or per node for nodes that
    /// span sectors, in file order) and returns each with its exact distance to the query.
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
        // Ranks the wanted nodes of read `r`, whose sectors are in `buf` as stored.
        let mut rank = |r: usize, buf: &mut [u8], stats: &mut QueryStats| {
            let (loc, span) = (reads[r].0, reads[r].1.clone());
            // Verifies the read's sectors, and parses its first wanted node.
            let first = wanted[span.start];
            let node = node_from_sectors(&h, &ix.path, first, loc, buf)?;
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
                // A cached sector is ranked from its copy at once.
                if ix.cached_sector(sector, &mut self.state.cached) {
                    stats.cache_hits += 1;
                    rank(next, &mut self.state.cached, stats)?;
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
            if ix.shared.is_some() {
                // As read: verification may reassemble a spanning node in place.
                self.state.admit.clear();
                self.state.admit.extend_from_slice(buf);
            }
            rank(r, buf, stats)?;
            if let Some((cache, key)) = &ix.shared {
                // Verified: `rank` returned no error for these bytes.
                cache.insert(*key, reads[r].0.sector, &self.state.admit);
            }
        }
        Ok(found)
    }
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
