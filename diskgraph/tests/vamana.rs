//! The graph decides recall before any disk is involved. These tests pin down that the Vamana build
//! yields a graph that in-memory greedy search can navigate to the true neighbours (on real BIGANN
//! vectors, and for every metric against brute force — inner product through the MIPS → L2
//! reduction, since a graph built on raw inner product strands low-norm points), that it respects its structural contract
//! (degree ≤ R, no self-loops, no duplicate edges, every point reachable from the entry), and that a
//! single-threaded build is deterministic under its seed.

mod common;
use common::{fixture, synthetic};

use std::collections::VecDeque;

use quiver_diskgraph::data::{
    Metric, Row, VectorSet, distance_active, mips_query, mips_to_l2, read_vectors,
};
use quiver_diskgraph::vamana::{Graph, Scratch, VamanaParams, build, search_in_memory};

fn check_structure(g: &Graph, n: usize) {
    assert_eq!(g.adj.len(), n);
    for (i, list) in g.adj.iter().enumerate() {
        assert!(list.len() <= g.max_degree, "node {i} has degree {}", list.len());
        assert!(!list.contains(&(i as u32)), "node {i} links to itself");
        let mut s = list.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), list.len(), "node {i} has duplicate edges");
        assert!(list.iter().all(|&j| (j as usize) < n));
    }
    let mut seen = vec![false; n];
    let mut q = VecDeque::from([g.entry]);
    seen[g.entry as usize] = true;
    while let Some(v) = q.pop_front() {
        for &w in &g.adj[v as usize] {
            if !seen[w as usize] {
                seen[w as usize] = true;
                q.push_back(w);
            }
        }
    }
    let unreachable = seen.iter().filter(|s| !**s).count();
    assert_eq!(unreachable, 0, "{unreachable} points unreachable from the entry");
}

#[test]
fn bigann10k_in_memory_recall_at_10_is_at_least_0_98_with_l_50() {
    let base = read_vectors(&fixture("base.u8bin")).unwrap();
    let queries = read_vectors(&fixture("query.u8bin")).unwrap();
    let gt_dist = read_vectors(&fixture("groundtruth.l2.dist.fvecs")).unwrap();
    let params = VamanaParams { max_degree: 32, list_size: 64, ..VamanaParams::default() };
    let g = build(&base, Metric::L2, &params, &|_| {}).unwrap();
    check_structure(&g, base.len());
    let mut scratch = Scratch::new(base.len());
    let mut hits = 0;
    for qi in 0..queries.len() {
        let found = search_in_memory(&base, Metric::L2, &g, queries.row(qi), 10, 50, &mut scratch);
        // Ties: a hit is any result within the 10th true distance (u8 data has many equal distances).
        let Row::F32(d) = gt_dist.row(qi) else { unreachable!() };
        let kth = d[9];
        hits += found.iter().filter(|c| c.dist <= kth).count().min(10);
        assert_eq!(found.len(), 10);
    }
    let recall = hits as f64 / (10.0 * queries.len() as f64);
    assert!(recall >= 0.98, "recall@10 = {recall}");
}

#[test]
fn every_metric_finds_the_brute_force_neighbours_on_synthetic_data() {
    let (n, dim) = (2_000, 16);
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let mut data = VectorSet::from_f32(dim, &synthetic(n, dim, 3)).unwrap();
        let mut qs = VectorSet::from_f32(dim, &synthetic(50, dim, 4)).unwrap();
        if metric == Metric::Cosine {
            data.normalize().unwrap();
            qs.normalize().unwrap();
        }
        // Inner product is indexed through the MIPS → L2 reduction, as the index builder does.
        let (graph_data, graph_metric) = match metric {
            Metric::InnerProduct => (mips_to_l2(&data).unwrap().0, Metric::L2),
            _ => (data.clone(), metric),
        };
        let params = VamanaParams { max_degree: 24, list_size: 48, ..VamanaParams::default() };
        let g = build(&graph_data, graph_metric, &params, &|_| {}).unwrap();
        check_structure(&g, n);
        let mut scratch = Scratch::new(n);
        let mut hits = 0;
        for qi in 0..qs.len() {
            let mut truth: Vec<(f32, u32)> = (0..n)
                .map(|i| (distance_active(metric, qs.row(qi), data.row(i)), i as u32))
                .collect();
            truth.sort_by(|a, b| a.0.total_cmp(&b.0));
            let kth = truth[9].0;
            let q = qs.row(qi).to_f32();
            let q = if metric == Metric::InnerProduct { mips_query(&q) } else { q };
            let found =
                search_in_memory(&graph_data, graph_metric, &g, Row::F32(&q), 10, 64, &mut scratch);
            // Judge each result by its true distance under the collection's metric.
            hits += found
                .iter()
                .filter(|c| distance_active(metric, qs.row(qi), data.row(c.id as usize)) <= kth)
                .count()
                .min(10);
        }
        let recall = hits as f64 / 500.0;
        assert!(recall >= 0.95, "{metric}: recall@10 = {recall}");
    }
}

#[test]
fn a_single_threaded_build_is_deterministic_under_its_seed() {
    let base = read_vectors(&fixture("base.u8bin")).unwrap().prefix(1_500);
    let p = VamanaParams { max_degree: 16, list_size: 32, threads: 1, ..VamanaParams::default() };
    let a = build(&base, Metric::L2, &p, &|_| {}).unwrap();
    let b = build(&base, Metric::L2, &p, &|_| {}).unwrap();
    let c = build(&base, Metric::L2, &VamanaParams { seed: 7, ..p }, &|_| {}).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.adj, c.adj);
}

#[test]
fn out_of_range_parameters_are_errors_not_panics() {
    let data = VectorSet::from_f32(2, &[0.0, 1.0, 1.0, 0.0]).unwrap();
    for p in [
        VamanaParams { max_degree: 0, ..VamanaParams::default() },
        VamanaParams { list_size: 0, ..VamanaParams::default() },
        VamanaParams { alpha: 0.5, ..VamanaParams::default() },
        VamanaParams { alpha: f32::NAN, ..VamanaParams::default() },
    ] {
        assert!(build(&data, Metric::L2, &p, &|_| {}).is_err(), "{p:?}");
    }
    let tiny = build(&data, Metric::L2, &VamanaParams::default(), &|_| {}).unwrap();
    check_structure(&tiny, 2);
}
