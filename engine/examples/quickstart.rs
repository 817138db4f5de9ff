//! Quiver's engine in one page: open a database, create a collection with an attribute, insert
//! (and upsert) Arrow batches, search with an attribute returned, delete, get, scan, flush.
//!
//! Run: `cargo run -p quiver-engine --example quickstart [DIR]` (a temporary directory if none).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt64Type};
use arrow_array::{FixedSizeListArray, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field};
use quiver_engine::Metric;
use quiver_engine::{CollectionSchema, Database, Options, SearchParams, VectorType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = std::env::temp_dir().join(format!("quiver-quickstart-{}", std::process::id()));
    let dir = std::env::args().nth(1).map_or(tmp, Into::into);
    let db = Database::open(&dir, Options::default())?;

    // A collection of 4-d float vectors under L2, u64 ids, and a nullable `title` attribute.
    let schema = CollectionSchema::new(4, VectorType::F32, Metric::L2).with_attribute(Field::new(
        "title",
        DataType::Utf8,
        true,
    ));
    if db.list_collections().iter().all(|(n, _)| n != "docs") {
        db.create_collection("docs", schema.clone())?;
    }

    // Insert three rows. The call returns once they are durable, and they are searchable at once.
    let batch = |ids: Vec<u64>, vectors: Vec<[f32; 4]>, titles: Vec<&str>| {
        let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            vectors.into_iter().map(|v| Some(v.map(Some))),
            4,
        );
        RecordBatch::try_new(
            schema.arrow_schema(),
            vec![
                Arc::new(UInt64Array::from(ids)),
                Arc::new(vectors),
                Arc::new(StringArray::from(titles)),
            ],
        )
    };
    db.insert(
        "docs",
        &batch(
            vec![1, 2, 3],
            vec![[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0], [5.0, 5.0, 5.0, 5.0]],
            vec!["north", "east", "far away"],
        )?,
    )?;
    // Upsert id 2: the new version replaces the old everywhere.
    db.insert("docs", &batch(vec![2], vec![[0.0, 0.1, 0.9, 0.0]], vec!["east, revised"])?)?;

    let params = SearchParams { k: 2, columns: vec!["title".into()], ..SearchParams::default() };
    let hits = db.search("docs", &[0.0, 0.0, 0.9, 0.1], &params)?;
    let ids = hits.column(0).as_primitive::<UInt64Type>();
    let dist = hits.column(1).as_primitive::<Float32Type>();
    let titles = hits.column(2).as_string::<i32>();
    for i in 0..hits.num_rows() {
        println!("hit: id {} at {:.3} — {}", ids.value(i), dist.value(i), titles.value(i));
    }

    db.delete("docs", &UInt64Array::from(vec![3]))?;
    let got = db.get("docs", &UInt64Array::from(vec![1, 3]))?;
    println!("get [1, 3] → {} row(s) (3 is deleted)", got.num_rows());

    // Write the in-memory rows as a Parquet segment (this also happens automatically).
    db.flush()?;
    let rows: usize = db
        .scan("docs", Some(&["id", "title"]))?
        .map(|b| b.map(|b| b.num_rows()))
        .sum::<Result<_, _>>()?;
    println!("scan: {rows} live rows; stats: {:?}", db.stats("docs")?);
    println!("segments (plain Parquet): {}", dir.join("segments").display());
    Ok(())
}
