//! A model-based test of the whole engine on the simulated file system: random sequences of
//! insert / upsert / delete / search / get / scan / flush / merge / added column / power cut /
//! clean reopen / injected fault, checked against a plain map of id → vector and the count of
//! columns added (rows written before a column read null in it).
//!
//! The failures it pins down: an acknowledged write missing after a crash (or a deleted row
//! back), a write that failed being half-applied, a flush or merge whose crash leaves a segment,
//! deletion file or manifest half-used, search disagreeing with brute force over the model, and
//! a recovery that gives a different answer the second time. A write that fails with a WAL error
//! may or may not be durable; the model keeps it as the one "uncertain" write (the database is
//! poisoned after it, so no second can follow) and accepts either outcome at the next recovery.
//!
//! Disk indexes need the real file system, so here every segment is searched exactly; the index
//! path is covered by `basics.rs` and the kill -9 test. Cases: `QUIVER_ENGINE_MODEL_CASES`
//! (default 24).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, UInt64Array};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use quiver_engine::Metric;
use quiver_engine::{Database, OpenError, Options, SearchParams, WriteError};
use quiver_vfs::sim::{CrashMode, Fault, OpKind, SimVfs};

const DIR: &str = "/db";
const DIM: usize = 6;
const IDS: u64 = 48;

#[derive(Clone, Debug)]
enum Transition {
    Insert(Vec<(u64, u8)>),
    Delete(Vec<u64>),
    Search { seed: u8, k: usize },
    Get(Vec<u64>),
    Flush,
    Merge,
    AddColumn,
    Crash(u64),
    Reopen,
    Fault { kind: Option<OpKind>, skip: u8, fault: Fault },
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = ();
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<()> {
        Just(()).boxed()
    }

    fn transitions(_: &()) -> BoxedStrategy<Transition> {
        let kind = prop_oneof![
            Just(None),
            Just(Some(OpKind::Write)),
            Just(Some(OpKind::Sync)),
            Just(Some(OpKind::Create)),
            Just(Some(OpKind::Rename)),
            Just(Some(OpKind::Remove)),
            Just(Some(OpKind::SyncDir)),
        ];
        let fault = prop_oneof![
            Just(Fault::Eio),
            Just(Fault::Enospc),
            Just(Fault::ShortWrite),
            Just(Fault::Crash)
        ];
        prop_oneof![
            8 => proptest::collection::vec((0..IDS, any::<u8>()), 1..12).prop_map(Transition::Insert),
            3 => proptest::collection::vec(0..IDS, 1..6).prop_map(Transition::Delete),
            3 => (any::<u8>(), 1usize..12).prop_map(|(seed, k)| Transition::Search { seed, k }),
            2 => proptest::collection::vec(0..IDS, 1..8).prop_map(Transition::Get),
            2 => Just(Transition::Flush),
            1 => Just(Transition::Merge),
            1 => Just(Transition::AddColumn),
            2 => any::<u64>().prop_map(Transition::Crash),
            1 => Just(Transition::Reopen),
            1 => (kind, 0u8..12, fault).prop_map(|(kind, skip, fault)| Transition::Fault { kind, skip, fault }),
        ]
        .boxed()
    }

    fn apply(state: (), _: &Transition) {
        state
    }
}

type Rows = BTreeMap<u64, Vec<f32>>;

#[derive(Clone, Debug)]
enum Write {
    Insert(Vec<(u64, Vec<f32>)>),
    Delete(Vec<u64>),
}

fn applied(rows: &Rows, w: &Write) -> Rows {
    let mut r = rows.clone();
    match w {
        Write::Insert(v) => {
            for (id, x) in v {
                r.insert(*id, x.clone());
            }
        }
        Write::Delete(ids) => {
            for id in ids {
                r.remove(id);
            }
        }
    }
    r
}

struct Sut {
    vfs: SimVfs,
    db: Option<Database>,
    metric: Metric,
    rows: Rows,
    uncertain: Option<Write>,
    /// Columns added and acknowledged (named `a1`, `a2`, ...), and whether one more was asked
    /// for and failed in a way that may or may not have committed it (the database poisoned).
    columns: usize,
    uncertain_column: bool,
}

/// The most columns a case adds.
const MAX_ADDED: usize = 4;

fn options(vfs: &SimVfs) -> Options {
    Options::default()
        .vfs(Arc::new(vfs.clone()))
        .background(false)
        .memtable_bytes(6 << 10)
        .row_group_rows(7)
        .merge_min_segments(3)
        .wal_segment_bytes(4096)
}

impl Sut {
    fn open(&mut self) -> Database {
        if self.vfs.is_down() {
            self.vfs.crash(CrashMode::DropAll);
        }
        match Database::open(DIR, options(&self.vfs)) {
            Ok(db) => db,
            Err(
                OpenError::Io { .. }
                | OpenError::Wal(quiver_wal::OpenError::Io { .. })
                | OpenError::Manifest(quiver_engine::ManifestError::Io { .. })
                | OpenError::Segment(quiver_engine::SegmentError::Io { .. }),
            ) => {
                // An injected fault hit the open itself, which may fail. With the faults gone
                // (and the machine up) it must not.
                if self.vfs.is_down() {
                    self.vfs.crash(CrashMode::DropAll);
                }
                self.vfs.clear_faults();
                Database::open(DIR, options(&self.vfs)).expect("open with no faults armed")
            }
            Err(e) => panic!("recovery reported: {e}"),
        }
    }

    fn db(&mut self) -> &Database {
        if self.db.is_none() {
            let db = self.open();
            self.db = Some(db);
        }
        self.db.as_ref().expect("just opened")
    }

    /// Reopens, accepts the acknowledged rows with or without the uncertain write, checks every
    /// read against that, and checks that a second recovery agrees.
    fn recover_and_check(&mut self) {
        self.db = None;
        let db = self.open();
        let added = added_columns(&db);
        let may = self.columns + usize::from(self.uncertain_column);
        assert!(
            added == self.columns || added == may,
            "after recovery {added} columns were added; {} were acknowledged (uncertain: {})",
            self.columns,
            self.uncertain_column
        );
        self.columns = added;
        self.uncertain_column = false;
        let found = rows_of(&db);
        if found != self.rows {
            let alt = self.uncertain.as_ref().map(|w| applied(&self.rows, w));
            assert_eq!(
                Some(&found),
                alt.as_ref(),
                "after recovery the rows match neither the acknowledged writes nor them plus the \
                 one uncertain write {:?}",
                self.uncertain
            );
            self.rows = found;
        }
        self.uncertain = None;
        check_reads(&db, self.metric, &self.rows, 3);
        drop(db);
        let again = self.open();
        assert_eq!(rows_of(&again), self.rows, "a second recovery disagrees with the first");
        self.db = Some(again);
    }
}

fn rows_of(db: &Database) -> Rows {
    let rows: Rows = scan_all(db, "c").into_iter().map(|(id, v, _)| (id, v)).collect();
    assert_eq!(db.stats("c").unwrap().rows, rows.len() as u64, "stats disagree with scan");
    rows
}

fn check_reads(db: &Database, metric: Metric, rows: &Rows, seed: u8) {
    let list: Vec<(u64, Vec<f32>)> = rows.iter().map(|(k, v)| (*k, v.clone())).collect();
    let q = vector(u64::from(seed) + 10_000, 0, DIM);
    let k = 7;
    let got =
        db.search("c", &q, &SearchParams { k, exact: true, ..SearchParams::default() }).unwrap();
    check_exact(metric, &q, k, &list, &got);
    let approx = db.search("c", &q, &SearchParams { k, ..SearchParams::default() }).unwrap();
    check_exact(metric, &q, k, &list, &approx);
}

struct EngineTest;

impl StateMachineTest for EngineTest {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(_: &()) -> Sut {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let metric = [Metric::L2, Metric::InnerProduct, Metric::Cosine][(n % 3) as usize];
        let vfs = SimVfs::new();
        let mut sut = Sut {
            vfs,
            db: None,
            metric,
            rows: Rows::new(),
            uncertain: None,
            columns: 0,
            uncertain_column: false,
        };
        sut.db().create_collection("c", schema(DIM as u32, metric)).unwrap();
        sut
    }

    fn apply(mut sut: Sut, _: &(), t: Transition) -> Sut {
        match t {
            Transition::Insert(spec) => {
                let mut by_id = BTreeMap::new();
                for (id, seed) in spec {
                    by_id.insert(id, vector(u64::from(seed), id, DIM));
                }
                let (ids, vecs): (Vec<u64>, Vec<Vec<f32>>) = by_id.into_iter().unzip();
                let w = Write::Insert(ids.iter().copied().zip(vecs.iter().cloned()).collect());
                let r = sut.db().insert("c", &batch(&ids, &vecs));
                sut.write_outcome(w, r);
            }
            Transition::Delete(ids) => {
                let w = Write::Delete(ids.clone());
                let r = sut.db().delete("c", &UInt64Array::from(ids));
                sut.write_outcome(w, r);
            }
            Transition::Search { seed, k } => {
                let q = vector(u64::from(seed), 77, DIM);
                let list: Vec<(u64, Vec<f32>)> =
                    sut.rows.iter().map(|(k, v)| (*k, v.clone())).collect();
                let metric = sut.metric;
                let p = SearchParams {
                    k,
                    exact: true,
                    columns: vec!["tag".into()],
                    ..SearchParams::default()
                };
                // Reads may fail on an injected read-side fault; when they answer, they are right.
                if let Ok(got) = sut.db().search("c", &q, &p) {
                    check_exact(metric, &q, k, &list, &got);
                }
            }
            Transition::Get(ids) => {
                let want: Vec<u64> = {
                    let mut seen = std::collections::HashSet::new();
                    ids.iter()
                        .copied()
                        .filter(|i| sut.rows.contains_key(i) && seen.insert(*i))
                        .collect()
                };
                if let Ok(got) = sut.db().get("c", &UInt64Array::from(ids)) {
                    assert_eq!(common::ids(&got), want, "get");
                    for (id, v) in common::ids(&got).iter().zip(vectors(&got)) {
                        assert_eq!(&v, &sut.rows[id], "get vector of {id}");
                    }
                }
            }
            Transition::Flush => {
                let _ = sut.db().flush();
            }
            Transition::Merge => {
                let _ = sut.db().run_background();
            }
            Transition::AddColumn if sut.columns < MAX_ADDED => {
                let name = format!("a{}", sut.columns + 1);
                let field = arrow_schema::Field::new(name, arrow_schema::DataType::Int64, true);
                match sut.db().add_attributes("c", &[field]) {
                    Ok(1) => {
                        sut.columns += 1;
                        sut.uncertain_column = false;
                    }
                    Ok(n) => panic!("a new column added {n} columns"),
                    // A failed commit leaves the old manifest in force unless it poisoned the
                    // database, and then the column may or may not be there after recovery.
                    Err(_) => sut.uncertain_column = true,
                }
            }
            Transition::AddColumn => {}
            Transition::Crash(seed) => {
                sut.vfs.power_off();
                sut.db = None;
                sut.vfs.crash(CrashMode::Random(seed));
                sut.recover_and_check();
            }
            Transition::Reopen => sut.recover_and_check(),
            Transition::Fault { kind, skip, fault } => sut.vfs.inject(kind, skip.into(), fault),
        }
        sut
    }

    fn teardown(mut sut: Sut, _: ()) {
        sut.vfs.power_off();
        sut.db = None;
        sut.vfs.crash(CrashMode::Random(sut.rows.len() as u64));
        sut.recover_and_check();
    }
}

impl Sut {
    fn write_outcome(&mut self, w: Write, r: Result<u64, WriteError>) {
        match r {
            Ok(_) => {
                assert!(self.uncertain.is_none(), "a write succeeded after an uncertain one");
                self.rows = applied(&self.rows, &w);
            }
            Err(WriteError::Wal(_)) => {
                assert!(self.uncertain.is_none(), "two uncertain writes: the first must poison");
                self.uncertain = Some(w);
            }
            Err(WriteError::Poisoned(_) | WriteError::Flush(_) | WriteError::Stalled(_)) => {}
            Err(e) => panic!("unexpected write error: {e}"),
        }
        // Whatever happened, the live database answers reads from what it applied.
        if let Some(db) = &self.db
            && let Ok(found) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scan_ok(db)))
            && let Some(found) = found
        {
            assert_eq!(found, self.rows, "in-process reads disagree with acknowledged writes");
        }
    }
}

/// How many columns `a1`, `a2`, ... the collection has, checking that every row reads null in
/// them (no insert ever carries them).
fn added_columns(db: &Database) -> usize {
    let schema = db.schema("c").unwrap();
    let names: Vec<String> = schema
        .attributes()
        .iter()
        .map(|a| a.name().clone())
        .filter(|n| n.starts_with('a'))
        .collect();
    let want: Vec<String> = (1..=names.len()).map(|i| format!("a{i}")).collect();
    assert_eq!(names, want, "columns are added in order, at the end");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if !refs.is_empty() {
        for b in db.scan("c", Some(&refs)).unwrap() {
            let b = b.unwrap();
            for c in b.columns() {
                assert_eq!(c.null_count(), b.num_rows(), "an added column holds only nulls");
            }
        }
    }
    names.len()
}

/// The rows by scan, or `None` if an injected fault made the scan fail.
fn scan_ok(db: &Database) -> Option<Rows> {
    let mut out = Rows::new();
    for b in db.scan("c", None).ok()? {
        let b = b.ok()?;
        for (id, v) in ids(&b).into_iter().zip(vectors(&b)) {
            out.insert(id, v);
        }
    }
    Some(out)
}

fn cases() -> u32 {
    std::env::var("QUIVER_ENGINE_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

prop_state_machine! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]
    #[test]
    fn engine_never_loses_an_acknowledged_write(sequential 1..60 => EngineTest);
}

#[test]
fn dir_is_absolute() {
    assert!(Path::new(DIR).is_absolute());
}
