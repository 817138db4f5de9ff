//! A collection that declares a label column (a tenant) gets, in each indexed segment, a graph
//! of its own for every frequent value, and a search filtered to one value walks it from the
//! value's own entry point. The graphs are derived data beside the segment's index, so these
//! tests pin down what could go wrong with them: a walk that returns rows of another tenant,
//! deleted rows, or rows failing the rest of an AND; recall lost against brute force over the
//! passing rows; rare values sent to a graph they do not have; graphs rebuilt at every open
//! instead of reopened; and a damaged graph trusted instead of set aside and rebuilt.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Float32Array, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::{
    CollectionSchema, CompareOp, Database, Literal, Metric, Options, Predicate, SchemaError,
    SearchParams, VectorType,
};

const DIM: usize = 16;
/// Rows of tenants 0, 1 and 2 (`id % 3` below `FREQUENT`); the last `RARE` rows are tenant 9.
const FREQUENT: u64 = 6_000;
const RARE: u64 = 300;
const MIN_GRAPH_ROWS: usize = 1_000;

fn tenant_of(id: u64) -> i64 {
    if id < FREQUENT { (id % 3) as i64 } else { 9 }
}

fn rows_batch(ids: &[u64]) -> RecordBatch {
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(5, i, DIM)).collect();
    let v = vector_column(DIM, &vectors);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("vector", v.data_type().clone(), false),
            Field::new("tenant", DataType::Int64, false),
            Field::new("weight", DataType::Float32, false),
            Field::new("tier", DataType::Int64, false),
        ])),
        vec![
            Arc::new(UInt64Array::from(ids.to_vec())),
            v,
            Arc::new(Int64Array::from(ids.iter().map(|&i| tenant_of(i)).collect::<Vec<_>>())),
            Arc::new(Float32Array::from(
                ids.iter().map(|&i| (i * 7 % 100) as f32).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ids.iter().map(|&i| (i % 2) as i64).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn options() -> Options {
    Options::default()
        .background(false)
        .min_index_rows(500)
        .merge_min_segments(0)
        .label_graph_min_rows(MIN_GRAPH_ROWS)
}

fn collection_schema() -> CollectionSchema {
    CollectionSchema::new(DIM as u32, VectorType::F32, Metric::L2)
        .with_attribute(Field::new("tenant", DataType::Int64, false))
        .with_attribute(Field::new("weight", DataType::Float32, false))
        .with_attribute(Field::new("tier", DataType::Int64, false))
}

/// One indexed segment of every row, `tenant` declared a label column when `declared`.
fn populated(dir: &Path, declared: bool) -> Database {
    let db = Database::open(dir, options()).unwrap();
    let mut schema = collection_schema();
    if declared {
        schema = schema.with_label_graph("tenant");
    }
    db.create_collection("c", schema).unwrap();
    let ids: Vec<u64> = (0..FREQUENT + RARE).collect();
    db.insert("c", &rows_batch(&ids)).unwrap();
    db.flush().unwrap();
    db.run_background().unwrap();
    assert_eq!(db.stats("c").unwrap().indexed_segments, 1);
    db
}

fn tenant_is(t: i64) -> Predicate {
    Predicate::compare("tenant", CompareOp::Eq, Literal::Int(t))
}

fn params(filter: Predicate, exact: bool) -> SearchParams {
    SearchParams {
        k: 10,
        list_size: 48,
        exact,
        columns: vec!["tenant".into()],
        filter: Some(filter),
        ..SearchParams::default()
    }
}

/// Searches 20 queries with `filter`, each checked against the exact answer: every result
/// passes `passes` and is not in `gone`; returns the recall@10 over them all.
fn recall(db: &Database, filter: &Predicate, passes: impl Fn(u64) -> bool, gone: &[u64]) -> f64 {
    let (mut found, mut wanted) = (0usize, 0usize);
    for q in 0..20u64 {
        let query = vector(77, q, DIM);
        let got = db.search("c", &query, &params(filter.clone(), false)).unwrap();
        let truth = db.search("c", &query, &params(filter.clone(), true)).unwrap();
        let got_ids = ids(&got);
        for (&id, &t) in got_ids
            .iter()
            .zip(got.column_by_name("tenant").unwrap().as_primitive::<Int64Type>().values())
        {
            assert!(passes(id), "row {id} (tenant {t}) fails the filter {filter:?}");
            assert_eq!(t, tenant_of(id), "row {id} came back with another row's tenant");
            assert!(!gone.contains(&id), "deleted row {id} came back");
        }
        let truth = ids(&truth);
        assert_eq!(got_ids.len(), truth.len(), "a short answer for {filter:?}");
        found += got_ids.iter().filter(|i| truth.contains(i)).count();
        wanted += truth.len();
    }
    found as f64 / wanted as f64
}

fn label_walks(db: &Database) -> u64 {
    db.stats("c").unwrap().filtered_label_walks
}

#[test]
fn a_search_for_one_tenant_walks_that_tenants_graph_and_finds_its_nearest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), true);
    // A graph for each of the three frequent tenants; the rare one has none.
    assert_eq!(db.background_stats().label_graphs_built, 3);
    for t in 0..3 {
        let before = label_walks(&db);
        let r = recall(&db, &tenant_is(t), |id| tenant_of(id) == t, &[]);
        assert!(r >= 0.95, "tenant {t}: recall {r}");
        assert_eq!(label_walks(&db) - before, 20, "tenant {t} was not searched in its graph");
    }
    // The rare tenant is ranked (exactly: all its rows fit the list), never sent to a graph.
    let before = label_walks(&db);
    let r = recall(&db, &tenant_is(9), |id| tenant_of(id) == 9, &[]);
    assert!(r >= 0.99, "rare tenant: recall {r}");
    assert_eq!(label_walks(&db), before);
    // `IN` of one value is the same value; of two with graphs, both graphs are walked and
    // the nearest of both kept; of one with a graph and one without, neither.
    let one = Predicate::is_in("tenant", vec![Literal::Int(1)]);
    let before = label_walks(&db);
    assert!(recall(&db, &one, |id| tenant_of(id) == 1, &[]) >= 0.95);
    assert_eq!(label_walks(&db) - before, 20);
    let two = Predicate::is_in("tenant", vec![Literal::Int(1), Literal::Int(2)]);
    let before = label_walks(&db);
    let r = recall(&db, &two, |id| matches!(tenant_of(id), 1 | 2), &[]);
    assert!(r >= 0.95, "tenants 1 and 2: recall {r}");
    assert_eq!(label_walks(&db) - before, 20, "the IN did not walk both graphs");
    let with_rare = Predicate::is_in("tenant", vec![Literal::Int(1), Literal::Int(9)]);
    let before = label_walks(&db);
    assert!(recall(&db, &with_rare, |id| matches!(tenant_of(id), 1 | 9), &[]) >= 0.9);
    assert_eq!(label_walks(&db), before, "tenant 9 has no graph");
}

#[test]
fn the_rest_of_an_and_and_deleted_rows_are_walked_through_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), true);
    // 70% of tenant 2's rows: the walk of its graph widened a little beats ranking them.
    let light = |id: u64| ((id * 7 % 100) as f32) < 70.0;
    let filter = Predicate::And(vec![
        tenant_is(2),
        Predicate::compare("weight", CompareOp::Lt, Literal::Float(70.0)),
    ]);
    let before = label_walks(&db);
    let r = recall(&db, &filter, |id| tenant_of(id) == 2 && light(id), &[]);
    assert!(r >= 0.9, "tenant 2 and weight < 70: recall {r}");
    assert!(label_walks(&db) > before, "the AND did not walk tenant 2's graph");
    // Delete every row the first queries found; the next answers never hold them.
    let mut gone = Vec::new();
    for q in 0..20u64 {
        let got = db.search("c", &vector(77, q, DIM), &params(tenant_is(2), false)).unwrap();
        gone.extend(ids(&got));
    }
    gone.sort_unstable();
    gone.dedup();
    db.delete("c", &UInt64Array::from(gone.clone())).unwrap();
    let before = label_walks(&db);
    let r = recall(&db, &tenant_is(2), |id| tenant_of(id) == 2, &gone);
    assert!(r >= 0.9, "after deletions: recall {r}");
    assert_eq!(label_walks(&db) - before, 20);
}

/// The graph directories of the database in `dir`.
fn graph_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for index in std::fs::read_dir(dir.join("indexes")).unwrap().flatten() {
        let labels = index.path().join("labels");
        if let Ok(entries) = std::fs::read_dir(&labels) {
            found.extend(entries.flatten().map(|e| e.path()));
        }
    }
    found.sort();
    found
}

#[test]
fn graphs_are_reopened_after_a_restart_and_a_damaged_one_is_set_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    drop(populated(dir.path(), true));
    let graphs = graph_dirs(dir.path());
    assert_eq!(graphs.len(), 3, "{graphs:?}");

    let db = Database::open(dir.path(), options()).unwrap();
    assert_eq!(db.schema("c").unwrap().label_graphs(), ["tenant".to_string()]);
    db.run_background().unwrap();
    assert_eq!(db.background_stats().label_graphs_built, 0, "sound graphs were built again");
    assert!(recall(&db, &tenant_is(0), |id| tenant_of(id) == 0, &[]) >= 0.95);
    drop(db);

    // Damage every node sector of tenant 1's graph: its first read fails its checksum.
    let victim =
        graphs.iter().find(|p| p.ends_with("2.1")).expect("tenant 1's graph").join("graph.qvr");
    let mut bytes = std::fs::read(&victim).unwrap();
    for sector in 1..bytes.len() / 4096 {
        bytes[sector * 4096 + 100] ^= 0x5a;
    }
    std::fs::write(&victim, &bytes).unwrap();

    let db = Database::open(dir.path(), options()).unwrap();
    db.run_background().unwrap();
    assert_eq!(db.background_stats().label_graphs_built, 0, "the damage is not seen at open");
    // The search that meets the damage is answered the other way, and as well.
    let before = label_walks(&db);
    assert!(recall(&db, &tenant_is(1), |id| tenant_of(id) == 1, &[]) >= 0.95);
    assert_eq!(label_walks(&db), before, "a damaged graph answered");
    db.run_background().unwrap();
    assert_eq!(db.background_stats().label_graphs_built, 1, "the damaged graph was not rebuilt");
    let before = label_walks(&db);
    assert!(recall(&db, &tenant_is(1), |id| tenant_of(id) == 1, &[]) >= 0.95);
    assert_eq!(label_walks(&db) - before, 20);
}

#[test]
fn a_label_column_declared_later_gets_its_graphs_and_bad_declarations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), false);
    assert!(graph_dirs(dir.path()).is_empty());
    let before = label_walks(&db);
    assert!(recall(&db, &tenant_is(0), |id| tenant_of(id) == 0, &[]) >= 0.9);
    assert_eq!(label_walks(&db), before, "no column was declared");

    for (column, why) in
        [("nope", "no attribute"), ("weight", "only integer"), ("id", "no attribute")]
    {
        match db.add_label_graphs("c", &[column]) {
            Err(quiver_engine::CollectionError::Schema(SchemaError::LabelGraph {
                reason, ..
            })) => {
                assert!(reason.contains(why), "{column}: {reason}");
            }
            other => panic!("{column}: {other:?}"),
        }
    }
    let twice = collection_schema().with_label_graph("tenant").with_label_graph("tenant");
    assert!(matches!(twice.validate(), Err(SchemaError::LabelGraph { .. })));

    assert_eq!(db.add_label_graphs("c", &["tenant"]).unwrap(), 1);
    assert_eq!(db.add_label_graphs("c", &["tenant", "tier"]).unwrap(), 1);
    assert!(db.background_pending(), "declared graphs are background work");
    db.run_background().unwrap();
    // Three tenants and two tiers, built a column at a time.
    assert_eq!(db.background_stats().label_graphs_built, 5);
    let before = label_walks(&db);
    assert!(recall(&db, &tenant_is(0), |id| tenant_of(id) == 0, &[]) >= 0.95);
    assert_eq!(label_walks(&db) - before, 20);
    let tier = Predicate::compare("tier", CompareOp::Eq, Literal::Int(1));
    let before = label_walks(&db);
    assert!(recall(&db, &tier, |id| id % 2 == 1, &[]) >= 0.95);
    assert_eq!(label_walks(&db) - before, 20);
    assert!(db.memory().structures > 0);
}

/// The plan each segment search took, as its `segment` span records it (`plan`), captured by
/// a subscriber on this thread: what a per-query trace shows.
#[derive(Clone, Default)]
struct Plans(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Plans {
    fn on_record(
        &self,
        _span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Plan<'a>(&'a Plans);
        impl tracing::field::Visit for Plan<'_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "plan" {
                    self.0.0.lock().unwrap().push(value.to_string());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        values.record(&mut Plan(self));
    }
}

#[test]
fn each_search_records_the_plan_it_took_in_its_trace() {
    use tracing_subscriber::layer::SubscriberExt;
    let dir = tempfile::tempdir().unwrap();
    let db = populated(dir.path(), true);
    let plans = Plans::default();
    let subscriber = tracing_subscriber::registry().with(plans.clone());
    let light = Predicate::compare("weight", CompareOp::Lt, Literal::Float(90.0));
    let nothing = Predicate::compare("tenant", CompareOp::Eq, Literal::Int(42));
    tracing::subscriber::with_default(subscriber, || {
        for filter in [tenant_is(1), light, nothing] {
            db.search("c", &vector(77, 0, DIM), &params(filter, false)).unwrap();
        }
    });
    let seen = plans.0.lock().unwrap().clone();
    assert_eq!(seen, ["label_walk", "walk", "nothing"], "the plans recorded");
}
