//! Sector packing: the order in which a graph's nodes are written, so that a sector holds nodes
//! that are neighbours of each other.
//!
//! A search reads a whole sector to get one node. With nodes written in input order, the other
//! nodes of that sector are unrelated to the query and the bytes are wasted. Written in packed
//! order, they are mostly the node's own graph neighbours, which the search is likely to want
//! next; the search uses them (see `search/`) and needs fewer reads for the same recall (as in
//! Starling, SIGMOD 2024, whose block shuffling this approximates greedily).
//!
//! The greedy packing: seeds are taken in breadth-first order from the entry point (then any node
//! the BFS did not reach). Each sector starts with the next unplaced seed and grows by the unplaced
//! node with the highest score, where every member's out-neighbours add to a node's score (3 for
//! each of the member's first 16 neighbours, its nearest, 1 for the rest), ties to the node met
//! first. When no scored node is left, the sector is topped up with the next seeds. Time
//! `O(n · k · R)` for `k` nodes per sector; memory `O(n)`.

use crate::vamana::Graph;

/// Neighbours, from the front of a list, that count as near.
const NEAR: usize = 16;
/// Score a near neighbour adds.
const NEAR_WEIGHT: u32 = 3;

/// The packed order of `graph`'s nodes for sectors of `per_sector` nodes: `order[position]` is the
/// node written at `position`. The identity when `per_sector <= 1` (nothing to share).
pub fn sector_order(graph: &Graph, per_sector: usize) -> Vec<u32> {
    let n = graph.len();
    if per_sector <= 1 || n <= 1 {
        return (0..n as u32).collect();
    }
    sector_order_among(graph, per_sector, &vec![true; n], per_sector)
}

/// The packed order of the nodes of `graph` with `members[node]` set, the others left out (a
/// partition's guests, written by another partition), when the first of them lands with
/// `first_free` slots left in its sector (`1..=per_sector`; a partition written after others
/// rarely starts on a sector boundary). The left-out nodes still link members for the
/// breadth-first seeds, but are never placed or scored.
///
/// # Panics
/// When `members` is not one flag a node or `first_free` is not in `1..=per_sector`.
pub fn sector_order_among(
    graph: &Graph,
    per_sector: usize,
    members: &[bool],
    first_free: usize,
) -> Vec<u32> {
    let n = graph.len();
    assert_eq!(members.len(), n, "one membership flag a node");
    assert!((1..=per_sector.max(1)).contains(&first_free), "{first_free} free of {per_sector}");
    let wanted = members.iter().filter(|&&m| m).count();
    if per_sector <= 1 || wanted <= 1 {
        return (0..n as u32).filter(|&v| members[v as usize]).collect();
    }
    let seeds = bfs_seeds(graph);
    let mut placed: Vec<bool> = members.iter().map(|&m| !m).collect();
    let mut score = vec![0u32; n];
    // Nodes with a non-zero score in the current sector, in the order first met.
    let mut touched: Vec<u32> = Vec::new();
    let mut order: Vec<u32> = Vec::with_capacity(wanted);
    let mut capacity = first_free;
    let mut next_seed = seeds.iter();
    let mut take_seed = |placed: &mut [bool]| loop {
        let s = *next_seed.next().expect("unplaced nodes remain among the seeds");
        if !placed[s as usize] {
            placed[s as usize] = true;
            return s;
        }
    };
    while order.len() < wanted {
        let start = order.len();
        let mut last = take_seed(&mut placed);
        order.push(last);
        while order.len() - start < capacity && order.len() < wanted {
            for (rank, u) in graph.neighbours(last as usize).enumerate() {
                if placed[u as usize] {
                    continue;
                }
                if score[u as usize] == 0 {
                    touched.push(u);
                }
                score[u as usize] += if rank < NEAR { NEAR_WEIGHT } else { 1 };
            }
            let best = touched.iter().copied().filter(|&u| !placed[u as usize]).fold(
                None,
                |best: Option<u32>, u| match best {
                    Some(b) if score[b as usize] >= score[u as usize] => Some(b),
                    _ => Some(u),
                },
            );
            last = match best {
                Some(u) => {
                    placed[u as usize] = true;
                    u
                }
                None => take_seed(&mut placed),
            };
            order.push(last);
        }
        for &u in &touched {
            score[u as usize] = 0;
        }
        touched.clear();
        capacity = per_sector;
    }
    debug_assert!(placed.iter().all(|&p| p));
    order
}

/// Every node once: breadth-first from the entry point, then the unreached in id order.
fn bfs_seeds(graph: &Graph) -> Vec<u32> {
    let n = graph.len();
    let mut seen = vec![false; n];
    let mut seeds = Vec::with_capacity(n);
    seen[graph.entry as usize] = true;
    seeds.push(graph.entry);
    let mut head = 0;
    while head < seeds.len() {
        let v = seeds[head];
        head += 1;
        for u in graph.neighbours(v as usize) {
            if !seen[u as usize] {
                seen[u as usize] = true;
                seeds.push(u);
            }
        }
    }
    seeds.extend((0..n as u32).filter(|&i| !seen[i as usize]));
    seeds
}

/// The inverse of a permutation: `inverse(order)[node] = position`.
pub fn inverse(order: &[u32]) -> Vec<u32> {
    let mut pos = vec![u32::MAX; order.len()];
    for (p, &v) in order.iter().enumerate() {
        assert_eq!(pos[v as usize], u32::MAX, "node {v} placed twice");
        pos[v as usize] = p as u32;
    }
    pos
}
