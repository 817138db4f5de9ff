//! Index builds and merges compete with searches for the same cores. On 200k SIFT over Flight,
//! searches during index builds ran at 192 QPS with the builds at the searches' priority and
//! 331 QPS with them at nice 10. This pins down that the background worker's threads really run
//! at `Options::background_nice`, and that the search threads do not: read back from
//! `/proc/self/task/*/stat`, so a priority change that silently failed or hit the wrong thread
//! fails here. Builds also run in the idle scheduling class by default (a waking search takes
//! their core at once): read back the same way, with the class off when asked.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use quiver_engine::{Database, Options};

/// The tests read every thread of the process by name: one database at a time.
static ONE_DATABASE: Mutex<()> = Mutex::new(());

/// The nice value of every thread of this process whose name starts with `prefix`.
fn nice_of_threads(prefix: &str) -> Vec<i64> {
    stat_field_of_threads(prefix, 19)
}

/// Field `field` (1-based, as proc(5) numbers them) of `/proc/self/task/*/stat` for every
/// thread of this process whose name starts with `prefix`.
fn stat_field_of_threads(prefix: &str, field: usize) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else { continue };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else { continue };
        // Fields after the parenthesised name start at field 3 (the state).
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        nice.push(after.split(' ').nth(field - 3).unwrap().parse().unwrap());
    }
    nice
}

/// Waits (bounded) until `prefix` threads exist and all have nice `want`; returns what was seen.
fn settle(prefix: &str, want: i64) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = nice_of_threads(prefix);
        if (!seen.is_empty() && seen.iter().all(|&n| n == want)) || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn background_threads_run_at_the_configured_nice_and_search_threads_do_not() {
    let _one = ONE_DATABASE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let base = nice_of_threads("").into_iter().min().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background_nice(7)).unwrap();
    let want = (base + 7).min(19); // the kernel caps nice at 19
    let build = settle("quiver-build", want);
    assert!(!build.is_empty() && build.iter().all(|&n| n == want), "build pool: {build:?}");
    let worker = settle("quiver-backgrou", want); // comm is cut at 15 bytes
    assert_eq!(worker, vec![want], "background worker");
    let search = nice_of_threads("quiver-search");
    assert!(!search.is_empty() && search.iter().all(|&n| n == base), "search pool: {search:?}");
    drop(db);
}

/// `SCHED_IDLE` as proc(5)'s `policy` field (41) shows it.
const SCHED_IDLE: i64 = 5;

#[test]
fn build_threads_run_in_the_idle_class_unless_asked_not_to_and_search_threads_never() {
    let _one = ONE_DATABASE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let policies = |prefix: &str| stat_field_of_threads(prefix, 41);
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default()).unwrap();
    // The README's test command runs as root, which may always leave the class again.
    assert!(db.background_stats().idle_class, "the idle class is not in use");
    let deadline = Instant::now() + Duration::from_secs(10);
    while policies("quiver-build").iter().any(|&p| p != SCHED_IDLE) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let build = policies("quiver-build");
    assert!(!build.is_empty() && build.iter().all(|&p| p == SCHED_IDLE), "build pool: {build:?}");
    let search = policies("quiver-search");
    assert!(!search.is_empty() && search.iter().all(|&p| p == 0), "search pool: {search:?}");
    drop(db);

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path(), Options::default().background_idle(false)).unwrap();
    assert!(!db.background_stats().idle_class);
    // The first database's pool threads end after it is dropped, not at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while policies("quiver-build").iter().any(|&p| p != 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let build = policies("quiver-build");
    assert!(build.iter().all(|&p| p == 0), "build pool with the class off: {build:?}");
    drop(db);
}
