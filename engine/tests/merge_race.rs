//! Writes racing background merges. A merge copies the input segments' deletions, writes the
//! merged segment, then installs it; writers do not wait for it, so a delete or upsert can land
//! between the copy and the install. Found by the Flight kill -9 test: the install re-pointed
//! such keys at the merged copy, resurrecting deleted rows and hiding upserted values (and a
//! later delete then looked for a segment that was gone). This test upserts and deletes while
//! tiny segments are merged continuously, and checks every row against a model, before and
//! after a reopen.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options};

const DIM: usize = 4;

#[test]
fn deletes_and_upserts_during_merges_are_neither_lost_nor_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options::default().build_indexes(false).memtable_bytes(1).merge_min_segments(2);
    let db = Database::open(dir.path(), opts()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..3000u64 {
        // Every write fills the in-memory table, so each one flushes a tiny segment and the
        // background thread is always merging.
        if rnd(3) == 0 {
            let ids: Vec<u64> = (0..1 + rnd(4)).map(|_| rnd(300)).collect();
            db.delete("c", &UInt64Array::from(ids.clone())).unwrap();
            for i in ids {
                model.remove(&i);
            }
        } else {
            let mut ids: Vec<u64> = (0..1 + rnd(6)).map(|_| rnd(300)).collect();
            ids.sort_unstable();
            ids.dedup();
            let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(step, i, DIM)).collect();
            db.insert("c", &batch(&ids, &rows)).unwrap();
            for (i, r) in ids.into_iter().zip(rows) {
                model.insert(i, r);
            }
        }
    }
    let check = |db: &Database, when: &str| {
        let got: BTreeMap<u64, Vec<f32>> =
            scan_all(db, "c").into_iter().map(|(i, v, _)| (i, v)).collect();
        assert_eq!(got.len(), model.len(), "{when}: row count");
        for (i, v) in &model {
            assert_eq!(got.get(i), Some(v), "{when}: id {i}");
        }
        let all: Vec<u64> = (0..300).collect();
        let g = db.get("c", &UInt64Array::from(all)).unwrap();
        assert_eq!(ids(&g), model.keys().copied().collect::<Vec<_>>(), "{when}: get");
    };
    check(&db, "live");
    assert!(db.wait_idle(Duration::from_secs(120)));
    check(&db, "after merges");
    db.flush().unwrap();
    drop(db);
    let db = Database::open(dir.path(), opts()).unwrap();
    check(&db, "after reopen");
}
