//! Graph quality without the disk or PQ: full-precision greedy searches over a Quiver graph
//! (`graph.qvr`) and a DiskANN disk index (`*_disk.index`), at several list sizes, reporting recall@10
//! and the mean number of expanded nodes and distances. It tells a worse graph from a worse search.
//!
//! `cargo run --release -p quiver-diskgraph --example graph_quality -- BASE QUERIES GT.ivecs l2 \
//!     50,75,100 GRAPH...`
use std::path::Path;

use quiver_diskgraph::data::{Metric, read_ivecs, read_vectors};
use quiver_diskgraph::layout::IndexReader;
use quiver_diskgraph::vamana::{Scratch, greedy_search};

/// Adjacency lists and entry point read from either format.
struct Lists {
    lists: Vec<Vec<u32>>,
    entry: u32,
}

fn read_quiver(path: &Path) -> Lists {
    let r = IndexReader::open(path).expect("open quiver graph");
    let h = *r.header();
    let mut buf = Vec::new();
    // Nodes are stored by position; the walks run over labels (input rows), as the ground truth.
    let nodes: Vec<(u32, Vec<u32>)> = (0..h.n as u32)
        .map(|i| {
            let node = r.read_node(i, &mut buf).expect("node");
            (node.label, node.neighbours)
        })
        .collect();
    let mut lists = vec![Vec::new(); nodes.len()];
    for (label, nb) in &nodes {
        lists[*label as usize] = nb.iter().map(|&p| nodes[p as usize].0).collect();
    }
    Lists { lists, entry: nodes[h.entry as usize].0 }
}

fn read_diskann(path: &Path, elem_size: usize) -> Lists {
    let bytes = std::fs::read(path).expect("read diskann index");
    let u64_at = |i: usize| u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    let (n, dim, medoid, node_len, per_sector) = (
        u64_at(0) as usize,
        u64_at(1) as usize,
        u64_at(2) as u32,
        u64_at(3) as usize,
        u64_at(4) as usize,
    );
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let lists = (0..n)
        .map(|i| {
            let at = 4096 * (1 + i / per_sector) + (i % per_sector) * node_len + dim * elem_size;
            let deg = u32_at(at) as usize;
            (0..deg).map(|j| u32_at(at + 4 + 4 * j)).collect()
        })
        .collect();
    Lists { lists, entry: medoid }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = read_vectors(Path::new(&args[1])).expect("base");
    let queries = read_vectors(Path::new(&args[2])).expect("queries");
    let gt = read_ivecs(Path::new(&args[3])).expect("ground truth");
    let metric: Metric = args[4].parse().expect("metric");
    let sizes: Vec<usize> = args[5].split(',').map(|s| s.parse().expect("list size")).collect();
    let elem_size = base.row_bytes(0).len() / base.dim();
    for g in &args[6..] {
        let p = Path::new(g);
        let lists = if g.ends_with(".qvr") { read_quiver(p) } else { read_diskann(p, elem_size) };
        let degs: Vec<usize> = lists.lists.iter().map(Vec::len).collect();
        let mut indeg = vec![0u32; degs.len()];
        lists.lists.iter().flatten().for_each(|&j| indeg[j as usize] += 1);
        let zero_in = indeg.iter().filter(|&&d| d == 0).count();
        let mean = degs.iter().sum::<usize>() as f64 / degs.len() as f64;
        println!(
            "{g}: n {} entry {} mean degree {mean:.2} max {} zero in-degree {zero_in}",
            degs.len(),
            lists.entry,
            degs.iter().max().unwrap()
        );
        for &l in &sizes {
            let mut scratch = Scratch::new();
            let (mut hits, mut expanded) = (0usize, 0usize);
            for (q, truth) in gt.iter().enumerate().take(queries.len()) {
                let read =
                    |id: u32, out: &mut Vec<u32>| out.extend_from_slice(&lists.lists[id as usize]);
                let (list, exp) = greedy_search(
                    &base,
                    metric,
                    queries.row(q),
                    lists.entry,
                    l,
                    read,
                    &mut scratch,
                );
                let truth = &truth[..10];
                hits += list.iter().take(10).filter(|c| truth.contains(&c.id)).count();
                expanded += exp.len();
            }
            println!(
                "  L {l}: recall@10 {:.4} mean expanded {:.1}",
                hits as f64 / (10 * queries.len()) as f64,
                expanded as f64 / queries.len() as f64
            );
        }
    }
}
