//! Bad input must get a clear, typed error and change nothing: wrong dimensions, NaN and
//! infinity (also in a row that a later row with the same id replaces), missing or mistyped
//! `id` / `vector` columns, unknown collections and columns, hostile collection names, and bad
//! search parameters. Each case checks the error variant, then that the collection (and the
//! files on disk) are unchanged.

mod common;

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::BatchError;
use quiver_engine::Metric;
use quiver_engine::NameError;
use quiver_engine::{
    CollectionError, Database, Options, QueryError, ReadError, SearchParams, WriteError,
};

const DIM: usize = 4;

fn setup() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background(false)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::Cosine)).unwrap();
    db.insert("c", &batch(&[1, 2], &[vec![1.0; DIM], vec![0.5; DIM]])).unwrap();
    (dir, db)
}

fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("wal")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

/// Asserts `f` fails with a batch error matching `pred` and leaves rows and WAL unchanged.
fn refused(
    dir: &std::path::Path,
    db: &Database,
    what: &str,
    f: impl FnOnce() -> Result<u64, WriteError>,
    pred: impl Fn(&BatchError) -> bool,
) {
    let before = scan_all(db, "c");
    let wal = wal_bytes(dir);
    match f() {
        Err(WriteError::Batch(e)) => assert!(pred(&e), "{what}: unexpected error {e:?}"),
        other => panic!("{what}: expected a batch error, got {other:?}"),
    }
    assert_eq!(scan_all(db, "c"), before, "{what}: rows changed");
    assert_eq!(wal_bytes(dir), wal, "{what}: the WAL grew");
}

fn custom(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = Schema::new(
        fields.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), fields.into_iter().map(|(_, a)| a).collect()).unwrap()
}

#[test]
fn malformed_batches_are_refused_and_nothing_is_written() {
    let (dir, db) = setup();
    let d = dir.path();
    let ok_ids: ArrayRef = Arc::new(UInt64Array::from(vec![10u64, 11]));
    let ok_vecs = vector_column(DIM, &[vec![1.0; DIM], vec![2.0; DIM]]);

    refused(
        d,
        &db,
        "wrong dimension",
        || db.insert("c", &batch(&[10], &[vec![1.0; DIM + 1]])),
        |e| matches!(e, BatchError::ColumnType { column, .. } if column == "vector"),
    );
    let mut nan = vec![1.0; DIM];
    nan[2] = f32::NAN;
    refused(
        d,
        &db,
        "NaN",
        || db.insert("c", &batch(&[10, 11], &[vec![1.0; DIM], nan.clone()])),
        |e| matches!(e, BatchError::NonFinite { row: 1, .. }),
    );
    let inf = vec![f32::INFINITY; DIM];
    refused(
        d,
        &db,
        "infinity",
        || db.insert("c", &batch(&[10], std::slice::from_ref(&inf))),
        |e| matches!(e, BatchError::NonFinite { row: 0, .. }),
    );
    refused(
        d,
        &db,
        "zero vector under cosine",
        || db.insert("c", &batch(&[10], &[vec![0.0; DIM]])),
        |e| matches!(e, BatchError::ZeroVector(0)),
    );
    refused(
        d,
        &db,
        "NaN in a row that a later row with the same id replaces",
        || db.insert("c", &batch(&[10, 12, 10], &[nan_row(), vec![1.0; DIM], vec![1.0; DIM]])),
        |e| matches!(e, BatchError::NonFinite { row: 0, .. }),
    );
    refused(
        d,
        &db,
        "missing id",
        || db.insert("c", &custom(vec![("vector", ok_vecs.clone())])),
        |e| matches!(e, BatchError::MissingColumn(c) if c == "id"),
    );
    refused(
        d,
        &db,
        "missing vector",
        || db.insert("c", &custom(vec![("id", ok_ids.clone())])),
        |e| matches!(e, BatchError::MissingColumn(c) if c == "vector"),
    );
    let signed: ArrayRef = Arc::new(Int64Array::from(vec![10i64, 11]));
    refused(
        d,
        &db,
        "id of the wrong type",
        || db.insert("c", &custom(vec![("id", signed.clone()), ("vector", ok_vecs.clone())])),
        |e| matches!(e, BatchError::ColumnType { column, .. } if column == "id"),
    );
    let flat: ArrayRef = Arc::new(Float32Array::from(vec![1.0f32, 2.0]));
    refused(
        d,
        &db,
        "vector not a list",
        || db.insert("c", &custom(vec![("id", ok_ids.clone()), ("vector", flat.clone())])),
        |e| matches!(e, BatchError::ColumnType { column, .. } if column == "vector"),
    );
    let null_ids: ArrayRef = Arc::new(UInt64Array::from(vec![Some(10u64), None]));
    refused(
        d,
        &db,
        "null id",
        || db.insert("c", &custom(vec![("id", null_ids.clone()), ("vector", ok_vecs.clone())])),
        |e| matches!(e, BatchError::Null { column, row: 1 } if column == "id"),
    );
    let extra: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
    refused(
        d,
        &db,
        "unknown column",
        || {
            db.insert(
                "c",
                &custom(vec![
                    ("id", ok_ids.clone()),
                    ("vector", ok_vecs.clone()),
                    ("color", extra.clone()),
                ]),
            )
        },
        |e| matches!(e, BatchError::UnknownColumn(c) if c == "color"),
    );
    let tag_ints: ArrayRef = Arc::new(Int64Array::from(vec![1i64, 2]));
    refused(
        d,
        &db,
        "attribute of the wrong type",
        || {
            db.insert(
                "c",
                &custom(vec![
                    ("id", ok_ids.clone()),
                    ("vector", ok_vecs.clone()),
                    ("tag", tag_ints.clone()),
                ]),
            )
        },
        |e| matches!(e, BatchError::ColumnType { column, .. } if column == "tag"),
    );
    refused(
        d,
        &db,
        "delete ids of the wrong type",
        || db.delete("c", &Int64Array::from(vec![1i64])),
        |e| matches!(e, BatchError::ColumnType { .. }),
    );
    // A missing nullable attribute is fine: it becomes null.
    db.insert("c", &custom(vec![("id", ok_ids.clone()), ("vector", ok_vecs.clone())])).unwrap();
    let rows = scan_all(&db, "c");
    assert_eq!(rows.iter().filter(|r| r.2.is_none()).count(), 2);
}

#[test]
fn finite_vectors_whose_squared_distances_overflow_are_refused_under_l2_and_inner_product() {
    // 1e20 is finite, but its squared L2 distance to anything is not: such rows were accepted
    // and then searched with distance = inf, which ranks nothing.
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background(false)).unwrap();
    let limit = quiver_engine::max_magnitude(DIM);
    for (name, metric) in
        [("l2", Metric::L2), ("ip", Metric::InnerProduct), ("cos", Metric::Cosine)]
    {
        db.create_collection(name, schema(DIM as u32, metric)).unwrap();
        db.insert(name, &batch(&[1], &[vec![limit, -limit, 0.5, 1.0]])).unwrap();
        let huge = vec![1.0, 1e20, 0.0, 0.0];
        let got = db.insert(name, &batch(&[2, 3], &[vec![1.0; DIM], huge.clone()]));
        if metric == Metric::Cosine {
            got.unwrap(); // normalised: any finite vector has a direction
            continue;
        }
        match got {
            Err(WriteError::Batch(BatchError::TooLarge { row: 1, value, .. })) => {
                assert_eq!(value, 1e20);
            }
            other => panic!("{name}: expected TooLarge for row 1, got {other:?}"),
        }
        assert_eq!(scan_all(&db, name).len(), 1, "{name}: nothing of the refused batch");
        let err = db.search(name, &huge, &SearchParams::default()).unwrap_err();
        match err {
            ReadError::Query(QueryError::Magnitude { value, limit: l }) => {
                assert_eq!((value, l), (1e20, limit), "{name}");
            }
            other => panic!("{name}: expected Magnitude, got {other:?}"),
        }
        let hit = db.search(name, &[limit, limit, 0.0, 0.0], &SearchParams::default()).unwrap();
        assert!(distances(&hit).iter().all(|d| d.is_finite()), "{name}: at the bound, finite");
    }
}

#[test]
fn getting_only_absent_ids_or_none_after_a_flush_returns_an_empty_batch() {
    // It failed with "interleave requires input of at least one array" once every row had left
    // the in-memory table, where the docs promise that absent ids are skipped.
    let (_dir, db) = setup();
    db.flush().unwrap();
    for ids in [vec![], vec![7u64, 8], vec![7, 1, 8]] {
        let got = db.get("c", &UInt64Array::from(ids.clone())).unwrap();
        let want: Vec<u64> = ids.iter().copied().filter(|&i| i == 1).collect();
        assert_eq!(got.schema(), db.scan("c", None).unwrap().schema(), "{ids:?}");
        assert_eq!(common::ids(&got), want, "{ids:?}");
    }
}

#[test]
fn unknown_collections_and_hostile_names_get_typed_errors() {
    let (dir, db) = setup();
    assert!(matches!(
        db.insert("nope", &batch(&[1], &[vec![1.0; DIM]])),
        Err(WriteError::NotFound(_))
    ));
    assert!(matches!(
        db.delete("nope", &UInt64Array::from(vec![1u64])),
        Err(WriteError::NotFound(_))
    ));
    assert!(matches!(
        db.search("nope", &[1.0; DIM], &SearchParams::default()),
        Err(ReadError::NotFound(_))
    ));
    assert!(matches!(db.get("nope", &UInt64Array::from(vec![1u64])), Err(ReadError::NotFound(_))));
    assert!(matches!(db.scan("nope", None), Err(ReadError::NotFound(_))));
    assert!(matches!(db.drop_collection("nope"), Err(CollectionError::NotFound(_))));
    let long = "a".repeat(300);
    for name in ["", "..", ".", "../x", "a/b", "/abs", "a\0b", "-rf", long.as_str(), "é"] {
        let err = db.create_collection(name, schema(DIM as u32, Metric::L2)).unwrap_err();
        assert!(matches!(err, CollectionError::Name(_)), "{name:?}: {err}");
    }
    assert!(matches!(
        db.create_collection("", schema(4, Metric::L2)),
        Err(CollectionError::Name(NameError::Empty))
    ));
    assert!(matches!(
        db.create_collection("c", schema(4, Metric::L2)),
        Err(CollectionError::AlreadyExists(_))
    ));
    // Nothing outside the database directory was created.
    let parent = dir.path().parent().unwrap();
    assert!(!parent.join("x").exists() && !parent.join("abs").exists());
    assert_eq!(db.list_collections().len(), 1);
}

#[test]
fn bad_schemas_and_search_parameters_are_refused() {
    let (_dir, db) = setup();
    use quiver_engine::SchemaError;
    use quiver_engine::{CollectionSchema, VectorType};
    let bad = [
        CollectionSchema::new(0, VectorType::F32, Metric::L2),
        CollectionSchema::new(1 << 20, VectorType::F32, Metric::L2),
        CollectionSchema::new(4, VectorType::U8, Metric::Cosine),
        CollectionSchema::new(4, VectorType::F32, Metric::L2).with_attribute(Field::new(
            "id",
            DataType::Utf8,
            true,
        )),
        CollectionSchema::new(4, VectorType::F32, Metric::L2)
            .with_attribute(Field::new("a", DataType::Utf8, true))
            .with_attribute(Field::new("a", DataType::Int32, true)),
    ];
    for s in bad {
        let err = db.create_collection("d", s.clone()).unwrap_err();
        assert!(matches!(err, CollectionError::Schema(_)), "{s:?}: {err}");
    }
    // Search results carry Quiver's own columns beside the attributes; an attribute of the same
    // name was once accepted and then shadowed by Quiver's value in every result.
    for name in ["_distance", "score", "distance", "vector"] {
        let s = CollectionSchema::new(4, VectorType::F32, Metric::L2).with_attribute(Field::new(
            name,
            DataType::Float32,
            true,
        ));
        match db.create_collection("d", s) {
            Err(CollectionError::Schema(SchemaError::AttributeName(n))) => assert_eq!(n, name),
            other => panic!("attribute {name:?} must be refused as reserved, got {other:?}"),
        }
    }
    assert!(db.list_collections().iter().all(|(n, _)| n != "d"), "nothing was created");
    let q = [1.0f32; DIM];
    let walk = |list_size, beam_width| QueryError::Walk { list_size, beam_width };
    let cases: Vec<(Vec<f32>, SearchParams, QueryError)> = vec![
        (
            vec![1.0; DIM + 1],
            SearchParams::default(),
            QueryError::Dimension { expected: DIM, got: DIM + 1 },
        ),
        (vec![f32::NAN; DIM], SearchParams::default(), QueryError::NonFinite(f32::NAN)),
        (vec![0.0; DIM], SearchParams::default(), QueryError::ZeroCosine),
        (q.to_vec(), SearchParams { k: 0, ..SearchParams::default() }, QueryError::K(0)),
        (
            q.to_vec(),
            SearchParams { k: 1_000_000, ..SearchParams::default() },
            QueryError::K(1_000_000),
        ),
        (q.to_vec(), SearchParams { beam_width: 0, ..SearchParams::default() }, walk(100, 0)),
    ];
    for (query, p, want) in cases {
        let err = db.search("c", &query, &p).unwrap_err();
        // NaN != NaN: compare the variants' messages, which carry every field.
        match err {
            ReadError::Query(got) => {
                assert_eq!(got.to_string(), want.to_string(), "{query:?} {p:?}")
            }
            other => panic!("{query:?} {p:?}: expected {want:?}, got {other:?}"),
        }
    }
    let p = SearchParams { columns: vec!["nope".into()], ..SearchParams::default() };
    assert!(matches!(db.search("c", &q, &p), Err(ReadError::UnknownColumn(_))));
    assert!(matches!(db.scan("c", Some(&["id", "nope"])), Err(ReadError::UnknownColumn(_))));
}

fn nan_row() -> Vec<f32> {
    let mut v = vec![1.0; DIM];
    v[1] = f32::NAN;
    v
}
