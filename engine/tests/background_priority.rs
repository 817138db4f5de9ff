//! Index builds and merges compete with searches for the same cores. On 200k SIFT over Flight,
//! searches during index builds ran at 192 QPS with the builds at the searches' priority and
//! 331 QPS with them at nice 10. This pins down that the background worker's threads really run
//! at `Options::background_nice`, and that the search threads do not: read back from
//! `/proc/self/task/*/stat`, so a priority change that silently failed or hit the wrong thread
//! fails here.

use std::time::{Duration, Instant};

use quiver_engine::{Database, Options};

/// The nice value of every thread of this process whose name starts with `prefix`.
fn nice_of_threads(prefix: &str) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else { continue };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else { continue };
        // Fields after the parenthesised name: state is field 3, nice field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        nice.push(after.split(' ').nth(16).unwrap().parse().unwrap());
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
