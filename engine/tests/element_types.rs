//! Every element type and id type end to end: u8 and i8 vectors (searched with the integer
//! kernels in memory and in the disk index), f16 vectors (stored as f16 in Parquet, searched as
//! f32), and i64 and string ids. Pins down a type that round-trips wrongly through the WAL,
//! Parquet or the index, or whose distances disagree with brute force.

mod common;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Int8Type, UInt8Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Int8Array, Int64Array, RecordBatch,
    StringArray, UInt8Array, UInt64Array,
};
use arrow_schema::{DataType, Field};
use common::{check_exact, vector};
use half::f16;
use quiver_engine::Metric;
use quiver_engine::{CollectionSchema, Database, IdType, Options, SearchParams, VectorType};

const DIM: usize = 8;
const N: u64 = 300;

fn list(values: ArrayRef, item: DataType) -> ArrayRef {
    Arc::new(FixedSizeListArray::new(
        Arc::new(Field::new("item", item, true)),
        DIM as i32,
        values,
        None,
    ))
}

/// The vectors as f32 (the oracle's view) and as an Arrow column of `ty`.
fn column(ty: VectorType, ids: &[u64]) -> (Vec<Vec<f32>>, ArrayRef) {
    let raw: Vec<Vec<f32>> = ids.iter().map(|&i| vector(3, i, DIM)).collect();
    match ty {
        VectorType::U8 => {
            let v: Vec<u8> = raw.iter().flatten().map(|x| ((x + 1.0) * 127.0) as u8).collect();
            let f = v.chunks(DIM).map(|c| c.iter().map(|&x| f32::from(x)).collect()).collect();
            (f, list(Arc::new(UInt8Array::from(v)), DataType::UInt8))
        }
        VectorType::I8 => {
            let v: Vec<i8> = raw.iter().flatten().map(|x| (x * 127.0) as i8).collect();
            let f = v.chunks(DIM).map(|c| c.iter().map(|&x| f32::from(x)).collect()).collect();
            (f, list(Arc::new(Int8Array::from(v)), DataType::Int8))
        }
        VectorType::F16 => {
            let v: Vec<f16> = raw.iter().flatten().map(|&x| f16::from_f32(x)).collect();
            let f = v.chunks(DIM).map(|c| c.iter().map(|x| x.to_f32()).collect()).collect();
            (f, list(Arc::new(Float16Array::from(v)), DataType::Float16))
        }
        _ => unreachable!(),
    }
}

fn ids_column(id_type: IdType, ids: &[u64]) -> ArrayRef {
    match id_type {
        IdType::U64 => Arc::new(UInt64Array::from(ids.to_vec())),
        IdType::I64 => Arc::new(Int64Array::from_iter_values(ids.iter().map(|&i| i as i64 - 150))),
        _ => Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("doc-{i}")))),
    }
}

/// Maps a result's id column back to the u64 the test generated it from.
fn back(id_type: IdType, a: &dyn Array) -> Vec<u64> {
    match id_type {
        IdType::U64 => a.as_primitive::<arrow_array::types::UInt64Type>().values().to_vec(),
        IdType::I64 => a
            .as_primitive::<arrow_array::types::Int64Type>()
            .values()
            .iter()
            .map(|&v| (v + 150) as u64)
            .collect(),
        _ => a.as_string::<i32>().iter().map(|s| s.unwrap()[4..].parse().unwrap()).collect(),
    }
}

#[test]
fn integer_and_half_vectors_with_every_id_type_match_brute_force_through_every_stage() {
    let cases = [
        (VectorType::U8, Metric::L2, IdType::U64),
        (VectorType::U8, Metric::InnerProduct, IdType::Utf8),
        (VectorType::I8, Metric::L2, IdType::I64),
        (VectorType::F16, Metric::Cosine, IdType::Utf8),
        (VectorType::F16, Metric::L2, IdType::I64),
    ];
    for (ty, metric, id_type) in cases {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options::default().background(false).min_index_rows(64);
        let schema = CollectionSchema::new(DIM as u32, ty, metric).with_id_type(id_type);
        let ids: Vec<u64> = (0..N).collect();
        let (floats, vectors) = column(ty, &ids);
        let rows: Vec<(u64, Vec<f32>)> = ids.iter().copied().zip(floats.clone()).collect();
        let check = |db: &Database, stage: &str| {
            for qi in 0..4u64 {
                // Integer-valued queries exercise the native integer kernels.
                let q: Vec<f32> =
                    floats[(qi * 37) as usize].iter().map(|x| x + (qi % 2) as f32).collect();
                for exact in [true, false] {
                    let p = SearchParams { k: 8, exact, list_size: 400, ..SearchParams::default() };
                    let got = db.search("c", &q, &p).unwrap_or_else(|e| panic!("{stage}: {e}"));
                    let ids = back(id_type, got.column(0).as_ref());
                    let b = RecordBatch::try_new(
                        Arc::new(arrow_schema::Schema::new(vec![
                            Field::new("id", DataType::UInt64, false),
                            Field::new("_distance", DataType::Float32, false),
                        ])),
                        vec![Arc::new(UInt64Array::from(ids)), got.column(1).clone()],
                    )
                    .unwrap();
                    check_exact(metric, &q, 8, &rows, &b);
                }
            }
            // get returns the stored vectors bit for bit.
            let want = [5u64, 250, 17];
            let got = db.get("c", ids_column(id_type, &want).as_ref()).unwrap();
            assert_eq!(back(id_type, got.column(0).as_ref()), want, "{stage}");
            let l = got.column(1).as_fixed_size_list();
            for (i, id) in want.iter().enumerate() {
                let v: Vec<f32> = match ty {
                    VectorType::U8 => l
                        .value(i)
                        .as_primitive::<UInt8Type>()
                        .values()
                        .iter()
                        .map(|&x| f32::from(x))
                        .collect(),
                    VectorType::I8 => l
                        .value(i)
                        .as_primitive::<Int8Type>()
                        .values()
                        .iter()
                        .map(|&x| f32::from(x))
                        .collect(),
                    _ => l
                        .value(i)
                        .as_primitive::<Float16Type>()
                        .values()
                        .iter()
                        .map(|x| x.to_f32())
                        .collect(),
                };
                assert_eq!(v, floats[*id as usize], "{stage}: get vector {id}");
            }
        };
        {
            let db = Database::open(dir.path(), opts()).unwrap();
            db.create_collection("c", schema.clone()).unwrap();
            let b = RecordBatch::try_new(
                schema.arrow_schema(),
                vec![ids_column(id_type, &ids), vectors],
            )
            .unwrap();
            db.insert("c", &b).unwrap();
            check(&db, &format!("{ty:?}/{metric}: memtable"));
            db.flush().unwrap();
            check(&db, &format!("{ty:?}/{metric}: segment"));
            db.run_background().unwrap();
            assert_eq!(db.stats("c").unwrap().indexed_segments, 1);
            check(&db, &format!("{ty:?}/{metric}: indexed"));
        }
        let db = Database::open(dir.path(), opts()).unwrap();
        check(&db, &format!("{ty:?}/{metric}: reopened"));
    }
}
