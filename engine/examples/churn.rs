//! Issue 21's quality benchmark at full size: a collection lives through rounds of deleting a
//! share of its rows and inserting as many new ones (the NeurIPS'23 streaming track's concern;
//! FreshDiskANN reports ~95% stable), and its recall@10 at a fixed list size is compared with a
//! fresh database holding exactly the surviving rows. `engine/tests/churn_recall.rs` is the same
//! at a small size in CI.
//!
//! ```text
//! churn BASE.u8bin QUERY.u8bin WORK_DIR [--rows 100000] [--rounds 20] [--percent 5] \
//!     [--list-sizes 20,50] [--queries 1000] [--budget-mib 0]
//! ```
//! Rows `0..rows` of BASE are inserted (ids are row numbers), then each round deletes
//! `percent`% of the live ids (spread over them) and inserts as many unseen rows, flushes and
//! waits until background work is done. Prints one JSON line a round (segments, seconds) and one
//! a list size at the end: recall@10 of the churned and the fresh database against brute force
//! over the surviving rows, and their difference (the issue's bound: 0.01).

mod common;

use std::time::{Duration, Instant};

use arrow_array::{Array, UInt64Array};
use common::{flag, u8_batch};
use quiver_diskgraph::data::{Metric, VectorSet, distance_active, read_vectors};
use quiver_engine::{CollectionSchema, Database, Options, SearchParams, VectorType};

type BoxError = Box<dyn std::error::Error>;

const COLLECTION: &str = "c";
const K: usize = 10;

fn open(dir: &std::path::Path, budget_mib: usize) -> Result<Database, BoxError> {
    let mut opts = Options::default();
    if budget_mib > 0 {
        opts = opts.memory_budget(budget_mib << 20);
    }
    Ok(Database::open(dir, opts)?)
}

/// Inserts the rows `ids` of `data` in batches of 10,000.
fn insert(db: &Database, data: &VectorSet, ids: &[u64]) -> Result<(), BoxError> {
    let schema = CollectionSchema::new(data.dim() as u32, VectorType::U8, Metric::L2);
    for chunk in ids.chunks(10_000) {
        db.insert(COLLECTION, &u8_batch(&schema, data, chunk))?;
    }
    Ok(())
}

/// Flushes and waits until no background work is left.
fn settle(db: &Database) -> Result<(), BoxError> {
    db.flush()?;
    if !db.wait_idle(Duration::from_secs(3600)) {
        return Err("background work did not finish within an hour".into());
    }
    Ok(())
}

/// The exact 10 nearest live ids of each query.
fn ground_truth(data: &VectorSet, live: &[u64], queries: &VectorSet, n: usize) -> Vec<Vec<u64>> {
    let per_thread = n.div_ceil(2);
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..n)
            .step_by(per_thread)
            .map(|from| {
                s.spawn(move || {
                    (from..(from + per_thread).min(n))
                        .map(|q| {
                            let mut all: Vec<(f32, u64)> = live
                                .iter()
                                .map(|&i| {
                                    let row = data.row(i as usize);
                                    (distance_active(Metric::L2, queries.row(q), row), i)
                                })
                                .collect();
                            all.select_nth_unstable_by(K - 1, |a, b| a.0.total_cmp(&b.0));
                            all[..K].iter().map(|&(_, i)| i).collect()
                        })
                        .collect::<Vec<Vec<u64>>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().expect("a ground-truth thread")).collect()
    })
}

/// Recall@10 of `db` at list size `list` over the first `truth.len()` queries.
fn recall(db: &Database, queries: &VectorSet, truth: &[Vec<u64>], list: usize) -> f64 {
    let params = SearchParams { k: K, list_size: list, ..SearchParams::default() };
    let mut hits = 0;
    for (q, t) in truth.iter().enumerate() {
        let found = db.search(COLLECTION, &queries.row(q).to_f32(), &params).expect("a search");
        let ids = found.column(0).as_any().downcast_ref::<UInt64Array>().expect("u64 ids");
        hits += ids.values().iter().filter(|id| t.contains(id)).count();
    }
    hits as f64 / (K * truth.len()) as f64
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, query, work, ..] = &args[..] else {
        return Err("churn BASE.u8bin QUERY.u8bin WORK_DIR [flags] (see the file's header)".into());
    };
    let data = read_vectors(base.as_ref())?;
    let queries = read_vectors(query.as_ref())?;
    let rows: usize = flag(&args, "--rows", 100_000);
    let rounds: usize = flag(&args, "--rounds", 20);
    let percent: usize = flag(&args, "--percent", 5);
    let budget_mib: usize = flag(&args, "--budget-mib", 0);
    let n_queries = flag(&args, "--queries", 1000).min(queries.len());
    let list_sizes: Vec<usize> = flag(&args, "--list-sizes", "20,50".to_string())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let per_round = rows * percent / 100;
    if rows + rounds * per_round > data.len() {
        return Err(format!(
            "{} rows needed, the base has {}",
            rows + rounds * per_round,
            data.len()
        )
        .into());
    }
    let work = std::path::Path::new(work);
    let _ = std::fs::remove_dir_all(work);
    let schema = CollectionSchema::new(data.dim() as u32, VectorType::U8, Metric::L2);

    let started = Instant::now();
    let churned = open(&work.join("churned"), budget_mib)?;
    churned.create_collection(COLLECTION, schema.clone())?;
    let mut live: Vec<u64> = (0..rows as u64).collect();
    insert(&churned, &data, &live)?;
    settle(&churned)?;
    let mut unseen = rows as u64..;
    for round in 1..=rounds {
        let t = Instant::now();
        let step = live.len() / per_round;
        let gone: Vec<u64> =
            (0..per_round).map(|k| live[(k * step + round * 7) % live.len()]).collect();
        churned.delete(COLLECTION, &UInt64Array::from(gone.clone()) as &dyn Array)?;
        let gone: std::collections::HashSet<u64> = gone.into_iter().collect();
        live.retain(|id| !gone.contains(id));
        let added: Vec<u64> = unseen.by_ref().take(per_round).collect();
        insert(&churned, &data, &added)?;
        live.extend(&added);
        settle(&churned)?;
        let st = churned.stats(COLLECTION)?;
        println!(
            "{{\"round\": {round}, \"live\": {}, \"segments\": {}, \"seconds\": {:.1}}}",
            st.rows,
            st.segments,
            t.elapsed().as_secs_f64()
        );
        assert_eq!(st.rows as usize, live.len(), "the engine's live rows");
    }
    let churn_seconds = started.elapsed().as_secs_f64();

    let fresh = open(&work.join("fresh"), budget_mib)?;
    fresh.create_collection(COLLECTION, schema)?;
    insert(&fresh, &data, &live)?;
    settle(&fresh)?;
    let truth = ground_truth(&data, &live, &queries, n_queries);
    let (st_c, st_f) = (churned.stats(COLLECTION)?, fresh.stats(COLLECTION)?);
    for &list in &list_sizes {
        let (c, f) =
            (recall(&churned, &queries, &truth, list), recall(&fresh, &queries, &truth, list));
        println!(
            "{{\"list_size\": {list}, \"churned_recall\": {c:.4}, \"fresh_recall\": {f:.4}, \
             \"difference\": {:.4}, \"churned_segments\": {}, \"fresh_segments\": {}, \
             \"churn_seconds\": {churn_seconds:.0}}}",
            c - f,
            st_c.segments,
            st_f.segments
        );
    }
    Ok(())
}
