//! A batch of queries is spread over the search pool's threads, so its answers come back from
//! other threads and in whatever order they finish. A batch that handed query i the answer of
//! query j, dropped a failed query's place (shifting every later answer), or let one bad query
//! fail the others would look fine on a batch of identical queries. These tests send distinct
//! queries over every kind of source at once (two disk indexes, an unindexed segment, the
//! memtable, deleted rows, a filter on an attribute) and check each answer against the same query searched
//! alone.

mod common;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::{
    CompareOp, Database, Literal, MAX_BATCH_QUERIES, Metric, Options, Predicate, QueryError,
    ReadError, SearchParams,
};

const DIM: usize = 8;

/// Two indexed segments, one unindexed, rows in memory, every seventh row deleted.
fn mixed_collection(dir: &std::path::Path) -> Database {
    let opts = Options::default()
        .background(false)
        .min_index_rows(300)
        .merge_min_segments(8)
        .idle_flush(None);
    let db = Database::open(dir, opts).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let put = |from: u64, to: u64| {
        let ids: Vec<u64> = (from..to).collect();
        let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(41, i, DIM)).collect();
        db.insert("c", &batch(&ids, &rows)).unwrap();
    };
    put(0, 600);
    db.flush().unwrap();
    put(600, 1_200);
    db.flush().unwrap();
    db.run_background().unwrap();
    put(1_200, 1_300); // below min_index_rows: searched exactly
    db.flush().unwrap();
    put(1_300, 1_350); // still in memory
    let doomed: Vec<u64> = (0..1_350).filter(|i| i % 7 == 0).collect();
    db.delete("c", &UInt64Array::from(doomed)).unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (3, 2), "the sources this test needs");
    db
}

fn queries(n: u64) -> Vec<Vec<f32>> {
    (0..n).map(|i| vector(42, i, DIM)).collect()
}

#[test]
fn each_query_of_a_batch_gets_its_own_answer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = mixed_collection(dir.path());
    let qs = queries(40);
    for params in [
        SearchParams { k: 7, list_size: 30, ..SearchParams::default() },
        SearchParams { k: 5, exact: true, ..SearchParams::default() },
        SearchParams {
            k: 4,
            list_size: 30,
            filter: Some(Predicate::compare("tag", CompareOp::Lt, Literal::Str("t5".into()))),
            ..SearchParams::default()
        },
    ] {
        let batched = db.search_batch("c", &qs, &params).unwrap();
        assert_eq!(batched.len(), qs.len());
        for (i, (q, got)) in qs.iter().zip(batched).enumerate() {
            let alone = db.search("c", q, &params).unwrap();
            let got = got.unwrap();
            assert_eq!(ids(&got), ids(&alone), "query {i} ({params:?}) got another answer");
            assert_eq!(distances(&got), distances(&alone), "query {i}");
            assert!(ids(&got).iter().all(|id| id % 7 != 0), "a deleted row came back");
            if params.filter.is_some() {
                let passes = |id: &u64| format!("t{id}").as_str() < "t5";
                assert!(ids(&got).iter().all(passes), "a filtered-out row came back");
            }
        }
    }
}

#[test]
fn a_bad_query_fails_alone_and_keeps_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = mixed_collection(dir.path());
    let mut qs = queries(9);
    qs[3] = vec![1.0; DIM + 1];
    qs[6][2] = f32::NAN;
    let params = SearchParams { k: 3, list_size: 20, ..SearchParams::default() };
    let got = db.search_batch("c", &qs, &params).unwrap();
    assert_eq!(got.len(), 9);
    for (i, r) in got.iter().enumerate() {
        match (i, r) {
            (3, Err(ReadError::Query(QueryError::Dimension { expected, got }))) => {
                assert_eq!((*expected, *got), (DIM, DIM + 1));
            }
            (6, Err(ReadError::Query(QueryError::NonFinite(_)))) => {}
            (3 | 6, other) => panic!("query {i} should have failed, got {other:?}"),
            (_, Ok(b)) => {
                assert_eq!(ids(b), ids(&db.search("c", &qs[i], &params).unwrap()), "query {i}")
            }
            (_, Err(e)) => panic!("good query {i} failed: {e}"),
        }
    }
}

#[test]
fn empty_oversized_and_unknown_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = mixed_collection(dir.path());
    let params = SearchParams::default();
    let none: Vec<Vec<f32>> = Vec::new();
    assert!(matches!(
        db.search_batch("c", &none, &params),
        Err(ReadError::Query(QueryError::BatchSize(0)))
    ));
    let too_many = vec![vec![0.5f32; DIM]; MAX_BATCH_QUERIES + 1];
    assert!(matches!(
        db.search_batch("c", &too_many, &params),
        Err(ReadError::Query(QueryError::BatchSize(n))) if n == MAX_BATCH_QUERIES + 1
    ));
    let bad_k = SearchParams { k: 0, ..SearchParams::default() };
    assert!(matches!(
        db.search_batch("c", &queries(2), &bad_k),
        Err(ReadError::Query(QueryError::K(0)))
    ));
    for r in db.search_batch("nope", &queries(2), &params).unwrap() {
        assert!(matches!(r, Err(ReadError::NotFound(ref n)) if n == "nope"), "{r:?}");
    }
}
