//! Reads racing every kind of change at once. Searches and gets take `Arc` views of the state
//! and release the lock before their I/O, while flushes renumber in-memory rows, merges swap
//! segments out (and remove their files), index builds swap vectors for an index, and deletes
//! copy a segment's deletion set. A view that mixed two states would show a deleted row, lose an
//! acknowledged one, or read a row from the wrong place. Here a writer inserts and deletes, the
//! background worker flushes, merges and indexes continuously, and readers check every answer
//! against what had been acknowledged before they asked.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options, SearchParams};

const DIM: usize = 8;
const ROWS: u64 = 6000;
const BATCH: u64 = 100;

/// Rows whose id is a multiple of this are deleted right after they are inserted.
const DOOMED_EVERY: u64 = 5;

fn check_reads(db: &Database, inserted: &AtomicU64, deleted: &AtomicU64, seed: u64) -> usize {
    let mut checks = 0;
    let mut x = seed | 1;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let exact = SearchParams { k: 3, exact: true, ..SearchParams::default() };
    let approximate = SearchParams { k: 3, list_size: 64, ..SearchParams::default() };
    loop {
        // Whatever was acknowledged before the read must be seen by it.
        let acked_inserts = inserted.load(Ordering::SeqCst);
        let acked_deletes = deleted.load(Ordering::SeqCst);
        if acked_inserts == 0 {
            std::thread::yield_now();
            continue;
        }
        let id = next(acked_inserts);
        let doomed = id % DOOMED_EVERY == 0;
        let v = vector(5, id, DIM);
        let got = db.get("c", &UInt64Array::from(vec![id])).unwrap();
        let hits = db.search("c", &v, &exact).unwrap();
        if doomed && id < acked_deletes {
            assert_eq!(got.num_rows(), 0, "deleted row {id} came back from get");
            assert!(!ids(&hits).contains(&id), "deleted row {id} came back from search");
        } else if !doomed {
            assert_eq!(got.num_rows(), 1, "acknowledged row {id} missing from get");
            assert_eq!(vectors(&got)[0], v, "row {id} read from the wrong place");
            assert_eq!(ids(&hits)[0], id, "acknowledged row {id} not its own nearest");
            assert_eq!(distances(&hits)[0], 0.0);
            // The walk is approximate; what it returns must still be live and whole.
            let walked = db.search("c", &v, &approximate).unwrap();
            for w in ids(&walked) {
                assert!(w % DOOMED_EVERY != 0 || w >= acked_deletes, "deleted {w} walked back");
            }
        }
        checks += 1;
        if acked_inserts >= ROWS && acked_deletes >= ROWS {
            return checks;
        }
    }
}

#[test]
fn reads_during_flushes_merges_and_index_builds_see_exactly_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .memtable_bytes(64 << 10)
        .min_index_rows(400)
        .merge_min_segments(3)
        .idle_flush(None);
    let db = Arc::new(Database::open(dir.path(), opts).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let inserted = Arc::new(AtomicU64::new(0));
    let deleted = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(3));

    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (db, inserted, deleted, start) =
                (db.clone(), inserted.clone(), deleted.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                check_reads(&db, &inserted, &deleted, 0x9E37_79B9 + r)
            })
        })
        .collect();
    start.wait();
    let mut first = 0;
    while first < ROWS {
        let ids_now: Vec<u64> = (first..first + BATCH).collect();
        let rows: Vec<Vec<f32>> = ids_now.iter().map(|&i| vector(5, i, DIM)).collect();
        db.insert("c", &batch(&ids_now, &rows)).unwrap();
        inserted.store(first + BATCH, Ordering::SeqCst);
        let doomed: Vec<u64> = ids_now.iter().copied().filter(|i| i % DOOMED_EVERY == 0).collect();
        db.delete("c", &UInt64Array::from(doomed)).unwrap();
        deleted.store(first + BATCH, Ordering::SeqCst);
        if first % 1000 == 0 {
            db.flush().unwrap();
        }
        first += BATCH;
    }
    let checks: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checks > 0);
    assert!(db.wait_indexed(std::time::Duration::from_secs(300)).unwrap(), "indexing finished");
    let stats = db.stats("c").unwrap();
    assert_eq!(stats.rows, ROWS - ROWS / DOOMED_EVERY, "{stats:?}");
    assert!(stats.indexed_segments >= 1, "{stats:?}");
    // Once quiet, every live row is found through the indexes as well.
    let exact = SearchParams { k: 1, exact: true, ..SearchParams::default() };
    for id in (1..ROWS).step_by(97).filter(|i| i % DOOMED_EVERY != 0) {
        let hits = db.search("c", &vector(5, id, DIM), &exact).unwrap();
        assert_eq!(ids(&hits), vec![id]);
    }
}
