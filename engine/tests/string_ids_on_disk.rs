//! A segment's string ids stay on disk (`segments/{id}.ids`); RAM holds a 128-bit hash and a
//! place in hash order for each, 20 bytes a row whatever the ids' length. Packed in RAM, ids of
//! 64 bytes cost 72 bytes a row and pushed a collection past the 64 bytes a row its budget
//! allows (issue 21). What can break: ids read back wrong or from the wrong row (search results,
//! merges), an ids file lost or damaged that the engine trusts (garbage ids) or cannot recover
//! from (a collection that no longer opens), files of merged-away segments left behind, and
//! lookups by id (upserts, deletes, gets) that miss a row held only by its hash.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::{
    CollectionSchema, Database, IdType, Metric, Options, ReadError, SearchParams, VectorType,
};

const DIM: usize = 8;
/// Ids of 64 bytes: a URL or a document path.
fn id_of(i: u64) -> String {
    format!("https://example.org/documents/archive/2026/item-{i:0>15}")
}

fn ids_array(ids: &[u64]) -> ArrayRef {
    Arc::new(ids.iter().map(|&i| Some(id_of(i))).collect::<StringArray>())
}

fn rows(ids: &[u64], version: f32) -> RecordBatch {
    let vectors: Vec<Vec<f32>> = ids
        .iter()
        .map(|&i| vector(31, i, DIM).into_iter().map(|x| x + version).collect())
        .collect();
    let v = vector_column(DIM, &vectors);
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("vector", v.data_type().clone(), false),
    ]);
    RecordBatch::try_new(Arc::new(schema), vec![ids_array(ids), v]).unwrap()
}

fn open(dir: &Path) -> Database {
    let opts = Options::default().background(false).min_index_rows(256).merge_min_segments(64);
    Database::open(dir, opts).unwrap()
}

/// The first string id of a search for row `i`'s vector (at version 0).
fn nearest(db: &Database, i: u64) -> Result<String, ReadError> {
    let params = SearchParams { k: 1, list_size: 40, ..SearchParams::default() };
    let hits = db.search("c", &vector(31, i, DIM), &params)?;
    Ok(hits.column_by_name("id").unwrap().as_string::<i32>().value(0).to_string())
}

fn ids_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ids"))
        .collect();
    names.sort();
    names
}

#[test]
fn long_string_ids_cost_twenty_bytes_a_row_and_read_back_through_searches_merges_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let schema =
        CollectionSchema::new(DIM as u32, VectorType::F32, Metric::L2).with_id_type(IdType::Utf8);
    db.create_collection("c", schema).unwrap();
    for part in 0..3u64 {
        let ids: Vec<u64> = (part * 1000..(part + 1) * 1000).collect();
        db.insert("c", &rows(&ids, 0.0)).unwrap();
        db.flush().unwrap();
    }
    db.run_background().unwrap();
    let st = db.stats("c").unwrap();
    assert_eq!(st.segments, 3);
    assert_eq!(ids_files(dir.path()).len(), 3, "one ids file a segment");
    // 16 for the hash, 4 for its place in hash order, 1.25 for the filter: not the 64 bytes of
    // each id.
    let per_row = st.resident.segment_keys as f64 / 3000.0;
    assert!(per_row < 22.0, "{per_row:.2} bytes a row for ids of 64 bytes");

    for i in (0..3000).step_by(37) {
        assert_eq!(nearest(&db, i).unwrap(), id_of(i), "row {i}");
    }
    // Lookups by id reach rows held by their hash: an upsert moves a row, a delete removes one.
    db.insert("c", &rows(&[5], 0.0)).unwrap();
    db.delete("c", ids_array(&[7]).as_ref()).unwrap();
    db.flush().unwrap();
    assert_eq!(db.stats("c").unwrap().rows, 2999);
    let got = db.get("c", ids_array(&[5, 7, 9]).as_ref()).unwrap();
    let found = got.column_by_name("id").unwrap().as_string::<i32>();
    let mut found: Vec<&str> = found.iter().map(Option::unwrap).collect();
    found.sort_unstable();
    assert_eq!(found, [id_of(5), id_of(9)]);
    drop(db);

    // Merged: the inputs' ids files go with them, the merged segment has its own.
    let opts = Options::default().background(false).min_index_rows(256).merge_min_segments(2);
    let db = Database::open(dir.path(), opts).unwrap();
    db.run_background().unwrap();
    assert_eq!(db.stats("c").unwrap().segments, 1, "merged into one");
    assert_eq!(ids_files(dir.path()).len(), 1, "the inputs' ids files were removed");
    for i in (0..3000).step_by(41).filter(|&i| i != 7) {
        assert_eq!(nearest(&db, i).unwrap(), id_of(i), "row {i} after the merge");
    }
    drop(db);

    // Lost: written again from the segment's Parquet file at open.
    let name = ids_files(dir.path()).remove(0);
    let path = dir.path().join("segments").join(&name);
    std::fs::remove_file(&path).unwrap();
    let db = open(dir.path());
    assert!(path.exists(), "the ids file was written again");
    assert_eq!(nearest(&db, 1234).unwrap(), id_of(1234));
    drop(db);

    // Damaged in an id's bytes: that row's id is reported corrupt, never returned wrong.
    let mut bytes = std::fs::read(&path).unwrap();
    let text = bytes.len() - 2999 * 64;
    for b in &mut bytes[text..] {
        *b = b'x';
    }
    std::fs::write(&path, &bytes).unwrap();
    let db = open(dir.path());
    match nearest(&db, 1234) {
        Err(ReadError::Segment(e)) => assert!(e.to_string().contains("checksum"), "{e}"),
        other => panic!("a damaged id gave {other:?}"),
    }
    drop(db);

    // Damaged in its header: written again at open.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let db = open(dir.path());
    assert_eq!(nearest(&db, 1234).unwrap(), id_of(1234));
}
