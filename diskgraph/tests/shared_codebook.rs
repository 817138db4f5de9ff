//! Indexes built with one PQ codebook hold it once. Every index used to train and hold its own
//! pivots (256 × dim × 4 bytes: 256 KiB at 256-d), so a collection of many small indexes under a
//! small memory budget spent most of it on pivots: 128 indexes of 512 rows, 581 bytes a row.
//! What can break: a build that ignores the given codebook (its codes would not match a shared
//! one), an open that shares a codebook the index was not built with (wrong distances, found
//! only by recall), a codebook of another shape accepted silently.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::synthetic;
use quiver_diskgraph::data::{Metric, VectorSet};
use quiver_diskgraph::index::{
    BuildParams, IndexError, build_index, build_index_from_file_with, build_index_with,
};
use quiver_diskgraph::pq::{PqCodebook, PqParams};
use quiver_diskgraph::search::{DiskIndex, OpenOptionsIndex, SearchParams};
use quiver_diskgraph::vamana::VamanaParams;

const DIM: usize = 16;

fn params() -> BuildParams {
    BuildParams {
        graph: VamanaParams { max_degree: 16, list_size: 32, ..VamanaParams::default() },
        pq: PqParams { bytes: Some(8), ..PqParams::default() },
        ..BuildParams::default()
    }
}

fn rows(n: usize, seed: u64) -> VectorSet {
    VectorSet::from_f32(DIM, &synthetic(n, DIM, seed)).unwrap()
}

fn open_sharing(dir: &std::path::Path, pq: Option<Arc<PqCodebook>>) -> DiskIndex {
    DiskIndex::open(dir, OpenOptionsIndex { pq, ..OpenOptionsIndex::default() }).unwrap()
}

/// Three indexes in `dir`: `a` trains a codebook on `a_rows` rows; `b` is built with `a`'s
/// codebook (from a file, as the engine builds) over `b_rows` others; `c` trains its own on
/// `other`. Returns `a` opened, its codebook, and the directories of `b` and `c`.
fn three_indexes(
    dir: &Path,
    a_rows: usize,
    b_rows: usize,
    other: VectorSet,
) -> (DiskIndex, Arc<PqCodebook>, PathBuf, PathBuf) {
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    build_index(rows(a_rows, 1), Metric::L2, &params(), &a, &|_, _| {}).unwrap();
    let first = open_sharing(&a, None);
    let shared = Arc::clone(first.shared_pq());
    let input = dir.join("b.fbin");
    common::write_fbin(&input, &synthetic(b_rows, DIM, 2), DIM);
    build_index_from_file_with(&input, Metric::L2, &params(), Some(&shared), &b, &|_, _, _| {})
        .unwrap();
    build_index(other, Metric::L2, &params(), &c, &|_, _| {}).unwrap();
    (first, shared, b, c)
}

#[test]
fn indexes_built_with_one_codebook_share_it_and_others_keep_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let (_first, shared, b, c) = three_indexes(tmp.path(), 2_000, 1_500, rows(1_500, 3));

    let second = open_sharing(&b, Some(Arc::clone(&shared)));
    assert!(Arc::ptr_eq(second.shared_pq(), &shared), "built with it: holds the shared one");
    let third = open_sharing(&c, Some(Arc::clone(&shared)));
    assert!(!Arc::ptr_eq(third.shared_pq(), &shared), "trained its own: keeps it");
    assert_ne!(**third.shared_pq(), *shared);

    // The shared index searches as well as its own codebook lets it: every row finds itself.
    let data = rows(1_500, 2);
    let mut s = second.searcher().unwrap();
    let sp = SearchParams { k: 1, list_size: 32, ..SearchParams::default() };
    let found = (0..200)
        .filter(|&i| {
            let (hits, _) = s.search(data.row(i), sp).unwrap();
            hits.first().is_some_and(|n| n.id == i as u32)
        })
        .count();
    assert!(found >= 190, "{found} of 200 rows found themselves");
}

#[test]
fn a_codebook_of_another_shape_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let wide = PqCodebook::train(
        &VectorSet::from_f32(2 * DIM, &synthetic(600, 2 * DIM, 5)).unwrap(),
        Metric::L2,
        &PqParams { bytes: Some(8), ..PqParams::default() },
    )
    .unwrap();
    let err =
        build_index_with(rows(600, 6), Metric::L2, &params(), Some(&wide), tmp.path(), &|_, _| {})
            .unwrap_err();
    assert!(matches!(err, IndexError::Mismatch(_)), "{err}");
}

/// A search state keeps the last query's PQ table (and its byte table) for the next index when
/// that index holds the same codebook: a query over many segments makes its table once. A
/// state that reused a table across two codebooks of one shape, or kept a table after the
/// query changed, would rank by the wrong distances; results must equal fresh searchers'.
#[test]
fn a_search_state_reuses_a_table_only_for_the_same_codebook_and_query() {
    let tmp = tempfile::tempdir().unwrap();
    // `c` over another spread, so that its codebook's centroids lie elsewhere (a codebook
    // trained on data like `a`'s could come out nearly the same and hide a stale table).
    let spread: Vec<f32> = synthetic(5_000, DIM, 3).iter().map(|x| x * 4.0 - 1.0).collect();
    let spread = VectorSet::from_f32(DIM, &spread).unwrap();
    let (first, shared, b, c) = three_indexes(tmp.path(), 5_000, 5_000, spread);
    let second = open_sharing(&b, Some(Arc::clone(&shared)));
    let third = open_sharing(&c, None);
    assert!(Arc::ptr_eq(second.shared_pq(), &shared));
    assert_ne!(**third.shared_pq(), *shared, "the same shape, another codebook");

    let sp = SearchParams { k: 10, list_size: 20, ..SearchParams::default() };
    // Six rows in seven: enough members for the byte-table ranking (4,096 and 16 L).
    let members: Vec<u32> = (0..5_000u32).filter(|i| i % 7 != 3).collect();
    let queries = rows(12, 7);
    let mut state = Some(first.searcher().unwrap().into_state());
    for q in 0..queries.len() {
        for index in [&first, &second, &third, &second, &first] {
            let fresh = index.searcher().unwrap().search(queries.row(q), sp).unwrap().0;
            let fresh_among =
                index.searcher().unwrap().search_among(queries.row(q), &members, sp).unwrap().0;
            let mut s = index.searcher_with(state.take().unwrap()).unwrap();
            // The ranking first: it must not lean on the plain search to drop a stale table.
            let (found, stats) = s.search_among(queries.row(q), &members, sp).unwrap();
            assert_eq!(found, fresh_among, "query {q}");
            // Ranked through bytes where they are fast: every member's sum, then the `f32`
            // distances of a few; elsewhere every member's `f32` distance once.
            let bytes = quiver_simd::Isa::active().has_fast_byte_tables();
            let scored = stats.pq_distances as usize;
            assert_eq!(scored > members.len(), bytes, "{stats:?}");
            assert_eq!(s.search(queries.row(q), sp).unwrap().0, fresh, "query {q}");
            state = Some(s.into_state());
        }
    }
}

/// A state handed to an index of another code size and back without a search in between
/// keeps the table it made for the first index whole: the table is sized when it is made, not
/// when the state changes hands (sizing it then left a reused table cut short).
#[test]
fn a_state_passed_through_an_index_of_another_code_size_keeps_its_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, narrow) = (tmp.path().join("a"), tmp.path().join("narrow"));
    build_index(rows(2_000, 1), Metric::L2, &params(), &a, &|_, _| {}).unwrap();
    let mut four = params();
    four.pq.bytes = Some(4);
    build_index(rows(2_000, 2), Metric::L2, &four, &narrow, &|_, _| {}).unwrap();
    let (wide, narrow) = (open_sharing(&a, None), open_sharing(&narrow, None));
    assert_ne!(wide.pq().bytes(), narrow.pq().bytes());
    let sp = SearchParams { k: 10, list_size: 20, ..SearchParams::default() };
    let queries = rows(5, 7);
    let mut state = Some(wide.searcher().unwrap().into_state());
    for q in 0..queries.len() {
        let fresh = wide.searcher().unwrap().search(queries.row(q), sp).unwrap().0;
        let mut s = wide.searcher_with(state.take().unwrap()).unwrap();
        assert_eq!(s.search(queries.row(q), sp).unwrap().0, fresh, "query {q}");
        // Through the narrow index without searching (a ranking of too few members to score).
        let mut s = narrow.searcher_with(s.into_state()).unwrap();
        assert_eq!(s.search_among(queries.row(q), &[0, 1], sp).unwrap().0.len(), 2);
        let mut s = wide.searcher_with(s.into_state()).unwrap();
        assert_eq!(s.search(queries.row(q), sp).unwrap().0, fresh, "query {q}, again");
        state = Some(s.into_state());
    }
}
