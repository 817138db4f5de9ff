//! Deleted rows must cost nothing extra and never come back. The engine used to search each
//! segment for `k + deleted_count` results with the list size raised to match, so a segment with
//! 100k deleted rows ran a k = 100k search; now deleted rows stay waypoints of the graph walk but
//! never enter a result. This pins down that searches over an indexed segment with 10% and 50%
//! of its rows deleted return only live rows, with recall against brute force over the live
//! rows as high as without deletions.

mod common;

use std::collections::BTreeMap;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options, SearchParams};

const DIM: usize = 16;

fn recall(db: &Database, model: &BTreeMap<u64, Vec<f32>>, queries: u64) -> f64 {
    let p = SearchParams { k: 10, ..SearchParams::default() };
    let mut hits = 0;
    for qi in 0..queries {
        let q = vector(99, qi, DIM);
        let got = ids(&db.search("c", &q, &p).unwrap());
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|id| model.contains_key(id)), "query {qi}: a deleted row came back");
        let mut all: Vec<(f64, u64)> =
            model.iter().map(|(id, v)| (oracle_distance(Metric::L2, &q, v), *id)).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want: Vec<u64> = all.iter().take(10).map(|x| x.1).collect();
        hits += got.iter().filter(|id| want.contains(id)).count();
    }
    hits as f64 / (queries * 10) as f64
}

#[test]
fn searches_with_10_and_50_percent_deleted_return_live_rows_at_full_recall() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background(false).min_index_rows(64).merge_min_segments(0);
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let n = 4000u64;
    let ids_all: Vec<u64> = (0..n).collect();
    let rows: Vec<Vec<f32>> = ids_all.iter().map(|&i| vector(1, i, DIM)).collect();
    db.insert("c", &batch(&ids_all, &rows)).unwrap();
    db.flush().unwrap();
    db.run_background().unwrap();
    assert_eq!(db.stats("c").unwrap().indexed_segments, 1);
    let mut model: BTreeMap<u64, Vec<f32>> = ids_all.iter().copied().zip(rows).collect();
    let base = recall(&db, &model, 60);
    assert!(base >= 0.9, "recall without deletions {base}");

    for (name, every) in [("10%", 10u64), ("50%", 2)] {
        let doomed: Vec<u64> = model.keys().copied().filter(|id| id % every == 1).collect();
        db.delete("c", &UInt64Array::from(doomed.clone())).unwrap();
        for id in &doomed {
            model.remove(id);
        }
        let r = recall(&db, &model, 60);
        assert!(r >= base - 0.05, "{name} deleted: recall {r} against {base} without deletions");
        db.flush().unwrap(); // deletion files: the same after they are persisted
        assert!(recall(&db, &model, 20) >= base - 0.05);
    }
}
