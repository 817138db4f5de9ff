//! The engine benchmark of issue 5: ingest a vector file through the API (durable inserts), then
//! measure recall@10 and QPS against exact ground truth while background work (index builds,
//! merges) runs and again after it finishes, sampling resident memory throughout.
//!
//! ```text
//! cargo run --release -p quiver-engine --example ingest_bench -- \
//!     DB_DIR BASE.u8bin QUERY.u8bin GT.ivecs [--batch 10000] [--writers 2] \
//!     [--memtable-mb 64] [--list 100] [--queries 2000] [--max-unindexed 4]
//! ```
//! Prints one `key=value` line per phase. `DB_DIR` must not exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{FixedSizeListArray, RecordBatch, UInt8Array, UInt64Array};
use arrow_schema::{DataType, Field};
use quiver_diskgraph::data::{Metric, VectorSet, read_ivecs, read_vectors};
use quiver_engine::{CollectionSchema, Database, Options, SearchParams, VectorType};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn batch(schema: &CollectionSchema, data: &VectorSet, from: usize, to: usize) -> RecordBatch {
    let dim = data.dim();
    let bytes: Vec<u8> = (from..to).flat_map(|i| data.row_bytes(i).iter().copied()).collect();
    let list = FixedSizeListArray::new(
        Arc::new(Field::new("item", DataType::UInt8, true)),
        dim as i32,
        Arc::new(UInt8Array::from(bytes)),
        None,
    );
    RecordBatch::try_new(
        schema.arrow_schema(),
        vec![Arc::new(UInt64Array::from_iter_values(from as u64..to as u64)), Arc::new(list)],
    )
    .expect("a valid batch")
}

fn query_pass(
    db: &Database,
    queries: &VectorSet,
    gt: &[Vec<u32>],
    n: usize,
    list: usize,
) -> (f64, f64) {
    let n = n.min(queries.len());
    let hits = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    let q = queries.row(i).to_f32();
                    let p = SearchParams { k: 10, list_size: list, ..SearchParams::default() };
                    let r = db.search("sift", &q, &p).expect("search");
                    let ids = r.column(0).as_any().downcast_ref::<UInt64Array>().expect("u64 ids");
                    let truth = &gt[i][..10];
                    let found =
                        ids.values().iter().filter(|&&id| truth.contains(&(id as u32))).count();
                    hits.fetch_add(found as u64, Ordering::Relaxed);
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    (hits.load(Ordering::Relaxed) as f64 / (10 * n) as f64, n as f64 / secs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: ingest_bench DB_DIR BASE QUERY GT.ivecs [options]");
        std::process::exit(2);
    }
    let (dir, base, query, gt) = (&args[1], &args[2], &args[3], &args[4]);
    let batch_rows = arg(&args, "--batch", 10_000);
    let writers = arg(&args, "--writers", 2);
    let memtable_mb = arg(&args, "--memtable-mb", 64);
    let list = arg(&args, "--list", 100);
    let nq = arg(&args, "--queries", 2000);
    let max_unindexed = arg(&args, "--max-unindexed", 4);
    assert!(!std::path::Path::new(dir).exists(), "{dir} exists");

    let data = read_vectors(base.as_ref())?;
    let queries = read_vectors(query.as_ref())?;
    let gt = read_ivecs(gt.as_ref())?;
    let dim = data.dim();
    let ty = match data.elem() {
        quiver_engine::ElemType::U8 => VectorType::U8,
        quiver_engine::ElemType::I8 => VectorType::I8,
        quiver_engine::ElemType::F32 => VectorType::F32,
    };
    assert_eq!(ty, VectorType::U8, "this benchmark feeds u8 vectors");
    let schema = CollectionSchema::new(dim as u32, ty, Metric::L2);

    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let db = Database::open(
        dir,
        Options::default().memtable_bytes(memtable_mb << 20).max_unindexed_segments(max_unindexed),
    )?;
    db.create_collection("sift", schema.clone())?;
    let n = data.len();
    let next = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                loop {
                    let from = next.fetch_add(batch_rows as u64, Ordering::Relaxed) as usize;
                    if from >= n {
                        break;
                    }
                    let to = (from + batch_rows).min(n);
                    db.insert("sift", &batch(&schema, &data, from, to)).expect("insert");
                }
            });
        }
    });
    let ingest = t.elapsed().as_secs_f64();
    let mb = (n * dim) as f64 / f64::from(1u32 << 20);
    println!(
        "phase=ingest rows={n} seconds={ingest:.1} rows_per_s={:.0} vector_mib_per_s={:.1} rss_mib={} peak_rss_mib={}",
        n as f64 / ingest,
        mb / ingest,
        rss_bytes() >> 20,
        peak.load(Ordering::Relaxed) >> 20
    );
    println!("phase=ingest stats={:?}", db.stats("sift")?);
    let (recall, qps) = query_pass(&db, &queries, &gt, nq, list);
    println!(
        "phase=search_during_background list={list} recall_at_10={recall:.4} qps={qps:.0} stats={:?}",
        db.stats("sift")?
    );
    let t = Instant::now();
    db.flush()?;
    assert!(db.wait_idle(Duration::from_secs(7200)), "background work did not finish");
    println!(
        "phase=indexed seconds_after_ingest={:.1} seconds_total={:.1} peak_rss_mib={} stats={:?}",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        peak.load(Ordering::Relaxed) >> 20,
        db.stats("sift")?
    );
    for l in [50, 100, 200] {
        let (recall, qps) = query_pass(&db, &queries, &gt, nq, l);
        println!(
            "phase=search_after list={l} recall_at_10={recall:.4} qps={qps:.0} rss_mib={}",
            rss_bytes() >> 20
        );
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    println!("phase=done peak_rss_mib={}", peak.load(Ordering::Relaxed) >> 20);
    Ok(())
}
