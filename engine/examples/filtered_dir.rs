//! Filtered search in-process, as an embedder runs it, on an existing database: the engine's
//! side of `benches/filtered_search.py --engine`, where Qdrant Edge (also in-process) is the
//! peer, so that the comparison carries no transport on either side.
//!
//! `filtered_dir DB COLLECTION QUERIES.u8bin --cases CASES.jsonl --list-sizes 10,20,50
//! [--threads 2] [--sector-cache-mb N] [--warm] [--label-graph-min-rows N]`
//!
//! Each line of `CASES.jsonl` is a case: `{"name": "...", "conditions": [C, ...]}` with one
//! condition a query, each `null` (no filter), `[column, "<" or "=", integer]` or
//! `[column, "in", [integer, ...]]`. For each case
//! and list size, the queries are searched on `--threads` threads (dealt round robin, each
//! thread one at a time), after one unscored pass of the case at the first list size (what a
//! running server has seen before: its caches and each segment's remembered filters). Prints
//! one JSON line per (case, list size): QPS, the mean disk reads a query (cache hits not
//! counted), the filtered walks, rankings and label-graph walks of a segment a query (the
//! planner's choices), and the ids found for each query. It first runs the background work the
//! database has pending (index builds, merges, the label graphs reopened or built:
//! `Database::run_background`), as a server would after ingest (`--settle`, which asked for
//! that, is still accepted); `--warm` reads every index into the sector cache first
//! (`Database::warm_sector_cache`); `--label-graph-min-rows N` sets
//! `Options::label_graph_min_rows` (a value above every label's rows: no label graph used).

mod common;

use std::time::Instant;

use arrow_array::UInt64Array;
use common::flag;
use quiver_diskgraph::data::read_vectors;
use quiver_engine::{CompareOp, Database, Literal, Options, Predicate, SearchParams};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, collection, queries, ..] = args.as_slice() else {
        return Err("usage: filtered_dir DB COLLECTION QUERIES.u8bin --list-sizes 10,20 \
                    [--threads 2] [--filters none,rnd<10] [--sector-cache-mb N]"
            .into());
    };
    let threads: usize = flag(&args, "--threads", 2);
    let list_sizes: Vec<usize> = flag(&args, "--list-sizes", "10,20,50".to_string())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let cases_path: String = flag(&args, "--cases", String::new());
    let cases =
        std::fs::read_to_string(&cases_path).map_err(|e| format!("--cases {cases_path:?}: {e}"))?;
    let mut options = Options::default().background(false);
    let cache_mb: usize = flag(&args, "--sector-cache-mb", usize::MAX);
    if cache_mb != usize::MAX {
        options = options.sector_cache_bytes(cache_mb << 20);
    }
    let min_rows: usize = flag(&args, "--label-graph-min-rows", 0);
    if min_rows > 0 {
        options = options.label_graph_min_rows(min_rows);
    }
    let db = Database::open(db, options)?;
    let started = Instant::now();
    db.run_background()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("background work (index builds, merges, label graphs) done in {secs:.1} s");
    if args.iter().any(|a| a == "--warm") {
        let started = Instant::now();
        let admitted = db.warm_sector_cache()?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("warmed the sector cache: {admitted} node reads in {secs:.1} s");
    }
    let q = read_vectors(std::path::Path::new(queries))?;
    let q: Vec<Vec<f32>> = (0..q.len()).map(|i| q.row(i).to_f32()).collect();
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let (name, filters) = parse_case(line)?;
        if filters.len() != q.len() {
            return Err(format!(
                "case {name:?}: {} conditions for {} queries",
                filters.len(),
                q.len()
            )
            .into());
        }
        for (at, &list_size) in list_sizes.iter().enumerate() {
            let params = |i: usize| SearchParams {
                list_size,
                filter: filters[i].clone(),
                ..SearchParams::default()
            };
            if at == 0 {
                run(&db, collection, &q, &params, threads)?;
            }
            let before = db.stats(collection)?;
            let started = Instant::now();
            let ids = run(&db, collection, &q, &params, threads)?;
            let qps = q.len() as f64 / started.elapsed().as_secs_f64();
            let after = db.stats(collection)?;
            let per_query = |a: u64, b: u64| (a - b) as f64 / q.len() as f64;
            if let Some(cache) = db.sector_cache_stats() {
                let lookups = (cache.hits + cache.misses).max(1);
                eprintln!(
                    "{name} L {list_size}: sector cache {} MiB held, {:.3} of all lookups hit",
                    cache.bytes >> 20,
                    cache.hits as f64 / lookups as f64
                );
            }
            println!(
                "{{\"case\": {}, \"L\": {list_size}, \"qps\": {qps:.1}, \"reads\": {:.1}, \
                 \"walks\": {:.2}, \"ranked\": {:.2}, \"label_walks\": {:.2}, \"ids\": {ids:?}}}",
                serde_json::Value::String(name.clone()),
                per_query(after.index_reads, before.index_reads),
                per_query(after.filtered_walks, before.filtered_walks),
                per_query(after.filtered_ranked, before.filtered_ranked),
                per_query(after.filtered_label_walks, before.filtered_label_walks),
            );
        }
    }
    Ok(())
}

/// A case's name and each query's predicate.
fn parse_case(line: &str) -> Result<(String, Vec<Option<Predicate>>), Error> {
    let case: serde_json::Value = serde_json::from_str(line)?;
    let name = case["name"].as_str().ok_or("a case without a name")?.to_string();
    let conditions = case["conditions"].as_array().ok_or("a case without conditions")?;
    let condition = |c: &serde_json::Value| -> Result<Option<Predicate>, Error> {
        if c.is_null() {
            return Ok(None);
        }
        let bad = || {
            format!(
                "case {name:?}: condition {c}: not [column, \"<\" or \"=\", integer] or \
                 [column, \"in\", [integer, ...]]"
            )
        };
        if let (Some(column), Some("in"), Some(values)) =
            (c[0].as_str(), c[1].as_str(), c[2].as_array())
        {
            let values: Option<Vec<Literal>> =
                values.iter().map(|v| v.as_i64().map(Literal::Int)).collect();
            return Ok(Some(Predicate::is_in(column, values.ok_or_else(bad)?)));
        }
        let (Some(column), Some(op), Some(value)) = (c[0].as_str(), c[1].as_str(), c[2].as_i64())
        else {
            return Err(bad().into());
        };
        let op = match op {
            "<" => CompareOp::Lt,
            "=" => CompareOp::Eq,
            _ => return Err(bad().into()),
        };
        Ok(Some(Predicate::compare(column, op, Literal::Int(value))))
    };
    let filters = conditions.iter().map(condition).collect::<Result<_, _>>()?;
    Ok((name, filters))
}

/// Every query's ids, searched on `threads` threads.
fn run(
    db: &Database,
    collection: &str,
    queries: &[Vec<f32>],
    params: &(dyn Fn(usize) -> SearchParams + Sync),
    threads: usize,
) -> Result<Vec<Vec<u64>>, Error> {
    let parts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut found = Vec::new();
                    for i in (t..queries.len()).step_by(threads) {
                        let batch = db.search(collection, &queries[i], &params(i))?;
                        let ids = batch
                            .column_by_name("id")
                            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
                            .ok_or("results without a u64 id column")?;
                        found.push((i, ids.values().to_vec()));
                    }
                    Ok::<_, Error>(found)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a search thread panicked")).collect::<Vec<_>>()
    });
    let mut ids = vec![Vec::new(); queries.len()];
    for part in parts {
        for (i, found) in part? {
            ids[i] = found;
        }
    }
    Ok(ids)
}
