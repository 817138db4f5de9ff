//! `Database::warm_sector_cache` reads every disk index into the sector cache after a restart,
//! so that searches answer from memory at once (and the filtered planner prices reads as
//! cached). What can break: a warm that admits sectors under the wrong key or unverified
//! (results change), that misses an index (searches still read the disk), or that runs with
//! the cache off (must do nothing, not fail).

mod common;

use common::*;
use quiver_engine::{Database, Metric, Options, SearchParams};

const DIM: usize = 16;

fn row(seed: u64, i: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|d| ((seed * 7919 + i * 104_729 + d * 1_299_709) % 1000) as f32 / 1000.0)
        .collect()
}

fn options() -> Options {
    Options::default().background(false).min_index_rows(500).merge_min_segments(0)
}

#[test]
fn a_warmed_cache_answers_searches_without_disk_reads_and_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::open(dir.path(), options()).unwrap();
        db.create_collection("w", schema(DIM as u32, Metric::L2)).unwrap();
        for part in 0..2u64 {
            let ids: Vec<u64> = (part * 3_000..(part + 1) * 3_000).collect();
            let rows: Vec<Vec<f32>> = ids.iter().map(|&i| row(1, i)).collect();
            db.insert("w", &batch(&ids, &rows)).unwrap();
            db.flush().unwrap();
        }
        db.run_background().unwrap();
        let stats = db.stats("w").unwrap();
        assert_eq!(stats.indexed_segments, 2, "{stats:?}");
    }
    let params = SearchParams { k: 10, list_size: 40, ..SearchParams::default() };
    let queries: Vec<Vec<f32>> = (0..20).map(|i| row(2, i)).collect();
    let search_all = |db: &Database| -> Vec<Vec<u64>> {
        queries.iter().map(|q| ids(&db.search("w", q, &params).unwrap())).collect()
    };
    let cold = Database::open(dir.path(), options()).unwrap();
    let want = search_all(&cold);
    assert!(cold.stats("w").unwrap().index_reads > 0, "a cold cache reads the disk");
    drop(cold);

    let db = Database::open(dir.path(), options()).unwrap();
    let admitted = db.warm_sector_cache().unwrap();
    assert!(admitted > 0);
    let before = db.stats("w").unwrap().index_reads;
    assert_eq!(search_all(&db), want);
    assert_eq!(db.stats("w").unwrap().index_reads, before, "every read from the cache");
    drop(db);

    let off = Database::open(dir.path(), options().sector_cache_bytes(0)).unwrap();
    assert_eq!(off.warm_sector_cache().unwrap(), 0, "no cache: nothing to warm");
    assert_eq!(search_all(&off), want);
}
