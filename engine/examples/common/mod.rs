//! What the engine's examples share: their flags, and batches of u8 rows of a vector file.
#![allow(dead_code)] // not every example uses every helper

use std::sync::Arc;

use arrow_array::{FixedSizeListArray, RecordBatch, UInt8Array, UInt64Array};
use arrow_schema::{DataType, Field};
use quiver_diskgraph::data::VectorSet;
use quiver_engine::CollectionSchema;

/// The value after `--name`, parsed, or `default`.
///
/// # Panics
/// If the value does not parse.
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}: not a valid value")))
}

/// The u8 rows of `data` named by `ids` (row numbers, which are also their ids), as a batch of
/// `schema` (an `id` u64 column and a u8 vector column).
///
/// # Panics
/// If the batch does not fit `schema`.
pub fn u8_batch(schema: &CollectionSchema, data: &VectorSet, ids: &[u64]) -> RecordBatch {
    let bytes: Vec<u8> = ids.iter().flat_map(|&i| data.row_bytes(i as usize).to_vec()).collect();
    let list = FixedSizeListArray::new(
        Arc::new(Field::new("item", DataType::UInt8, true)),
        data.dim() as i32,
        Arc::new(UInt8Array::from(bytes)),
        None,
    );
    RecordBatch::try_new(
        schema.arrow_schema(),
        vec![Arc::new(UInt64Array::from(ids.to_vec())), Arc::new(list)],
    )
    .expect("a batch of the collection's schema")
}
