//! A collection's indexes share one PQ codebook in RAM. Each index used to train and hold its
//! own pivots, 256 × dim × 4 bytes whatever its size (128 KiB at 128-d): under a 16 MiB budget
//! 128 small indexes of 256-d rows held 581 bytes a row, most of it pivots, and the budget was
//! overrun fourfold. What can break: later indexes still holding their own copy (memory), an
//! index built with the shared codebook searching badly (recall), a reopen that loads a copy
//! per index again.

mod common;

use std::sync::Arc;

use common::*;
use quiver_engine::{Database, Metric, Options, SearchParams};

const DIM: usize = 128;
const ROWS: u64 = 2_000;
/// One index's pivots at this dimension.
const PIVOTS: u64 = 256 * DIM as u64 * 4;

fn indexes_bytes(db: &Database) -> u64 {
    db.stats("c").unwrap().resident.indexes
}

#[test]
fn small_indexes_share_one_codebook_and_still_find_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().background(false).min_index_rows(256).merge_min_segments(64);
    let db = Arc::new(Database::open(dir.path(), opts()).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut sizes = Vec::new();
    for part in 0..5 {
        let ids: Vec<u64> = (part * ROWS..(part + 1) * ROWS).collect();
        let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(21, i, DIM)).collect();
        db.insert("c", &batch(&ids, &vectors)).unwrap();
        db.flush().unwrap();
        db.run_background().unwrap();
        sizes.push(indexes_bytes(&db));
    }
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (5, 5), "five indexes, none merged");
    // The first index brings its pivots; each later one its codes and start candidates only.
    for w in sizes.windows(2) {
        let added = w[1] - w[0];
        assert!(
            added < PIVOTS,
            "an index added {added} bytes: it holds its own {PIVOTS} of pivots"
        );
    }

    // Every row still finds itself.
    let params = SearchParams { k: 1, list_size: 40, ..SearchParams::default() };
    let found = (0..5 * ROWS)
        .step_by(50)
        .filter(|&i| ids(&db.search("c", &vector(21, i, DIM), &params).unwrap()) == [i])
        .count();
    assert!(found >= 190, "{found} of 200 rows found themselves");

    let before = indexes_bytes(&db);
    drop(db);
    let db = Database::open(dir.path(), opts()).unwrap();
    assert_eq!(indexes_bytes(&db), before, "a reopen shares the codebook again");
}

#[test]
fn a_build_four_times_larger_than_the_codebook_trained_on_trains_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background(false).min_index_rows(256).merge_min_segments(64);
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut next = 0u64;
    let mut add = |rows: u64| {
        let ids: Vec<u64> = (next..next + rows).collect();
        next += rows;
        let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(22, i, DIM)).collect();
        let before = indexes_bytes(&db);
        db.insert("c", &batch(&ids, &vectors)).unwrap();
        db.flush().unwrap();
        db.run_background().unwrap();
        indexes_bytes(&db) - before
    };
    assert!(add(300) > PIVOTS, "the first index trains its codebook");
    assert!(add(300) < PIVOTS, "the next shares it");
    assert!(add(1_500) > PIVOTS, "five times the rows: trains its own");
    assert!(add(300) < PIVOTS, "and a later small index shares a codebook again");
    assert_eq!(db.stats("c").unwrap().indexed_segments, 4);
}

/// The pivots file of each index of collection `c`'s database in `dir`, by index directory.
fn pivots_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let idir = dir.join("indexes");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&idir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.extension().is_none())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(p.join(quiver_diskgraph::pq::PIVOTS_FILE)).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// A collection whose first index was small grows its index as rows arrive. Keeping that
/// index's codebook (trained on its 300 rows) past four times as many rows steered searches
/// badly (recall 0.947 at 1024-d), and rebuilding instead of growing left a collection of many
/// graphs under a tight budget (11 at 1M rows under 96 MiB). What can break: the growth keeping
/// the old codebook, rebuilding instead of growing, the collection not adopting the new
/// codebook (the next indexes built with the stale one), rows no longer found.
#[test]
fn an_index_grown_past_four_times_its_codebooks_rows_retrains_it_and_stays_one_index() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        Options::default()
            .background(false)
            .min_index_rows(256)
            .merge_min_segments(2)
            .max_growth_share(1.0)
    };
    let db = Database::open(dir.path(), opts()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut next = 0u64;
    let mut add = |rows: u64| {
        let ids: Vec<u64> = (next..next + rows).collect();
        next += rows;
        let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(23, i, DIM)).collect();
        db.insert("c", &batch(&ids, &vectors)).unwrap();
        db.flush().unwrap();
        db.run_background().unwrap();
    };
    add(300);
    let first = pivots_files(dir.path());
    assert_eq!(first.len(), 1, "one index");
    add(300);
    let stats = db.background_stats();
    assert_eq!((stats.index_grows, stats.index_retrains), (1, 0), "600 rows keep the codebook");
    assert_eq!(pivots_files(dir.path())[0].1, first[0].1, "the same codebook");
    add(600);
    let stats = db.background_stats();
    assert_eq!((stats.index_grows, stats.index_retrains), (2, 1), "1,200 rows retrain it");
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (1, 1), "still one index");
    let grown = pivots_files(dir.path());
    assert_ne!(grown[0].1, first[0].1, "a new codebook");
    let params = SearchParams { k: 1, list_size: 40, ..SearchParams::default() };
    let found = (0..1_200)
        .step_by(10)
        .filter(|&i| ids(&db.search("c", &vector(23, i, DIM), &params).unwrap()) == [i])
        .count();
    assert!(found >= 114, "{found} of 120 rows found themselves");

    // Reopened, the collection builds its next small index with the new codebook.
    drop(db);
    let opts = Options::default().background(false).min_index_rows(256).merge_min_segments(64);
    let db = Database::open(dir.path(), opts).unwrap();
    let ids: Vec<u64> = (5_000..5_300).collect();
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(23, i, DIM)).collect();
    db.insert("c", &batch(&ids, &vectors)).unwrap();
    db.flush().unwrap();
    db.run_background().unwrap();
    let after = pivots_files(dir.path());
    assert_eq!(after.len(), 2, "a second index");
    assert!(after.iter().all(|(_, p)| *p == grown[0].1), "built with the new codebook");
}
