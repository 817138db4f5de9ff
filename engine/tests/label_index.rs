//! A filter on one low-cardinality column (a tenant, a category) is answered from the
//! segment's label index: the rows of each value on disk beside the segment, so a value asked
//! for the first time costs its rows, not a read of the column over the whole segment. The
//! index is derived data, so these tests pin down that it never changes an answer: results
//! equal brute force through it; it is built once and reused after a restart; a damaged file
//! (header, posting, length) is never trusted — rebuilt, or the query answered from the
//! segment file; and the files of segments that are gone do not outlive them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Float64Array, Int32Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::{
    CollectionSchema, CompareOp, Database, Literal, Metric, Options, Predicate, SearchParams,
    VectorType,
};

const DIM: usize = 8;
/// Distinct tenants; `tenant` is column 2 (after `id` and `vector`), `weight` column 3, `tier`
/// (id % 3) column 4.
const TENANTS: u64 = 40;

fn tenant(id: u64) -> String {
    format!("t{}", id * 13 % TENANTS)
}

fn rows_batch(ids: &[u64]) -> RecordBatch {
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(9, i, DIM)).collect();
    let v = vector_column(DIM, &vectors);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", v.data_type().clone(), false),
            Field::new("tenant", DataType::Utf8, true),
            Field::new("weight", DataType::Float64, false),
            Field::new("tier", DataType::Int32, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(ids.to_vec())),
            v,
            // Every 17th row has no tenant.
            Arc::new(
                ids.iter()
                    .map(|&i| (!i.is_multiple_of(17)).then(|| tenant(i)))
                    .collect::<StringArray>(),
            ),
            Arc::new(Float64Array::from(ids.iter().map(|&i| i as f64).collect::<Vec<_>>())),
            Arc::new(Int32Array::from(ids.iter().map(|&i| (i % 3) as i32).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn options() -> Options {
    Options::default().background(false).min_index_rows(500).merge_min_segments(0)
}

/// A collection of `segments` indexed segments of 2,000 rows each.
fn populated(dir: &Path, segments: u64) -> Database {
    let db = Database::open(dir, options()).unwrap();
    let schema = CollectionSchema::new(DIM as u32, VectorType::F32, Metric::L2)
        .with_attribute(Field::new("tenant", DataType::Utf8, true))
        .with_attribute(Field::new("weight", DataType::Float64, false))
        .with_attribute(Field::new("tier", DataType::Int32, false));
    db.create_collection("c", schema).unwrap();
    for s in 0..segments {
        let ids: Vec<u64> = (s * 2_000..(s + 1) * 2_000).collect();
        db.insert("c", &rows_batch(&ids)).unwrap();
        db.flush().unwrap();
    }
    db.run_background().unwrap();
    let stats = db.stats("c").unwrap();
    assert_eq!((stats.segments, stats.indexed_segments), (segments as usize, segments as usize));
    db
}

fn label_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".labels"))
        .collect();
    out.sort();
    out
}

/// Whether row `id` passes a predicate, by the model.
type RowTest = Box<dyn Fn(u64) -> bool>;

fn is_tenant(t: &str) -> Predicate {
    Predicate::compare("tenant", CompareOp::Eq, Literal::Str(t.into()))
}

/// The k nearest of the rows `pass` takes, by brute force.
fn truth(rows: u64, q: &[f32], pass: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut all: Vec<(f64, u64)> = (0..rows)
        .filter(|&i| pass(i))
        .map(|i| (oracle_distance(Metric::L2, q, &vector(9, i, DIM)), i))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(10).map(|x| x.1).collect()
}

/// Searches for tenant `t` with a list as long as its rows: every passing row ranked exactly,
/// so the answer must be brute force's.
fn check_tenant(db: &Database, rows: u64, t: u64, query: u64) {
    let name = format!("t{t}");
    let q = vector(31, query, DIM);
    let p = SearchParams {
        k: 10,
        list_size: 400,
        filter: Some(is_tenant(&name)),
        ..SearchParams::default()
    };
    let got = ids(&db.search("c", &q, &p).unwrap());
    let want = truth(rows, &q, |i| !i.is_multiple_of(17) && tenant(i) == name);
    assert_eq!(got, want, "tenant {name}");
}

#[test]
fn every_tenant_filter_equals_brute_force_and_builds_one_label_file_per_segment() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), 2);
    assert!(label_files(dir.path()).is_empty(), "built on first use, not before");
    for t in 0..TENANTS {
        check_tenant(&db, 4_000, t, t);
    }
    // Each tenant's rows came from the label index in both segments; the last one asked
    // again, from the segments' remembered results (they keep the last 4 filters).
    let sources = |db: &Database| {
        let st = db.stats("c").unwrap();
        (st.filter_rows_labelled, st.filter_rows_remembered, st.filter_rows_read)
    };
    assert_eq!(sources(&db), (2 * TENANTS, 0, 0));
    check_tenant(&db, 4_000, TENANTS - 1, 99);
    assert_eq!(sources(&db), (2 * TENANTS, 2, 0));
    let files = label_files(dir.path());
    assert_eq!(files.len(), 2, "one per segment, for the tenant column only: {files:?}");
    assert!(files.iter().all(|f| f.to_string_lossy().ends_with(".2.labels")), "{files:?}");
    // NULL tests and negations through the same index, with SQL's nulls: a row without a
    // tenant passes neither `tenant != t3` nor `NOT (tenant = t3)`.
    let q = vector(32, 0, DIM);
    let exact = |predicate: Predicate| SearchParams {
        k: 10,
        list_size: 4_000,
        filter: Some(predicate),
        ..SearchParams::default()
    };
    let cases: Vec<(Predicate, RowTest)> = vec![
        (Predicate::IsNull("tenant".into()), Box::new(|i| i.is_multiple_of(17))),
        (
            Predicate::compare("tenant", CompareOp::Ne, Literal::Str("t3".into())),
            Box::new(|i| !i.is_multiple_of(17) && tenant(i) != "t3"),
        ),
        (is_tenant("t3").negate(), Box::new(|i| !i.is_multiple_of(17) && tenant(i) != "t3")),
        (
            Predicate::is_in("tenant", vec![Literal::Str("t1".into()), Literal::Str("t2".into())]),
            Box::new(|i| !i.is_multiple_of(17) && matches!(tenant(i).as_str(), "t1" | "t2")),
        ),
        (is_tenant("nobody"), Box::new(|_| false)),
    ];
    for (predicate, pass) in cases {
        let got = ids(&db.search("c", &q, &exact(predicate.clone())).unwrap());
        let want = truth(4_000, &q, pass);
        // Many rows pass the negations: their walk is approximate, but returns only rows that
        // pass and finds nearly all of the true ones.
        assert_eq!(got.len(), want.len(), "{predicate:?}");
        let found = got.iter().filter(|id| want.contains(id)).count();
        assert!(found + 1 >= want.len(), "{predicate:?}: {got:?} against {want:?}");
    }
    // A float column has no label index; a filter on it still works.
    let p = exact(Predicate::compare("weight", CompareOp::Lt, Literal::Float(100.0)));
    let before = db.stats("c").unwrap().filter_rows_read;
    let got = ids(&db.search("c", &q, &p).unwrap());
    assert_eq!(got, truth(4_000, &q, |i| i < 100));
    assert_eq!(label_files(dir.path()).len(), 2, "no label file for a float column");
    assert_eq!(db.stats("c").unwrap().filter_rows_read, before + 2, "its column read");
}

#[test]
fn an_and_of_label_columns_intersects_their_rows_and_other_ands_still_filter() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), 1);
    let q = vector(34, 0, DIM);
    let tier = |t: i64| Predicate::compare("tier", CompareOp::Eq, Literal::Int(t));
    let search = |predicate: Predicate| {
        let p = SearchParams {
            k: 10,
            list_size: 400,
            filter: Some(predicate),
            ..SearchParams::default()
        };
        ids(&db.search("c", &q, &p).unwrap())
    };
    for t in 0..TENANTS {
        let name = format!("t{t}");
        let got = search(is_tenant(&name).and(tier(t as i64 % 3)));
        let want =
            truth(2_000, &q, |i| !i.is_multiple_of(17) && tenant(i) == name && i % 3 == t % 3);
        assert_eq!(got, want, "tenant {name} and tier {}", t % 3);
    }
    let files = label_files(dir.path());
    assert_eq!(files.len(), 2, "the tenant's and the tier's: {files:?}");
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".4.labels")), "{files:?}");
    // A part on a float column has no label index: it is evaluated on the tenant's rows only,
    // its column read for those rows.
    let labelled = db.stats("c").unwrap().filter_rows_labelled;
    for (t, below) in [(5, 1_000.0), (6, 0.0), (7, 2_000.0)] {
        let name = format!("t{t}");
        let weight = Predicate::compare("weight", CompareOp::Lt, Literal::Float(below));
        let got = search(is_tenant(&name).and(weight));
        let want =
            truth(2_000, &q, |i| !i.is_multiple_of(17) && tenant(i) == name && (i as f64) < below);
        assert_eq!(got, want, "tenant {name} and weight < {below}");
    }
    let st = db.stats("c").unwrap();
    assert_eq!((st.filter_rows_labelled - labelled, st.filter_rows_read), (3, 0));
    assert_eq!(label_files(dir.path()).len(), 2, "no label file for the float column");
}

#[test]
fn a_label_file_outlives_a_restart_and_a_damaged_one_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), 1);
    check_tenant(&db, 2_000, 0, 0);
    drop(db);
    let [file] = label_files(dir.path()).try_into().unwrap();
    // Damage the last posting (the rows without a tenant): a query for another value still
    // reads the file after a restart (it is not rebuilt: the damage stays) ...
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    check_tenant(&db, 2_000, 5, 1);
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "reused, not rebuilt");
    // ... and the damaged posting is never used: IS NULL is answered from the segment file.
    let q = vector(33, 0, DIM);
    let p = SearchParams {
        k: 10,
        list_size: 400,
        filter: Some(Predicate::IsNull("tenant".into())),
        ..SearchParams::default()
    };
    let got = ids(&db.search("c", &q, &p).unwrap());
    assert_eq!(got, truth(2_000, &q, |i| i.is_multiple_of(17)));
    assert!(!file.exists(), "the damaged file is removed");
    check_tenant(&db, 2_000, 6, 2);
    assert!(file.exists(), "and built again on next use");
    drop(db);
    // A torn file (shorter than its header says) and a bad header are rebuilt at first use.
    for damage in [0usize, 1] {
        let good = std::fs::read(&file).unwrap();
        let mut bad = good.clone();
        if damage == 0 {
            bad.truncate(bad.len() - 8);
        } else {
            bad[9] ^= 1;
        }
        std::fs::write(&file, &bad).unwrap();
        let db = Database::open(dir.path(), options()).unwrap();
        check_tenant(&db, 2_000, 7, 3);
        assert_eq!(std::fs::read(&file).unwrap(), good, "damage {damage}: rebuilt whole");
    }
}

#[test]
fn label_files_go_with_their_segment_and_strays_are_swept_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), 2);
    check_tenant(&db, 4_000, 1, 0);
    assert_eq!(label_files(dir.path()).len(), 2);
    // A merge replaces both segments: their label files go with them.
    drop(db);
    let db = Database::open(dir.path(), options().merge_min_segments(2)).unwrap();
    db.run_background().unwrap();
    assert_eq!(db.stats("c").unwrap().segments, 1);
    assert!(label_files(dir.path()).is_empty(), "{:?}", label_files(dir.path()));
    check_tenant(&db, 4_000, 2, 1);
    let [live] = label_files(dir.path()).try_into().unwrap();
    drop(db);
    // A label file of a segment the manifest does not name, and a live segment's temporary
    // file that a crash left: both swept at open; the live segment's index stays.
    let segments = dir.path().join("segments");
    let stray = segments.join("00000000000fffff.2.labels");
    let live_name = live.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = segments.join(format!("{live_name}.123.0.tmp"));
    std::fs::write(&stray, b"old").unwrap();
    std::fs::write(&tmp, b"half").unwrap();
    let db = Database::open(dir.path(), options()).unwrap();
    assert!(!stray.exists() && !tmp.exists(), "{:?}", label_files(dir.path()));
    assert!(live.exists(), "the live segment's label index is kept");
    check_tenant(&db, 4_000, 3, 2);
}
