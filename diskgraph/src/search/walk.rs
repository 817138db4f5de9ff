//! The bookkeeping of one search: what it reads with (`Ctx`), the candidate list and its
//! states (`Walk`, `Cand`), and what a read node reports.

use super::*;

/// What one search reads with: the index, the query in its forms, the PQ table, and which
/// labels may enter the result.
pub(super) struct Ctx<'a, 'q> {
    pub(super) ix: &'a DiskIndex,
    pub(super) h: Header,
    pub(super) k: Isa,
    pub(super) table: PqTable<'a>,
    pub(super) query: Row<'q>,
    pub(super) qf: &'a [f32],
    pub(super) native: bool,
    pub(super) accept: &'a dyn Fn(u32) -> bool,
    pub(super) report: Report,
}

/// What a result's id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// The node's label (the caller's id).
    Labels,
    /// The node's position in the index.
    Positions,
}

impl Report {
    pub(super) fn id(self, label: u32, position: u32) -> u32 {
        match self {
            Report::Labels => label,
            Report::Positions => position,
        }
    }
}

impl Ctx<'_, '_> {
    /// Exact distance from the query to a stored vector.
    pub(super) fn exact(&self, vector: &[u8]) -> f32 {
        exact_distance(self.k, &self.h, self.native, self.query, self.qf, vector)
    }

    pub(super) fn corrupt(&self, id: u32, e: &str) -> LayoutError {
        let reason = format!("node {id} (sector {}): {e}", self.h.locate(id).sector);
        LayoutError::Corrupt { path: self.ix.path.clone(), reason }
    }

    /// Expands a node: its exact distance joins the result, its unseen neighbours the list.
    pub(super) fn expand(
        &self,
        walk: &mut Walk,
        visited: &mut VisitedSet,
        stats: &mut QueryStats,
        position: u32,
        node: &NodeRef<'_>,
    ) {
        if (self.accept)(node.label) {
            let d = self.exact(node.vector);
            stats.exact_distances += 1;
            walk.exact.push(Neighbour { id: self.report.id(node.label, position), distance: d });
        }
        walk.fresh.clear();
        walk.fresh.extend(node.neighbours.iter().copied().filter(|&nb| visited.insert(nb)));
        walk.fresh_d.resize(walk.fresh.len(), 0.0);
        self.ix.codes.score_ids(self.k, self.table, &walk.fresh, &mut walk.fresh_d);
        stats.pq_distances += walk.fresh.len() as u64;
        walk.merge_fresh();
    }

    /// Handles the verified sectors of the node at position `id` (read and passed through
    /// [`verify_sectors`], or cached so): expands the node, and then uses its sector mates.
    ///
    /// The builder put the node's graph neighbours in its sector, and they came with the read.
    /// Each mate the list would take is expanded now, for free; each other one (not yet expanded)
    /// still has its exact distance offered to the result.
    pub(super) fn process(
        &self,
        walk: &mut Walk,
        visited: &mut VisitedSet,
        expanded: &mut VisitedSet,
        stats: &mut QueryStats,
        id: u32,
        buf: &[u8],
    ) -> Result<(), LayoutError> {
        let h = &self.h;
        let node = node_from_verified(h, &self.ix.path, id, h.locate(id), buf)?;
        expanded.insert(id);
        self.expand(walk, visited, stats, id, &node);
        let mates = h.sector_mates(id);
        walk.mates.clear();
        walk.mates.extend(mates.clone().filter(|&y| y != id && !expanded.contains(y)));
        walk.mates_d.resize(walk.mates.len(), 0.0);
        self.ix.codes.score_ids(self.k, self.table, &walk.mates, &mut walk.mates_d);
        stats.pq_distances += walk.mates.len() as u64;
        let size = h.node_size();
        for j in 0..walk.mates.len() {
            let (y, dy) = (walk.mates[j], walk.mates_d[j]);
            let at = (y - mates.start) as usize * size;
            let bytes = &buf[at..at + size];
            match walk.offer_mate(y, dy) {
                MateUse::Expand => {
                    visited.insert(y);
                    expanded.insert(y);
                    let node = parse_node(h, y, bytes).map_err(|e| self.corrupt(y, &e))?;
                    self.expand(walk, visited, stats, y, &node);
                }
                MateUse::Exact => {
                    let label = node_label(h, y, bytes).map_err(|e| self.corrupt(y, &e))?;
                    if (self.accept)(label) {
                        let d = self.exact(&bytes[..h.dim as usize * h.elem.size()]);
                        stats.exact_distances += 1;
                        walk.exact.push(Neighbour { id: self.report.id(label, y), distance: d });
                    }
                }
                MateUse::InFlight => {}
            }
        }
        Ok(())
    }
}

/// Where a candidate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CandState {
    /// Not yet read.
    New,
    /// Read requested or done.
    Taken,
}

/// One candidate: PQ distance, id, state.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cand {
    pub(super) d: f32,
    pub(super) id: u32,
    pub(super) state: CandState,
}

/// What to do with a node that arrived in the same sector as the node read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MateUse {
    /// The list takes it: expand it now (it is marked taken).
    Expand,
    /// Its own read is in flight: leave it to that read.
    InFlight,
    /// The list would not take it: only offer its exact distance to the result.
    Exact,
}

/// The candidate list of one search and its scratch space.
pub(super) struct Walk {
    /// Sorted by PQ distance, at most `l` long.
    pub(super) list: Vec<Cand>,
    pub(super) l: usize,
    /// No candidate before this position is `New`.
    pub(super) first_new: usize,
    /// Every expanded node with its exact distance.
    pub(super) exact: Vec<Neighbour>,
    pub(super) fresh: Vec<u32>,
    pub(super) fresh_d: Vec<f32>,
    /// The unexpanded sector mates of the node read, and their PQ distances.
    pub(super) mates: Vec<u32>,
    pub(super) mates_d: Vec<f32>,
}

impl Walk {
    /// Marks the nearest `New` candidate taken and returns it.
    pub(super) fn take_nearest_new(&mut self) -> Option<u32> {
        while self.first_new < self.list.len() {
            let c = &mut self.list[self.first_new];
            self.first_new += 1;
            if c.state == CandState::New {
                c.state = CandState::Taken;
                return Some(c.id);
            }
        }
        None
    }

    /// Decides what to do with sector mate `id` (not expanded yet) at PQ distance `d`; if it is to
    /// be expanded, marks it taken in the list (inserting it if the list would take it).
    pub(super) fn offer_mate(&mut self, id: u32, d: f32) -> MateUse {
        if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
            if c.state == CandState::New {
                c.state = CandState::Taken;
                return MateUse::Expand;
            }
            return MateUse::InFlight;
        }
        if self.insert(Cand { d, id, state: CandState::Taken }) {
            MateUse::Expand
        } else {
            MateUse::Exact
        }
    }

    /// Merges `fresh` (ids) scored `fresh_d` into the list, keeping the nearest `l`.
    pub(super) fn merge_fresh(&mut self) {
        for i in 0..self.fresh.len() {
            let (id, d) = (self.fresh[i], self.fresh_d[i]);
            self.insert(Cand { d, id, state: CandState::New });
        }
    }

    /// Inserts `c` in distance order if the list is not full or `c` beats its last entry, keeping
    /// the nearest `l`; returns whether it was inserted.
    pub(super) fn insert(&mut self, c: Cand) -> bool {
        if self.list.len() == self.l && self.list.last().is_some_and(|w| w.d <= c.d) {
            return false;
        }
        let at = self.list.partition_point(|x| x.d <= c.d);
        self.list.insert(at, c);
        self.list.truncate(self.l);
        self.first_new = self.first_new.min(at);
        true
    }
}
