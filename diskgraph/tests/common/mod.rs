//! Helpers shared by the diskgraph integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use std::collections::VecDeque;

use quiver_diskgraph::data::{ElemType, VectorSet};
use quiver_diskgraph::index::GRAPH_FILE;
use quiver_diskgraph::layout::IndexReader;

/// A file of the bigann10k fixture (beside the repository, in `../shared/datasets`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/datasets/fixtures/bigann10k")
        .join(name)
}

/// `n × dim` deterministic pseudo-random floats, uniform in [-0.5, 0.5) (splitmix64).
pub fn synthetic(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * dim)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Writes `values` (rows of `dim` floats) as an `.fbin` file: row count, dimension, then the rows.
pub fn write_fbin(path: &Path, values: &[f32], dim: usize) {
    let bytes: &[u8] = bytemuck::cast_slice(values);
    quiver_diskgraph::source::write_bin(path, ElemType::F32, dim, &[bytes]).unwrap();
}

/// Checks every invariant of the graph file in `dir` against `rows` (a node's label is its row
/// there): each label once and holding its row's vector, degree ≤ `max_degree`, no self-loops
/// or repeated neighbours, every node reachable from the entry. Returns the mean degree.
pub fn check_graph(dir: &Path, rows: &VectorSet, max_degree: usize) -> f64 {
    let reader = IndexReader::open(&dir.join(GRAPH_FILE)).unwrap();
    let h = *reader.header();
    let n = h.n as usize;
    assert_eq!(n, rows.len(), "node count");
    let mut lists = Vec::with_capacity(n);
    let mut seen_label = vec![false; n];
    let mut buf = Vec::new();
    for i in 0..n as u32 {
        let node = reader.read_node(i, &mut buf).unwrap();
        let label = node.label as usize;
        assert!(!seen_label[label], "label {label} stored twice");
        seen_label[label] = true;
        assert_eq!(node.vector, rows.row_bytes(label), "node {i} holds another row's vector");
        let nb = node.neighbours.clone();
        assert!(nb.len() <= max_degree, "node {i}: degree {} over R", nb.len());
        assert!(!nb.contains(&i), "node {i} links to itself");
        let mut sorted = nb.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), nb.len(), "node {i} repeats a neighbour");
        lists.push(nb);
    }
    let mut reached = vec![false; n];
    let mut queue = VecDeque::from([h.entry]);
    reached[h.entry as usize] = true;
    while let Some(v) = queue.pop_front() {
        for &u in &lists[v as usize] {
            if !reached[u as usize] {
                reached[u as usize] = true;
                queue.push_back(u);
            }
        }
    }
    let unreached = reached.iter().filter(|&&r| !r).count();
    assert_eq!(unreached, 0, "{unreached} nodes unreachable from the entry");
    lists.iter().map(Vec::len).sum::<usize>() as f64 / n as f64
}
