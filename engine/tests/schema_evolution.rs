//! Additive schema evolution: a collection gains nullable attribute columns while rows live in
//! every place a row can be (the in-memory table, unindexed and indexed segments, the WAL).
//! Rows written before a column existed must read null in it — through scans, gets, search
//! columns and filters — after flushes, after merges that re-encode the old files, and after a
//! reopen that replays the WAL; a column added concurrently with writes, flushes and merges
//! must lose no row; a changed type or a reserved name is refused and changes nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::Metric;
use quiver_engine::{
    CollectionError, CompareOp, Database, Literal, Options, Predicate, SchemaError, SearchParams,
};

const DIM: usize = 8;

fn opts() -> Options {
    Options::default().background(false).min_index_rows(64).merge_min_segments(2)
}

/// A batch with the `price` column the collection gains: price = id / 2.
fn priced(ids: &[u64]) -> RecordBatch {
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(5, i, DIM)).collect();
    let tags: StringArray = ids.iter().map(|i| Some(format!("t{i}"))).collect();
    let prices = Float64Array::from_iter_values(ids.iter().map(|&i| i as f64 / 2.0));
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", vector_column(DIM, &rows).data_type().clone(), false),
            Field::new("tag", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
        ])),
        vec![
            Arc::new(UInt64Array::from(ids.to_vec())),
            vector_column(DIM, &rows),
            Arc::new(tags),
            Arc::new(prices),
        ],
    )
    .unwrap()
}

fn plain(ids: &[u64]) -> RecordBatch {
    let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(5, i, DIM)).collect();
    batch(ids, &rows)
}

fn price_column() -> Field {
    Field::new("price", DataType::Float64, true)
}

/// Every row's price by id, from a scan.
fn scanned_prices(db: &Database) -> BTreeMap<u64, Option<f64>> {
    let mut out = BTreeMap::new();
    for b in db.scan("c", Some(&["id", "price"])).unwrap() {
        let b = b.unwrap();
        let p = b.column(1).as_primitive::<Float64Type>();
        for (i, id) in ids(&b).into_iter().enumerate() {
            out.insert(id, p.is_valid(i).then(|| p.value(i)));
        }
    }
    out
}

/// What every read must agree on: `old` ids have no price, `new` ids have id / 2.
fn check(db: &Database, old: &[u64], new: &[u64], what: &str) {
    let want: BTreeMap<u64, Option<f64>> = old
        .iter()
        .map(|&i| (i, None))
        .chain(new.iter().map(|&i| (i, Some(i as f64 / 2.0))))
        .collect();
    assert_eq!(scanned_prices(db), want, "{what}: scan");
    let asked: Vec<u64> = want.keys().copied().collect();
    let got = db.get("c", &UInt64Array::from(asked.clone())).unwrap();
    assert_eq!(ids(&got), asked, "{what}: get");
    let p = got.column_by_name("price").expect("get returns the added column");
    let p = p.as_primitive::<Float64Type>();
    for (i, id) in asked.iter().enumerate() {
        assert_eq!(p.is_valid(i).then(|| p.value(i)), want[id], "{what}: get price of {id}");
    }
    // Search columns and filters, exactly and through the indexes.
    for exact in [true, false] {
        let q = vector(5, new[0], DIM);
        let params = SearchParams {
            k: want.len(),
            exact,
            list_size: 200,
            columns: vec!["price".into()],
            ..SearchParams::default()
        };
        let hits = db.search("c", &q, &params).unwrap();
        assert_eq!(hits.num_rows(), want.len(), "{what}: search finds every row");
        let p = hits.column_by_name("price").unwrap().as_primitive::<Float64Type>();
        for (i, id) in ids(&hits).into_iter().enumerate() {
            assert_eq!(p.is_valid(i).then(|| p.value(i)), want[&id], "{what}: search price {id}");
        }
        let filtered = |predicate: Predicate| {
            let params = SearchParams { filter: Some(predicate), ..params.clone() };
            let mut got = ids(&db.search("c", &q, &params).unwrap());
            got.sort_unstable();
            got
        };
        let cheap: Vec<u64> = new.iter().copied().filter(|&i| (i as f64 / 2.0) < 40.0).collect();
        let lt = Predicate::compare("price", CompareOp::Lt, Literal::Float(40.0));
        assert_eq!(filtered(lt), cheap, "{what}: price < 40 (exact {exact})");
        assert_eq!(filtered(Predicate::IsNull("price".into())), old, "{what}: price IS NULL");
    }
}

#[test]
fn rows_written_before_a_column_was_added_read_null_in_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<u64> = (0..300).collect();
    let new: Vec<u64> = (300..500).collect();
    {
        let db = Database::open(dir.path(), opts()).unwrap();
        db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
        db.insert("c", &plain(&old[..200])).unwrap();
        db.flush().unwrap();
        db.run_background().unwrap(); // an indexed segment under the old schema
        db.insert("c", &plain(&old[200..])).unwrap(); // in memory under the old schema
        let tag = Field::new("tag", DataType::Utf8, true);
        assert_eq!(db.add_attributes("c", &[price_column(), tag]).unwrap(), 1);
        assert_eq!(db.add_attributes("c", &[price_column()]).unwrap(), 0, "idempotent");
        let err = db.insert("c", &priced(&[999]).project(&[0, 1, 3]).unwrap());
        assert!(err.is_ok(), "a batch may leave the nullable tag out: {err:?}");
        db.delete("c", &UInt64Array::from(vec![999])).unwrap();
        db.insert("c", &priced(&new[..100])).unwrap();
        check(&db, &old, &new[..100], "memory and an old indexed segment");
        db.flush().unwrap();
        check(&db, &old, &new[..100], "after a flush");
        db.insert("c", &priced(&new[100..])).unwrap();
        db.flush().unwrap();
        db.run_background().unwrap(); // merges re-encode the old files with nulls
        assert!(db.stats("c").unwrap().segments < 3, "the segments were merged");
        check(&db, &old, &new, "after merges");
        db.insert("c", &plain(&[1000])).unwrap(); // an old-shape batch, in the WAL only
    }
    let db = Database::open(dir.path(), opts()).unwrap();
    let old_and_late: Vec<u64> = old.iter().copied().chain([1000]).collect();
    check(&db, &old_and_late, &new, "after a reopen that replays the WAL");
    assert!(db.schema("c").unwrap().attributes().iter().any(|a| a.name() == "price"));
}

#[test]
fn a_changed_type_or_a_reserved_name_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), opts()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    db.insert("c", &plain(&[1, 2])).unwrap();
    let before = db.schema("c").unwrap();
    let e = db.add_attributes("c", &[Field::new("tag", DataType::Int32, true)]).unwrap_err();
    assert!(matches!(e, CollectionError::Schema(SchemaError::AttributeExists { .. })), "{e}");
    for name in ["score", "distance", "_distance", "vector", ""] {
        let e = db.add_attributes("c", &[Field::new(name, DataType::Int32, true)]).unwrap_err();
        assert!(matches!(e, CollectionError::Schema(SchemaError::AttributeName(_))), "{e}");
    }
    let e = db.add_attributes("nope", &[price_column()]).unwrap_err();
    assert!(matches!(e, CollectionError::NotFound(_)), "{e}");
    assert_eq!(db.schema("c").unwrap(), before);
    drop(db);
    let db = Database::open(dir.path(), opts()).unwrap();
    assert_eq!(db.schema("c").unwrap(), before, "nothing was committed");
    assert_eq!(scan_all(&db, "c").len(), 2);
}

#[test]
fn a_column_added_while_writes_flushes_and_merges_run_loses_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .min_index_rows(64)
        .merge_min_segments(2)
        .memtable_bytes(64 << 10)
        .idle_flush(Some(std::time::Duration::from_millis(5)));
    let db = Arc::new(Database::open(dir.path(), opts).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let added = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, added, rounds_done) =
            (Arc::clone(&db), Arc::clone(&added), Arc::clone(&rounds_done));
        std::thread::spawn(move || {
            let mut written = Vec::new();
            for round in 0..60u64 {
                // The column is added while the writes run, whatever the machine's speed: it
                // is added once 10 rounds are in, and the writer waits for it at round 30.
                if round == 30 {
                    while !added.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                let ids: Vec<u64> = (round * 50..round * 50 + 50).collect();
                // Old-shape batches throughout; priced ones once the column exists.
                if added.load(Ordering::SeqCst) && round % 2 == 0 {
                    db.insert("c", &priced(&ids)).unwrap();
                    written.push((ids, true));
                } else {
                    db.insert("c", &plain(&ids)).unwrap();
                    written.push((ids, false));
                }
                rounds_done.store(round + 1, Ordering::SeqCst);
            }
            written
        })
    };
    while rounds_done.load(Ordering::SeqCst) < 10 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    db.add_attributes("c", &[price_column()]).unwrap();
    added.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(db.wait_indexed(std::time::Duration::from_secs(120)).unwrap(), "indexing finished");
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for (ids, has_price) in written {
        if has_price { new.extend(ids) } else { old.extend(ids) }
    }
    assert!(!new.is_empty(), "some batches carried the new column");
    check(&db, &old, &new, "after concurrent writes, flushes and merges");
}
