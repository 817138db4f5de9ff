//! Segments too small for an index (under `min_index_rows`) are searched exactly, their vectors
//! in RAM, until merges take them two or more at a time. Flush backpressure must count them, or
//! they pile up without bound: under a 16 MiB budget with 1024-d rows every flushed table was
//! one, and 81 of them held 65 MB (`tests/serve_memory_budget.rs` pins that down through
//! `quiver serve`). But it must count only those a merge can take: the first version counted
//! every one, so one small segment in each of several collections, which no merge joins, stalled
//! every flush until `max_stall`. Longbow's parity client, which makes many small collections,
//! failed that way after 600 s.

mod common;

use std::time::Duration;

use common::*;
use quiver_engine::{Database, Metric, Options};

const DIM: usize = 8;

fn opts() -> Options {
    Options::default()
        .min_index_rows(1000)
        .max_unindexed_segments(2)
        .idle_flush(None)
        .max_stall(Duration::from_secs(5))
}

fn put(db: &Database, collection: &str, from: u64, rows: u64) {
    let ids: Vec<u64> = (from..from + rows).collect();
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(5, i, DIM)).collect();
    db.insert(collection, &batch(&ids, &vectors)).unwrap();
    db.flush().unwrap();
}

#[test]
fn one_small_segment_in_each_of_many_collections_does_not_stall_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts()).unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for name in &names {
        db.create_collection(name, schema(DIM as u32, Metric::L2)).unwrap();
    }
    // Each flush leaves one 10-row segment in its collection: nothing for a merge to join.
    for (i, name) in names.iter().enumerate() {
        put(&db, name, i as u64 * 10, 10);
    }
    put(&db, "c0", 1000, 10); // two in c0: merged by the background worker, not waited on for good
    assert!(db.wait_idle(Duration::from_secs(60)), "background work did not finish");
    for name in &names {
        let st = db.stats(name).unwrap();
        assert_eq!(st.segments, 1, "{name}: {st:?}");
    }
}

#[test]
fn small_segments_of_one_collection_are_merged_until_they_can_be_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts().merge_min_segments(4)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    for part in 0..25 {
        put(&db, "c", part * 100, 100);
    }
    assert!(db.wait_idle(Duration::from_secs(120)), "background work did not finish");
    let st = db.stats("c").unwrap();
    assert_eq!(st.rows, 2500);
    // 2,500 rows: merged into indexed segments of at least 1,000 rows, and at most one small
    // segment (under 1,000 rows) left holding its vectors.
    let small = st.segments - st.indexed_segments;
    assert!(small <= 1, "{small} small segments left: {st:?}");
    assert!(st.resident.unindexed_vectors < (1000 * DIM * 4) as u64, "{:?}", st.resident);
    assert!(st.indexed_segments >= 1, "{st:?}");
}
