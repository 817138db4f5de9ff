//! Filters belong to the engine: an embedder of the crate could not filter at all, and the
//! Flight layer filtered after the fact, re-running whole searches with a larger k until enough
//! rows passed. These tests pin down that `SearchParams::filter` returns only rows that pass,
//! from every source at once (in-memory rows, an unindexed segment, an indexed segment with
//! deletions), exactly equal to brute force when the search is exact and at high recall when it
//! walks the index, with SQL's treatment of nulls, and that a bad filter is a typed error. The
//! filter is evaluated inside the walk: a segment whose few rows pass is answered exactly from
//! those rows, one whose many pass is walked with the others as waypoints — the path each
//! selectivity takes is checked through the collection's counters, and recall at each.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::Metric;
use quiver_engine::{
    CollectionSchema, CompareOp, Database, Literal, Options, Predicate, ReadError, SearchParams,
    VectorType,
};

const DIM: usize = 12;

/// A row's attributes: `n` = id % 10, null when id % 7 == 0; `tag` = "t{id % 50}".
#[derive(Clone)]
struct Row {
    vector: Vec<f32>,
    n: Option<i64>,
    tag: String,
}

fn row(id: u64) -> Row {
    Row {
        vector: vector(3, id, DIM),
        n: (!id.is_multiple_of(7)).then_some((id % 10) as i64),
        tag: format!("t{}", id % 50),
    }
}

fn collection_schema() -> CollectionSchema {
    CollectionSchema::new(DIM as u32, VectorType::F32, Metric::L2)
        .with_attribute(Field::new("n", DataType::Int64, true))
        .with_attribute(Field::new("tag", DataType::Utf8, false))
}

fn rows_batch(ids: &[u64]) -> RecordBatch {
    let rows: Vec<Row> = ids.iter().map(|&i| row(i)).collect();
    let vectors: Vec<Vec<f32>> = rows.iter().map(|r| r.vector.clone()).collect();
    let v = vector_column(DIM, &vectors);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", v.data_type().clone(), false),
            Field::new("n", DataType::Int64, true),
            Field::new("tag", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(ids.to_vec())),
            v,
            Arc::new(rows.iter().map(|r| r.n).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.tag.clone())).collect::<StringArray>()),
        ],
    )
    .unwrap()
}

/// A collection with rows in an indexed segment (some deleted), a segment too small for an
/// index, and the in-memory table; and its live rows.
fn populated(dir: &std::path::Path) -> (Database, BTreeMap<u64, Row>) {
    let opts = Options::default().background(false).min_index_rows(500).merge_min_segments(0);
    let db = Database::open(dir, opts).unwrap();
    db.create_collection("c", collection_schema()).unwrap();
    let mut model = BTreeMap::new();
    let mut put = |ids: Vec<u64>| {
        db.insert("c", &rows_batch(&ids)).unwrap();
        for i in ids {
            model.insert(i, row(i));
        }
    };
    put((0..3000).collect());
    db.flush().unwrap();
    db.run_background().unwrap();
    put((3000..3200).collect()); // a segment below min_index_rows: searched exactly
    db.flush().unwrap();
    put((3200..3500).collect()); // in memory
    let stats = db.stats("c").unwrap();
    assert_eq!((stats.segments, stats.indexed_segments), (2, 1), "{stats:?}");
    let doomed: Vec<u64> = (0..3500).filter(|i| i % 9 == 4).collect();
    db.delete("c", &UInt64Array::from(doomed.clone())).unwrap();
    for i in doomed {
        model.remove(&i);
    }
    (db, model)
}

/// The predicates tried, each with its meaning over the model (SQL: a null never passes a
/// comparison, and NOT of unknown is unknown).
/// A predicate's name, the predicate, and what it means over the model.
type Case = (&'static str, Predicate, fn(&Row) -> bool);

fn cases() -> Vec<Case> {
    use CompareOp::*;
    let n = |op, v| Predicate::compare("n", op, Literal::Int(v));
    vec![
        ("n = 3", n(Eq, 3), |r| r.n == Some(3)),
        ("n >= 8", n(Ge, 8), |r| r.n.is_some_and(|n| n >= 8)),
        (
            "n IN (1, 2) AND tag != t11",
            Predicate::is_in("n", vec![Literal::Int(1), Literal::UInt(2)]).and(Predicate::compare(
                "tag",
                Ne,
                Literal::Str("t11".into()),
            )),
            |r| matches!(r.n, Some(1 | 2)) && r.tag != "t11",
        ),
        ("NOT (n < 5)", n(Lt, 5).negate(), |r| r.n.is_some_and(|n| n >= 5)),
        ("n IS NULL", Predicate::IsNull("n".into()), |r| r.n.is_none()),
        (
            "n IS NULL OR tag = t7",
            Predicate::IsNull("n".into()).or(Predicate::compare(
                "tag",
                Eq,
                Literal::Str("t7".into()),
            )),
            |r| r.n.is_none() || r.tag == "t7",
        ),
        (
            "tag = t49 AND n = 9 (rare)",
            Predicate::compare("tag", Eq, Literal::Str("t49".into())).and(n(Eq, 9)),
            |r| r.tag == "t49" && r.n == Some(9),
        ),
        ("n = 42 (nothing)", n(Eq, 42), |_| false),
    ]
}

fn brute_force(
    model: &BTreeMap<u64, Row>,
    q: &[f32],
    pass: fn(&Row) -> bool,
    k: usize,
) -> Vec<u64> {
    let mut all: Vec<(f64, u64)> = model
        .iter()
        .filter(|(_, r)| pass(r))
        .map(|(id, r)| (oracle_distance(Metric::L2, q, &r.vector), *id))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(k).map(|x| x.1).collect()
}

#[test]
fn an_exact_filtered_search_equals_brute_force_over_the_rows_that_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (db, model) = populated(dir.path());
    for (name, predicate, pass) in cases() {
        for qi in 0..5 {
            let q = vector(77, qi, DIM);
            let p = SearchParams {
                k: 10,
                exact: true,
                filter: Some(predicate.clone()),
                ..SearchParams::default()
            };
            let got = ids(&db.search("c", &q, &p).unwrap());
            assert_eq!(got, brute_force(&model, &q, pass, 10), "{name}, query {qi}");
        }
    }
}

#[test]
fn an_index_walk_with_a_filter_returns_only_rows_that_pass_at_high_recall() {
    let dir = tempfile::tempdir().unwrap();
    let (db, model) = populated(dir.path());
    for (name, predicate, pass) in cases() {
        let (mut found, mut wanted) = (0usize, 0usize);
        for qi in 0..20 {
            let q = vector(77, qi, DIM);
            let p = SearchParams {
                k: 10,
                columns: vec!["n".into(), "tag".into()],
                filter: Some(predicate.clone()),
                ..SearchParams::default()
            };
            let result = db.search("c", &q, &p).unwrap();
            let got = ids(&result);
            for id in &got {
                let r =
                    model.get(id).unwrap_or_else(|| panic!("{name}: deleted row {id} returned"));
                assert!(pass(r), "{name}: row {id} does not pass");
            }
            let want = brute_force(&model, &q, pass, 10);
            assert_eq!(got.len(), want.len(), "{name}, query {qi}: as many results as rows pass");
            found += got.iter().filter(|id| want.contains(id)).count();
            wanted += want.len();
        }
        let recall = if wanted == 0 { 1.0 } else { found as f64 / wanted as f64 };
        assert!(recall >= 0.9, "{name}: recall {recall}");
    }
}

#[test]
fn a_filter_the_collection_cannot_evaluate_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = populated(dir.path());
    let q = vector(77, 0, DIM);
    let search = |p: Predicate| {
        db.search("c", &q, &SearchParams { filter: Some(p), ..SearchParams::default() })
    };
    let bad = [
        Predicate::compare("nope", CompareOp::Eq, Literal::Int(1)),
        Predicate::IsNull("vector".into()),
        Predicate::compare("n", CompareOp::Eq, Literal::Str("x".into())),
        Predicate::compare("tag", CompareOp::Lt, Literal::Int(3)),
        Predicate::is_in("n", Vec::new()),
        Predicate::is_in("n", (0..2000).map(Literal::Int).collect()),
    ];
    for p in bad {
        match search(p.clone()) {
            Err(ReadError::Filter(e)) => assert!(!e.to_string().is_empty()),
            other => panic!("{p:?}: {other:?}"),
        }
    }
    let mut deep = Predicate::IsNull("n".into());
    for _ in 0..40 {
        deep = deep.negate();
    }
    assert!(matches!(search(deep), Err(ReadError::Filter(_))), "nesting is bounded");
}

/// One indexed segment of `rows` rows whose `bucket` attribute (`id * 7919 % 1000`, spread
/// evenly and unrelated to the vectors) selects any fraction of the rows in steps of 0.1%.
fn bucketed(dir: &std::path::Path, rows: u64) -> (Database, Vec<Vec<f32>>) {
    bucketed_with(dir, rows, None)
}

/// [`bucketed`], with the planner's node read cost fixed (`Options::node_read_cost`).
fn bucketed_with(
    dir: &std::path::Path,
    rows: u64,
    read_cost: Option<Duration>,
) -> (Database, Vec<Vec<f32>>) {
    bucketed_in_parts(dir, bucket_options().node_read_cost(read_cost), rows, 1)
}

/// The options of the bucketed collections: background work on the caller, no merges.
fn bucket_options() -> Options {
    Options::default().background(false).min_index_rows(500).merge_min_segments(0)
}

/// A collection `b` of `rows` vectors with a `bucket` attribute, put in `parts` flushed
/// segments of equal size, each indexed.
fn bucketed_in_parts(
    dir: &std::path::Path,
    opts: Options,
    rows: u64,
    parts: u64,
) -> (Database, Vec<Vec<f32>>) {
    let schema = CollectionSchema::new(DIM as u32, VectorType::F32, Metric::L2)
        .with_attribute(Field::new("bucket", DataType::Int64, false));
    let db = Database::open(dir, opts).unwrap();
    db.create_collection("b", schema).unwrap();
    let vectors: Vec<Vec<f32>> = (0..rows).map(|i| vector(5, i, DIM)).collect();
    let part_rows = rows / parts;
    for part in 0..parts {
        db.insert("b", &bucket_batch(part * part_rows..(part + 1) * part_rows, &vectors)).unwrap();
        db.flush().unwrap();
    }
    db.run_background().unwrap();
    let stats = db.stats("b").unwrap();
    let parts = parts as usize;
    assert_eq!((stats.segments, stats.indexed_segments), (parts, parts), "{stats:?}");
    (db, vectors)
}

fn bucket(id: u64) -> i64 {
    (id * 7919 % 1000) as i64
}

/// The 10 of `ids` nearest to `q` by brute force (ties by id), `vectors` indexed by id.
fn nearest_ten(ids: impl Iterator<Item = u64>, vectors: &[Vec<f32>], q: &[f32]) -> Vec<u64> {
    let mut all: Vec<(f64, u64)> =
        ids.map(|id| (oracle_distance(Metric::L2, q, &vectors[id as usize]), id)).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter().take(10).map(|x| x.1).collect()
}

/// Rows `ids` of `vectors` (indexed by id) with their `bucket`.
fn bucket_batch(ids: std::ops::Range<u64>, vectors: &[Vec<f32>]) -> RecordBatch {
    let v = vector_column(DIM, &vectors[ids.start as usize..ids.end as usize]);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", v.data_type().clone(), false),
            Field::new("bucket", DataType::Int64, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(ids.clone().collect::<Vec<_>>())),
            v,
            Arc::new(Int64Array::from(ids.map(bucket).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// The planner ranks when few rows pass or reads are dear, and walks when reads are cheap
/// and many pass: each plan must find the true nearest passing rows.
#[test]
fn a_filtered_search_ranks_a_small_share_by_pq_and_walks_past_failing_rows_otherwise() {
    const ROWS: u64 = 20_000;
    // Reads priced as the disk's: every share ranks (20k rows cost less to rank than a few
    // extra reads); reads free: a walk once more than RANK_ALWAYS rows pass.
    for (read, plans) in [
        (Duration::from_micros(25), [true, true, true, true, true]),
        (Duration::ZERO, [true, true, true, false, false]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (db, vectors) = bucketed_with(dir.path(), ROWS, Some(read));
        check_plans(&db, &vectors, ROWS, [1, 10, 100, 250, 500].into_iter().zip(plans));
    }
}

/// Searches `db` with `bucket < permille` for each (permille, whether it must be ranked):
/// the plan of every search, and recall against brute force.
fn check_plans(
    db: &Database,
    vectors: &[Vec<f32>],
    rows: u64,
    cases: impl Iterator<Item = (i64, bool)>,
) {
    for (permille, ranked) in cases {
        let predicate = Predicate::compare("bucket", CompareOp::Lt, Literal::Int(permille));
        let truth =
            |q: &[f32]| nearest_ten((0..rows).filter(|&id| bucket(id) < permille), vectors, q);
        let before = db.stats("b").unwrap();
        let (mut found, mut wanted) = (0usize, 0usize);
        for qi in 0..20 {
            let q = vector(78, qi, DIM);
            let p =
                SearchParams { k: 10, filter: Some(predicate.clone()), ..SearchParams::default() };
            let got = ids(&db.search("b", &q, &p).unwrap());
            assert!(got.iter().all(|&id| bucket(id) < permille), "{permille}‰: a row that fails");
            let want = truth(&q);
            assert_eq!(got.len(), want.len(), "{permille}‰, query {qi}: as many as pass");
            found += got.iter().filter(|id| want.contains(id)).count();
            wanted += want.len();
        }
        let after = db.stats("b").unwrap();
        let walks = after.filtered_walks - before.filtered_walks;
        let ranks = after.filtered_ranked - before.filtered_ranked;
        let scans = after.filtered_scans - before.filtered_scans;
        let expected = if ranked { (0, 20, 0) } else { (20, 0, 0) };
        assert_eq!((walks, ranks, scans), expected, "{permille}‰: the plan of each search");
        let recall = found as f64 / wanted as f64;
        assert!(recall >= 0.95, "{permille}‰: recall {recall}");
        if ranked {
            // A list as long as the passing rows reads them all: exactly brute force.
            for qi in 0..5 {
                let q = vector(79, qi, DIM);
                let p = SearchParams {
                    k: 10,
                    list_size: 20 * permille as usize,
                    filter: Some(predicate.clone()),
                    ..SearchParams::default()
                };
                assert_eq!(ids(&db.search("b", &q, &p).unwrap()), truth(&q), "{permille}‰");
            }
        }
    }
}

#[test]
fn a_remembered_filter_result_never_returns_a_row_deleted_after_it() {
    // A segment file remembers which rows passed a filter; rows deleted afterwards must still
    // be left out, and another filter must not be answered from the first one's result.
    const ROWS: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let (db, vectors) = bucketed(dir.path(), ROWS);
    let below = |t: i64| Predicate::compare("bucket", CompareOp::Lt, Literal::Int(t));
    let q = vector(80, 0, DIM);
    // A list as long as what passes: every passing row ranked exactly.
    let exact = |t: i64| SearchParams {
        k: 10,
        list_size: 5_000,
        filter: Some(below(t)),
        ..SearchParams::default()
    };
    let first = ids(&db.search("b", &q, &exact(100)).unwrap());
    assert_eq!(first.len(), 10);
    db.delete("b", &UInt64Array::from(first[..5].to_vec())).unwrap();
    let again = ids(&db.search("b", &q, &exact(100)).unwrap());
    assert!(again.iter().all(|id| !first[..5].contains(id)), "a deleted row came back");
    assert_eq!(&again[..5], &first[5..], "the survivors keep their order");
    let mut want: Vec<(f64, u64)> = (0..ROWS)
        .filter(|&id| bucket(id) < 300 && !first[..5].contains(&id))
        .map(|id| (oracle_distance(Metric::L2, &q, &vectors[id as usize]), id))
        .collect();
    want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let want: Vec<u64> = want.into_iter().take(10).map(|x| x.1).collect();
    assert_eq!(ids(&db.search("b", &q, &exact(300)).unwrap()), want, "another filter");
}

/// A collection's indexes share one codebook, so the PQ distances of their passing rows
/// compare: a filter that ranks in every segment ranks them together and reads the nearest
/// `L` of the collection, where ranking each segment alone read `L` of every one (four
/// segments: four times the reads, for the same answers). With no cache every node comes
/// from the disk, so the reads counted are the reads made.
#[test]
fn a_ranked_filter_over_several_segments_reads_one_list_not_one_a_segment() {
    const PART: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let opts =
        bucket_options().sector_cache_bytes(0).node_read_cost(Some(Duration::from_micros(25)));
    let (db, vectors) = bucketed_in_parts(dir.path(), opts, 4 * PART, 4);
    // 1% pass: about 50 rows a segment, 200 in all.
    let predicate = Predicate::compare("bucket", CompareOp::Lt, Literal::Int(10));
    let passing: Vec<u64> = (0..4 * PART).filter(|&id| bucket(id) < 10).collect();
    let truth = |q: &[f32]| nearest_ten(passing.iter().copied(), &vectors, q);
    let search = |q: &[f32], list_size: usize| {
        let p = SearchParams {
            k: 10,
            list_size,
            filter: Some(predicate.clone()),
            ..SearchParams::default()
        };
        ids(&db.search("b", q, &p).unwrap())
    };
    let list = 40;
    let before = db.stats("b").unwrap();
    let (mut found, queries) = (0, 20);
    for qi in 0..queries {
        let q = vector(81, qi, DIM);
        let got = search(&q, list);
        assert!(got.iter().all(|&id| bucket(id) < 10), "query {qi}: a row that fails");
        found += got.iter().filter(|id| truth(&q).contains(id)).count();
    }
    let after = db.stats("b").unwrap();
    let reads = after.index_reads - before.index_reads;
    assert_eq!(after.filtered_ranked - before.filtered_ranked, 4 * queries, "every segment ranked");
    assert!(
        reads <= list as u64 * queries,
        "{reads} reads for {queries} searches of a list of {list}: one list a segment"
    );
    let recall = found as f64 / (10 * queries) as f64;
    assert!(recall >= 0.95, "recall {recall}");
    // A list as long as the passing rows reads them all: exactly brute force.
    for qi in 0..5 {
        let q = vector(82, qi, DIM);
        assert_eq!(search(&q, passing.len()), truth(&q), "query {qi}");
    }
}
