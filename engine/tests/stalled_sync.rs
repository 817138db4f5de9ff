//! No lock on collection state is held across disk I/O. A flush used to commit its manifest
//! (write, fdatasync, rename, directory fsync) under the state's write lock, so every search,
//! get and write waited for two syncs on each flush; reads held the read lock across all of
//! their disk reads. Here a gate in a simulated file system holds a flush inside its manifest
//! commit (at the rename) for as long as the test likes: a search, a get, a scan and an insert
//! must all complete meanwhile, and the flush must then finish with every row in place.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::diskgraph::data::Metric;
use quiver_engine::wal::vfs::sim::SimVfs;
use quiver_engine::wal::vfs::{OpenMode, Vfs, VfsFile};
use quiver_engine::{Database, Options, SearchParams};

const DIM: usize = 4;

#[derive(Debug, Default)]
struct Gate {
    armed: bool,
    entered: bool,
    released: bool,
}

/// A file system that, once armed, holds the next manifest rename until released.
#[derive(Debug, Clone)]
struct GateVfs {
    inner: SimVfs,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

impl GateVfs {
    fn arm(&self) {
        *self.gate.0.lock().unwrap() = Gate { armed: true, ..Gate::default() };
    }
    fn wait_entered(&self) {
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        while !g.entered {
            g = cv.wait(g).unwrap();
        }
    }
    fn release(&self) {
        let (m, cv) = &*self.gate;
        m.lock().unwrap().released = true;
        cv.notify_all();
    }
}

impl Vfs for GateVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        self.inner.open(path, mode)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.ends_with("MANIFEST") {
            let (m, cv) = &*self.gate;
            let mut g = m.lock().unwrap();
            if g.armed {
                g.armed = false;
                g.entered = true;
                cv.notify_all();
                while !g.released {
                    g = cv.wait(g).unwrap();
                }
            }
        }
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn real_path(&self, _: &Path) -> Option<PathBuf> {
        None
    }
}

#[test]
fn searches_gets_scans_and_writes_complete_while_a_flush_waits_in_its_manifest_commit() {
    let vfs = GateVfs { inner: SimVfs::new(), gate: Arc::default() };
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
