//! The engine's contract on the happy path, each test named after the failure it would catch:
//! writes visible at once (read-your-writes), upserts replacing rather than duplicating (also an
//! id repeated within one batch: its last row wins, as Longbow's clients expect), deletes
//! hiding rows in every source (in-memory table, unindexed and indexed segments), flushes and
//! reopen losing nothing, merges dropping deleted rows, and exact search equal to brute force.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::UInt64Array;
use arrow_array::cast::AsArray;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options, SearchParams};

const DIM: usize = 8;

fn opts() -> Options {
    Options::default().background(false).min_index_rows(64).merge_min_segments(3)
}

fn exact(k: usize) -> SearchParams {
    SearchParams { k, exact: true, ..SearchParams::default() }
}

/// Inserts ids with vectors from `seed`; returns them for the model.
fn put(db: &Database, model: &mut BTreeMap<u64, Vec<f32>>, seed: u64, ids: &[u64]) {
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(seed, i, DIM)).collect();
    db.insert("c", &batch(ids, &rows)).unwrap();
    for (i, r) in ids.iter().zip(rows) {
        model.insert(*i, r);
    }
}

fn check_all(db: &Database, model: &BTreeMap<u64, Vec<f32>>, metric: Metric) {
    let rows: Vec<(u64, Vec<f32>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
    let scanned = scan_all(db, "c");
    assert_eq!(scanned.len(), model.len(), "scan row count");
    for (id, v, tag) in &scanned {
        assert_eq!(Some(v), model.get(id), "scan vector of {id}");
        assert_eq!(tag.as_deref(), Some(format!("t{id}").as_str()));
    }
    for qs in 0..3u64 {
        let q = vector(999, qs, DIM);
        let got = db.search("c", &q, &exact(10)).unwrap();
        check_exact(metric, &q, 10, &rows, &got);
    }
    let want: Vec<u64> = model.keys().copied().take(20).collect();
    let asked: Vec<u64> = want.iter().copied().chain([u64::MAX - 1]).collect();
    let got = db.get("c", &UInt64Array::from(asked)).unwrap();
    assert_eq!(ids(&got), want, "get returns the present ids in order");
    for (id, v) in ids(&got).iter().zip(vectors(&got)) {
        assert_eq!(&v, &model[id]);
    }
    assert_eq!(db.stats("c").unwrap().rows, model.len() as u64);
}

#[test]
fn an_id_repeated_in_one_batch_keeps_its_last_row_through_flush_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    {
        let db = Database::open(dir.path(), opts()).unwrap();
        db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
        put(&db, &mut model, 1, &[5, 9]);
        let ids = [5u64, 6, 5, 7, 6, 5];
        let rows: Vec<Vec<f32>> = (0..ids.len() as u64).map(|r| vector(2, r, DIM)).collect();
        db.insert("c", &batch(&ids, &rows)).unwrap();
        for (id, row) in ids.iter().zip(rows) {
            model.insert(*id, row); // later rows overwrite earlier ones
        }
        check_all(&db, &model, Metric::L2);
        db.flush().unwrap();
        check_all(&db, &model, Metric::L2);
    }
    let db = Database::open(dir.path(), opts()).unwrap();
    check_all(&db, &model, Metric::L2);
}

#[test]
fn writes_are_visible_at_once_and_survive_flush_merge_and_reopen() {
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        {
            let db = Database::open(dir.path(), opts()).unwrap();
            db.create_collection("c", schema(DIM as u32, metric)).unwrap();
            put(&db, &mut model, 1, &(0..100).collect::<Vec<_>>());
            check_all(&db, &model, metric);
            db.flush().unwrap();
            check_all(&db, &model, metric);
            // Upsert some flushed rows, delete others, add new ones.
            put(&db, &mut model, 2, &(50..150).collect::<Vec<_>>());
            let dels: Vec<u64> = (0..30).step_by(3).collect();
            db.delete("c", &UInt64Array::from(dels.clone())).unwrap();
            for d in &dels {
                model.remove(d);
            }
            check_all(&db, &model, metric);
            db.flush().unwrap();
            put(&db, &mut model, 3, &(140..260).collect::<Vec<_>>());
            db.flush().unwrap();
            check_all(&db, &model, metric);
            // Index builds (segments ≥ 64 rows) and merges, run on this thread.
            db.run_background().unwrap();
            let st = db.stats("c").unwrap();
            assert!(st.indexed_segments >= 1, "{st:?}");
            check_all(&db, &model, metric);
            // Deleting a third of every segment makes each due for a rewrite, which drops them.
            let victims: Vec<u64> = model.keys().copied().step_by(3).collect();
            db.delete("c", &UInt64Array::from(victims.clone())).unwrap();
            for v in &victims {
                model.remove(v);
            }
            db.flush().unwrap();
            assert!(db.stats("c").unwrap().deleted_segment_rows > 0);
            db.run_background().unwrap();
            let st = db.stats("c").unwrap();
            assert_eq!(st.deleted_segment_rows, 0, "merges drop deleted rows: {st:?}");
            assert_eq!(st.segment_rows, model.len() as u64, "{st:?}");
            check_all(&db, &model, metric);
            // Approximate search through the index with a generous list finds the exact answer
            // on this small set.
            let rows: Vec<(u64, Vec<f32>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
            let q = vector(7, 7, DIM);
            let params = SearchParams { k: 5, list_size: 400, ..SearchParams::default() };
            check_exact(metric, &q, 5, &rows, &db.search("c", &q, &params).unwrap());
            // Unflushed writes at close come back from the WAL.
            put(&db, &mut model, 4, &[1000, 1001, 5]);
            db.delete("c", &UInt64Array::from(vec![6u64, 7])).unwrap();
            model.remove(&6);
            model.remove(&7);
        }
        let db = Database::open(dir.path(), opts()).unwrap();
        check_all(&db, &model, metric);
        // Deletes of indexed rows are applied to approximate search too.
        let victims: Vec<u64> = model.keys().copied().skip(10).take(40).collect();
        db.delete("c", &UInt64Array::from(victims.clone())).unwrap();
        for v in &victims {
            model.remove(v);
        }
        let rows: Vec<(u64, Vec<f32>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
        for qs in 0..5 {
            let q = vector(5, qs, DIM);
            let got = db
                .search("c", &q, &SearchParams { k: 10, list_size: 400, ..SearchParams::default() })
                .unwrap();
            for id in ids(&got) {
                assert!(model.contains_key(&id), "deleted id {id} returned by indexed search");
            }
            check_exact(metric, &q, 10, &rows, &got);
        }
        drop(db);
        let db = Database::open(dir.path(), opts()).unwrap();
        check_all(&db, &model, metric);
    }
}

#[test]
fn background_thread_indexes_and_merges_without_being_driven() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path(),
        Options::default().min_index_rows(64).merge_min_segments(3).memtable_bytes(16 << 10),
    )
    .unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..12u64 {
        put(&db, &mut model, round, &(round * 40..round * 40 + 60).collect::<Vec<_>>());
    }
    assert!(db.wait_idle(Duration::from_secs(120)), "background work never finished");
    let st = db.stats("c").unwrap();
    assert!(st.indexed_segments >= 1, "{st:?}");
    check_all(&db, &model, Metric::L2);
}

#[test]
fn drop_collection_removes_it_and_its_files_and_a_new_one_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    put(&db, &mut model, 1, &(0..100).collect::<Vec<_>>());
    db.flush().unwrap();
    put(&db, &mut model, 1, &(100..110).collect::<Vec<_>>());
    db.drop_collection("c").unwrap();
    assert!(db.list_collections().is_empty());
    let segs = std::fs::read_dir(dir.path().join("segments")).unwrap().count();
    assert_eq!(segs, 0, "segment files of a dropped collection remain");
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    drop(db);
    // The dropped collection's WAL records must not reappear in the new one.
    let db = Database::open(dir.path(), opts()).unwrap();
    assert_eq!(db.stats("c").unwrap().rows, 0);
    assert!(scan_all(&db, "c").is_empty());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Database::open(dir.path(), opts()).unwrap();
    let err = Database::open(dir.path(), opts()).unwrap_err();
    assert!(matches!(err, quiver_engine::OpenError::Locked(_)), "{err}");
}

/// A scan reads each segment in one pass and regroups the rows into batches of the size asked
/// for, which may change between batches (Flight's adaptive chunking). Pins down rows lost or
/// repeated at batch, row-group or segment boundaries, deleted rows coming back, batches larger
/// than asked, and a projection applied to the wrong columns.
#[test]
fn scans_in_changing_batch_sizes_return_every_live_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts().row_group_rows(30).merge_min_segments(0)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    put(&db, &mut model, 1, &(0..100).collect::<Vec<_>>());
    db.flush().unwrap();
    put(&db, &mut model, 2, &(100..170).collect::<Vec<_>>());
    db.flush().unwrap();
    // Holes in the first segment (deleted and replaced rows), rows still in memory.
    let dels: Vec<u64> = (0..100).filter(|i| i % 7 == 3 || (40..47).contains(i)).collect();
    db.delete("c", &UInt64Array::from(dels.clone())).unwrap();
    for d in &dels {
        model.remove(d);
    }
    put(&db, &mut model, 3, &[5, 6, 200, 201]);
    for sizes in [vec![1usize], vec![7], vec![1000], vec![1, 2, 4, 8, 16, 32, 64], vec![29, 31, 3]]
    {
        let mut scan = db.scan("c", Some(&["vector", "id"])).unwrap();
        assert_eq!(scan.schema().field(0).name(), "vector");
        let mut got = BTreeMap::new();
        let mut i = 0;
        loop {
            let want = sizes[i.min(sizes.len() - 1)];
            scan.set_batch_rows(want);
            let Some(b) = scan.next() else { break };
            let b = b.unwrap();
            let ids = b.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
            // In-memory rows come in their insert batches (the last batch, of 4 rows).
            let in_memory = ids.value(0) >= 200 || [5, 6].contains(&ids.value(0));
            assert!(b.num_rows() <= want || in_memory, "{} rows, asked {want}", b.num_rows());
            let vecs = b.column(0).as_fixed_size_list();
            for r in 0..b.num_rows() {
                let v = vecs.value(r);
                let v: Vec<f32> =
                    v.as_primitive::<arrow_array::types::Float32Type>().values().to_vec();
                assert!(got.insert(ids.value(r), v).is_none(), "id {} twice", ids.value(r));
            }
            i += 1;
        }
        assert_eq!(got, model, "batch sizes {sizes:?}");
    }
}

/// `stats` counts searches, disk-index walks and the sector reads they issued, so benchmarks can
/// report mean I/Os per query through the engine. The counts must move only where the work
/// happened: an exact search or a search of the in-memory table walks no index.
#[test]
fn stats_count_index_walks_and_reads_only_for_searches_that_walk_an_index() {
    let dir = tempfile::tempdir().unwrap();
    // No sector cache: every walk reads from disk.
    let db = Database::open(dir.path(), opts().sector_cache_bytes(0)).unwrap();
    assert!(db.sector_cache_stats().is_none());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    put(&db, &mut model, 7, &(0..2000).collect::<Vec<u64>>());
    let q = vector(8, 0, DIM);
    db.search("c", &q, &SearchParams::default()).unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.searches, st.index_walks, st.index_reads), (1, 0, 0), "memtable only");

    db.flush().unwrap();
    db.run_background().unwrap();
    assert_eq!(db.stats("c").unwrap().indexed_segments, 1);
    db.search("c", &q, &exact(10)).unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!((st.searches, st.index_walks, st.index_reads), (2, 0, 0), "exact walks nothing");

    let walks = 10u64;
    for i in 0..walks {
        db.search("c", &vector(9, i, DIM), &SearchParams::default()).unwrap();
    }
    let st = db.stats("c").unwrap();
    assert_eq!((st.searches, st.index_walks), (2 + walks, walks));
    // Each walk reads at least the entry's sector and at most one per list entry it expands.
    let list = SearchParams::default().list_size as u64;
    assert!(st.index_reads >= walks && st.index_reads <= walks * list, "{}", st.index_reads);
}

/// The sector cache shared by a database's indexes serves a repeated search from RAM: the
/// second walk of a query reads nothing from disk, and both answers agree with brute force.
#[test]
fn a_repeated_search_is_answered_from_the_sector_cache_and_agrees_with_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts().sector_cache_bytes(16 << 20)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    put(&db, &mut BTreeMap::new(), 7, &(0..2000).collect::<Vec<u64>>());
    db.flush().unwrap();
    db.run_background().unwrap();
    let q = vector(8, 0, DIM);
    let first = db.search("c", &q, &SearchParams::default()).unwrap();
    let reads = db.stats("c").unwrap().index_reads;
    assert!(reads > 0, "the first walk reads from disk");
    let second = db.search("c", &q, &SearchParams::default()).unwrap();
    let truth: std::collections::BTreeSet<u64> =
        ids(&db.search("c", &q, &exact(10)).unwrap()).into_iter().collect();
    for (name, got) in [("from disk", &first), ("from the cache", &second)] {
        let found = ids(got).iter().filter(|id| truth.contains(id)).count();
        assert!(found >= 9, "{name}: {found} of the 10 nearest");
    }
    assert_eq!(db.stats("c").unwrap().index_reads, reads, "the second walk read nothing");
    let cache = db.sector_cache_stats().expect("the cache is on");
    assert!(cache.hits > 0 && cache.bytes <= cache.capacity, "{cache:?}");
}

/// `stats().resident` must count every structure that grows with the collection, at its size:
/// a structure left out (or counted by length where its capacity is held) would hide the bytes
/// per row the memory budget is about. Checked against each structure's least possible size
/// for N rows, before and after the segment is indexed.
#[test]
fn resident_bytes_count_every_per_row_structure_at_least_at_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts().sector_cache_bytes(0)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let n = 5000u64;
    put(&db, &mut BTreeMap::new(), 3, &(0..n).collect::<Vec<u64>>());
    let st = db.stats("c").unwrap().resident;
    assert!(st.memtable >= n * (DIM as u64 * 4 + 8), "memtable {st:?}");
    // (u64 id, packed place) pairs: 8 + 8 bytes, plus a control byte each.
    assert!(st.key_map >= n * 17, "key map {st:?}");

    db.flush().unwrap();
    let st = db.stats("c").unwrap().resident;
    assert!(st.unindexed_vectors >= n * DIM as u64 * 4, "unindexed {st:?}");
    // Integer ids: eight bytes a row.
    assert!(st.segment_keys >= n * 8 && st.deletion_sets >= n / 8, "{st:?}");
    assert_eq!(st.indexes, 0);

    db.run_background().unwrap();
    let st = db.stats("c").unwrap().resident;
    assert_eq!(st.unindexed_vectors, 0, "the index replaced the resident vectors");
    let pq_bytes = (DIM / 4) as u64;
    assert!(st.indexes >= n * pq_bytes, "indexes {st:?}");
    assert_eq!(
        st.total(),
        st.memtable + st.key_map + st.segment_keys + st.deletion_sets + st.indexes
    );
}

/// With `BuildParams::ram_budget` set, background index builds go through the budgeted build
/// from a file: the index must answer as well as the in-memory one, and the vector file it
/// was built from must not stay behind (nor, after a crash, survive the next open).
#[test]
fn a_budgeted_background_build_answers_like_brute_force_and_leaves_no_input_behind() {
    let dir = tempfile::tempdir().unwrap();
    let budget = quiver_engine::BuildParams {
        ram_budget: Some(256 << 20),
        ..quiver_engine::BuildParams::default()
    };
    let db = Database::open(dir.path(), opts().index_params(budget)).unwrap();
    // Cosine too: its rows are written as given (with their lengths kept apart in RAM), and
    // the file build must normalise them as the in-memory build does.
    let ids_all: Vec<u64> = (0..3000).collect();
    let rows: Vec<Vec<f32>> = ids_all.iter().map(|&i| vector(5, i, DIM)).collect();
    for (name, metric) in [("c", Metric::L2), ("cos", Metric::Cosine)] {
        db.create_collection(name, schema(DIM as u32, metric)).unwrap();
        db.insert(name, &batch(&ids_all, &rows)).unwrap();
    }
    db.flush().unwrap();
    db.run_background().unwrap();
    for name in ["c", "cos"] {
        assert_eq!(db.stats(name).unwrap().indexed_segments, 1, "{name}");
        let mut found = 0;
        for i in 0..20 {
            let q = vector(6, i, DIM);
            let truth = ids(&db.search(name, &q, &exact(10)).unwrap());
            let got = ids(&db.search(name, &q, &SearchParams::default()).unwrap());
            found += got.iter().filter(|id| truth.contains(id)).count();
        }
        assert!(found >= 190, "{name}: recall {found} / 200");
    }
    let leftovers = |d: &std::path::Path| -> Vec<String> {
        let idir = d.join("indexes");
        std::fs::read_dir(idir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".input") || n.ends_with(".tmp"))
            .collect()
    };
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    drop(db);
    // A crash mid-build leaves an input directory: the next open sweeps it.
    let stray = dir.path().join("indexes").join(format!("{:016x}.input", 0xabcdefu64));
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("vectors.fbin"), b"partial").unwrap();
    let db = Database::open(dir.path(), opts()).unwrap();
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    assert_eq!(db.stats("c").unwrap().rows, 3000);
}
