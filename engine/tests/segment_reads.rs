//! Whole-segment reads decode the `vector` column straight from its Parquet pages, skipping
//! the list levels that parquet-rs's reader walks value by value; every other read (row
//! selections, projections without vectors) goes through the Arrow reader. These tests pin down
//! that the two paths return the same rows: batches whose sizes cut across pages and row
//! groups, projections in any order, `PLAIN` and `BYTE_STREAM_SPLIT` values, compressed or not,
//! data pages of format versions 1 and 2, and files written by the engine's own writer. A mismatch here would be silent garbage in
//! scans.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;
use quiver_engine::internals::{SegmentFile, SegmentWriter};
use quiver_vfs::OsVfs;

const DIM: usize = 12;
const ROWS: usize = 1000;

/// The engine's collections have a nullable `item` (Arrow's default for lists), though no
/// element is ever null; the reader must take both.
fn schema_with(nullable_item: bool) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, nullable_item));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("vector", DataType::FixedSizeList(item, DIM as i32), false),
        Field::new("tag", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]))
}

fn data(schema: &SchemaRef) -> RecordBatch {
    let vals: Vec<f32> = (0..ROWS).flat_map(|i| quiver_testkit::vector(7, i as u64, DIM)).collect();
    let DataType::FixedSizeList(item, _) = schema.field(1).data_type().clone() else {
        unreachable!()
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values((0..ROWS as u64).map(|i| i * 3 + 1))),
        Arc::new(FixedSizeListArray::new(
            item,
            DIM as i32,
            Arc::new(Float32Array::from(vals)),
            None,
        )),
        Arc::new(StringArray::from_iter((0..ROWS).map(|i| (i % 5 != 0).then(|| format!("t{i}"))))),
        Arc::new(Int64Array::from_iter((0..ROWS as i64).map(|i| (i % 7 != 0).then_some(-i)))),
    ];
    RecordBatch::try_new(schema.clone(), cols).unwrap()
}

/// A file written by parquet-rs directly, with small pages (many per row group).
fn write_raw(
    path: &Path,
    schema: &SchemaRef,
    encoding: Encoding,
    compression: Compression,
    v2: bool,
) {
    let version = if v2 { WriterVersion::PARQUET_2_0 } else { WriterVersion::PARQUET_1_0 };
    let leaf = ColumnPath::new(vec!["vector".into(), "list".into(), "item".into()]);
    let props = WriterProperties::builder()
        .set_writer_version(version)
        .set_compression(compression)
        .set_max_row_group_row_count(Some(300))
        .set_data_page_size_limit(700)
        .set_write_batch_size(17)
        .set_column_dictionary_enabled(leaf.clone(), false)
        .set_column_encoding(leaf, encoding)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let d = data(schema);
    for at in (0..ROWS).step_by(90) {
        w.write(&d.slice(at, 90.min(ROWS - at))).unwrap();
    }
    w.close().unwrap();
}

/// Every read of `path` both ways, against the source rows.
fn check(path: &Path, schema: &SchemaRef) {
    let file =
        SegmentFile::open(&OsVfs, path, common::file_sum(path), schema, ROWS as u64).unwrap();
    let d = data(schema);
    let all_rows: Vec<u32> = (0..ROWS as u32).collect();
    for columns in [vec![0, 1, 2, 3], vec![1], vec![3, 1], vec![1, 0, 2], vec![2, 3]] {
        let want = d.project(&columns).unwrap();
        for batch_rows in [1, 7, 64, 301, 4096] {
            let whole = file.read(&columns, None, batch_rows).unwrap();
            let selected = file.read(&columns, Some(&all_rows), batch_rows).unwrap();
            for (how, batches) in [("whole-file", &whole), ("selected", &selected)] {
                assert!(
                    batches.iter().all(|b| b.num_rows() <= batch_rows && b.num_rows() > 0),
                    "{how} read of {columns:?} by {batch_rows}: batch sizes"
                );
                let got = arrow_select::concat::concat_batches(&want.schema(), batches).unwrap();
                assert_eq!(got, want, "{how} read of {columns:?} by {batch_rows} rows");
            }
        }
    }
}

#[test]
fn whole_file_reads_decode_vectors_the_same_as_the_arrow_reader() {
    let dir = tempfile::tempdir().unwrap();
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
    for (i, (encoding, compression, v2)) in [
        (Encoding::BYTE_STREAM_SPLIT, zstd, false),
        (Encoding::PLAIN, zstd, false),
        (Encoding::BYTE_STREAM_SPLIT, Compression::UNCOMPRESSED, false),
        (Encoding::PLAIN, Compression::UNCOMPRESSED, false),
        (Encoding::BYTE_STREAM_SPLIT, zstd, true),
        (Encoding::PLAIN, Compression::UNCOMPRESSED, true),
    ]
    .into_iter()
    .enumerate()
    {
        for nullable_item in [false, true] {
            let schema = schema_with(nullable_item);
            let path = dir.path().join(format!("raw{i}-{nullable_item}.parquet"));
            write_raw(&path, &schema, encoding, compression, v2);
            check(&path, &schema);
        }
    }
}

#[test]
fn segments_from_the_engines_writer_read_back_whole_and_selected() {
    let dir = tempfile::tempdir().unwrap();
    for nullable_item in [false, true] {
        let schema = schema_with(nullable_item);
        let path = dir.path().join(format!("seg-{nullable_item}.parquet"));
        let mut w = SegmentWriter::create(&OsVfs, &path, &schema, 256, 1).unwrap();
        let d = data(&schema);
        for at in (0..ROWS).step_by(333) {
            w.write(&d.slice(at, 333.min(ROWS - at))).unwrap();
        }
        let sum = w.finish().unwrap();
        assert_eq!(sum, common::file_sum(&path));
        check(&path, &schema);
    }
}

#[test]
fn a_null_vector_element_is_an_error_in_a_whole_file_read_not_shifted_values() {
    // The engine never writes one (inserts refuse null elements), but a file that has one
    // must not come back with every later value moved up a place.
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_with(true);
    let d = data(&schema);
    let list = d.column(1).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    let mut vals: Vec<Option<f32>> =
        list.values().as_any().downcast_ref::<Float32Array>().unwrap().iter().collect();
    vals[5 * DIM + 3] = None;
    let DataType::FixedSizeList(item, _) = schema.field(1).data_type().clone() else {
        unreachable!()
    };
    let with_null =
        FixedSizeListArray::new(item, DIM as i32, Arc::new(Float32Array::from(vals)), None);
    let mut cols = d.columns().to_vec();
    cols[1] = Arc::new(with_null);
    let path = dir.path().join("null.parquet");
    let leaf = ColumnPath::new(vec!["vector".into(), "list".into(), "item".into()]);
    let props = WriterProperties::builder().set_column_dictionary_enabled(leaf, false).build();
    let file = std::fs::File::create(&path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap()).unwrap();
    w.close().unwrap();
    let file =
        SegmentFile::open(&OsVfs, &path, common::file_sum(&path), &schema, ROWS as u64).unwrap();
    let err = file.read(&[0, 1], None, 4096).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn whole_file_reads_return_exactly_the_batch_size_asked_before_each_batch() {
    // Scans ask for a size before each batch (growing, and cut at segment ends) and rely on a
    // whole-file read returning exactly that many rows, fewer only at the end, with the other
    // columns cut at the same rows: a slip here is a batch whose columns disagree, or lost or
    // repeated rows at a cut.
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_with(true);
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
    let raw = dir.path().join("raw.parquet");
    write_raw(&raw, &schema, Encoding::BYTE_STREAM_SPLIT, zstd, false);
    let seg = dir.path().join("seg.parquet");
    let mut w = SegmentWriter::create(&OsVfs, &seg, &schema, 256, 1).unwrap();
    w.write(&data(&schema)).unwrap();
    w.finish().unwrap();
    let d = data(&schema);
    // Opened for at most 64 rows: the other columns come in batches of 64, so asking 63 after
    // a cut joins two of them.
    let sizes = [1usize, 5, 64, 2, 63, 33, 200];
    for path in [&raw, &seg] {
        let file =
            SegmentFile::open(&OsVfs, path, common::file_sum(path), &schema, ROWS as u64).unwrap();
        for columns in [vec![0, 1, 2, 3], vec![1], vec![3, 1]] {
            let want = d.project(&columns).unwrap();
            let mut r = file.batches(&columns, None, 64).unwrap();
            let (mut got, mut done) = (Vec::new(), 0usize);
            for i in 0.. {
                let asked = sizes[i % sizes.len()];
                r.set_batch_rows(asked);
                let Some(b) = r.next() else { break };
                let b = b.unwrap();
                let expect = asked.min(64).min(ROWS - done);
                assert_eq!(b.num_rows(), expect, "{path:?} {columns:?}: batch {i} asked {asked}");
                done += b.num_rows();
                got.push(b);
            }
            assert_eq!(done, ROWS);
            let got = arrow_select::concat::concat_batches(&want.schema(), &got).unwrap();
            assert_eq!(got, want, "{path:?} {columns:?}");
        }
    }
}

/// A file written before its collection gained columns is read under the wider schema: the
/// columns it holds as written, the added ones as nulls, in every order and both read paths.
/// A schema that is not a widening (a changed type, an added non-nullable column) is refused
/// at open as corruption, never read as garbage.
#[test]
fn a_file_written_before_columns_were_added_reads_nulls_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let narrow = schema_with(true);
    let path = dir.path().join("narrow.parquet");
    write_raw(&path, &narrow, Encoding::BYTE_STREAM_SPLIT, Compression::UNCOMPRESSED, false);
    let mut fields: Vec<Field> = narrow.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("price", DataType::Float64, true));
    fields.push(Field::new("label", DataType::Utf8, true));
    let wide: SchemaRef = Arc::new(Schema::new(fields.clone()));
    let sum = common::file_sum(&path);
    let file = SegmentFile::open(&OsVfs, &path, sum, &wide, ROWS as u64).unwrap();
    assert!(!file.holds_every_column());
    let d = data(&narrow);
    let all_rows: Vec<u32> = (0..ROWS as u32).collect();
    for columns in [vec![0, 1, 2, 3, 4, 5], vec![4], vec![5, 1, 4], vec![3, 5, 0]] {
        for batch_rows in [7, 301] {
            for rows in [None, Some(&all_rows[..]), Some(&all_rows[10..20])] {
                let got = file.read(&columns, rows, batch_rows).unwrap();
                let got = arrow_select::concat::concat_batches(
                    &Arc::new(wide.project(&columns).unwrap()),
                    &got,
                )
                .unwrap();
                let want_rows = rows.map_or(ROWS, <[u32]>::len);
                assert_eq!(got.num_rows(), want_rows, "{columns:?}");
                let first = rows.map_or(0, |r| r[0] as usize);
                for (i, &c) in columns.iter().enumerate() {
                    if c < narrow.fields().len() {
                        let want = d.column(c).slice(first, want_rows);
                        assert_eq!(got.column(i).to_data(), want.to_data(), "column {c}");
                    } else {
                        assert_eq!(got.column(i).null_count(), want_rows, "column {c} is null");
                        assert_eq!(got.column(i).data_type(), wide.field(c).data_type());
                    }
                }
            }
        }
    }
    // Re-pointed without I/O, as the engine does when a collection gains columns.
    let same = SegmentFile::open(&OsVfs, &path, sum, &narrow, ROWS as u64).unwrap();
    assert!(same.holds_every_column());
    assert!(!same.with_schema(&wide).holds_every_column());
    for bad in [
        Field::new("price", DataType::Float64, false), // added but required
        Field::new("n", DataType::Int32, true),        // an existing column's type changed
    ] {
        let mut f = fields.clone();
        match f.iter().position(|x| x.name() == bad.name()) {
            Some(at) => f[at] = bad,
            None => unreachable!(),
        }
        let s: SchemaRef = Arc::new(Schema::new(f));
        let e = SegmentFile::open(&OsVfs, &path, sum, &s, ROWS as u64).unwrap_err();
        assert!(e.to_string().contains("prefix"), "{e}");
    }
}
