//! Writes racing a flush. A flush freezes the in-memory rows, writes them to a segment without
//! holding the writers' lock, then installs the segment; inserts, upserts and deletes go on
//! meanwhile, and some of them hit the very rows being written. The failures this pins down: an
//! install that re-points a key deleted or upserted during the write at the new segment (a
//! deleted row back, or an old value hiding the new one), rows appended after the frozen prefix
//! lost or mis-addressed when the prefix is dropped, a deletion from an older segment made during
//! the write forgotten, and any of these coming back after a power cut (the flush's checkpoint
//! is before those writes, so recovery must replay them against the new segment).
//!
//! A gate in the file system holds the flush while it creates its segment file, so the
//! interleaving is exact, not left to timing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::UInt64Array;
use common::gate::{GateOp, GateVfs};
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options};
use quiver_vfs::Vfs;
use quiver_vfs::sim::{CrashMode, SimVfs};

const DIR: &str = "/db";
const DIM: usize = 4;

type Model = BTreeMap<u64, Vec<f32>>;

fn insert(db: &Database, model: &mut Model, ids: impl IntoIterator<Item = u64>, seed: u64) {
    let ids: Vec<u64> = ids.into_iter().collect();
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(seed, i, DIM)).collect();
    db.insert("c", &batch(&ids, &rows)).unwrap();
    for (i, r) in ids.into_iter().zip(rows) {
        model.insert(i, r);
    }
}

fn delete(db: &Database, model: &mut Model, ids: impl IntoIterator<Item = u64>) {
    let ids: Vec<u64> = ids.into_iter().collect();
    db.delete("c", &UInt64Array::from(ids.clone())).unwrap();
    for i in ids {
        model.remove(&i);
    }
}

fn check(db: &Database, model: &Model, when: &str) {
    let got: Model = scan_all(db, "c").into_iter().map(|(i, v, _)| (i, v)).collect();
    assert_eq!(got.len(), model.len(), "{when}: scan row count");
    for (i, v) in model {
        assert_eq!(got.get(i), Some(v), "{when}: scan of id {i}");
    }
    // Get by id must agree too (it goes through the key map, not the scan's row lists).
    let all: Vec<u64> = (0..1000).collect();
    let b = db.get("c", &UInt64Array::from(all)).unwrap();
    let found: BTreeMap<u64, Vec<f32>> = ids(&b).into_iter().zip(vectors(&b)).collect();
    assert_eq!(&found, model, "{when}: get");
    // And an exact search for a row's own vector finds it first.
    for (i, v) in model.iter().step_by(17) {
        let params = quiver_engine::SearchParams { k: 1, exact: true, ..Default::default() };
        let r = db.search("c", v, &params).unwrap();
        assert_eq!(ids(&r), vec![*i], "{when}: search for id {i}");
    }
}

#[test]
fn writes_to_rows_a_flush_is_writing_are_neither_lost_nor_resurrected() {
    let sim = SimVfs::new();
    // The gate holds the flush while it creates its segment file.
    let vfs = GateVfs::new(
        sim.clone(),
        |op| matches!(op, GateOp::Create(p) if p.parent().is_some_and(|d| d.ends_with("segments"))),
    );
    let opts = |vfs: Arc<dyn Vfs>| {
        Options::default().vfs(vfs).background(false).merge_min_segments(0).row_group_rows(16)
    };
    let db = Arc::new(Database::open(DIR, opts(Arc::new(vfs.clone()))).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = Model::new();

    // An older segment, with a deletion not yet in a deletion file.
    insert(&db, &mut model, 200..300, 1);
    db.flush().unwrap();
    delete(&db, &mut model, [250]);
    // The rows the next flush freezes.
    insert(&db, &mut model, 0..100, 2);

    vfs.arm();
    let flusher = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || db.flush())
    };
    vfs.wait_entered();
    // The flush has frozen 0..100 and is creating their segment. Writers are not blocked:
    upsert_and_delete_while_frozen(&db, &mut model);
    check(&db, &model, "during the flush");
    vfs.release();
    flusher.join().unwrap().unwrap();
    check(&db, &model, "after the flush");

    // The flush's checkpoint is before the writes above: a power cut now must replay them
    // against the new segment, not resurrect what they deleted.
    let cut = sim.snapshot();
    cut.crash(CrashMode::DropAll);
    let reopened = Database::open(DIR, opts(Arc::new(cut))).unwrap();
    check(&reopened, &model, "after a power cut following the flush");
    drop(reopened);

    // The next flush persists the deletions made during the first one (the new segment's and
    // the older segment's); they survive a power cut after it.
    db.flush().unwrap();
    check(&db, &model, "after a second flush");
    drop(Arc::try_unwrap(db).expect("the flusher thread has ended"));
    sim.crash(CrashMode::DropAll);
    let db = Database::open(DIR, opts(Arc::new(sim.clone()))).unwrap();
    check(&db, &model, "after a second flush and a power cut");
}

fn upsert_and_delete_while_frozen(db: &Database, model: &mut Model) {
    insert(db, model, 0..10, 3); // upserts of frozen rows
    delete(db, model, 10..20); // deletions of frozen rows
    delete(db, model, [260, 261]); // deletions from the older segment, after the flush's plan
    insert(db, model, 400..420, 4); // new rows after the frozen prefix
    delete(db, model, [405]); // a deletion of one of those
    insert(db, model, [20, 405, 270], 5); // upserts: a frozen row, a re-insert, a segment row
}
