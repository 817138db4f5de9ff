//! kill -9 of a real process: a child ingests, upserts and deletes from several threads on the
//! real file system with small flush thresholds, so flushes, index builds and merges run in the
//! background the whole time; the parent kills it (SIGKILL) at random moments and reopens the
//! database. Every acknowledged change must be there; of the changes in flight at the kill (at
//! most one per writer thread), each may be there or not, but whole. Pins down acknowledgements
//! that run ahead of durability, and recovery that uses half-written segments, deletion files,
//! indexes or manifests.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::UInt64Array;
use common::*;
use quiver_engine::Metric;
use quiver_engine::{Database, Options, SearchParams};

const CHILD_ENV: &str = "QUIVER_ENGINE_KILL9_CHILD";
const WRITERS: u64 = 3;
const DIM: usize = 16;
const BLOCK: u64 = 40;

/// Writer `w`'s `s`-th operation, derived from `(w, s)` alone so the parent can replay it.
#[derive(Debug, Clone)]
enum WOp {
    Insert(Vec<u64>, u64),
    Delete(Vec<u64>),
}

fn block(w: u64, s: u64) -> Vec<u64> {
    (0..BLOCK).map(|i| w * 1_000_000_000 + s * BLOCK + i).collect()
}

fn op(w: u64, s: u64) -> WOp {
    let seed = (w << 32) | s;
    if s % 5 == 4 {
        WOp::Delete(block(w, s - 2).into_iter().step_by(2).collect())
    } else if s % 3 == 2 {
        WOp::Insert(block(w, s - 1), seed) // upsert the previous block with new vectors
    } else {
        WOp::Insert(block(w, s), seed)
    }
}

fn apply(rows: &mut BTreeMap<u64, Vec<f32>>, o: &WOp) {
    match o {
        WOp::Insert(ids, seed) => {
            for &id in ids {
                rows.insert(id, vector(*seed, id, DIM));
            }
        }
        WOp::Delete(ids) => {
            for id in ids {
                rows.remove(id);
            }
        }
    }
}

fn options() -> Options {
    Options::default()
        .memtable_bytes(200 << 10)
        .min_index_rows(300)
        .merge_min_segments(3)
        .merge_max_rows(20_000)
        .row_group_rows(500)
        // Kills land during growths too, as they did when the default grew by up to the base.
        .max_growth_share(1.0)
}

/// The child: runs writer threads forever, printing `ack W S` once each operation returns.
#[test]
fn kill9_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let first: u64 = std::env::var("QUIVER_ENGINE_KILL9_FIRST_WRITER").unwrap().parse().unwrap();
    let db = Arc::new(Database::open(&dir, options()).unwrap());
    if db.list_collections().is_empty() {
        db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    println!("ready");
    let threads: Vec<_> = (first..first + WRITERS)
        .map(|w| {
            let (db, out) = (Arc::clone(&db), Arc::clone(&out));
            std::thread::spawn(move || {
                for s in 0.. {
                    match op(w, s) {
                        WOp::Insert(ids, seed) => {
                            let rows: Vec<Vec<f32>> =
                                ids.iter().map(|&id| vector(seed, id, DIM)).collect();
                            db.insert("c", &batch(&ids, &rows)).unwrap();
                        }
                        WOp::Delete(ids) => {
                            db.delete("c", &UInt64Array::from(ids)).unwrap();
                        }
                    }
                    let grows = db.background_stats().index_grows;
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {w} {s}").unwrap();
                    writeln!(o, "grows {grows}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn every_acknowledged_change_survives_kill_9_during_background_work() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut rows: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
    let kill_after_ms = [700u64, 1500, 400, 2500];
    // Index growths the children had committed before they were killed, over all rounds.
    let mut grown_before_kills = 0u64;
    for (round, ms) in kill_after_ms.iter().enumerate() {
        let first = round as u64 * WRITERS;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_child_process", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir_s)
            .env("QUIVER_ENGINE_KILL9_FIRST_WRITER", first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut signalled = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !signalled && line.starts_with("ack ") {
                    let _ = tx.send(());
                    signalled = true;
                }
                lines.push(line);
            }
            lines
        });
        // Time the kill from the child's first acknowledgement: recovery, and a first write that
        // waits for background work, may take long on a loaded machine.
        rx.recv_timeout(Duration::from_secs(300)).expect("the child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(*ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        let lines = reader.join().unwrap();
        let grows = lines.iter().rev().find_map(|l| l.strip_prefix("grows ")).unwrap_or("0");
        grown_before_kills += grows.parse::<u64>().unwrap_or(0);
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            // A line cut by the kill has fewer fields; an acknowledgement counts only whole.
            if f.len() == 3 && f[0] == "ack" {
                let (w, s): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                let e = last.entry(w).or_insert(s);
                assert!(s >= *e);
                *e = s;
            }
        }
        assert!(!last.is_empty(), "round {round}: nothing acknowledged before the kill");

        let db = Database::open(&dir_s, options().background(false)).unwrap();
        let found: BTreeMap<u64, Vec<f32>> =
            scan_all(&db, "c").into_iter().map(|(id, v, _)| (id, v)).collect();
        // Each writer of this round: acknowledged ops applied, plus perhaps its next op whole.
        for w in first..first + WRITERS {
            let lo = w * 1_000_000_000;
            let hi = lo + 1_000_000_000;
            let mut want = BTreeMap::new();
            let acked = last.get(&w).map_or(0, |s| s + 1);
            for s in 0..acked {
                apply(&mut want, &op(w, s));
            }
            let mut with_next = want.clone();
            apply(&mut with_next, &op(w, acked));
            let got: BTreeMap<u64, Vec<f32>> =
                found.range(lo..hi).map(|(k, v)| (*k, v.clone())).collect();
            assert!(
                got == want || got == with_next,
                "round {round}, writer {w}: {} acknowledged ops; recovered {} rows, expected {} \
                 (or {} with the op in flight)",
                acked,
                got.len(),
                want.len(),
                with_next.len()
            );
            rows.extend(got);
        }
        // Earlier rounds' rows are untouched.
        assert_eq!(found, rows, "round {round}: rows of earlier rounds changed");
        let list: Vec<(u64, Vec<f32>)> = rows.iter().map(|(k, v)| (*k, v.clone())).collect();
        let q = vector(round as u64, 1, DIM);
        let exact = SearchParams { k: 10, exact: true, ..SearchParams::default() };
        check_exact(Metric::L2, &q, 10, &list, &db.search("c", &q, &exact).unwrap());
        let st = db.stats("c").unwrap();
        eprintln!("round {round}: {} rows, {st:?}", rows.len());
    }
    eprintln!("{grown_before_kills} index growths committed before the kills");
}
