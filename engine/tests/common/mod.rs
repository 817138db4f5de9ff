//! Shared helpers for the engine's tests: batches from plain vectors, a brute-force oracle, and
//! a file's length and checksum as the manifest would record them.
#![allow(dead_code)]

pub mod gate;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use quiver_engine::Metric;
use quiver_engine::{CollectionSchema, VectorType};

/// A schema of `dim`-d f32 vectors with a nullable `tag` string attribute.
pub fn schema(dim: u32, metric: Metric) -> CollectionSchema {
    CollectionSchema::new(dim, VectorType::F32, metric).with_attribute(Field::new(
        "tag",
        DataType::Utf8,
        true,
    ))
}

/// A fixed-size-list column of f32 vectors.
pub fn vector_column(dim: usize, rows: &[Vec<f32>]) -> ArrayRef {
    let values = arrow_array::Float32Array::from_iter_values(rows.iter().flatten().copied());
    Arc::new(FixedSizeListArray::new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        dim as i32,
        Arc::new(values),
        None,
    ))
}

/// A batch of `id`, `vector` and `tag` = "t{id}".
pub fn batch(ids: &[u64], rows: &[Vec<f32>]) -> RecordBatch {
    let dim = rows.first().map_or(1, Vec::len);
    let tags: StringArray = ids.iter().map(|i| Some(format!("t{i}"))).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", vector_column(dim, rows).data_type().clone(), false),
            Field::new("tag", DataType::Utf8, true),
        ])),
        vec![Arc::new(UInt64Array::from(ids.to_vec())), vector_column(dim, rows), Arc::new(tags)],
    )
    .unwrap()
}

#[allow(unused_imports)] // not every test binary that includes this module uses it
pub use quiver_testkit::vector;

/// The u64 ids of a result batch's `id` column.
pub fn ids(b: &RecordBatch) -> Vec<u64> {
    b.column_by_name("id").unwrap().as_primitive::<UInt64Type>().values().to_vec()
}

/// The `_distance` column.
pub fn distances(b: &RecordBatch) -> Vec<f32> {
    b.column_by_name("_distance").unwrap().as_primitive::<Float32Type>().values().to_vec()
}

/// The vectors of a batch's `vector` column.
pub fn vectors(b: &RecordBatch) -> Vec<Vec<f32>> {
    let list = b.column_by_name("vector").unwrap().as_fixed_size_list();
    (0..list.len()).map(|i| list.value(i).as_primitive::<Float32Type>().values().to_vec()).collect()
}

/// Exact distance under `metric`, in f64 (the oracle).
pub fn oracle_distance(metric: Metric, q: &[f32], v: &[f32]) -> f64 {
    let dot = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>()
    };
    match metric {
        Metric::L2 => q.iter().zip(v).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum(),
        Metric::InnerProduct => -dot(q, v),
        Metric::Cosine => 1.0 - dot(q, v) / (dot(q, q).sqrt() * dot(v, v).sqrt()),
    }
}

/// Checks a search result against brute force over `rows` (id → vector): same length, distances
/// within tolerance of the oracle's k nearest, and every returned id's true distance equal to the
/// distance reported (so ties may be broken either way, but nothing wrong is returned).
pub fn check_exact(
    metric: Metric,
    q: &[f32],
    k: usize,
    rows: &[(u64, Vec<f32>)],
    got: &RecordBatch,
) {
    let mut want: Vec<(f64, u64)> =
        rows.iter().map(|(id, v)| (oracle_distance(metric, q, v), *id)).collect();
    want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    want.truncate(k);
    let got_ids = ids(got);
    let got_d = distances(got);
    assert_eq!(got_ids.len(), want.len(), "result count: got {got_ids:?}, want {want:?}");
    let tol = |d: f64| 1e-3 * (1.0 + d.abs());
    for (i, (wd, _)) in want.iter().enumerate() {
        assert!(
            (f64::from(got_d[i]) - wd).abs() <= tol(*wd),
            "rank {i}: distance {} vs oracle {wd} (got {got_ids:?}, want {want:?})",
            got_d[i]
        );
        let v = &rows.iter().find(|(id, _)| *id == got_ids[i]).expect("returned id exists").1;
        let true_d = oracle_distance(metric, q, v);
        assert!(
            (true_d - wd).abs() <= tol(*wd),
            "rank {i}: id {} is at {true_d}, not {wd}",
            got_ids[i]
        );
    }
    let mut uniq = got_ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), got_ids.len(), "duplicate ids in {got_ids:?}");
}

/// All rows of a collection via scan, sorted by id: (id, vector, tag).
pub fn scan_all(db: &quiver_engine::Database, coll: &str) -> Vec<(u64, Vec<f32>, Option<String>)> {
    let mut out = Vec::new();
    for b in db.scan(coll, None).unwrap() {
        let b = b.unwrap();
        let tags = b.column_by_name("tag").unwrap().as_string::<i32>().clone();
        for ((id, v), i) in ids(&b).into_iter().zip(vectors(&b)).zip(0..) {
            out.push((id, v, tags.is_valid(i).then(|| tags.value(i).to_string())));
        }
    }
    out.sort_by_key(|r| r.0);
    out
}

/// The length and CRC32C of the file at `path`, as the manifest records a segment's.
pub fn file_sum(path: &std::path::Path) -> quiver_engine::internals::FileSum {
    let bytes = std::fs::read(path).unwrap();
    quiver_engine::internals::FileSum { len: bytes.len() as u64, crc: crc32c::crc32c(&bytes) }
}
