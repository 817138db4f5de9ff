//! `Options::memory_budget` shares one number out among the engine's memory users. These tests
//! pin down what can silently break it: the sector cache must give up what the structures that
//! grow with the data take (a fixed-size cache beside growing key maps and index codes is how a
//! budget is overrun without any single part misbehaving), and a budget too tight for an index
//! build must not leave a segment unindexed for good (before, the build failed with a planner
//! error, the worker retried it every ten seconds forever, and writers stalled until
//! `max_stall` and then failed with "indexing is behind").

mod common;

use common::*;
use quiver_engine::{Database, MIN_MEMORY_BUDGET, Metric, Options, SearchParams, budget_shares};

const DIM: usize = 64;

fn put(db: &Database, from: u64, rows: u64) {
    let ids: Vec<u64> = (from..from + rows).collect();
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(9, i, DIM)).collect();
    db.insert("c", &batch(&ids, &vectors)).unwrap();
    db.flush().unwrap();
}

/// The structures that grow with the data, as the budget counts them.
fn grown(db: &Database) -> u64 {
    let r = db.stats("c").unwrap().resident;
    r.key_map + r.segment_keys + r.deletion_sets + r.indexes
}

#[test]
fn the_sector_cache_gets_what_the_growing_structures_leave_of_the_budget() {
    let budget = 64usize << 20;
    let reserved = (budget / 32 * budget_shares::RESERVED_32NDS) as u64;
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background(false).memory_budget(budget))
        .unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let m = db.memory();
    assert_eq!(m.budget, Some(budget as u64));
    assert_eq!(m.sector_cache_capacity, budget as u64 - reserved, "an empty database: {m:?}");

    let mut capacities = vec![m.sector_cache_capacity];
    for part in 0..3 {
        put(&db, part * 10_000, 10_000);
        db.run_background().unwrap();
        let m = db.memory();
        let g = grown(&db);
        assert!(g > 0);
        assert_eq!(m.sector_cache_capacity, (budget as u64 - reserved).saturating_sub(g), "{m:?}");
        capacities.push(m.sector_cache_capacity);
    }
    assert!(
        capacities.windows(2).all(|w| w[1] < w[0]),
        "the cache shrinks as data grows: {capacities:?}"
    );
    let st = db.stats("c").unwrap();
    assert_eq!((st.rows, st.indexed_segments), (30_000, st.segments));

    // Searches fill the cache no further than its capacity.
    for i in 0..50 {
        db.search("c", &vector(10, i, DIM), &SearchParams::default()).unwrap();
    }
    let m = db.memory();
    assert!(m.sector_cache > 0 && m.sector_cache <= m.sector_cache_capacity, "{m:?}");

    // An explicit cache size after the budget is a fixed cache, as documented.
    drop(db);
    let db = Database::open(
        dir.path(),
        Options::default().background(false).memory_budget(budget).sector_cache_bytes(1 << 20),
    )
    .unwrap();
    assert_eq!(db.memory().sector_cache_capacity, 1 << 20);
}

#[test]
fn a_budget_too_tight_for_a_build_still_indexes_every_segment() {
    // The smallest budget and wide rows: a merged segment's build needs more than the budget
    // leaves it (PQ training alone takes eight bytes per value of its sample).
    const WIDE: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background(false).memory_budget(1).merge_min_segments(0);
    let db = Database::open(dir.path(), opts).unwrap();
    assert_eq!(db.memory().budget, Some(MIN_MEMORY_BUDGET as u64), "raised to the minimum");
    db.create_collection("c", schema(WIDE as u32, Metric::L2)).unwrap();
    let ids: Vec<u64> = (0..3000).collect();
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(9, i, WIDE)).collect();
    db.insert("c", &batch(&ids, &vectors)).unwrap();
    db.flush().unwrap();
    db.run_background().unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!(st.rows, 3000);
    assert_eq!(st.indexed_segments, st.segments, "{st:?}");
    assert!(!db.background_pending());
    assert!(
        db.memory().over_budget_builds > 0,
        "the build did not need to go over: {:?}",
        db.memory()
    );
    let mut found = 0;
    for i in 0..20 {
        let q = vector(10, i, WIDE);
        let exact = SearchParams { exact: true, ..SearchParams::default() };
        let truth = ids_of(&db.search("c", &q, &exact).unwrap());
        let wide = SearchParams { list_size: 400, ..SearchParams::default() };
        let got = ids_of(&db.search("c", &q, &wide).unwrap());
        found += got.iter().filter(|id| truth.contains(id)).count();
    }
    // Uniform random 1024-d rows are hard for any graph; a broken index finds next to none.
    assert!(found >= 160, "recall {found} / 200");
}

fn ids_of(b: &arrow_array::RecordBatch) -> Vec<u64> {
    ids(b)
}
