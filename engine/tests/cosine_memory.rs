//! A cosine collection must hold one copy of each vector. The memtable kept both the batch as
//! given and a normalised copy of its vectors, so a cosine collection reached its memtable budget
//! and flushed at about half the rows an L2 collection of the same shape did. Now cosine rows are
//! kept as given with their inverse lengths beside them (4 bytes a row). Pinned here: the first
//! flush comes at (nearly) the same row count under both metrics, the vectors read back as they
//! were put (not normalised), and exact search over the memtable still ranks by cosine.

mod common;

use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options, SearchParams};

const DIM: usize = 64;
const BATCH: u64 = 50;

/// Rows put, batch by batch, before the first flush (the first batch after which a segment
/// exists).
fn rows_before_first_flush(metric: Metric) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background(false).memtable_bytes(1 << 20);
    let db = Database::open(dir.path(), opts).unwrap();
    db.create_collection("c", schema(DIM as u32, metric)).unwrap();
    for b in 0..200u64 {
        let ids: Vec<u64> = (b * BATCH..(b + 1) * BATCH).collect();
        let rows: Vec<Vec<f32>> = ids.iter().map(|&i| vector(7, i, DIM)).collect();
        db.insert("c", &batch(&ids, &rows)).unwrap();
        if db.stats("c").unwrap().segments > 0 {
            return b * BATCH;
        }
    }
    panic!("{metric}: no flush after {} rows", 200 * BATCH);
}

#[test]
fn a_cosine_memtable_flushes_at_the_row_count_of_an_l2_one() {
    let l2 = rows_before_first_flush(Metric::L2);
    let cosine = rows_before_first_flush(Metric::Cosine);
    assert!(
        cosine as f64 >= 0.95 * l2 as f64,
        "cosine flushed after {cosine} rows, L2 after {l2}: the memtable holds a second copy"
    );
}

#[test]
fn cosine_rows_read_back_as_put_and_rank_by_cosine_in_the_memtable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background(false)).unwrap();
    db.create_collection("c", schema(DIM as u32, Metric::Cosine)).unwrap();
    let ids: Vec<u64> = (0..300).collect();
    // Lengths spread over three orders of magnitude: a ranking by dot product or by L2 would
    // differ from the ranking by angle.
    let rows: Vec<Vec<f32>> = ids
        .iter()
        .map(|&i| vector(3, i, DIM).iter().map(|x| x * (1 + i % 997) as f32).collect())
        .collect();
    db.insert("c", &batch(&ids, &rows)).unwrap();
    let scanned = scan_all(&db, "c");
    for (id, v, _) in &scanned {
        assert_eq!(v, &rows[*id as usize], "row {id} read back changed");
    }
    let model: Vec<(u64, Vec<f32>)> = ids.iter().copied().zip(rows.iter().cloned()).collect();
    for s in 0..5 {
        let q = vector(11, s, DIM);
        let got =
            db.search("c", &q, &SearchParams { k: 10, exact: true, ..SearchParams::default() });
        check_exact(Metric::Cosine, &q, 10, &model, &got.unwrap());
    }
}
