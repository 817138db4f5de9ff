//! A collection that fits its memory budget, searched through the embedded engine: issue 21's
//! comparison with Qdrant Edge holding the same vectors in memory (`benches/cache_vs_qdrant.py`
//! runs this beside it).
//!
//! ```text
//! budget_search ingest DB_DIR BASE.u8bin --budget-mib 1024 [--rows N] [--batch 10000]
//! budget_search search DB_DIR QUERY.u8bin GT.ivecs --budget-mib 1024 \
//!     [--list-sizes 10,20,30] [--threads 2] [--queries 1000]
//! ```
//! `ingest` puts the rows (ids 0..N) into collection `c` of a new database, waits until every
//! row is indexed, and prints one JSON line. `search` opens the database under the same budget,
//! warms the sector cache with one pass at the largest list size (not scored), then prints one
//! JSON line per list size (QPS over `--threads` threads, recall@10 against `GT`, mean sector
//! reads) and a last line with the process's peak RSS (`VmHWM`) and the memory the engine
//! counts.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::UInt64Array;
use common::{flag, u8_batch};
use quiver_diskgraph::data::{Metric, VectorSet, read_ivecs, read_vectors};
use quiver_engine::{CollectionSchema, Database, Options, SearchParams, VectorType};

type BoxError = Box<dyn std::error::Error>;

const COLLECTION: &str = "c";
const K: usize = 10;

/// The process's peak resident set, in KiB (`VmHWM` of /proc/self/status).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn options(args: &[String]) -> Options {
    let budget_mib: usize = flag(args, "--budget-mib", 1024);
    Options::default().memory_budget(budget_mib << 20)
}

fn ingest(args: &[String]) -> Result<(), BoxError> {
    let [dir, base, ..] = args else { return Err("ingest DB_DIR BASE.u8bin".into()) };
    let data = read_vectors(base.as_ref())?;
    let rows = flag(args, "--rows", data.len()).min(data.len());
    let batch_rows: usize = flag(args, "--batch", 10_000);
    let schema = CollectionSchema::new(data.dim() as u32, VectorType::U8, Metric::L2);
    let started = Instant::now();
    let db = Database::open(dir, options(args))?;
    db.create_collection(COLLECTION, schema.clone())?;
    for from in (0..rows).step_by(batch_rows) {
        let ids: Vec<u64> = (from as u64..(from + batch_rows).min(rows) as u64).collect();
        db.insert(COLLECTION, &u8_batch(&schema, &data, &ids))?;
    }
    let ingested = started.elapsed().as_secs_f64();
    db.flush()?;
    if !db.wait_idle(Duration::from_secs(3600)) {
        return Err("background work did not finish within an hour".into());
    }
    let stats = db.stats(COLLECTION)?;
    println!(
        "{{\"rows\": {rows}, \"ingest_s\": {ingested:.1}, \"indexed_s\": {:.1}, \
         \"segments\": {}, \"indexed_segments\": {}, \"vm_hwm_kib\": {}}}",
        started.elapsed().as_secs_f64(),
        stats.segments,
        stats.indexed_segments,
        peak_rss_kib()
    );
    Ok(())
}

/// One pass of the first `n` of `queries` at list size `list` over `threads` threads:
/// (QPS, recall@10).
fn pass(
    db: &Database,
    queries: &VectorSet,
    n: usize,
    gt: &[Vec<u32>],
    list: usize,
    threads: usize,
) -> (f64, f64) {
    let hits = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let params = SearchParams { k: K, list_size: list, ..SearchParams::default() };
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    let found = db.search(COLLECTION, &queries.row(i).to_f32(), &params);
                    let found = found.expect("a search of the collection");
                    let ids = found.column(0).as_any().downcast_ref::<UInt64Array>();
                    let truth = &gt[i][..K];
                    let hit = ids
                        .expect("u64 ids")
                        .values()
                        .iter()
                        .filter(|&&id| truth.contains(&(id as u32)))
                        .count();
                    hits.fetch_add(hit as u64, Ordering::Relaxed);
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let recall = hits.load(Ordering::Relaxed) as f64 / (K * n) as f64;
    (n as f64 / seconds, recall)
}

fn search(args: &[String]) -> Result<(), BoxError> {
    let [dir, query, gt, ..] = args else { return Err("search DB_DIR QUERY GT".into()) };
    let list_sizes: Vec<usize> = flag(args, "--list-sizes", "10,20,30".to_string())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let threads: usize = flag(args, "--threads", 2);
    let queries = read_vectors(query.as_ref())?;
    let n = flag(args, "--queries", queries.len()).min(queries.len());
    let gt = read_ivecs(gt.as_ref())?;
    let db = Database::open(dir, options(args).background(false))?;
    let warm = list_sizes.iter().copied().max().unwrap_or(100);
    pass(&db, &queries, n, &gt, warm, threads);
    for &list in &list_sizes {
        let before = db.stats(COLLECTION)?;
        let (qps, recall) = pass(&db, &queries, n, &gt, list, threads);
        let after = db.stats(COLLECTION)?;
        let reads = (after.index_reads - before.index_reads) as f64 / n as f64;
        println!(
            "{{\"list_size\": {list}, \"qps\": {qps:.1}, \"recall_at_k\": {recall:.4}, \
             \"mean_ios\": {reads:.2}}}"
        );
    }
    let memory = db.memory();
    println!(
        "{{\"vm_hwm_kib\": {}, \"budget\": {}, \"structures\": {}, \"sector_cache\": {}, \
         \"sector_cache_capacity\": {}}}",
        peak_rss_kib(),
        memory.budget.unwrap_or(0),
        memory.structures,
        memory.sector_cache,
        memory.sector_cache_capacity
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ingest") => ingest(&args[1..]),
        Some("search") => search(&args[1..]),
        _ => Err("usage: budget_search ingest|search … (see the file's header)".into()),
    }
}
