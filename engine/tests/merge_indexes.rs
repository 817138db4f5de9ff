//! A merge that produces a segment large enough for an index builds that index before it
//! commits. Before, a merge committed its segment unindexed, with every merged vector resident
//! (a 4M-row merge of f32 128-d rows held 2 GB), and searches scanned it exactly until the next
//! background step built its index. These tests pin down that the merged segment arrives with
//! its index, that nobody ever sees it without one, that no vector of it stays in RAM, that the
//! merge's scratch files go, and that its answers and deletions hold across a reopen.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::{Database, Metric, Options, SearchParams};

const DIM: usize = 16;
/// Rows of each flushed segment: two of them are below `MIN_INDEX_ROWS` too, so only the merge
/// of all three is indexed (two segments too small for an index are merged as soon as they
/// exist, into a segment still too small).
const SEGMENT_ROWS: u64 = 1200;
const MIN_INDEX_ROWS: usize = 3000;

fn opts() -> Options {
    Options::default().merge_min_segments(3).min_index_rows(MIN_INDEX_ROWS).idle_flush(None)
}

fn exact(k: usize) -> SearchParams {
    SearchParams { k, exact: true, ..SearchParams::default() }
}

fn put_segment(db: &Database, part: u64) {
    let ids: Vec<u64> = (part * SEGMENT_ROWS..(part + 1) * SEGMENT_ROWS).collect();
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(3, i, DIM)).collect();
    db.insert("c", &batch(&ids, &rows)).unwrap();
    db.flush().unwrap();
}

fn index_dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("indexes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn recall(db: &Database, deleted: &BTreeSet<u64>) -> usize {
    let mut found = 0;
    for i in 0..20 {
        let q = vector(4, i, DIM);
        let truth = ids(&db.search("c", &q, &exact(10)).unwrap());
        let got = ids(&db.search("c", &q, &SearchParams::default()).unwrap());
        assert!(got.iter().all(|id| !deleted.contains(id)), "a deleted row came back: {got:?}");
        found += got.iter().filter(|id| truth.contains(id)).count();
    }
    found
}

#[test]
fn a_merged_segment_is_committed_with_its_index_and_none_of_its_vectors_resident() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts().background(false)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    for part in 0..3 {
        put_segment(&db, part);
    }
    // Deletions in one input: it is re-encoded, the others copied row group by row group.
    let deleted: BTreeSet<u64> = (SEGMENT_ROWS..SEGMENT_ROWS + 100).collect();
    db.delete("c", &UInt64Array::from(deleted.iter().copied().collect::<Vec<_>>())).unwrap();
    let before = db.stats("c").unwrap();
    assert_eq!((before.segments, before.indexed_segments), (3, 0), "{before:?}");

    db.run_background().unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (1, 1), "{st:?}");
    assert_eq!(st.rows, 3 * SEGMENT_ROWS - 100);
    assert_eq!(st.resident.unindexed_vectors, 0, "{:?}", st.resident);
    assert_eq!(index_dir_names(dir.path()).len(), 1, "one index, no scratch: {:?}", {
        index_dir_names(dir.path())
    });
    assert!(recall(&db, &deleted) >= 190, "recall below 0.95");

    drop(db);
    let db = Database::open(dir.path(), opts().background(false)).unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments, st.rows), (1, 1, 3 * SEGMENT_ROWS - 100));
    assert!(recall(&db, &deleted) >= 190, "recall below 0.95 after reopen");
}

/// With the background worker running, a reader watching the collection never sees the merged
/// segment without its index.
#[test]
fn no_reader_sees_a_merged_segment_before_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(dir.path(), opts()).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen_unindexed_merge = 0;
            let mut observations = 0;
            while !done.load(Ordering::Relaxed) {
                let st = db.stats("c").unwrap();
                observations += 1;
                if st.segments == 1
                    && st.segment_rows == 3 * SEGMENT_ROWS
                    && st.indexed_segments == 0
                {
                    seen_unindexed_merge += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (seen_unindexed_merge, observations)
        })
    };
    for part in 0..3 {
        put_segment(&db, part);
    }
    assert!(db.wait_idle(Duration::from_secs(120)), "background work did not finish");
    done.store(true, Ordering::Relaxed);
    let (seen, observations) = watcher.join().unwrap();
    assert!(observations > 0);
    assert_eq!(seen, 0, "a merged segment was visible without its index ({observations} looks)");
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (1, 1), "{st:?}");
    assert!(recall(&db, &BTreeSet::new()) >= 190);
}
