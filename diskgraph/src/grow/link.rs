//! Step 2 of a growth: linking the added rows, a chunk at a time, and the pruner both
//! steps use.

use super::spill::{RUN_EDGES, Spill};
use super::*;

/// Reads in flight while an added row is searched for (8 measured no faster: the link is
/// CPU-bound, not latency-bound).
pub(super) const BEAM_WIDTH: usize = 4;
/// Transient bytes of the link beyond the packed lists: one sub-chunk's lists as they are
/// made, and the searchers' lists and buffers.
pub(super) const LINK_SCRATCH: u64 = 1 << 20;
/// Added rows linked in parallel at a time: their fresh lists are packed after each.
pub(super) const LINK_CHUNK: usize = 1024;

/// Lists of joint ids, one per added row of a chunk, packed one after another.
#[derive(Default)]
pub(super) struct Lists {
    /// `offsets[i]..offsets[i + 1]` is where row `i`'s list lies in `ids`.
    pub(super) offsets: Vec<u64>,
    pub(super) ids: Vec<u32>,
}

impl Lists {
    pub(super) fn with_capacity(rows: usize, ids: usize) -> Lists {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Lists { offsets, ids: Vec::with_capacity(ids) }
    }

    pub(super) fn push(&mut self, list: &[u32]) {
        self.ids.extend_from_slice(list);
        self.offsets.push(self.ids.len() as u64);
    }

    pub(super) fn get(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    pub(super) fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// The edges among a chunk's rows reversed, grouped by target: the sources (joint ids) of the
/// edges into chunk row `t` are `sources[offsets[t]..offsets[t + 1]]`.
#[derive(Default)]
pub(super) struct Reverse {
    pub(super) offsets: Vec<u32>,
    pub(super) sources: Vec<u32>,
}

impl Reverse {
    /// By counting sort over the targets of `out` that are rows of the chunk, whose joint ids
    /// are `first..first + out.len()`.
    pub(super) fn within(out: &Lists, first: u32) -> Reverse {
        let n = out.len();
        let local = |u: u32| u.checked_sub(first).map(|t| t as usize).filter(|&t| t < n);
        let mut offsets = vec![0u32; n + 1];
        for t in out.ids.iter().filter_map(|&u| local(u)) {
            offsets[t + 1] += 1;
        }
        for t in 0..n {
            offsets[t + 1] += offsets[t];
        }
        let mut next = offsets.clone();
        let mut sources = vec![0u32; offsets[n] as usize];
        for i in 0..n {
            for t in out.get(i).iter().filter_map(|&u| local(u)) {
                sources[next[t] as usize] = first + i as u32;
                next[t] += 1;
            }
        }
        Reverse { offsets, sources }
    }

    /// The sources of the edges into chunk row `t`.
    pub(super) fn sources(&self, t: usize) -> &[u32] {
        &self.sources[self.offsets[t] as usize..self.offsets[t + 1] as usize]
    }
}

/// What linking every chunk leaves for the write pass.
pub(super) struct Linked {
    /// The new position of each added row.
    pub(super) position: Vec<u32>,
    /// The added rows' PQ codes, in their new positions' order.
    pub(super) codes: Vec<u8>,
    /// The first chunk's graph's entry point, at its new position.
    pub(super) entry: Option<u32>,
    /// The last chunk's first added row and its rows (stored), kept as exact stand-ins.
    pub(super) last: Option<(usize, VectorSet)>,
    pub(super) graph_seconds: f64,
}

impl Linked {
    pub(super) fn new(added: usize) -> Linked {
        Linked {
            position: vec![DROPPED; added],
            codes: Vec::new(),
            entry: None,
            last: None,
            graph_seconds: 0.0,
        }
    }
}

/// Step 2 for one chunk of added rows, starting at added row `first`.
pub(super) struct ChunkJob<'a> {
    pub(super) growth: &'a Growth<'a>,
    pub(super) h: &'a Header,
    pub(super) old: &'a Old,
    pub(super) first: usize,
}

impl ChunkJob<'_> {
    /// Links the chunk's `rows` (stored): their out-lists, then their finished nodes and their
    /// edges into old nodes, spilled.
    pub(super) fn link(
        &self,
        rows: VectorSet,
        linked: &mut Linked,
        spill: &mut Spill,
        progress: &(dyn Fn(&'static str, usize, usize) + Sync),
    ) -> Result<(), IndexError> {
        let (h, old, first) = (self.h, self.old, self.first);
        let (b, total) = (rows.len(), self.growth.added.len());
        let pq = self.growth.base.pq();
        let m = pq.bytes();
        let mut codes = vec![0u8; b * m];
        pq.encode_into_slice(&rows, &mut codes);
        let old_n = h.n as u32;
        let joint_first = old_n + first as u32;
        let pruner = Pruner::new(self.growth, h, Some((first, &rows)));
        let params = pruner.params;
        let started = Instant::now();
        let done_before = first;
        let graph = vamana::build(&rows, h.metric, &params, &|d| {
            progress("graph", done_before + d, total);
        })?;
        linked.graph_seconds += started.elapsed().as_secs_f64();
        let order = pack::sector_order(&graph, h.nodes_per_sector());
        let rank = pack::inverse(&order);
        let position_first = old.kept + first as u32;
        for (i, &k) in rank.iter().enumerate() {
            linked.position[first + i] = position_first + k;
        }
        if first == 0 {
            linked.entry = Some(position_first + rank[graph.entry as usize]);
        }
        let out = self.out_lists(&rows, &graph, &pruner, progress)?;
        drop(graph);
        let reverse = Reverse::within(&out, joint_first);
        // Edges into old nodes, as (target's old position, source), sorted in runs of at most
        // RUN_EDGES.
        let mut edges: Vec<u64> = Vec::with_capacity(RUN_EDGES.min(b * params.max_degree));
        for i in 0..b {
            let source = joint_first + i as u32;
            for &u in out.get(i).iter().filter(|&&u| u < old_n) {
                if edges.len() == RUN_EDGES {
                    edges.sort_unstable();
                    spill.push_run(&edges)?;
                    edges.clear();
                }
                edges.push((u64::from(u) << 32) | u64::from(source));
            }
        }
        edges.sort_unstable();
        spill.push_run(&edges)?;
        drop(edges);
        let position = |u: u32| old.joint_position(&linked.position, u);
        let r = h.max_degree as usize;
        for batch in order.chunks(LINK_CHUNK) {
            let lists: Vec<Vec<u32>> = batch
                .par_iter()
                .map(|&i| {
                    let i = i as usize;
                    let mut list = out.get(i).to_vec();
                    for &u in reverse.sources(i) {
                        if !list.contains(&u) {
                            list.push(u);
                        }
                    }
                    let list = pruner.fitted(list, || rows.row(i).to_f32());
                    list.into_iter().map(position).collect()
                })
                .collect();
            for (&i, list) in batch.iter().zip(lists) {
                let label = self.growth.added_labels[first + i as usize];
                spill.push_node(label, &list, r, rows.row_bytes(i as usize))?;
                linked.codes.extend_from_slice(&codes[i as usize * m..(i as usize + 1) * m]);
            }
        }
        linked.last = Some((first, rows));
        Ok(())
    }

    /// Each of the chunk's rows' out-list (joint ids): its nearest kept old nodes found by a
    /// disk search, and its neighbours in the chunk's `graph`, pruned.
    pub(super) fn out_lists(
        &self,
        rows: &VectorSet,
        graph: &vamana::Graph,
        pruner: &Pruner<'_>,
        progress: &(dyn Fn(&'static str, usize, usize) + Sync),
    ) -> Result<Lists, IndexError> {
        let (growth, old, first) = (self.growth, self.old, self.first);
        let base = growth.base;
        let b = rows.len();
        let old_n = self.h.n as u32;
        let joint_first = old_n + first as u32;
        let params = pruner.params;
        // Half the build's list (at least R): on 200k SIFT + 30k, L 64 instead of 100 took the
        // link from 45 s to 32 s for recall@10 0.959 instead of 0.960 at search L 20.
        let list_size = (params.list_size / 2).max(params.max_degree);
        let search = SearchParams { k: list_size, list_size, beam_width: BEAM_WIDTH };
        let accept = |label: u32| (growth.relabel)(label).is_some();
        let link_one = |searcher: &mut Result<crate::search::Searcher<'_>, IndexError>,
                        i: usize| {
            let searcher = searcher.as_mut().map_err(|e| IndexError::Io {
                path: base.path().into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let row = rows.row(i).to_f32();
            let found = if old.kept > 0 {
                searcher.search_positions(Row::F32(&row), search, &accept).map_err(search_error)?.0
            } else {
                Vec::new()
            };
            let mut cands: Vec<(u32, Option<f32>)> =
                found.iter().map(|f| (f.id, Some(f.distance))).collect();
            cands.extend(graph.neighbours(i).map(|j| (joint_first + j, None)));
            Ok::<_, IndexError>(pruner.prune(&row, &cands))
        };
        // A sub-chunk at a time, so that only its lists are unpacked at once.
        let mut out = Lists::with_capacity(b, b * params.max_degree);
        for sub in (0..b).step_by(LINK_CHUNK) {
            let lists: Vec<Result<Vec<u32>, IndexError>> = (sub..(sub + LINK_CHUNK).min(b))
                .into_par_iter()
                .map_init(|| base.searcher(), link_one)
                .collect();
            for list in lists {
                let list = list?;
                assert!(
                    list.iter().all(|&u| (u >= old_n && u - joint_first < b as u32)
                        || (u < old_n && old.is_kept(u))),
                    "an out-edge to a dropped node or outside the chunk"
                );
                out.push(&list);
            }
            progress("link", first + out.len(), growth.added.len());
        }
        Ok(out)
    }
}

/// A search error as an index error (the old index is damaged or unreadable).
pub(super) fn search_error(e: crate::search::SearchError) -> IndexError {
    match e {
        crate::search::SearchError::Layout(l) => l.into(),
        other => IndexError::Mismatch(other.to_string()),
    }
}

/// RobustPrune over joint ids: old nodes stand as their PQ reconstructions, added rows as
/// themselves while their chunk is held, else as their PQ reconstructions too.
pub(super) struct Pruner<'a> {
    pub(super) pq: &'a PqCodebook,
    pub(super) codes: &'a crate::codes::Codes,
    /// The added rows held (stored), and the added row the first of them is.
    pub(super) held: Option<(usize, &'a VectorSet)>,
    /// Every added row's code, in new-position order, with the new positions and the first
    /// added row's: for added rows not held.
    pub(super) added_codes: &'a [u8],
    pub(super) added_position: &'a [u32],
    pub(super) kept: u32,
    pub(super) old_n: u32,
    pub(super) metric: Metric,
    pub(super) params: crate::vamana::VamanaParams,
}

impl<'a> Pruner<'a> {
    /// The pruner of `growth` over `base`'s codes and the `held` added rows (stored), with the
    /// old index's `R`.
    pub(super) fn new(
        growth: &Growth<'a>,
        h: &Header,
        held: Option<(usize, &'a VectorSet)>,
    ) -> Pruner<'a> {
        let mut params = growth.params.graph;
        params.max_degree = h.max_degree as usize;
        let (pq, codes) = (growth.base.pq(), growth.base.codes());
        let old_n = h.n as u32;
        let (added_codes, added_position, kept) = (&[][..], &[][..], 0);
        Pruner {
            pq,
            codes,
            held,
            added_codes,
            added_position,
            kept,
            old_n,
            metric: h.metric,
            params,
        }
    }

    /// With every added row's code (`codes`, in new-position order) and new `position`, the
    /// first added row's being `kept`.
    pub(super) fn with_added_codes(
        mut self,
        codes: &'a [u8],
        position: &'a [u32],
        kept: u32,
    ) -> Pruner<'a> {
        (self.added_codes, self.added_position, self.kept) = (codes, position, kept);
        self
    }

    /// `list` (joint ids, no repeats) as it is if it fits in `R`, else pruned to `R` from the
    /// node's own vector (`row`, made only then).
    pub(super) fn fitted(&self, list: Vec<u32>, row: impl FnOnce() -> Vec<f32>) -> Vec<u32> {
        if list.len() <= self.params.max_degree {
            return list;
        }
        let cands: Vec<(u32, Option<f32>)> = list.iter().map(|&u| (u, None)).collect();
        self.prune(&row(), &cands)
    }

    /// Joint id `u`'s stand-in, into `into`.
    pub(super) fn stand_in(&self, u: u32, into: &mut Vec<f32>) {
        let m = self.pq.bytes();
        if u < self.old_n {
            self.pq.decode_into(self.codes.code(u), into);
            return;
        }
        let a = (u - self.old_n) as usize;
        if let Some((first, rows)) = self.held
            && (first..first + rows.len()).contains(&a)
        {
            *into = rows.row(a - first).to_f32();
            return;
        }
        let k = (self.added_position[a] - self.kept) as usize;
        self.pq.decode_into(&self.added_codes[k * m..(k + 1) * m], into);
    }

    /// Prunes `cands` (joint ids, each with its distance from `row` if known exactly; repeats
    /// allowed) to at most `R`. Unknown distances are taken to the candidate's stand-in.
    pub(super) fn prune(&self, row: &[f32], cands: &[(u32, Option<f32>)]) -> Vec<u32> {
        let mut unique: Vec<(u32, Option<f32>)> = Vec::with_capacity(cands.len());
        for &(u, d) in cands {
            if !unique.iter().any(|&(v, _)| v == u) {
                unique.push((u, d));
            }
        }
        let dim = self.pq.dim();
        let mut vectors = VectorSet::zeroed(ElemType::F32, dim, unique.len())
            .expect("the stored dimension is valid");
        let mut decoded = vec![0.0f32; dim];
        let kernels = Isa::active();
        let mut scored = Vec::with_capacity(unique.len());
        for (i, &(u, d)) in unique.iter().enumerate() {
            self.stand_in(u, &mut decoded);
            vectors.row_bytes_mut(i).copy_from_slice(bytemuck::cast_slice(&decoded));
            let dist = d.unwrap_or_else(|| {
                distance(kernels, self.metric, Row::F32(row), Row::F32(&decoded))
            });
            scored.push(Candidate { id: i as u32, dist });
        }
        let p = &self.params;
        robust_prune(&vectors, self.metric, u32::MAX, scored, p.alpha, p.max_degree, p.saturate)
            .into_iter()
            .map(|i| unique[i as usize].0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_edges_within_a_chunk_list_every_source_of_every_target_once() {
        // 5 old nodes (joint ids 0..5), a chunk of 4 added rows (joint ids 5..9).
        let first = 5;
        let out_lists: [&[u32]; 4] = [&[0, 3, 6], &[], &[3, 5, 8], &[3, 7]];
        let mut out = Lists::with_capacity(4, 9);
        out_lists.iter().for_each(|l| out.push(l));
        assert_eq!(out.len(), 4);
        assert_eq!(out.get(2), &[3, 5, 8]);
        let reverse = Reverse::within(&out, first);
        for t in 0..4u32 {
            let mut want: Vec<u32> = (0..4u32)
                .filter(|&i| out_lists[i as usize].contains(&(first + t)))
                .map(|i| first + i)
                .collect();
            want.sort_unstable();
            let mut got = reverse.sources(t as usize).to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "sources of chunk row {t}");
        }
    }
}
