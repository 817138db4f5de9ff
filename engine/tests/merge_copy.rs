//! Merges copy the column chunks of segments that lost no rows instead of decoding and
//! re-encoding them, so no Parquet decoder looks at those bytes on the way. These tests pin down
//! what that must not cost: a segment damaged on disk after it was opened is refused by its
//! checksum (not copied into a new file that then carries a fresh, valid checksum), the failed
//! merge leaves the old segments in place and no stray file, and merges of copied and
//! re-encoded segments keep every live row through later merges and reopens.

mod common;

use std::collections::BTreeMap;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options};

const DIM: usize = 8;

fn opts() -> Options {
    Options::default().background(false).row_group_rows(40).merge_min_segments(3)
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> =
        std::fs::read_dir(dir.join("segments")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn put(db: &Database, model: &mut BTreeMap<u64, Vec<f32>>, seed: u64, ids: &[u64]) {
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(seed, i, DIM)).collect();
    db.insert("c", &batch(ids, &rows)).unwrap();
    for (i, r) in ids.iter().zip(rows) {
        model.insert(*i, r);
    }
}

fn scanned(db: &Database) -> BTreeMap<u64, Vec<f32>> {
    scan_all(db, "c").into_iter().map(|(id, v, _)| (id, v)).collect()
}

#[test]
fn a_merge_refuses_to_copy_a_segment_damaged_after_it_was_opened() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    for part in 0..3u64 {
        put(&db, &mut model, 1, &(part * 100..part * 100 + 90).collect::<Vec<_>>());
        db.flush().unwrap();
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3);
    // Flip one byte in the middle of the second segment (inside a column chunk).
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&files[1], &bytes).unwrap();

    let err = db.run_background().expect_err("the merge must notice the damage");
    assert!(err.to_string().contains("checksum"), "names the cause: {err}");
    assert_eq!(segment_files(dir.path()), files, "old segments kept, no partial merged file");
    assert_eq!(db.stats("c").unwrap().segment_rows, 270, "nothing was swapped in");

    // Repaired (here: the byte flipped back), the merge goes through and loses nothing.
    bytes[mid] ^= 0x40;
    std::fs::write(&files[1], &bytes).unwrap();
    db.run_background().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(scanned(&db), model);
}

#[test]
fn rows_survive_repeated_merges_of_copied_and_reencoded_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    let mut next = 0u64;
    {
        let db = Database::open(dir.path(), opts()).unwrap();
        db.create_collection("c", schema(DIM as u32, Metric::Cosine)).unwrap();
        for round in 0..12u64 {
            let ids: Vec<u64> = (next..next + 70).collect();
            next += 70;
            put(&db, &mut model, round, &ids);
            // Every third round deletes and upserts rows of older segments, so some merge
            // inputs are whole (copied) and others are not (re-encoded).
            if round % 3 == 2 {
                let victims: Vec<u64> = model.keys().copied().step_by(11).collect();
                db.delete("c", &UInt64Array::from(victims.clone())).unwrap();
                for v in &victims {
                    model.remove(v);
                }
                let again: Vec<u64> = model.keys().copied().step_by(13).collect();
                put(&db, &mut model, 100 + round, &again);
            }
            db.flush().unwrap();
            db.run_background().unwrap();
            assert_eq!(scanned(&db), model, "after round {round}");
        }
        assert!(
            segment_files(dir.path()).len() < 12,
            "merges happened: {:?}",
            segment_files(dir.path())
        );
    }
    let db = Database::open(dir.path(), opts()).unwrap();
    assert_eq!(scanned(&db), model, "after reopen");
    assert_eq!(db.stats("c").unwrap().rows, model.len() as u64);
}
