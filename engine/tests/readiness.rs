//! "Indexed" must mean indexed. After 100k rows were put, `wait-for-indexing` and
//! `check_readiness` used to answer done / READY at once while every row was still in the
//! in-memory table (searched exactly, no segment at all), and an idle in-memory table was never
//! flushed. These tests pin down that pending work counts the in-memory rows, that an idle table
//! is flushed and indexed by itself, and that waiting for indexing flushes first.

mod common;

use std::time::{Duration, Instant};

use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options};

const DIM: usize = 8;

fn put(db: &Database, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(4, i, DIM)).collect();
    db.insert("c", &batch(&ids, &rows)).unwrap();
}

#[test]
fn an_idle_in_memory_table_is_flushed_and_indexed_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().min_index_rows(64).idle_flush(Some(Duration::from_millis(200)));
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    put(&db, 0..500);
    assert!(db.indexing_pending(), "500 rows in memory are not indexed");
    assert!(!db.background_pending(), "no segment yet: nothing for the background worker");
    let started = Instant::now();
    while db.indexing_pending() {
        assert!(started.elapsed() < Duration::from_secs(60), "never flushed: {:?}", db.stats("c"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = db.stats("c").unwrap();
    assert_eq!((stats.memtable_rows, stats.segments, stats.indexed_segments), (0, 1, 1));
    assert_eq!(stats.rows, 500);
}

#[test]
fn waiting_for_indexing_flushes_first_and_then_waits_for_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().min_index_rows(64).idle_flush(None);
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    put(&db, 0..300);
    std::thread::sleep(Duration::from_millis(300));
    assert!(db.indexing_pending(), "without idle flushes the rows stay in memory");
    assert!(db.wait_indexed(Duration::from_secs(60)).unwrap());
    assert!(!db.indexing_pending());
    let stats = db.stats("c").unwrap();
    assert_eq!((stats.memtable_rows, stats.indexed_segments), (0, 1), "{stats:?}");
    // Rows below the index threshold count as done once in a segment (searched exactly).
    put(&db, 1000..1010);
    assert!(db.wait_indexed(Duration::from_secs(60)).unwrap());
    let stats = db.stats("c").unwrap();
    assert_eq!((stats.memtable_rows, stats.segments, stats.indexed_segments), (0, 2, 1));
}
