//! No lock on collection state is held across disk I/O. A flush used to commit its manifest
//! (write, fdatasync, rename, directory fsync) under the state's write lock, so every search,
//! get and write waited for two syncs on each flush; reads held the read lock across all of
//! their disk reads. Here a gate in a simulated file system holds a flush inside its manifest
//! commit (at the rename) for as long as the test likes: a search, a get, a scan and an insert
//! must all complete meanwhile, and the flush must then finish with every row in place.

mod common;

use std::sync::{Arc, mpsc};
use std::time::Duration;

use arrow_array::UInt64Array;
use common::gate::{GateOp, GateVfs};
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options, SearchParams};
use quiver_vfs::sim::SimVfs;

const DIM: usize = 4;

#[test]
fn searches_gets_scans_and_writes_complete_while_a_flush_waits_in_its_manifest_commit() {
    let vfs = GateVfs::new(
        SimVfs::new(),
        |op| matches!(op, GateOp::RenameTo(p) if p.ends_with("MANIFEST")),
    );
    let opts = Options::default().vfs(Arc::new(vfs.clone())).background(false);
    let db = Arc::new(Database::open("/db", opts).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let ids: Vec<u64> = (0..200).collect();
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(1, i, DIM)).collect();
    db.insert("c", &batch(&ids[..100], &rows[..100])).unwrap();
    db.flush().unwrap(); // a segment, so reads touch segment files too
    db.insert("c", &batch(&ids[100..], &rows[100..])).unwrap();

    vfs.arm();
    let flusher = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || db.flush())
    };
    vfs.wait_entered();
    // The flush now sits inside its manifest commit. Everything else must go on.
    let (tx, rx) = mpsc::channel();
    {
        let db = Arc::clone(&db);
        let rows = rows.clone();
        std::thread::spawn(move || {
            let p = SearchParams { k: 1, ..SearchParams::default() };
            for i in [3usize, 150] {
                let hit = db.search("c", &rows[i], &p).unwrap();
                tx.send(format!("search {}", ids_of(&hit)[0] == i as u64)).unwrap();
            }
            let got = db.get("c", &UInt64Array::from(vec![5, 120])).unwrap();
            tx.send(format!("get {}", got.num_rows())).unwrap();
            tx.send(format!("scan {}", scan_all(&db, "c").len())).unwrap();
            let v = vector(2, 500, DIM);
            db.insert("c", &batch(&[500], &[v])).unwrap();
            tx.send("insert done".to_string()).unwrap();
        });
    }
    let wait = |what: &str| {
        let got = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!("{what} did not complete while the flush held its manifest commit")
        });
        assert_eq!(got, what);
    };
    for what in ["search true", "search true", "get 2", "scan 200", "insert done"] {
        wait(what);
    }
    vfs.release();
    flusher.join().unwrap().unwrap();
    assert_eq!(scan_all(&db, "c").len(), 201);
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.memtable_rows), (2, 1), "{st:?}");
}

fn ids_of(b: &arrow_array::RecordBatch) -> Vec<u64> {
    ids(b)
}
