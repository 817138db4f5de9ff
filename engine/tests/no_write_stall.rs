//! A put must never wait for an index build. Flushes used to wait while four segments awaited
//! their indexes (each holding its vectors in RAM), and the puts behind a full memtable waited
//! with them: through `quiver serve` on two cores, putting 600k rows into a second collection
//! while the first one's were indexed, one put waited 158 s. Now a flush past
//! `max_unindexed_segments` resident segments installs its segment *cold* — its vectors not
//! held, searched from its file, read back by the index build — so memory stays bounded and
//! writers go on. These tests pin the three halves: flushes do not wait (with a stall limit of
//! zero, any wait fails the write), cold segments answer searches exactly, and the background
//! worker indexes them, before and after a restart. And a put that needs room waits for the
//! flusher to freeze the full table, not for the frozen rows to be written: the freeze did not
//! wake it, so each memtable rotation stalled a put 55-65 ms through `quiver serve`.

mod common;

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use quiver_engine::{Database, Metric, Options, SearchParams};
use quiver_wal::vfs::{OpenMode, OsVfs, Vfs, VfsFile};

const DIM: usize = 16;
const ROWS: u64 = 2_000;

fn rows(from: u64) -> Vec<(u64, Vec<f32>)> {
    (from..from + ROWS).map(|i| (i, vector(9, i, DIM))).collect()
}

fn put_and_flush(db: &Database, part: &[(u64, Vec<f32>)]) {
    let ids: Vec<u64> = part.iter().map(|r| r.0).collect();
    let vectors: Vec<Vec<f32>> = part.iter().map(|r| r.1.clone()).collect();
    db.insert("c", &batch(&ids, &vectors)).unwrap();
    db.flush().unwrap();
}

fn exact(k: usize) -> SearchParams {
    SearchParams { k, exact: true, ..SearchParams::default() }
}

/// With the background worker on and a stall limit of zero, six flushes in a row (each table's
/// index takes far longer to build than a flush to write) must all succeed: the old flush
/// waited for the builds and failed with `Stalled` at once.
#[test]
fn flushes_never_wait_for_index_builds_and_cold_segments_get_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        Options::default()
            .min_index_rows(256)
            .max_unindexed_segments(1)
            .merge_min_segments(0)
            .idle_flush(None)
            .max_stall(Duration::ZERO)
    };
    let db = Database::open(dir.path(), opts()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut all = Vec::new();
    for part in 0..6 {
        let part = rows(part * ROWS);
        put_and_flush(&db, &part);
        all.extend(part);
    }
    let q = vector(77, 1, DIM);
    check_exact(Metric::L2, &q, 10, &all, &db.search("c", &q, &exact(10)).unwrap());
    assert!(db.wait_indexed(Duration::from_secs(120)).unwrap(), "background work fell behind");
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (6, 6), "{st:?}");
    assert!(db.background_error().is_none());
    check_exact(Metric::L2, &q, 10, &all, &db.search("c", &q, &exact(10)).unwrap());
}

/// Without the background worker nothing gets indexed, so every flush past the limit leaves a
/// cold segment: only `max_unindexed_segments` tables' vectors stay resident, yet exact
/// searches see every row. A restart loads no more than the limit either, and the worker,
/// once run, indexes the cold ones from their files.
#[test]
fn cold_segments_hold_no_vectors_answer_exactly_and_are_indexed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        Options::default()
            .min_index_rows(256)
            .max_unindexed_segments(2)
            .merge_min_segments(0)
            .idle_flush(None)
            .background(false)
    };
    let table_bytes = ROWS * DIM as u64 * 4;
    let mut all = Vec::new();
    {
        let db = Database::open(dir.path(), opts()).unwrap();
        db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
        for part in 0..5 {
            let part = rows(part * ROWS);
            put_and_flush(&db, &part);
            all.extend(part);
        }
        let st = db.stats("c").unwrap();
        assert_eq!((st.segments, st.indexed_segments), (5, 0), "{st:?}");
        assert!(st.resident_vector_bytes <= 2 * table_bytes, "{st:?}");
        for seed in 0..5 {
            let q = vector(100 + seed, 0, DIM);
            check_exact(Metric::L2, &q, 10, &all, &db.search("c", &q, &exact(10)).unwrap());
            let fast = SearchParams { k: 10, ..SearchParams::default() };
            check_exact(Metric::L2, &q, 10, &all, &db.search("c", &q, &fast).unwrap());
        }
    }
    let db = Database::open(dir.path(), opts()).unwrap();
    let st = db.stats("c").unwrap();
    assert!(st.resident_vector_bytes <= 2 * table_bytes, "at open: {st:?}");
    let q = vector(200, 0, DIM);
    check_exact(Metric::L2, &q, 10, &all, &db.search("c", &q, &exact(10)).unwrap());
    db.run_background().unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.segments, st.indexed_segments), (5, 5), "{st:?}");
    assert_eq!(st.resident_vector_bytes, 0, "{st:?}");
    check_exact(Metric::L2, &q, 10, &all, &db.search("c", &q, &exact(10)).unwrap());
    assert_eq!(scan_all(&db, "c").len(), all.len());
}

/// The real file system, except that creating a file under `segments/` waits while `held`.
#[derive(Debug, Default)]
struct HeldSegments {
    /// (held, a creation has waited).
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl HeldSegments {
    fn hold(&self, held: bool) {
        self.state.lock().unwrap().0 = held;
        self.changed.notify_all();
    }

    fn wait_reached(&self) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) =
            self.changed.wait_timeout_while(state, Duration::from_secs(60), |s| !s.1).unwrap();
        state.1
    }
}

impl Vfs for HeldSegments {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Box<dyn VfsFile>> {
        if mode == OpenMode::CreateNew && path.components().any(|c| c.as_os_str() == "segments") {
            let mut state = self.state.lock().unwrap();
            state.1 = true;
            self.changed.notify_all();
            drop(self.changed.wait_while(state, |s| s.0).unwrap());
        }
        OsVfs.open(path, mode)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        OsVfs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        OsVfs.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        OsVfs.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        OsVfs.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        OsVfs.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        OsVfs.exists(path)
    }
}

/// A put that does not fit the table beside its rows asks the flusher to freeze it and waits.
/// The flush of the frozen rows is held at its segment file here, so a put woken only when a
/// flush ends would wait until the test gives up (60 s; the database's stall limit is longer).
#[test]
fn a_put_needing_room_is_woken_by_the_freeze_not_by_the_end_of_the_flush() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(HeldSegments::default());
    let opts = Options::default()
        .vfs(vfs.clone())
        .memtable_bytes(256 << 10)
        .idle_flush(None)
        .max_stall(Duration::from_secs(600));
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let part = |from: u64| {
        let ids: Vec<u64> = (from..from + 2_000).collect();
        let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(9, i, DIM)).collect();
        batch(&ids, &vectors)
    };
    // 2,000 rows of 16 floats are about 150 KiB: two do not fit a 256 KiB table.
    db.insert("c", &part(0)).unwrap();
    vfs.hold(true);
    let (sent, put) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| sent.send(db.insert("c", &part(2_000))).unwrap());
        let result = put.recv_timeout(Duration::from_secs(60));
        let reached = vfs.wait_reached();
        vfs.hold(false);
        result.expect("the put waited for the flush's I/O").unwrap();
        assert!(reached, "the flush never reached its segment file");
    });
    db.flush().unwrap();
    assert_eq!(scan_all(&db, "c").len(), 4_000);
}
