//! Segments are meant to be plain Parquet that other tools read directly. This test has pyarrow
//! read every segment file of a flushed collection and checks it finds the same ids, vectors and
//! attributes the engine stored, with the declared Arrow types. Pins down a segment format only
//! Quiver can read (a custom encoding, a mangled schema, a vector column pyarrow cannot decode).
//!
//! Needs Python with pyarrow: `QUIVER_PYTHON` names the interpreter (the README's test command
//! installs pyarrow in a venv and sets it, with `QUIVER_REQUIRE_PYARROW=1` so that a missing
//! pyarrow fails instead of skipping).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options};

const DIM: usize = 8;

const SCRIPT: &str = r#"
import json, sys, pyarrow.parquet as pq
out = []
for path in sys.argv[1:]:
    t = pq.read_table(path)
    out.append({
        "schema": [[f.name, str(f.type)] for f in t.schema],
        "ids": t.column("id").to_pylist(),
        "vectors": t.column("vector").to_pylist(),
        "tags": t.column("tag").to_pylist(),
    })
print(json.dumps(out))
"#;

fn python() -> Option<String> {
    quiver_testkit::python_with("pyarrow")
}

#[test]
fn pyarrow_reads_the_same_ids_vectors_and_attributes_from_segment_files() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background(false).row_group_rows(50))
        .unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    for part in 0..2u64 {
        let ids: Vec<u64> = (part * 150..part * 150 + 200).collect();
        let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(part, i, DIM)).collect();
        db.insert("c", &batch(&ids, &rows)).unwrap();
        for (i, r) in ids.iter().zip(rows) {
            model.insert(*i, r);
        }
        db.delete("c", &UInt64Array::from(vec![part * 150 + 3])).unwrap();
        model.remove(&(part * 150 + 3));
        db.flush().unwrap();
    }
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let out = Command::new(&py).arg("-c").arg(SCRIPT).args(&files).output().unwrap();
    assert!(out.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Rows in the files, minus rows the deletion files mark, are the live rows. The second
    // segment replaced ids 150..200 of the first, which the first's deletion file hides.
    let mut seen: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    for (n, seg) in v.as_array().unwrap().iter().enumerate() {
        let schema: Vec<(String, String)> = serde_json::from_value(seg["schema"].clone()).unwrap();
        assert_eq!(
            schema,
            vec![
                ("id".into(), "uint64".into()),
                ("vector".into(), "fixed_size_list<item: float>[8]".into()),
                ("tag".into(), "string".into()),
            ],
            "segment {n}"
        );
        let ids: Vec<u64> = serde_json::from_value(seg["ids"].clone()).unwrap();
        let vectors: Vec<Vec<f32>> = serde_json::from_value(seg["vectors"].clone()).unwrap();
        let tags: Vec<Option<String>> = serde_json::from_value(seg["tags"].clone()).unwrap();
        assert_eq!(ids.len(), vectors.len());
        for ((id, vec), tag) in ids.iter().zip(vectors).zip(tags) {
            assert_eq!(tag, Some(format!("t{id}")));
            assert_eq!(vec.len(), DIM);
            seen.insert(*id, vec); // later segments win, as in the engine
        }
    }
    // Every live row is in a file with its exact vector (f32 round-trips through JSON exactly).
    for (id, want) in &model {
        assert_eq!(seen.get(id), Some(want), "id {id}");
    }
    // An id deleted before its first flush is in no file at all.
    assert!(!seen.contains_key(&3));
}

/// A merge copies the row groups of segments that lost no rows byte for byte and re-encodes the
/// others; the merged file must still be one Parquet file pyarrow reads whole, with every live
/// row exactly once (pins down copied column chunks at wrong offsets, a footer missing the copied
/// row groups, or a deleted row carried along).
#[test]
fn pyarrow_reads_a_merged_segment_of_copied_and_reencoded_row_groups() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background(false).row_group_rows(50).merge_min_segments(3);
    let db = Database::open(dir.path(), opts.clone()).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut model = BTreeMap::new();
    for part in 0..3u64 {
        let ids: Vec<u64> = (part * 1000..part * 1000 + 180).collect();
        let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(part + 7, i, DIM)).collect();
        db.insert("c", &batch(&ids, &rows)).unwrap();
        for (i, r) in ids.iter().zip(rows) {
            model.insert(*i, r);
        }
        db.flush().unwrap();
    }
    // The middle segment loses two rows: it is re-encoded, the other two are copied.
    db.delete("c", &UInt64Array::from(vec![1005u64, 1100])).unwrap();
    model.remove(&1005);
    model.remove(&1100);
    db.flush().unwrap();
    db.run_background().unwrap();
    let files: Vec<String> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    assert_eq!(files.len(), 1, "the three segments merged into one: {files:?}");
    let out = Command::new(&py).arg("-c").arg(SCRIPT).args(&files).output().unwrap();
    assert!(out.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seg = &v.as_array().unwrap()[0];
    let ids: Vec<u64> = serde_json::from_value(seg["ids"].clone()).unwrap();
    let vectors: Vec<Vec<f32>> = serde_json::from_value(seg["vectors"].clone()).unwrap();
    let tags: Vec<Option<String>> = serde_json::from_value(seg["tags"].clone()).unwrap();
    let mut seen = BTreeMap::new();
    for ((id, vec), tag) in ids.iter().zip(vectors).zip(tags) {
        assert_eq!(tag, Some(format!("t{id}")));
        assert!(seen.insert(*id, vec).is_none(), "id {id} twice in the merged file");
    }
    assert_eq!(seen, model, "the merged file holds exactly the live rows");
    // And the engine reads the same rows back, after a reopen too.
    let check = |db: &Database| {
        let scanned: BTreeMap<u64, Vec<f32>> =
            scan_all(db, "c").into_iter().map(|(id, v, _)| (id, v)).collect();
        assert_eq!(scanned, model);
    };
    check(&db);
    drop(db);
    check(&Database::open(dir.path(), opts).unwrap());
}
