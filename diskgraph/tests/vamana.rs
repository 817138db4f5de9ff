//! The graph decides recall before any disk is involved. These tests pin down that the Vamana build
//! yields a graph that in-memory greedy search can navigate to the true neighbours (on real BIGANN
//! vectors, and for every metric against brute force — inner product through the MIPS → L2
//! reduction, since a graph built on raw inner product strands low-norm points), that it respects its structural contract
//! (degree ≤ R, no self-loops, no duplicate edges, every point reachable from the entry), and that a
//! build is determined by its seed alone, whatever the number of threads.

mod common;
use common::{fixture, synthetic};

use std::collections::VecDeque;

use quiver_diskgraph::data::{
    Metric, Row, VectorSet, distance_active, mips_query, mips_to_l2, read_vectors,
};
use quiver_diskgraph::vamana::{
    Candidate, Graph, Scratch, VamanaParams, build, robust_prune, search_in_memory,
};

fn check_structure(g: &Graph, n: usize) {
    assert_eq!(g.len(), n);
    for (i, list) in g.lists().enumerate() {
        let list: Vec<u32> = list.collect();
        assert!(list.len() <= g.max_degree, "node {i} has degree {}", list.len());
        assert!(!list.contains(&(i as u32)), "node {i} links to itself");
        let mut s = list.to_vec();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), list.len(), "node {i} has duplicate edges");
        assert!(list.iter().all(|&j| (j as usize) < n));
    }
    let mut seen = vec![false; n];
    let mut q = VecDeque::from([g.entry]);
    seen[g.entry as usize] = true;
    while let Some(v) = q.pop_front() {
        for w in g.neighbours(v as usize) {
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
    for passes in [1, 2] {
        bigann10k_recall(passes);
    }
}

fn bigann10k_recall(passes: usize) {
    let base = read_vectors(&fixture("base.u8bin")).unwrap();
    let queries = read_vectors(&fixture("query.u8bin")).unwrap();
    let gt_dist = read_vectors(&fixture("groundtruth.l2.dist.fvecs")).unwrap();
    let params = VamanaParams { max_degree: 32, list_size: 64, passes, ..VamanaParams::default() };
    let g = build(&base, Metric::L2, &params, &|_| {}).unwrap();
    check_structure(&g, base.len());
    let mut scratch = Scratch::new();
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
    assert!(recall >= 0.98, "{passes} pass(es): recall@10 = {recall}");
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
        let mut scratch = Scratch::new();
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
fn a_build_depends_on_its_seed_and_not_on_its_thread_count() {
    let base = read_vectors(&fixture("base.u8bin")).unwrap().prefix(1_500);
    let p = VamanaParams { max_degree: 16, list_size: 32, threads: 1, ..VamanaParams::default() };
    let a = build(&base, Metric::L2, &p, &|_| {}).unwrap();
    let b = build(&base, Metric::L2, &p, &|_| {}).unwrap();
    let c = build(&base, Metric::L2, &VamanaParams { seed: 7, ..p }, &|_| {}).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    for threads in [2, 3] {
        let t = build(&base, Metric::L2, &VamanaParams { threads, ..p }, &|_| {}).unwrap();
        assert_eq!(a, t, "a build on {threads} threads differs from the single-threaded one");
    }
}

#[test]
fn out_of_range_parameters_are_errors_not_panics() {
    let data = VectorSet::from_f32(2, &[0.0, 1.0, 1.0, 0.0]).unwrap();
    for p in [
        VamanaParams { max_degree: 0, ..VamanaParams::default() },
        VamanaParams { list_size: 0, ..VamanaParams::default() },
        VamanaParams { alpha: 0.5, ..VamanaParams::default() },
        VamanaParams { alpha: f32::NAN, ..VamanaParams::default() },
        VamanaParams { passes: 0, ..VamanaParams::default() },
        VamanaParams { passes: 3, ..VamanaParams::default() },
    ] {
        assert!(build(&data, Metric::L2, &p, &|_| {}).is_err(), "{p:?}");
    }
    let tiny = build(&data, Metric::L2, &VamanaParams::default(), &|_| {}).unwrap();
    check_structure(&tiny, 2);
}

/// The four points of the graded-prune example, around `p = (0, 0)` (point 0): `c1` near,
/// `c2` covered by `c1` by a factor of 2 / 1.8 ≈ 1.11 (dropped at α = 1, admitted at α = 1.2), and
/// `c3`, farther than both but in another direction.
fn graded_example() -> (VectorSet, Vec<Candidate>) {
    let pts = [[0.0, 0.0], [1.0, 0.0], [0.6, 1.640_f32.sqrt()], [-2.2, -0.3]];
    let data = VectorSet::from_f32(2, pts.as_flattened()).unwrap();
    let cands = (1..4)
        .map(|i| Candidate {
            id: i,
            dist: distance_active(Metric::L2, data.row(0), data.row(i as usize)),
        })
        .collect();
    (data, cands)
}

#[test]
fn a_full_prune_takes_every_alpha_1_survivor_before_a_long_edge() {
    let (data, cands) = graded_example();
    // With room for two, the diverse c3 wins over c2, which only α > 1 admits.
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands.clone(), 1.2, 2, false), vec![1, 3]);
    // With room for three, α = 1.2 adds c2 after the α = 1 survivors; α = 1 never does.
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands.clone(), 1.2, 3, false), vec![1, 3, 2]);
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands, 1.0, 3, false), vec![1, 3]);
}

#[test]
fn a_saturated_prune_fills_the_slots_the_alpha_prune_left_with_the_nearest_rejected() {
    let (data, cands) = graded_example();
    // α = 1.05 does not admit c2 (occluded by a factor of 1.11): the plain prune leaves a slot
    // free, the saturated one fills it with c2.
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands.clone(), 1.05, 3, false), vec![1, 3]);
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands.clone(), 1.05, 3, true), vec![1, 3, 2]);
    // Saturation never displaces a chosen neighbour, and (as in DiskANN) α = 1 does not saturate.
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands.clone(), 1.05, 2, true), vec![1, 3]);
    assert_eq!(robust_prune(&data, Metric::L2, 0, cands, 1.0, 3, true), vec![1, 3]);
}

#[test]
fn an_unsaturated_build_leaves_lists_short_and_a_saturated_one_fills_them_to_r() {
    let base = read_vectors(&fixture("base.u8bin")).unwrap();
    let p = VamanaParams { max_degree: 32, list_size: 64, ..VamanaParams::default() };
    let short = build(&base, Metric::L2, &VamanaParams { saturate: false, ..p }, &|_| {}).unwrap();
    let full = build(&base, Metric::L2, &VamanaParams { saturate: true, ..p }, &|_| {}).unwrap();
    check_structure(&full, base.len());
    // Only the first few insertions, into a graph smaller than R, can end below R.
    let below = full.lists().filter(|l| l.len() < 32).count();
    assert!(below < 64, "{below} saturated lists below R");
    assert!(short.mean_degree() < 0.9 * 32.0, "unsaturated mean degree {}", short.mean_degree());
}

/// RobustPrune by its definition, every factor computed: in rounds of threshold 1, 1.2, 1.44, …
/// (capped at α), a candidate, in distance order, is chosen while the list has room and its largest
/// occlusion factor `d(p, v) / d(c, v)` over the neighbours chosen so far is within the threshold.
/// Saturation (α > 1) then appends the unchosen candidates in distance order while there is room.
fn prune_by_definition(
    data: &VectorSet,
    p: u32,
    cands: &[Candidate],
    alpha: f32,
    r: usize,
    saturate: bool,
) -> Vec<u32> {
    let mut cands: Vec<Candidate> = cands.iter().copied().filter(|c| c.id != p).collect();
    cands.sort_by(|a, b| a.dist.total_cmp(&b.dist).then(a.id.cmp(&b.id)));
    cands.dedup_by_key(|c| c.id);
    let mut out: Vec<u32> = Vec::new();
    let mut threshold = 1.0f32.min(alpha);
    loop {
        for c in &cands {
            if out.len() < r && !out.contains(&c.id) {
                let worst = out
                    .iter()
                    .map(|&o| {
                        let d = distance_active(
                            Metric::L2,
                            data.row(o as usize),
                            data.row(c.id as usize),
                        );
                        if d > 0.0 { c.dist / d } else { f32::INFINITY }
                    })
                    .fold(0.0f32, f32::max);
                if worst <= threshold {
                    out.push(c.id);
                }
            }
        }
        if threshold >= alpha || out.len() >= r {
            if saturate && alpha > 1.0 {
                for c in &cands {
                    if out.len() < r && !out.contains(&c.id) {
                        out.push(c.id);
                    }
                }
            }
            return out;
        }
        threshold = (threshold * 1.2).min(alpha);
    }
}

proptest::proptest! {
    /// The prune computes occlusion factors lazily and stops comparing a candidate once it is out
    /// of the round; that shortcut must choose exactly what the definition chooses.
    #[test]
    fn the_lazy_prune_chooses_what_the_definition_chooses(
        pts in proptest::collection::vec(-8i8..8, 2 * 40),
        alpha_tenths in 10u32..20,
        r in 1usize..12,
        saturate in proptest::bool::ANY,
    ) {
        let floats: Vec<f32> = pts.iter().map(|&x| f32::from(x)).collect();
        let data = VectorSet::from_f32(2, &floats).unwrap();
        let cands: Vec<Candidate> = (0..40u32)
            .map(|i| Candidate { id: i, dist: distance_active(Metric::L2, data.row(0), data.row(i as usize)) })
            .collect();
        let alpha = alpha_tenths as f32 / 10.0;
        let want = prune_by_definition(&data, 0, &cands, alpha, r, saturate);
        let got = robust_prune(&data, Metric::L2, 0, cands, alpha, r, saturate);
        proptest::prop_assert_eq!(got, want);
    }
}
