//! How fast a flush encodes a segment: writes `ROWS` rows of a vector file (as f32, with
//! int64 ids; u8/i8 files are widened) into one segment file `ROUNDS` times and prints the MB/s of vector bytes
//! (encode, write and `fdatasync`) and the compression ratio. `noise` instead of a file uses
//! uniform random floats in [-0.5, 0.5), like learned embeddings to zstd.
//!
//! ```text
//! cargo run --release -p quiver-engine --example segment_bench -- BASE.{u8bin,fbin}|noise [ROWS] [ROUNDS] [ZSTD_LEVEL]
//! ```

use std::sync::Arc;
use std::time::Instant;

use arrow_array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use quiver_diskgraph::data::{Row, read_vectors};
use quiver_engine::internals::write_segment;
use quiver_vfs::OsVfs;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let noise = args[1] == "noise";
    let data = (!noise).then(|| read_vectors(std::path::Path::new(&args[1])).expect("vectors"));
    let rows: usize = args.get(2).map_or(200_000, |s| s.parse().unwrap());
    let rows = data.as_ref().map_or(rows, |d| rows.min(d.len()));
    let rounds: usize = args.get(3).map_or(3, |s| s.parse().unwrap());
    let level: i32 = args.get(4).map_or(1, |s| s.parse().unwrap());
    let dim = data.as_ref().map_or(128, |d| d.dim());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("vector", DataType::FixedSizeList(item.clone(), dim as i32), false),
    ]));
    let batch_rows = 10_000;
    let mut batches = Vec::new();
    for from in (0..rows).step_by(batch_rows) {
        let to = (from + batch_rows).min(rows);
        let floats: Vec<f32> = match &data {
            Some(data) => (from..to)
                .flat_map(|i| match data.row(i) {
                    Row::F32(v) => v.to_vec(),
                    Row::U8(v) => v.iter().map(|&b| f32::from(b)).collect(),
                    Row::I8(v) => v.iter().map(|&b| f32::from(b)).collect(),
                })
                .collect(),
            None => (0..(to - from) * dim).map(|_| next()).collect(),
        };
        let list = FixedSizeListArray::new(
            item.clone(),
            dim as i32,
            Arc::new(Float32Array::from(floats)),
            None,
        );
        batches.push(
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from as i64..to as i64)),
                    Arc::new(list),
                ],
            )
            .unwrap(),
        );
    }
    let dir = tempfile_dir();
    let mb = (rows * dim * 4) as f64 / 1e6;
    for r in 0..rounds {
        let path = dir.join(format!("s{r}.parquet"));
        let t = Instant::now();
        let sum = write_segment(&OsVfs, &path, &schema, &batches, 65_536, level).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {r}: {:.0} MB/s, file {:.1} MB ({:.2}x)",
            mb / s,
            sum.len as f64 / 1e6,
            mb / (sum.len as f64 / 1e6)
        );
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::remove_dir(&dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("segbench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
