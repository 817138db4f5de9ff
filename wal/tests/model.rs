//! Model-based durability suite: random sequences of appends (from several writer threads at once),
//! syncs, power cuts (unsynced writes kept, dropped or torn per sector), clean reopens, injected
//! faults (EIO, ENOSPC, short writes, a power cut at a chosen operation) and checkpoints, run against
//! the simulated file system. After every reopen it pins down the failures a log must never have:
//! an acknowledged record missing, a recovered record that was never submitted or differs from what
//! was, a gap in the recovered LSNs, a crash mistaken for corruption, and a recovery that gives a
//! different answer the second time.
//!
//! Cases default to 32 (sized for CI); set `QUIVER_WAL_MODEL_CASES` for long runs, e.g.
//! `QUIVER_WAL_MODEL_CASES=5000 cargo test --release -p quiver-wal --test model`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use quiver_wal::vfs::sim::{CrashMode, Fault, OpKind, SimVfs};
use quiver_wal::{Compression, OpenError, Wal, WalOptions};

const DIR: &str = "/db/wal";

#[derive(Clone, Debug)]
enum Transition {
    /// Records (writer id, payload length) submitted by one thread per writer, concurrently.
    Append(Vec<(u8, u16)>),
    Sync,
    Crash(u64),
    Reopen,
    Fault {
        kind: Option<OpKind>,
        skip: u8,
        fault: Fault,
    },
    /// Checkpoint at this fraction (percent) of the way from the last checkpoint to the next LSN.
    Checkpoint(u8),
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
            Just(Some(OpKind::SyncDir)),
            Just(Some(OpKind::Remove)),
            Just(Some(OpKind::SetLen)),
        ];
        let fault = prop_oneof![
            Just(Fault::Eio),
            Just(Fault::Enospc),
            Just(Fault::ShortWrite),
            Just(Fault::Crash)
        ];
        prop_oneof![
            8 => proptest::collection::vec((0u8..3, 0u16..3000), 1..8).prop_map(Transition::Append),
            1 => Just(Transition::Sync),
            2 => any::<u64>().prop_map(Transition::Crash),
            1 => Just(Transition::Reopen),
            1 => (kind, 0u8..6, fault).prop_map(|(kind, skip, fault)| Transition::Fault { kind, skip, fault }),
            1 => (0u8..=100).prop_map(Transition::Checkpoint),
        ]
        .boxed()
    }

    fn apply(state: (), _: &Transition) {
        state
    }
}

struct Sut {
    vfs: SimVfs,
    wal: Option<Wal>,
    expect: common::Expect,
    counter: u64,
    compress: bool,
    /// Direct I/O (block-aligned group writes) or buffered writes.
    direct: bool,
}

fn options(vfs: &SimVfs, compress: bool, direct: bool) -> WalOptions {
    let o = WalOptions::default()
        .vfs(Arc::new(vfs.clone()))
        .segment_bytes(4096)
        .compress_min_bytes(64)
        .direct_io(direct);
    if compress { o.compression(Compression::Zstd { level: 1 }) } else { o }
}

use common::payload;

/// Submits `p` whole, or (for odd lengths) as up to three shared parts
/// ([`Wal::submit_parts`]): both paths must store the same record.
fn submit(wal: &Wal, writer: u8, p: &[u8]) -> Result<quiver_wal::Pending, quiver_wal::AppendError> {
    if p.len().is_multiple_of(2) {
        return wal.submit(writer, p);
    }
    let (a, rest) = p.split_at(p.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let parts = [a, b, c].iter().map(|x| bytes::Bytes::copy_from_slice(x)).collect();
    wal.submit_parts(writer, parts)
}

impl Sut {
    fn open(&mut self) -> Wal {
        if self.vfs.is_down() {
            self.vfs.crash(CrashMode::DropAll);
        }
        match Wal::open(DIR, options(&self.vfs, self.compress, self.direct)) {
            Ok(w) => w,
            Err(OpenError::Io { .. }) => {
                // An injected fault hit the open itself; that is allowed to fail. The next try
                // (faults cleared, machine up) must not.
                if self.vfs.is_down() {
                    self.vfs.crash(CrashMode::DropAll);
                }
                self.vfs.clear_faults();
                Wal::open(DIR, options(&self.vfs, self.compress, self.direct))
                    .expect("reopen with no faults armed")
            }
            Err(e) => panic!("recovery after crashes and faults reported: {e}"),
        }
    }

    fn wal(&mut self) -> &Wal {
        if self.wal.is_none() {
            let w = self.open();
            self.wal = Some(w);
        }
        self.wal.as_ref().expect("just opened")
    }

    /// Reopens and checks every invariant of recovery, twice.
    fn recover_and_check(&mut self) {
        let wal = self.open();
        let contents = self.expect.check(&wal);
        drop(wal);
        let again = self.open();
        assert_eq!(common::read_all(&again), contents, "recovery must be repeatable");
        self.expect.forget_from(contents.1);
        self.wal = Some(again);
    }
}

struct WalTest;

impl StateMachineTest for WalTest {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(_: &()) -> Sut {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let vfs = SimVfs::new();
        quiver_wal::vfs::Vfs::create_dir_all(&vfs, std::path::Path::new("/db")).unwrap();
        let (compress, direct) = (n % 2 == 1, n % 4 < 2);
        Sut { vfs, wal: None, expect: common::Expect::default(), counter: 0, compress, direct }
    }

    fn apply(mut sut: Sut, _: &(), t: Transition) -> Sut {
        match t {
            Transition::Append(records) => {
                let mut per_writer: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
                for (writer, len) in records {
                    sut.counter += 1;
                    per_writer.entry(writer).or_default().push(payload(sut.counter, len.into()));
                }
                let wal = sut.wal();
                let results: Vec<(u64, u8, Vec<u8>, bool)> = std::thread::scope(|s| {
                    let handles: Vec<_> = per_writer
                        .into_iter()
                        .map(|(writer, payloads)| {
                            s.spawn(move || {
                                let pending: Vec<_> = payloads
                                    .into_iter()
                                    .filter_map(|p| submit(wal, writer, &p).ok().map(|pd| (pd, p)))
                                    .collect();
                                pending
                                    .into_iter()
                                    .map(|(pd, p)| {
                                        let lsn = pd.lsn();
                                        (lsn, writer, p, pd.wait().is_ok())
                                    })
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
                });
                for (lsn, writer, p, acked) in results {
                    assert!(
                        sut.expect.submitted.insert(lsn, (writer, p)).is_none(),
                        "LSN {lsn} assigned twice"
                    );
                    if acked {
                        sut.expect.acked.insert(lsn);
                    }
                }
            }
            Transition::Sync => {
                let _ = sut.wal().sync();
            }
            Transition::Crash(seed) => {
                sut.vfs.power_off();
                sut.wal = None; // the flusher sees the machine down; nothing more reaches the disk
                sut.vfs.crash(CrashMode::Random(seed));
                sut.recover_and_check();
            }
            Transition::Reopen => {
                sut.wal = None;
                sut.recover_and_check();
            }
            Transition::Fault { kind, skip, fault } => sut.vfs.inject(kind, skip.into(), fault),
            Transition::Checkpoint(pct) => {
                let wal = sut.wal();
                let next = wal.next_lsn();
                let floor = sut.expect.floor;
                let at = floor + (next.saturating_sub(floor)) * u64::from(pct) / 100;
                let _ = sut.wal().truncate_before(at);
                sut.expect.floor = sut.expect.floor.max(at);
            }
        }
        sut
    }

    fn teardown(mut sut: Sut, _: ()) {
        sut.vfs.power_off();
        sut.wal = None;
        sut.vfs.crash(CrashMode::Random(sut.counter));
        sut.recover_and_check();
    }
}

fn cases() -> u32 {
    std::env::var("QUIVER_WAL_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

prop_state_machine! {
    #![proptest_config(Config { cases: cases(), failure_persistence: None, ..Config::default() })]
    #[test]
    fn wal_never_loses_an_acknowledged_record(sequential 1..40 => WalTest);
}
