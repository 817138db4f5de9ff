//! End to end through the files: build an index directory, open it, and beam-search it from disk.
//! This pins down recall on real BIGANN data, that the io_uring and pread backends return
//! identical results (and identical I/O counts), that the node cache changes only I/O counts, that
//! every metric's reported distances are the true ones, that concurrent searches agree with serial
//! ones, that starting at the nearest of several start candidates saves reads without losing
//! recall, that a shared sector cache serves repeats from RAM at the same recall (and admits
//! only verified sectors), and that bad queries and damaged files are errors, not panics or garbage.

mod common;
use common::{fixture, synthetic};

use std::path::Path;

use quiver_diskgraph::cache::SectorCache;
use quiver_diskgraph::data::{Metric, Row, VectorSet, distance_active, read_vectors};
use quiver_diskgraph::index::{BuildParams, GRAPH_FILE, IndexError, build_index};
use quiver_diskgraph::layout::{LayoutError, SECTOR};
use quiver_diskgraph::pq::{CODES_FILE, PIVOTS_FILE, PqParams};
use quiver_diskgraph::search::{Backend, DiskIndex, OpenOptionsIndex, SearchError, SearchParams};
use quiver_diskgraph::vamana::VamanaParams;

fn params(r: usize, l: usize, pq: usize) -> BuildParams {
    BuildParams {
        graph: VamanaParams { max_degree: r, list_size: l, ..VamanaParams::default() },
        pq: PqParams { bytes: Some(pq), max_samples: 20_000, ..PqParams::default() },
        ..BuildParams::default()
    }
}

fn open(dir: &Path, backend: Backend, cache_nodes: usize) -> DiskIndex {
    DiskIndex::open(dir, OpenOptionsIndex { backend, cache_nodes, ..OpenOptionsIndex::default() })
        .unwrap()
}

/// The bigann10k index, built once per test binary; each caller gets its own copy of the files
/// (some tests damage them).
fn bigann_index() -> (tempfile::TempDir, VectorSet) {
    static BUILT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let base = read_vectors(&fixture("base.u8bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        build_index(base, Metric::L2, &params(32, 64, 32), dir.path(), &|_, _| {}).unwrap();
        dir
    });
    let dir = tempfile::tempdir().unwrap();
    for f in [GRAPH_FILE, PIVOTS_FILE, CODES_FILE] {
        std::fs::copy(built.path().join(f), dir.path().join(f)).unwrap();
    }
    (dir, read_vectors(&fixture("query.u8bin")).unwrap())
}

#[test]
fn bigann10k_recall_at_10_is_at_least_0_95_at_list_size_50_and_backends_agree() {
    let (dir, queries) = bigann_index();
    let gt_dist = read_vectors(&fixture("groundtruth.l2.dist.fvecs")).unwrap();
    let uring = open(dir.path(), Backend::IoUring, 0);
    let pread = open(dir.path(), Backend::Pread, 0);
    let (mut su, mut sp) = (uring.searcher().unwrap(), pread.searcher().unwrap());
    let base = read_vectors(&fixture("base.u8bin")).unwrap();
    let sp_params = SearchParams { k: 10, list_size: 50, beam_width: 4 };
    let mut hits = 0;
    let mut ios = 0;
    for qi in 0..queries.len() {
        let (a, sa) = su.search(queries.row(qi), sp_params).unwrap();
        let (b, sb) = sp.search(queries.row(qi), sp_params).unwrap();
        assert_eq!(a, b, "query {qi}: backends disagree");
        assert_eq!((sa.ios, sa.hops), (sb.ios, sb.hops), "query {qi}: I/O counts differ");
        let Row::F32(d) = gt_dist.row(qi) else { unreachable!() };
        hits += a.iter().filter(|n| n.distance <= d[9]).count().min(10);
        ios += sa.ios;
        // Reported distances are the exact squared L2 distances.
        if qi < 20 {
            let q = queries.row(qi).to_f32();
            for n in &a {
                let x = base.row(n.id as usize).to_f32();
                let d: f32 = q.iter().zip(&x).map(|(p, r)| (p - r) * (p - r)).sum();
                assert_eq!(d, n.distance);
            }
        }
    }
    let recall = hits as f64 / 10_000.0;
    assert!(recall >= 0.95, "recall@10 at L=50: {recall}");
    assert!(ios > 0);
}

/// Recall@10 and total reads over the bigann10k queries.
fn recall_and_reads(index: &DiskIndex, queries: &VectorSet, list_size: usize) -> (f64, u64) {
    let gt_dist = read_vectors(&fixture("groundtruth.l2.dist.fvecs")).unwrap();
    let mut s = index.searcher().unwrap();
    let p = SearchParams { k: 10, list_size, beam_width: 4 };
    let (mut hits, mut ios) = (0, 0);
    for qi in 0..queries.len() {
        let (found, stats) = s.search(queries.row(qi), p).unwrap();
        let Row::F32(d) = gt_dist.row(qi) else { unreachable!() };
        hits += found.iter().filter(|n| n.distance <= d[9]).count().min(10);
        ios += stats.ios;
    }
    (hits as f64 / (10 * queries.len()) as f64, ios)
}

/// A search that always starts at the entry point spends its first reads crossing the data; the
/// nearest of `√n` start candidates (the default) must save reads at the same list size and keep
/// recall within a point.
#[test]
fn starting_at_the_nearest_candidate_saves_reads_without_losing_recall() {
    let (dir, queries) = bigann_index();
    let entry_only = DiskIndex::open(
        dir.path(),
        OpenOptionsIndex { start_candidates: Some(1), ..OpenOptionsIndex::default() },
    )
    .unwrap();
    let nearest = open(dir.path(), Backend::Auto, 0);
    let (entry_recall, entry_ios) = recall_and_reads(&entry_only, &queries, 30);
    let (nearest_recall, nearest_ios) = recall_and_reads(&nearest, &queries, 30);
    assert!(
        nearest_ios < entry_ios,
        "reads: {nearest_ios} from candidates, {entry_ios} from the entry"
    );
    assert!(
        nearest_recall >= entry_recall - 0.01,
        "recall: {nearest_recall} from candidates, {entry_recall} from the entry"
    );
}

#[test]
fn the_node_cache_changes_io_counts_but_not_results() {
    let (dir, queries) = bigann_index();
    let cold = open(dir.path(), Backend::Auto, 0);
    let warm = open(dir.path(), Backend::Auto, 500);
    assert!(warm.ram_bytes() > cold.ram_bytes());
    let (mut c, mut w) = (cold.searcher().unwrap(), warm.searcher().unwrap());
    let (mut cold_ios, mut warm_ios, mut hits) = (0, 0, 0);
    for qi in 0..200 {
        let p = SearchParams { k: 10, list_size: 40, beam_width: 2 };
        let (a, sa) = c.search(queries.row(qi), p).unwrap();
        let (b, sb) = w.search(queries.row(qi), p).unwrap();
        assert_eq!(a, b);
        cold_ios += sa.ios;
        warm_ios += sb.ios;
        hits += sb.cache_hits;
    }
    assert!(hits > 0 && warm_ios < cold_ios, "cache hits {hits}, ios {warm_ios} vs {cold_ios}");
}

#[test]
fn concurrent_searches_agree_with_serial_ones() {
    let (dir, queries) = bigann_index();
    let index = open(dir.path(), Backend::Auto, 100);
    let p = SearchParams::default();
    let serial: Vec<_> = {
        let mut s = index.searcher().unwrap();
        (0..120).map(|qi| s.search(queries.row(qi), p).unwrap().0).collect()
    };
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (index, queries, serial) = (&index, &queries, &serial);
            scope.spawn(move || {
                let mut s = index.searcher().unwrap();
                for qi in (t..120).step_by(4) {
                    assert_eq!(s.search(queries.row(qi), p).unwrap().0, serial[qi]);
                }
            });
        }
    });
}

/// `raw` rows of `dim` floats, and an index of them under `metric` (R 24, L 48, 12 PQ bytes).
fn metric_index(raw: &[f32], dim: usize, metric: Metric) -> (VectorSet, tempfile::TempDir) {
    let data = VectorSet::from_f32(dim, raw).unwrap();
    let dir = tempfile::tempdir().unwrap();
    build_index(data.clone(), metric, &params(24, 48, 12), dir.path(), &|_, _| {}).unwrap();
    (data, dir)
}

/// The distance from `q` to `x` under the user's `metric` (cosine on normalised copies), by
/// brute force.
fn true_distance(metric: Metric, q: &[f32], x: &[f32]) -> f32 {
    match metric {
        Metric::Cosine => {
            let (d, a, b) = q
                .iter()
                .zip(x)
                .fold((0.0, 0.0, 0.0), |(d, a, b), (p, r)| (d + p * r, a + p * p, b + r * r));
            1.0 - d / (a * b).sqrt()
        }
        _ => distance_active(metric, Row::F32(q), Row::F32(x)),
    }
}

#[test]
fn every_metric_matches_brute_force_with_true_distances() {
    let (n, dim) = (3_000, 24);
    let raw = synthetic(n, dim, 11);
    let qs = VectorSet::from_f32(dim, &synthetic(40, dim, 12)).unwrap();
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let (data, dir) = metric_index(&raw, dim, metric);
        let index = open(dir.path(), Backend::Auto, 0);
        let mut s = index.searcher().unwrap();
        let mut hits = 0;
        for qi in 0..qs.len() {
            // Brute force under the user's metric (cosine on normalised copies).
            let q = qs.row(qi).to_f32();
            let truth = |i: usize| true_distance(metric, &q, &data.row(i).to_f32());
            let mut all: Vec<f32> = (0..n).map(truth).collect();
            all.sort_by(f32::total_cmp);
            let (found, _) =
                s.search(qs.row(qi), SearchParams { k: 10, list_size: 64, beam_width: 4 }).unwrap();
            for r in &found {
                let want = truth(r.id as usize);
                assert!(
                    (r.distance - want).abs() <= 1e-3 * (1.0 + want.abs()),
                    "{metric}: id {} reported {} true {want}",
                    r.id,
                    r.distance
                );
            }
            hits += found.iter().filter(|r| r.distance <= all[9] + 1e-5).count().min(10);
        }
        let recall = hits as f64 / 400.0;
        assert!(recall >= 0.9, "{metric}: recall@10 {recall}");
    }
}

#[test]
fn bad_queries_are_errors() {
    let (dir, _) = bigann_index();
    let index = open(dir.path(), Backend::Auto, 0);
    let mut s = index.searcher().unwrap();
    let p = SearchParams::default();
    assert!(matches!(s.search(Row::U8(&[0; 127]), p), Err(SearchError::Query(_))));
    let mut q = vec![0.0f32; 128];
    q[5] = f32::NAN;
    assert!(matches!(s.search(Row::F32(&q), p), Err(SearchError::Query(_))));
    assert!(matches!(
        s.search(Row::U8(&[0; 128]), SearchParams { k: 0, ..p }),
        Err(SearchError::Query(_))
    ));
    // An f32 query against u8 data is accepted and agrees with the u8 query.
    let q8: Vec<u8> = (0..128).map(|i| (i * 2) as u8).collect();
    let qf: Vec<f32> = q8.iter().map(|&x| f32::from(x)).collect();
    assert_eq!(s.search(Row::U8(&q8), p).unwrap().0, s.search(Row::F32(&qf), p).unwrap().0);
}

#[test]
fn a_corrupt_sector_met_during_search_is_an_error_naming_it() {
    let (dir, queries) = bigann_index();
    let graph = dir.path().join(GRAPH_FILE);
    let index = open(dir.path(), Backend::Auto, 0);
    let entry = index.header().entry;
    let sector = index.header().locate(entry).sector as usize;
    drop(index);
    let mut bytes = std::fs::read(&graph).unwrap();
    bytes[sector * SECTOR + 10] ^= 0xFF;
    std::fs::write(&graph, &bytes).unwrap();
    // Open checks only the header and length; starting at the entry point, the search reads its
    // sector first.
    let only_entry = OpenOptionsIndex { start_candidates: Some(1), ..OpenOptionsIndex::default() };
    let index = DiskIndex::open(dir.path(), only_entry).unwrap();
    let mut s = index.searcher().unwrap();
    match s.search(queries.row(0), SearchParams::default()) {
        Err(SearchError::Layout(LayoutError::Corrupt { reason, .. })) => {
            assert!(reason.contains(&format!("sector {sector}")), "{reason}")
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn damaged_or_mismatched_pq_files_refuse_to_open() {
    let (dir, _) = bigann_index();
    let codes = dir.path().join(CODES_FILE);
    let clean = std::fs::read(&codes).unwrap();
    let mut bad = clean.clone();
    bad[100] ^= 1;
    std::fs::write(&codes, &bad).unwrap();
    assert!(matches!(
        DiskIndex::open(dir.path(), OpenOptionsIndex::default()),
        Err(IndexError::PqFile(_))
    ));
    std::fs::write(&codes, &clean[..clean.len() - 9]).unwrap();
    assert!(matches!(
        DiskIndex::open(dir.path(), OpenOptionsIndex::default()),
        Err(IndexError::PqFile(_))
    ));
    // Pivots from another index (different PQ size) do not match this graph.
    let other = tempfile::tempdir().unwrap();
    let base = read_vectors(&fixture("base.u8bin")).unwrap().prefix(2_000);
    build_index(base, Metric::L2, &params(16, 32, 16), other.path(), &|_, _| {}).unwrap();
    std::fs::write(&codes, &clean).unwrap();
    std::fs::copy(other.path().join(PIVOTS_FILE), dir.path().join(PIVOTS_FILE)).unwrap();
    assert!(matches!(
        DiskIndex::open(dir.path(), OpenOptionsIndex::default()),
        Err(IndexError::Mismatch(_))
    ));
}

/// Rewrites the index in `src` as a version 1 file in label order (no packing, no labels): the
/// same graph and codes, as builds before sector packing wrote them.
fn unpacked_copy(src: &Path, dst: &Path) {
    use quiver_diskgraph::layout::{Header, IndexReader, IndexWriter};
    use quiver_diskgraph::pq::{read_codes, write_codes};
    let r = IndexReader::open(&src.join(GRAPH_FILE)).unwrap();
    let h = *r.header();
    let n = h.n as usize;
    let mut buf = Vec::new();
    // Per position: (label, vector bytes, neighbour positions).
    let nodes: Vec<(u32, Vec<u8>, Vec<u32>)> = (0..n as u32)
        .map(|p| {
            let node = r.read_node(p, &mut buf).unwrap();
            (node.label, node.vector.to_vec(), node.neighbours.clone())
        })
        .collect();
    let label_of: Vec<u32> = nodes.iter().map(|x| x.0).collect();
    let mut position_of = vec![u32::MAX; n];
    for (p, &l) in label_of.iter().enumerate() {
        position_of[l as usize] = p as u32;
    }
    let v1 = Header { version: 1, entry: label_of[h.entry as usize], ..h };
    let mut w = IndexWriter::create(&dst.join(GRAPH_FILE), v1).unwrap();
    for (label, &p) in position_of.iter().enumerate() {
        let (_, v, nb) = &nodes[p as usize];
        let nb: Vec<u32> = nb.iter().map(|&q| label_of[q as usize]).collect();
        w.push(v, &nb, label as u32).unwrap();
    }
    w.finish().unwrap();
    let (m, codes) = read_codes(&src.join(CODES_FILE)).unwrap();
    let mut unpacked = vec![0u8; codes.len()];
    for (p, &l) in label_of.iter().enumerate() {
        unpacked[l as usize * m..(l as usize + 1) * m].copy_from_slice(&codes[p * m..(p + 1) * m]);
    }
    write_codes(&dst.join(CODES_FILE), m, &unpacked).unwrap();
    std::fs::copy(src.join(PIVOTS_FILE), dst.join(PIVOTS_FILE)).unwrap();
}

#[test]
fn packed_sectors_save_reads_without_losing_recall_and_old_unpacked_files_still_search() {
    let (dir, queries) = bigann_index();
    let old = tempfile::tempdir().unwrap();
    unpacked_copy(dir.path(), old.path());
    let gt = quiver_diskgraph::data::read_ivecs(&fixture("groundtruth.l2.ivecs")).unwrap();
    let (packed, unpacked) =
        (open(dir.path(), Backend::Auto, 0), open(old.path(), Backend::Auto, 0));
    assert_eq!((packed.header().version, unpacked.header().version), (2, 1));
    let p = SearchParams { k: 10, list_size: 30, beam_width: 4 };
    let mut totals = [(0u64, 0usize); 2];
    for (index, total) in [&packed, &unpacked].into_iter().zip(&mut totals) {
        let mut s = index.searcher().unwrap();
        for (qi, truth) in gt.iter().enumerate().take(queries.len()) {
            let (found, stats) = s.search(queries.row(qi), p).unwrap();
            total.0 += stats.ios;
            total.1 += found.iter().filter(|n| truth[..10].contains(&n.id)).count();
        }
    }
    let [(packed_ios, packed_hits), (unpacked_ios, unpacked_hits)] = totals;
    eprintln!("reads {packed_ios} vs {unpacked_ios}; hits {packed_hits} vs {unpacked_hits}");
    // Both report caller ids (labels): recall is measured against the same ground truth.
    assert!(unpacked_hits as f64 / 10_000.0 >= 0.9, "unpacked recall {unpacked_hits}");
    assert!(packed_hits + 50 >= unpacked_hits, "recall {packed_hits} vs {unpacked_hits}");
    assert!(
        (packed_ios as f64) < 0.9 * unpacked_ios as f64,
        "reads: packed {packed_ios}, unpacked {unpacked_ios}"
    );
}

/// Deleted rows stay waypoints: a search that rejects half the labels walks the same graph and
/// returns only accepted labels, with recall over the accepted rows near that of a full search
/// (the engine once searched for k + deleted_count results instead, so its cost grew with the
/// number of deletions).
#[test]
fn rejected_labels_are_walked_through_but_never_returned() {
    let (dir, queries) = bigann_index();
    let base = read_vectors(&fixture("base.u8bin")).unwrap();
    let ix = open(dir.path(), Backend::Pread, 0);
    let mut s = ix.searcher().unwrap();
    let p = SearchParams { k: 10, list_size: 80, beam_width: 4 };
    for (name, keep) in [("10%", 10u32), ("50%", 2)] {
        let accept = |label: u32| !label.is_multiple_of(keep);
        let (mut hits, mut total, mut ios) = (0usize, 0usize, 0u64);
        for qi in 0..200 {
            let (got, st) = s.search_accepting(queries.row(qi), p, &accept).unwrap();
            assert_eq!(got.len(), 10, "{name} query {qi}");
            assert!(got.iter().all(|n| accept(n.id)), "{name} query {qi}: a rejected label");
            // Brute force over the accepted rows.
            let q = queries.row(qi).to_f32();
            let mut all: Vec<(f32, u32)> = (0..base.len() as u32)
                .filter(|&i| accept(i))
                .map(|i| {
                    let x = base.row(i as usize).to_f32();
                    (q.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum(), i)
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0));
            hits += got.iter().filter(|n| n.distance <= all[9].0).count().min(10);
            total += 10;
            ios += st.ios;
        }
        let recall = hits as f64 / total as f64;
        assert!(recall >= 0.93, "{name} rejected: recall@10 over the accepted rows {recall}");
        assert!(ios > 0);
    }
}

/// A search state carries the ring and buffers from one index to another: results equal those of
/// fresh searchers, whichever index the state last served.
#[test]
fn a_reused_search_state_gives_the_results_of_a_fresh_searcher() {
    let (dir, queries) = bigann_index();
    let small = tempfile::tempdir().unwrap();
    let set = VectorSet::from_f32(16, &synthetic(500, 16, 9)).unwrap();
    build_index(set, Metric::L2, &params(16, 32, 8), small.path(), &|_, _| {}).unwrap();
    let big = open(dir.path(), Backend::IoUring, 0);
    let other = open(small.path(), Backend::IoUring, 0);
    let p = SearchParams { k: 10, list_size: 40, beam_width: 4 };
    let mut state = Some(big.searcher().unwrap().into_state());
    for qi in 0..30 {
        let fresh = big.searcher().unwrap().search(queries.row(qi), p).unwrap();
        let mut s = big.searcher_with(state.take().unwrap()).unwrap();
        let (got, stats) = s.search(queries.row(qi), p).unwrap();
        assert_eq!((got, stats.ios), (fresh.0, fresh.1.ios), "query {qi}");
        // The same state through the other index (another dimension and PQ table size).
        let q2 = vec![0.25f32; 16];
        let want = other.searcher().unwrap().search(Row::F32(&q2), p).unwrap();
        let mut s2 = other.searcher_with(s.into_state()).unwrap();
        assert_eq!(s2.search(Row::F32(&q2), p).unwrap().0, want.0);
        state = Some(s2.into_state());
    }
}

fn with_cache(cache: &std::sync::Arc<SectorCache>) -> OpenOptionsIndex {
    OpenOptionsIndex { sector_cache: Some(std::sync::Arc::clone(cache)), ..Default::default() }
}

/// Every query of the fixture: (results, disk reads, cache hits).
fn search_all(index: &DiskIndex, queries: &VectorSet) -> (Vec<Vec<(u32, f32)>>, u64, u64) {
    let mut s = index.searcher().unwrap();
    let (mut results, mut ios, mut hits) = (Vec::new(), 0, 0);
    for q in 0..queries.len() {
        let (found, stats) = s.search(queries.row(q), SearchParams::default()).unwrap();
        results.push(found.iter().map(|n| (n.id, n.distance)).collect());
        ios += stats.ios;
        hits += stats.cache_hits;
    }
    (results, ios, hits)
}

/// Recall@10 of `results` against the fixture's ground-truth distances.
fn recall(results: &[Vec<(u32, f32)>]) -> f64 {
    let gt_dist = read_vectors(&fixture("groundtruth.l2.dist.fvecs")).unwrap();
    let hits: usize = results
        .iter()
        .enumerate()
        .map(|(qi, found)| {
            let Row::F32(d) = gt_dist.row(qi) else { unreachable!() };
            found.iter().filter(|n| n.1 <= d[9]).count().min(10)
        })
        .sum();
    hits as f64 / (10 * results.len()) as f64
}

/// A shared sector cache changes where bytes come from, not the answers' quality: recall with
/// a cold and a warm cache stays that of the disk-only search, and a second pass over the same
/// queries is served from RAM (a cache large enough for the whole graph leaves no read to
/// repeat). A cached node is expanded at once rather than after the reads in flight, so the
/// walk's order, and at small list sizes a result, may differ; the recall may not.
#[test]
fn a_shared_sector_cache_serves_repeated_searches_from_ram_at_the_same_recall() {
    let (dir, queries) = bigann_index();
    let plain = open(dir.path(), Backend::Auto, 0);
    let (want, cold_ios, _) = search_all(&plain, &queries);
    let graph_bytes = std::fs::metadata(dir.path().join(GRAPH_FILE)).unwrap().len() as usize;
    let cache = std::sync::Arc::new(SectorCache::new(4 * graph_bytes));
    let cached = DiskIndex::open(dir.path(), with_cache(&cache)).unwrap();
    let (first, first_ios, _) = search_all(&cached, &queries);
    let base = recall(&want);
    assert!(base >= 0.95 && recall(&first) >= base - 0.01, "cold cache: {}", recall(&first));
    assert!(first_ios < cold_ios, "queries share sectors: {first_ios} vs {cold_ios}");
    let (second, second_ios, second_hits) = search_all(&cached, &queries);
    assert!(recall(&second) >= base - 0.01, "warm cache: {} vs {base}", recall(&second));
    assert_eq!(second_ios, 0, "every node read once is cached");
    assert!(second_hits > 0);
    let st = cache.stats();
    assert!(st.bytes <= st.capacity && st.entries as u64 == st.inserts, "{st:?}");
}

/// Index keys keep indexes apart in one cache: a second index opened on the same files (as a
/// rebuilt index would be) never gets the first one's sectors.
#[test]
fn two_indexes_sharing_a_cache_never_see_each_others_sectors() {
    let (dir, queries) = bigann_index();
    let cache = std::sync::Arc::new(SectorCache::new(64 << 20));
    let a = DiskIndex::open(dir.path(), with_cache(&cache)).unwrap();
    search_all(&a, &queries);
    let b = DiskIndex::open(dir.path(), with_cache(&cache)).unwrap();
    let mut s = b.searcher().unwrap();
    let (_, stats) = s.search(queries.row(0), SearchParams::default()).unwrap();
    assert_eq!(stats.cache_hits, 0, "b's first search found a's sectors");
    assert!(stats.ios > 0);
}

/// Only verified bytes join the cache: a sector that fails its checksum is an error and is not
/// admitted, so no later search can be handed it from RAM.
#[test]
fn a_corrupt_sector_is_never_admitted_to_the_shared_cache() {
    let (dir, queries) = bigann_index();
    let graph = dir.path().join(GRAPH_FILE);
    let index = open(dir.path(), Backend::Auto, 0);
    let sector = index.header().locate(index.header().entry).sector as usize;
    drop(index);
    let mut bytes = std::fs::read(&graph).unwrap();
    bytes[sector * SECTOR + 10] ^= 0xFF;
    std::fs::write(&graph, &bytes).unwrap();
    let cache = std::sync::Arc::new(SectorCache::new(64 << 20));
    let opts = OpenOptionsIndex { start_candidates: Some(1), ..with_cache(&cache) };
    let index = DiskIndex::open(dir.path(), opts).unwrap();
    let mut s = index.searcher().unwrap();
    for _ in 0..2 {
        let got = s.search(queries.row(0), SearchParams::default());
        assert!(matches!(got, Err(SearchError::Layout(LayoutError::Corrupt { .. }))), "{got:?}");
    }
    let st = cache.stats();
    assert_eq!((st.inserts, st.entries, st.hits), (0, 0, 0), "{st:?}");
}

#[test]
fn ranking_given_labels_is_exact_brute_force_over_them_for_every_metric() {
    // What a filtered search does when few rows pass: the k nearest of just those rows, read
    // from the index's sectors (mates in one sector read once), at their true distances.
    let (n, dim) = (3_000, 24);
    let raw = synthetic(n, dim, 21);
    let qs = VectorSet::from_f32(dim, &synthetic(10, dim, 22)).unwrap();
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let (data, dir) = metric_index(&raw, dim, metric);
        let index = open(dir.path(), Backend::Auto, 0);
        let mut s = index.searcher().unwrap();
        // Every 37th row and a run of neighbours (likely sector mates), with a repeat.
        let mut labels: Vec<u32> = (0..n as u32).step_by(37).chain(1000..1040).collect();
        labels.push(74);
        let mut distinct = labels.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut hits_short = 0;
        for qi in 0..qs.len() {
            let q = qs.row(qi).to_f32();
            let truth = |i: u32| true_distance(metric, &q, &data.row(i as usize).to_f32());
            let mut want: Vec<(f32, u32)> = labels.iter().map(|&l| (truth(l), l)).collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            want.dedup_by_key(|w| w.1);
            // A list as long as the labels: every one ranked exactly.
            let p = SearchParams { k: 10, list_size: labels.len(), beam_width: 4 };
            let (found, stats) = s.search_among(qs.row(qi), &labels, p).unwrap();
            let got: Vec<u32> = found.iter().map(|f| f.id).collect();
            let want_ids: Vec<u32> = want.iter().take(10).map(|w| w.1).collect();
            assert_eq!(got, want_ids, "{metric}, query {qi}");
            for (f, w) in found.iter().zip(&want) {
                assert!((f.distance - w.0).abs() <= 1e-3 * (1.0 + w.0.abs()), "{metric}");
            }
            assert_eq!(stats.exact_distances, 121, "each distinct label once");
            assert!(stats.ios < 121, "sector mates share a read ({} reads)", stats.ios);
            // A list of 30: the 30 nearest by PQ are read, and the true nearest are among them.
            let p = SearchParams { k: 10, list_size: 30, beam_width: 4 };
            let (short, stats) = s.search_among(qs.row(qi), &distinct, p).unwrap();
            assert_eq!((stats.pq_distances, stats.exact_distances), (121, 30), "{metric}");
            let hits = short.iter().filter(|f| want_ids.contains(&f.id)).count();
            hits_short += hits;
            assert!(short.iter().all(|f| labels.contains(&f.id)), "only the given labels");
        }
        assert!(hits_short >= 90, "{metric}: {hits_short} of 100 found from a list of 30");
    }
    // A label the index does not hold is a typed error, not a panic.
    let (_, dir) = metric_index(&raw, dim, Metric::L2);
    let index = open(dir.path(), Backend::Pread, 0);
    let p = SearchParams { k: 10, list_size: 1, beam_width: 4 };
    let err = index.searcher().unwrap().search_among(qs.row(0), &[5, n as u32], p).unwrap_err();
    assert!(matches!(err, SearchError::Query(_)), "{err}");
}

#[test]
fn ranking_given_labels_reads_through_the_shared_cache_with_the_same_result() {
    // The first ranking reads the sectors and admits them; the same ranking again takes them
    // from RAM: no disk read, the same neighbours at the same distances.
    let (dir, queries) = bigann_index();
    let cache = std::sync::Arc::new(SectorCache::new(64 << 20));
    let index = DiskIndex::open(dir.path(), with_cache(&cache)).unwrap();
    let plain = open(dir.path(), Backend::Auto, 0);
    let labels: Vec<u32> = (0..index.header().n as u32).step_by(13).collect();
    let p = SearchParams { k: 10, list_size: 40, beam_width: 4 };
    let mut s = index.searcher().unwrap();
    let mut uncached = plain.searcher().unwrap();
    let mut cold_reads = 0;
    for q in 0..20 {
        let (first, cold) = s.search_among(queries.row(q), &labels, p).unwrap();
        let (again, warm) = s.search_among(queries.row(q), &labels, p).unwrap();
        let (without, _) = uncached.search_among(queries.row(q), &labels, p).unwrap();
        assert_eq!(first, again, "query {q}");
        assert_eq!(first, without, "query {q}: the cache changes nothing but the reads");
        cold_reads += cold.ios;
        assert_eq!((warm.ios, warm.cache_hits > 0), (0, true), "query {q}: the second does not");
    }
    assert!(cold_reads > 0, "the first rankings read from disk");
}

/// Warming reads every node sector into the shared cache, verified: afterwards a search reads
/// nothing from disk and finds what a cold search finds. A warm that admitted unverified or
/// misplaced sectors would change results; one that stopped early would leave reads.
#[test]
fn a_warmed_cache_answers_every_search_from_memory_with_the_same_results() {
    let (dir, queries) = bigann_index();
    let cold = search_all(&open(dir.path(), Backend::IoUring, 0), &queries);
    let cache = std::sync::Arc::new(SectorCache::new(64 << 20));
    let index = DiskIndex::open(dir.path(), with_cache(&cache)).unwrap();
    let sectors = index.header().n.div_ceil(index.header().nodes_per_sector().max(1) as u64);
    assert_eq!(index.warm_shared_cache().unwrap() as u64, sectors, "every node sector admitted");
    let (results, ios, hits) = search_all(&index, &queries);
    assert_eq!(results, cold.0);
    assert_eq!(ios, 0, "no read left for the disk");
    assert!(hits > 0);
    // A cache too small for the index stops at its capacity instead of churning.
    let small = std::sync::Arc::new(SectorCache::new(1 << 20));
    let index = DiskIndex::open(dir.path(), with_cache(&small)).unwrap();
    let admitted = index.warm_shared_cache().unwrap() as u64;
    let evicted = small.stats().evictions;
    assert!(admitted < sectors && evicted <= 1, "{admitted} of {sectors}, {evicted} evicted");
    // Without a shared cache there is nothing to warm.
    assert_eq!(open(dir.path(), Backend::IoUring, 0).warm_shared_cache().unwrap(), 0);
}

/// Caches hold a node's sectors as verification left them (a spanning node's payloads moved
/// together over the checksum gaps) and searches parse them as they are, without verifying
/// again. Nodes of 1,100 floats span two sectors. Served wholly from the index's own cache
/// (filled at open) or wholly from a warmed shared cache, walks and rankings give the same
/// answers, and every distance reported is the true one: a cache that kept the sectors as
/// read, or reassembled them twice, would hand the parser a vector with a checksum in its
/// middle. (From disk the walk's order differs — cached nodes are expanded at once — so its
/// answers are checked for truth, not equality.)
#[test]
fn spanning_nodes_search_the_same_from_disk_and_from_either_cache() {
    let dim = 1_100;
    let raw = synthetic(600, dim, 11);
    let (data, dir) = metric_index(&raw, dim, Metric::L2);
    let disk = open(dir.path(), Backend::IoUring, 0);
    assert!(disk.header().sectors_per_node() > 1, "the test needs spanning nodes");
    let own = open(dir.path(), Backend::IoUring, 600);
    let cache = std::sync::Arc::new(SectorCache::new(64 << 20));
    let shared = DiskIndex::open(dir.path(), with_cache(&cache)).unwrap();
    assert_eq!(shared.warm_shared_cache().unwrap(), 600, "every node admitted");
    let p = SearchParams { k: 10, list_size: 40, beam_width: 4 };
    let labels: Vec<u32> = (0..600).step_by(7).collect();
    let mut searchers = [&disk, &own, &shared].map(|ix| ix.searcher().unwrap());
    let truth = |q: usize, found: &[quiver_diskgraph::search::Neighbour]| {
        let x = data.row(q).to_f32();
        for n in found {
            let y = data.row(n.id as usize).to_f32();
            assert_eq!(n.distance, distance_active(Metric::L2, Row::F32(&x), Row::F32(&y)));
        }
        assert_eq!(found[0].id as usize, q, "a stored row finds itself");
    };
    for qi in (0..600).step_by(37) {
        let q = data.row(qi);
        let [from_disk, from_own, from_shared] = &mut searchers;
        let (found, stats) = from_disk.search(q, p).unwrap();
        assert!(stats.ios > 0 && stats.cache_hits == 0);
        truth(qi, &found);
        let (want, stats) = from_own.search(q, p).unwrap();
        assert_eq!((stats.ios, stats.cache_hits > 0), (0, true), "query {qi}: {stats:?}");
        truth(qi, &want);
        let (got, stats) = from_shared.search(q, p).unwrap();
        assert_eq!((stats.ios, stats.cache_hits > 0), (0, true), "query {qi}: {stats:?}");
        assert_eq!(got, want, "query {qi}");
        let want = from_disk.search_among(q, &labels, p).unwrap().0;
        assert_eq!(from_shared.search_among(q, &labels, p).unwrap().0, want, "query {qi}");
    }
    assert_eq!(cache.stats().misses, 0, "the warmed cache answered every lookup");
}

/// The two halves of a ranking split across indexes must make the whole: the positions
/// `pq_nearest_among` keeps, read by `rank_positions`, give what `search_among` gives with the
/// same list (the same nodes read, the same exact ranking), with PQ distances that order the
/// kept nodes as the index's codes do. Positions out of order or past the index are refused.
#[test]
fn a_ranking_split_in_two_phases_gives_what_the_whole_ranking_gives() {
    let (n, dim) = (3_000, 24);
    let raw = synthetic(n, dim, 31);
    let qs = VectorSet::from_f32(dim, &synthetic(8, dim, 32)).unwrap();
    let (_, dir) = metric_index(&raw, dim, Metric::L2);
    let index = open(dir.path(), Backend::Auto, 0);
    let mut s = index.searcher().unwrap();
    let labels: Vec<u32> = (0..n as u32).step_by(11).collect();
    for qi in 0..qs.len() {
        let p = SearchParams { k: 10, list_size: 25, beam_width: 4 };
        let (whole, _) = s.search_among(qs.row(qi), &labels, p).unwrap();
        let kept = s.pq_nearest_among(qs.row(qi), &labels, 25).unwrap();
        assert_eq!(kept.len(), 25, "query {qi}");
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "ascending positions");
        let positions: Vec<u32> = kept.iter().map(|k| k.0).collect();
        let (split, stats) = s.rank_positions(qs.row(qi), &positions, p).unwrap();
        assert_eq!(split, whole, "query {qi}");
        assert_eq!(stats.exact_distances, 25);
        // Fewer labels than asked: all of them, each with its PQ distance.
        let few = s.pq_nearest_among(qs.row(qi), &labels[..7], 25).unwrap();
        assert_eq!(few.len(), 7);
        assert!(few.iter().all(|k| k.1.is_finite() && k.1 >= 0.0));
    }
    let p = SearchParams { k: 10, list_size: 10, beam_width: 4 };
    for bad in [vec![5u32, 3], vec![4, 4], vec![1, n as u32]] {
        let err = s.rank_positions(qs.row(0), &bad, p).unwrap_err();
        assert!(matches!(err, SearchError::Query(_)), "{bad:?}: {err}");
    }
    assert!(s.pq_nearest_among(qs.row(0), &labels, 0).is_err(), "keep 0");
}
