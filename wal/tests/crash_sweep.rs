//! Exhaustive crash sweep: a fixed small workload (appends that rotate segments, a compressed
//! record, an explicit sync, a checkpoint) is run once per state-changing I/O operation, with the
//! power cut at exactly that operation, and each crash is resolved five ways (every unsynced write
//! kept, none kept, three seeded mixes of kept, dropped and torn). Pins down crash points where
//! recovery loses an acknowledged record, returns something never submitted, or mistakes the
//! remains of a crash for corruption.

mod common;

use std::sync::Arc;

use common::{Expect, open_clean, payload};
use quiver_wal::vfs::sim::{CrashMode, Fault, SimVfs};
use quiver_wal::{Compression, Wal, WalOptions};

const DIR: &str = "/wal";

fn options(vfs: &SimVfs, direct: bool) -> WalOptions {
    WalOptions::default()
        .direct_io(direct)
        .vfs(Arc::new(vfs.clone()))
        .segment_bytes(4096)
        .compression(Compression::Zstd { level: 1 })
        .compress_min_bytes(4000)
}

/// Runs the workload until the first error; returns what was submitted and acknowledged.
fn workload(vfs: &SimVfs, direct: bool) -> Expect {
    let mut expect = Expect::default();
    let Ok(wal) = Wal::open(DIR, options(vfs, direct)) else { return expect };
    let sizes = [10usize, 1500, 3000, 0, 700, 5000, 64, 2500, 900, 40, 1800, 3100];
    for (i, &len) in sizes.iter().enumerate() {
        let p = payload(i as u64, len);
        let Ok(pending) = wal.submit((i % 3) as u8, &p) else { break };
        expect.submitted.insert(pending.lsn(), ((i % 3) as u8, p));
        match pending.wait() {
            Ok(lsn) => {
                expect.acked.insert(lsn);
            }
            Err(_) => break,
        }
        if i == 5 && wal.sync().is_err() {
            break;
        }
        if i == 8 {
            expect.floor = 6;
            if wal.truncate_before(6).is_err() {
                break;
            }
        }
    }
    drop(wal);
    expect
}

#[test]
fn a_power_cut_at_every_io_operation_loses_no_acknowledged_record() {
    // Direct I/O (each group rewrites the block the last one ended in) and buffered writes.
    for direct in [true, false] {
        power_cut_at_every_operation(direct);
    }
}

fn power_cut_at_every_operation(direct: bool) {
    let clean = SimVfs::new();
    let expect = workload(&clean, direct);
    assert_eq!(expect.acked.len(), 12, "the workload completes without faults");
    let ops = clean.op_count();
    assert!(ops > 30, "the workload should exercise many operations, saw {ops}");
    let modes = [
        CrashMode::KeepAll,
        CrashMode::DropAll,
        CrashMode::Random(1),
        CrashMode::Random(2),
        CrashMode::Random(3),
    ];
    let mut recovered_counts = std::collections::BTreeSet::new();
    for at in 0..=ops {
        for mode in modes {
            let vfs = SimVfs::new();
            vfs.inject(None, at, Fault::Crash);
            let mut expect = workload(&vfs, direct);
            vfs.crash(mode);
            let wal = open_clean(DIR, options(&vfs, direct));
            let contents = expect.check(&wal);
            drop(wal);
            let again = open_clean(DIR, options(&vfs, direct));
            assert_eq!(
                common::read_all(&again),
                contents,
                "crash at op {at} ({mode:?}, direct {direct}): recovery not repeatable"
            );
            // The log keeps working after recovery.
            expect.forget_from(contents.1);
            let lsn = again.append(9, b"after the crash").unwrap();
            assert_eq!(lsn, contents.1);
            recovered_counts.insert(contents.0.len());
        }
    }
    assert!(
        recovered_counts.len() > 5,
        "crash points should leave logs of many lengths: {recovered_counts:?}"
    );
}
