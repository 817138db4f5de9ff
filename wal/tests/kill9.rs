//! kill -9 on the real file system: a child process appends from several threads with the default
//! sync policy and reports each acknowledged LSN on stdout; the parent kills it (SIGKILL) at random
//! moments, reopens the log, and checks that every acknowledged record is there, byte for byte, and
//! that everything recovered is a record some writer really sent. Several rounds run on the same
//! log, each child continuing where recovery left off. Pins down acknowledgements that run ahead
//! of the write, and recovery that trips over whatever a killed writer left behind.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_wal::{Wal, WalOptions};
use rand::{RngExt, SeedableRng};

const CHILD_ENV: &str = "QUIVER_WAL_KILL9_CHILD";
const WRITERS: u64 = 4;

/// The payload writer `w` sends as its `seq`-th record: self-describing so the parent can check
/// any record it finds, acknowledged or not.
fn record(w: u64, seq: u64) -> Vec<u8> {
    let len = ((w * 7919 + seq * 104_729) % 20_000) as usize + 16;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&w.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend(common::payload(w * 1_000_003 + seq, len - 16));
    p
}

/// Rounds alternate between direct and buffered writes (`QUIVER_WAL_KILL9_DIRECT`), so a
/// log written one way is recovered and continued the other way too.
fn options(direct: bool) -> WalOptions {
    WalOptions::default().segment_bytes(1 << 20).direct_io(direct)
}

/// The child: appends forever from several threads, printing `ack LSN WRITER SEQ` once each
/// append returns. Runs only when the parent sets the environment variable.
#[test]
fn kill9_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let start: u64 = std::env::var("QUIVER_WAL_KILL9_START").unwrap().parse().unwrap();
    let direct = std::env::var("QUIVER_WAL_KILL9_DIRECT").unwrap() == "1";
    let wal = Arc::new(Wal::open(&dir, options(direct)).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (wal, out) = (Arc::clone(&wal), Arc::clone(&out));
            std::thread::spawn(move || {
                for seq in start.. {
                    let lsn = wal.append(w as u8, &record(w, seq)).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {lsn} {w} {seq}").unwrap();
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
fn every_acknowledged_record_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37);
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for round in 0..5u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_child_process", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir_s)
            .env("QUIVER_WAL_KILL9_START", (round * 1_000_000).to_string())
            .env("QUIVER_WAL_KILL9_DIRECT", if round % 2 == 0 { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_ack, acked_once) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut signalled = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !signalled && line.starts_with("ack ") {
                    let _ = first_ack.send(());
                    signalled = true;
                }
                lines.push(line);
            }
            lines
        });
        // The kill lands at a random point once the child is writing: a loaded machine may take
        // longer than the whole random delay just to start it (CI saw a round with no ack).
        let started = acked_once.recv_timeout(Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(rng.random_range(50..450)));
        child.kill().unwrap(); // SIGKILL
        assert!(started.is_ok(), "round {round}: the child wrote nothing in two minutes");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = acked.len();
        for line in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            // A line cut by the kill has fewer fields; an acknowledgement is only counted whole.
            if f.len() == 4 && f[0] == "ack" {
                let lsn = f[1].parse().unwrap();
                acked.insert(lsn, (f[2].parse().unwrap(), f[3].parse().unwrap()));
            }
        }
        assert!(
            acked.len() > before,
            "round {round}: the child acknowledged nothing before the kill"
        );

        let wal = Wal::open(&dir_s, options(round % 2 == 1)).unwrap();
        let (records, next) = common::read_all(&wal);
        assert_eq!(records.first().map(|r| r.0), Some(1));
        assert_eq!(records.len() as u64, next - 1);
        let by_lsn: BTreeMap<u64, &(u64, u8, Vec<u8>)> = records.iter().map(|r| (r.0, r)).collect();
        for (lsn, (w, seq)) in &acked {
            let r = by_lsn
                .get(lsn)
                .unwrap_or_else(|| panic!("round {round}: acknowledged LSN {lsn} lost"));
            assert_eq!(
                (u64::from(r.1), &r.2),
                (*w, &record(*w, *seq)),
                "round {round}: LSN {lsn} differs"
            );
        }
        for (lsn, kind, p) in &records {
            let w = u64::from_le_bytes(p[..8].try_into().unwrap());
            let seq = u64::from_le_bytes(p[8..16].try_into().unwrap());
            assert!(
                u64::from(*kind) == w && *p == record(w, seq),
                "LSN {lsn} is not a record any writer sent"
            );
        }
        eprintln!(
            "round {round}: {} acknowledged so far, log holds {} records",
            acked.len(),
            records.len()
        );
        wal.close().unwrap();
    }
}
