//! Filtered search in-process, as an embedder runs it, on an existing database: the engine's
//! side of `benches/filtered_search.py --qdrant`, where Qdrant Edge (also in-process) is the
//! peer, so that the comparison carries no transport on either side.
//!
//! `filtered_dir DB COLLECTION QUERIES.u8bin --list-sizes 10,20,50 [--threads 2]
//! [--filters none,rnd<10,img<58] [--sector-cache-mb N]`
//!
//! Each filter is `none`, `COLUMN<VALUE` (an integer) or `COLUMN=each` (`COLUMN = i mod 1000` for
//! query `i`: a new value each query, as tenants are). For each filter and list size, the
//! queries are searched on `--threads` threads (queries dealt round robin, each thread one at a
//! time), after one unscored pass of the filter at the first list size (what a running server
//! has seen before: its caches and each segment's remembered filters). Prints one JSON line
//! per (filter, list size): QPS, and the ids found for each query, for the caller to score.

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
    let filters: Vec<String> =
        flag(&args, "--filters", "none".to_string()).split(',').map(str::to_string).collect();
    let mut options = Options::default().background(false);
    let cache_mb: usize = flag(&args, "--sector-cache-mb", usize::MAX);
    if cache_mb != usize::MAX {
        options = options.sector_cache_bytes(cache_mb << 20);
    }
    let db = Database::open(db, options)?;
    let q = read_vectors(std::path::Path::new(queries))?;
    let q: Vec<Vec<f32>> = (0..q.len()).map(|i| q.row(i).to_f32()).collect();
    for name in &filters {
        let filter = parse_filter(name)?;
        for (at, &list_size) in list_sizes.iter().enumerate() {
            let params = |i: usize| SearchParams {
                list_size,
                filter: filter.of_query(i),
                ..SearchParams::default()
            };
            if at == 0 {
                run(&db, collection, &q, &params, threads)?;
            }
            let started = Instant::now();
            let ids = run(&db, collection, &q, &params, threads)?;
            let qps = q.len() as f64 / started.elapsed().as_secs_f64();
            println!(
                "{{\"filter\": \"{name}\", \"L\": {list_size}, \"qps\": {qps:.1}, \"ids\": {ids:?}}}"
            );
        }
    }
    Ok(())
}

/// A benchmark filter: the same for every query, or `column = i mod 1000` for query `i`.
enum QueryFilter {
    Same(Option<Predicate>),
    Each(String),
}

impl QueryFilter {
    fn of_query(&self, i: usize) -> Option<Predicate> {
        match self {
            QueryFilter::Same(p) => p.clone(),
            QueryFilter::Each(column) => {
                Some(Predicate::compare(column, CompareOp::Eq, Literal::Int((i % 1000) as i64)))
            }
        }
    }
}

/// `none`, `COLUMN<VALUE` or `COLUMN=each`.
fn parse_filter(text: &str) -> Result<QueryFilter, Error> {
    if text == "none" {
        return Ok(QueryFilter::Same(None));
    }
    if let Some((column, "each")) = text.split_once('=') {
        return Ok(QueryFilter::Each(column.to_string()));
    }
    let Some((column, value)) = text.split_once('<') else {
        return Err(format!("filter {text:?}: none, COLUMN<VALUE or COLUMN=each").into());
    };
    let less = Predicate::compare(column, CompareOp::Lt, Literal::Int(value.parse()?));
    Ok(QueryFilter::Same(Some(less)))
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
