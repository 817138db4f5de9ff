//! kill -9 while a merge grows an index. A merge that grows its largest input's index writes
//! a new index directory beside the old one (two passes over the old graph file, then the new
//! files, the binding and a rename) while searches go on using the old one; the manifest
//! commit is what makes it count. Killed at any point — before the growth starts, amid its
//! passes, between the rename and the commit — the reopened database must hold every row and
//! delete, leave no half-written index behind after its sweep, redo the merge, and search the
//! result with the recall of a sound graph. Each round kills the child at a different moment
//! of the same merge; at least one kill must land before the merge finished.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::{Database, Metric, Options, SearchParams};

const CHILD_ENV: &str = "QUIVER_ENGINE_KILL9_GROW_CHILD";
const DIM: usize = 16;
const BASE_ROWS: u64 = 12_000;
const ADDED_ROWS: u64 = 4_000;
/// Above the added rows: they are not indexed on their own, so the child's first background
/// step is the merge that grows the base's index.
const MIN_INDEX_ROWS: usize = 5_000;

fn options() -> Options {
    Options::default()
        .background(false)
        .min_index_rows(MIN_INDEX_ROWS)
        .merge_min_segments(2)
        // The added rows are a third of the base: grown, as this test is about growth.
        .max_growth_share(1.0)
        .idle_flush(None)
}

/// The rows the parent sets up: a base that gets its index, then added rows and deletes.
fn setup(dir: &std::path::Path) -> BTreeMap<u64, Vec<f32>> {
    let db = Database::open(dir, options()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut rows: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let base: Vec<u64> = (0..BASE_ROWS).collect();
    let vs: Vec<Vec<f32>> = base.iter().map(|&i| vector(3, i, DIM)).collect();
    db.insert("c", &batch(&base, &vs)).unwrap();
    rows.extend(base.into_iter().zip(vs));
    db.flush().unwrap();
    db.run_background().unwrap();
    let added: Vec<u64> = (BASE_ROWS..BASE_ROWS + ADDED_ROWS).collect();
    let vs: Vec<Vec<f32>> = added.iter().map(|&i| vector(3, i, DIM)).collect();
    db.insert("c", &batch(&added, &vs)).unwrap();
    rows.extend(added.into_iter().zip(vs));
    let gone: Vec<u64> = (0..BASE_ROWS).step_by(9).collect();
    db.delete("c", &UInt64Array::from(gone.clone())).unwrap();
    for id in gone {
        rows.remove(&id);
    }
    db.flush().unwrap();
    assert_eq!(db.stats("c").unwrap().indexed_segments, 1);
    rows
}

/// The child: opens the database and runs its background work (the added rows' index, then
/// the merge that grows the base's index), saying when it starts and ends.
#[test]
fn kill9_grow_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let db = Database::open(&dir, options()).unwrap();
    println!("ready");
    let started = std::time::Instant::now();
    db.run_background().unwrap();
    println!("done {:?} in {:?}", db.background_stats(), started.elapsed());
}

#[test]
fn a_merge_killed_while_growing_an_index_loses_nothing_and_is_redone_soundly() {
    let mut killed_before_done = 0;
    // The child's merge takes about 5 s in a debug build on 2 cores: kills land before it
    // starts, amid its parquet write, amid the growth, and (the last) after it is committed.
    for delay_ms in [200u64, 1500, 3500, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let rows = setup(dir.path());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_grow_child_process", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l.ends_with("ready"));
        assert!(ready, "the child never opened the database");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let done = lines.map_while(Result::ok).any(|l| l.contains("done BackgroundStats"));
        killed_before_done += usize::from(!done);

        let db = Database::open(dir.path(), options()).unwrap();
        let found: BTreeMap<u64, Vec<f32>> =
            scan_all(&db, "c").into_iter().map(|(id, v, _)| (id, v)).collect();
        assert!(
            found == rows,
            "killed after {delay_ms} ms: {} rows, {} expected",
            found.len(),
            rows.len()
        );
        db.run_background().unwrap();
        let st = db.stats("c").unwrap();
        assert_eq!(
            (st.rows, st.segments, st.indexed_segments),
            (rows.len() as u64, 1, 1),
            "{st:?}"
        );
        if !done {
            assert_eq!(db.background_stats().index_grows, 1, "the merge was not redone by growth");
        }
        let leftovers: Vec<String> = std::fs::read_dir(dir.path().join("indexes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains('.'))
            .collect();
        assert!(leftovers.is_empty(), "killed after {delay_ms} ms: left behind {leftovers:?}");
        let recall = recall_at_10(&db, &rows);
        assert!(recall >= 0.95, "killed after {delay_ms} ms: recall@10 {recall}");
        eprintln!("killed after {delay_ms} ms (merge done: {done}): recall@10 {recall:.3}");
    }
    assert!(killed_before_done >= 1, "every kill came after the merge: the test proved nothing");
}

fn recall_at_10(db: &Database, rows: &BTreeMap<u64, Vec<f32>>) -> f64 {
    let params = SearchParams { list_size: 40, ..SearchParams::default() };
    let mut hits = 0;
    for q in 0..50 {
        let query = vector(99, q, DIM);
        let mut exact: Vec<(f64, u64)> =
            rows.iter().map(|(id, v)| (oracle_distance(Metric::L2, &query, v), *id)).collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        let truth: Vec<u64> = exact.iter().take(10).map(|e| e.1).collect();
        let got = ids(&db.search("c", &query, &params).unwrap());
        hits += got.iter().filter(|id| truth.contains(id)).count();
    }
    hits as f64 / 500.0
}
