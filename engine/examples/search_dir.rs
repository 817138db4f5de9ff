//! In-process search throughput on an existing database, for comparison with the same searches
//! over Flight (benches/flight_bench.py).
//!
//! `search_dir DB COLLECTION QUERIES.fbin K L ROUNDS [SECTOR_CACHE_MB] [batch=N]` prints one QPS
//! figure per round (queries run one after another on one thread, as the Flight benchmark's
//! client does; with `batch=N`, N at a time through `Database::search_batch`, which spreads
//! them over the search pool). The sector cache is the engine's default unless
//! `SECTOR_CACHE_MB` is given (0: none).

use std::time::Instant;

use quiver_diskgraph::data::read_vectors;
use quiver_engine::{Database, Options, SearchParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut a: Vec<String> = std::env::args().skip(1).collect();
    let batch = match a.last().and_then(|x| x.strip_prefix("batch=")) {
        Some(n) => {
            let n = n.parse::<usize>()?;
            a.pop();
            n
        }
        None => 0,
    };
    let (args, cache_mb) = match a.as_slice() {
        [rest @ .., mb] if a.len() == 7 => (rest, Some(mb.parse::<usize>()?)),
        rest => (rest, None),
    };
    let [db, coll, queries, k, l, rounds] = args else {
        return Err(
            "usage: search_dir DB COLLECTION QUERIES.fbin K L ROUNDS [SECTOR_CACHE_MB] [batch=N]"
                .into(),
        );
    };
    let mut options = Options::default().background(false);
    if let Some(mb) = cache_mb {
        options = options.sector_cache_bytes(mb << 20);
    }
    let db = Database::open(db, options)?;
    let q = read_vectors(std::path::Path::new(queries))?;
    let q: Vec<Vec<f32>> = (0..q.len()).map(|i| q.row(i).to_f32()).collect();
    let params = SearchParams { k: k.parse()?, list_size: l.parse()?, ..SearchParams::default() };
    for _ in 0..rounds.parse::<usize>()? {
        let t0 = Instant::now();
        if batch > 0 {
            for part in q.chunks(batch) {
                for r in db.search_batch(coll, part, &params)? {
                    r?;
                }
            }
        } else {
            for row in &q {
                db.search(coll, row, &params)?;
            }
        }
        println!("{:.1}", q.len() as f64 / t0.elapsed().as_secs_f64());
    }
    Ok(())
}
