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

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::UInt64Array;
use common::{flag, u8_batch};
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
    let batch_rows = flag(&args, "--batch", 10_000);
    let writers = flag(&args, "--writers", 2);
    let memtable_mb = flag(&args, "--memtable-mb", 64);
    let list = flag(&args, "--list", 100);
    let nq = flag(&args, "--queries", 2000);
    let max_unindexed = flag(&args, "--max-unindexed", 4);
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
                    let ids: Vec<u64> = (from as u64..to as u64).collect();
                    db.insert("sift", &u8_batch(&schema, &data, &ids)).expect("insert");
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
