//! The builder writes nodes in a packed order so that the other nodes of a sector are mostly the
//! node's own graph neighbours, which a search uses for free. These tests pin down that the packed
//! order is always a permutation (a node lost or written twice would corrupt the index), that it
//! is the identity when a sector holds one node, and that it really gathers neighbours: on a ring
//! whose ids are scrambled, input order puts almost no neighbours together and packing puts most.

use proptest::prelude::*;
use quiver_diskgraph::pack::{inverse, sector_order};
use quiver_diskgraph::vamana::Graph;

/// A pseudo-random permutation of `0..n` (xorshift-driven Fisher–Yates).
fn scramble(n: usize, mut s: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p.swap(i, (s % (i as u64 + 1)) as usize);
    }
    p
}

/// Mean number of a node's sector mates (sectors of `k` in `order`) that are its out-neighbours.
fn mates_that_are_neighbours(g: &Graph, order: &[u32], k: usize) -> f64 {
    let mut hits = 0usize;
    for sector in order.chunks(k) {
        for &v in sector {
            hits += sector
                .iter()
                .filter(|&&u| u != v && g.neighbours(v as usize).any(|w| w == u))
                .count();
        }
    }
    hits as f64 / order.len() as f64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn the_packed_order_is_a_permutation_for_any_graph_and_sector_size(
        n in 1usize..300,
        degree in 0usize..12,
        per_sector in 0usize..20,
        seed in 1u64..u64::MAX,
    ) {
        let mut s = seed;
        let lists: Vec<Vec<u32>> = (0..n)
            .map(|_| {
                (0..degree)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 7;
                        s ^= s << 17;
                        (s % n as u64) as u32
                    })
                    .collect()
            })
            .collect();
        let g = Graph::from_lists(&lists, (seed % n as u64) as u32, degree.max(1));
        let order = sector_order(&g, per_sector);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
        let pos = inverse(&order);
        prop_assert!(order.iter().enumerate().all(|(p, &v)| pos[v as usize] == p as u32));
        if per_sector <= 1 {
            prop_assert_eq!(order, (0..n as u32).collect::<Vec<_>>());
        }
    }
}

#[test]
fn a_scrambled_ring_is_packed_so_that_sector_mates_are_neighbours() {
    let n = 2_000;
    let ring = scramble(n, 0x1234_5678);
    let mut lists = vec![Vec::new(); n];
    for i in 0..n {
        let v = ring[i] as usize;
        for step in [1, n - 1, 2, n - 2] {
            lists[v].push(ring[(i + step) % n]);
        }
    }
    let g = Graph::from_lists(&lists, ring[0], 4);
    let k = 8;
    let identity: Vec<u32> = (0..n as u32).collect();
    let packed = sector_order(&g, k);
    let (before, after) =
        (mates_that_are_neighbours(&g, &identity, k), mates_that_are_neighbours(&g, &packed, k));
    assert!(before < 0.1, "input order already local: {before}");
    // Runs along the ring give 3.25 of a possible 4; the greedy must get most of that.
    assert!(after >= 2.5, "packed: {after} of 4 neighbours share a node's sector");
}

#[test]
#[should_panic(expected = "placed twice")]
fn an_order_with_a_repeated_node_is_refused() {
    inverse(&[0, 1, 1]);
}
