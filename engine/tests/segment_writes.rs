//! Segment writers encode the `vector` column of float vectors themselves (not through
//! parquet-rs's Arrow writer): repetition and definition levels precomputed per page (RLE runs
//! or bit-packed, whichever is shorter for the dimension), floats split into byte streams, and
//! zstd only where it pays. A slip in any of that is a file that other readers decode into
//! shifted, truncated or garbled vectors, or refuse. These tests write segments of many
//! dimensions (one row per page up to many pages per row group), compressible and
//! incompressible, with and without a nullable item field, and read them back three ways:
//! Quiver's whole-file path, parquet-rs's Arrow reader, and pyarrow, bit for bit.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use quiver_engine::internals::{SegmentFile, SegmentWriter};
use quiver_vfs::OsVfs;

fn schema(dim: usize, nullable_item: bool) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, nullable_item));
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("vector", DataType::FixedSizeList(item, dim as i32), false),
        Field::new("tag", DataType::Utf8, true),
    ]))
}

/// What the vectors look like to zstd.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Small whole numbers as floats (SIFT-like): two of the four byte streams are zeros.
    Compressible,
    /// Random bits (finite floats of every exponent): zstd saves nothing.
    Noise,
}

fn values(kind: Kind, rows: usize, dim: usize) -> Vec<f32> {
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ (rows * 31 + dim) as u64;
    (0..rows * dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match kind {
                Kind::Compressible => (x >> 56) as f32,
                Kind::Noise => {
                    // Any sign and mantissa; exponents 1..=253, never Inf or NaN.
                    let bits = (x >> 32) as u32;
                    let exp = ((bits >> 23) & 0xff) % 253 + 1;
                    f32::from_bits((bits & 0x807f_ffff) | (exp << 23))
                }
            }
        })
        .collect()
}

fn data(schema: &SchemaRef, kind: Kind, rows: usize) -> RecordBatch {
    let DataType::FixedSizeList(item, dim) = schema.field(1).data_type().clone() else {
        unreachable!()
    };
    let vals = values(kind, rows, dim as usize);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(0..rows as u64)),
        Arc::new(FixedSizeListArray::new(item, dim, Arc::new(Float32Array::from(vals)), None)),
        Arc::new(StringArray::from_iter((0..rows).map(|i| (i % 3 != 0).then(|| format!("t{i}"))))),
    ];
    RecordBatch::try_new(schema.clone(), cols).unwrap()
}

/// Writes `d` through the engine's writer in batches of `cut` rows, row groups of `group`.
fn write(path: &Path, d: &RecordBatch, group: usize, cut: usize) {
    let mut w = SegmentWriter::create(&OsVfs, path, &d.schema(), group, 1).unwrap();
    for at in (0..d.num_rows()).step_by(cut) {
        w.write(&d.slice(at, cut.min(d.num_rows() - at))).unwrap();
    }
    let sum = w.finish().unwrap();
    assert_eq!(sum, common::file_sum(path));
}

/// The codec of each row group's vector column chunk.
fn vector_codecs(path: &Path) -> Vec<Compression> {
    let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    r.metadata().row_groups().iter().map(|g| g.column(1).compression()).collect()
}

/// Dimensions from one value per row to one row per page (1 MiB of values), through both
/// forms of repetition levels (bit-packed below ~40 dimensions, runs above).
const DIMS: [usize; 8] = [1, 2, 3, 8, 37, 128, 1000, 1 << 18];

fn rows_for(dim: usize) -> usize {
    (200_000 / dim).clamp(5, 700)
}

#[test]
fn directly_encoded_vectors_read_back_exactly_through_quiver_and_parquet_rs() {
    let dir = tempfile::tempdir().unwrap();
    for dim in DIMS {
        for kind in [Kind::Compressible, Kind::Noise] {
            for nullable_item in [true, false] {
                let schema = schema(dim, nullable_item);
                let rows = rows_for(dim);
                let d = data(&schema, kind, rows);
                let path = dir.path().join(format!("{dim}-{kind:?}-{nullable_item}.parquet"));
                let what = format!("dim {dim}, {kind:?}, nullable item {nullable_item}");
                write(&path, &d, rows / 2 + 1, 97);

                // parquet-rs's own reader, which walks every level.
                let file = std::fs::File::open(&path).unwrap();
                let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let got = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
                assert_eq!(got, d, "parquet-rs read of {what}");

                // Quiver's whole-file path and its row-selection path.
                let seg =
                    SegmentFile::open(&OsVfs, &path, common::file_sum(&path), &schema, rows as u64)
                        .unwrap();
                let all: Vec<u32> = (0..rows as u32).collect();
                for sel in [None, Some(&all[..])] {
                    let batches = seg.read(&[0, 1, 2], sel, 64).unwrap();
                    let got = arrow_select::concat::concat_batches(&schema, &batches).unwrap();
                    assert_eq!(got, d, "Quiver read of {what}, selection {}", sel.is_some());
                }
            }
        }
    }
}

#[test]
fn vector_chunks_zstd_cannot_shrink_are_stored_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema(128, true);
    for (kind, zstd) in [(Kind::Compressible, true), (Kind::Noise, false)] {
        let path = dir.path().join(format!("{kind:?}.parquet"));
        write(&path, &data(&schema, kind, 3000), 1000, 500);
        let codecs = vector_codecs(&path);
        assert_eq!(codecs.len(), 3);
        for c in codecs {
            assert_eq!(matches!(c, Compression::ZSTD(_)), zstd, "{kind:?}: {c:?}");
            assert!(zstd || c == Compression::UNCOMPRESSED, "{kind:?}: {c:?}");
        }
    }
}

#[test]
fn a_null_vector_element_is_refused_by_the_writer_not_stored() {
    // Inserts refuse null elements, so one reaching a segment is a bug upstream; the writer
    // must fail rather than write levels that say "present" over a made-up value.
    let dir = tempfile::tempdir().unwrap();
    let schema = schema(4, true);
    let d = data(&schema, Kind::Compressible, 10);
    let list = d.column(1).as_fixed_size_list();
    let mut vals: Vec<Option<f32>> = list.values().as_primitive::<Float32Type>().iter().collect();
    vals[13] = None;
    let DataType::FixedSizeList(item, _) = schema.field(1).data_type().clone() else {
        unreachable!()
    };
    let mut cols = d.columns().to_vec();
    cols[1] = Arc::new(FixedSizeListArray::new(item, 4, Arc::new(Float32Array::from(vals)), None));
    let bad = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let path = dir.path().join("null.parquet");
    let mut w = SegmentWriter::create(&OsVfs, &path, &schema, 4, 1).unwrap();
    let err = w.write(&bad).unwrap_err();
    assert!(err.to_string().contains("null"), "{err}");
    // The writer is unusable afterwards rather than carrying on past the lost rows.
    assert!(w.write(&d).is_err());
    assert!(w.finish().is_err());
}

const SCRIPT: &str = r#"
import sys, pyarrow.parquet as pq, pyarrow as pa
t = pq.read_table(sys.argv[1])
v = t.column("vector").combine_chunks()
assert v.null_count == 0 and v.values.null_count == 0
sys.stdout.buffer.write(v.values.to_numpy(zero_copy_only=False).astype("<f4").tobytes())
"#;

#[test]
fn pyarrow_reads_directly_encoded_vectors_bit_for_bit() {
    let Some(py) = quiver_testkit::python_with("pyarrow, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    for dim in DIMS {
        for kind in [Kind::Compressible, Kind::Noise] {
            let schema = schema(dim, true);
            let rows = rows_for(dim);
            let d = data(&schema, kind, rows);
            let path = dir.path().join(format!("{dim}-{kind:?}.parquet"));
            write(&path, &d, rows / 2 + 1, 97);
            let out =
                std::process::Command::new(&py).args(["-c", SCRIPT]).arg(&path).output().unwrap();
            assert!(
                out.status.success(),
                "pyarrow failed on dim {dim}, {kind:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let want: Vec<u8> =
                values(kind, rows, dim).iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!(out.stdout == want, "pyarrow read other values for dim {dim}, {kind:?}");
        }
    }
}
