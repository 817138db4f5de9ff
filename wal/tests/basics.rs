//! The log's everyday contract, on the real and the simulated file system: what is appended comes
//! back byte for byte and in order (compressed or not, across segment rotations and checkpoints),
//! concurrent appenders all get distinct LSNs, and a failed `fdatasync` is never papered over —
//! the writer refuses further work until reopened.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::payload;
use quiver_wal::vfs::sim::{CrashMode, Fault, OpKind, SimVfs};
use quiver_wal::{AppendError, Compression, ReadError, SyncPolicy, Wal, WalOptions};

fn all(wal: &Wal, from: u64) -> Vec<(u64, u8, Vec<u8>)> {
    wal.replay(from).unwrap().map(|r| r.map(|r| (r.lsn, r.kind, r.payload)).unwrap()).collect()
}

#[test]
fn records_round_trip_across_rotation_and_reopen_on_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || WalOptions::default().segment_bytes(8192);
    let mut expected = Vec::new();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        for i in 0..60u64 {
            let p = payload(i, (i as usize * 97) % 3000);
            let lsn = wal.append((i % 5) as u8, &p).unwrap();
            assert_eq!(lsn, i + 1);
            expected.push((lsn, (i % 5) as u8, p));
        }
        assert!(wal.segment_count() > 5, "segments should rotate at 8 KiB");
        assert_eq!(all(&wal, 1), expected);
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.recovery().records, 60);
    assert_eq!(wal.next_lsn(), 61);
    assert_eq!(all(&wal, 1), expected);
    assert_eq!(all(&wal, 37), expected[36..].to_vec());
}

#[test]
fn reserved_segment_space_is_neither_a_torn_tail_nor_kept_in_sealed_segments() {
    // Segments are allocated whole when created; the zeros past the last record must not be
    // taken for a torn write at every open, and must not stay in a sealed segment, where
    // recovery accepts no unwritten space at all.
    let segment = 8192u64;
    let dir = tempfile::tempdir().unwrap();
    let opts = || WalOptions::default().segment_bytes(segment);
    let mut expected = Vec::new();
    for round in 0..3u64 {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(wal.recovery().torn_bytes_cut, 0, "round {round}: reserved zeros are no tear");
        assert_eq!(all(&wal, 1), expected, "round {round}");
        for i in 0..5u64 {
            let p = payload(round * 10 + i, 700);
            let lsn = wal.append(1, &p).unwrap();
            expected.push((lsn, 1, p));
        }
        drop(wal);
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    names.sort();
    assert!(names.len() >= 2, "15 records of 700 bytes rotate 8 KiB segments");
    let (active, sealed) = names.split_last().unwrap();
    for path in sealed {
        let bytes = std::fs::read(path).unwrap();
        let zeros = bytes.iter().rev().take_while(|&&b| b == 0).count();
        assert!(zeros < 8, "{}: {zeros} trailing zeros kept after sealing", path.display());
        assert!((bytes.len() as u64) < segment, "{} was not cut", path.display());
    }
    // Linux file systems that reserve space (ext4, xfs, tmpfs) leave the active segment whole.
    let len = std::fs::metadata(active).unwrap().len();
    assert!(len >= segment, "the active segment is {len} bytes, not reserved to {segment}");
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let vfs = SimVfs::new();
    let wal =
        Wal::open("/wal", WalOptions::default().vfs(Arc::new(vfs.clone())).segment_bytes(4096))
            .unwrap();
    let big = payload(1, 20_000);
    wal.append(1, b"small").unwrap();
    wal.append(2, &big).unwrap();
    wal.append(3, b"after").unwrap();
    let got = all(&wal, 1);
    assert_eq!(got[1].2, big);
    assert_eq!(wal.segment_count(), 3);
}

#[test]
fn compressed_records_round_trip_and_incompressible_ones_are_stored_raw() {
    let vfs = SimVfs::new();
    let opts = || {
        WalOptions::default().vfs(Arc::new(vfs.clone())).compression(Compression::Zstd { level: 1 })
    };
    let wal = Wal::open("/wal", opts()).unwrap();
    let compressible = vec![42u8; 100_000];
    let mut noise = vec![0u8; 10_000];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    wal.append(1, &compressible).unwrap();
    wal.append(2, &noise).unwrap();
    wal.append(3, b"tiny").unwrap();
    wal.close().unwrap();
    // What the records take: a segment's reserved space past them is zeros, not log.
    let size: usize = vfs
        .files()
        .iter()
        .map(|f| {
            let bytes = vfs.durable_contents(f).unwrap();
            bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
        })
        .sum();
    assert!(size < 30_000, "the 100 kB run of one byte should compress (log is {size} bytes)");
    let wal = Wal::open("/wal", opts()).unwrap();
    let got = all(&wal, 1);
    assert_eq!(got[0].2, compressible);
    assert_eq!(got[1].2, noise);
    assert_eq!(got[2].2, b"tiny");
}

#[test]
fn concurrent_appenders_get_distinct_lsns_and_every_record_survives() {
    let dir = tempfile::tempdir().unwrap();
    let wal =
        Arc::new(Wal::open(dir.path(), WalOptions::default().segment_bytes(64 << 10)).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| {
                        (
                            wal.append(t as u8, &payload(t * 1000 + i, 100 + i as usize)).unwrap(),
                            t * 1000 + i,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    acked.sort_unstable();
    assert_eq!(acked.iter().map(|a| a.0).collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>());
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default().segment_bytes(64 << 10)).unwrap();
    for ((lsn, kind, p), (acked_lsn, id)) in all(&wal, 1).into_iter().zip(&acked) {
        assert_eq!(lsn, *acked_lsn);
        assert_eq!(u64::from(kind), id / 1000);
        assert_eq!(p, payload(*id, 100 + (id % 1000) as usize));
    }
}

#[test]
fn a_failed_fdatasync_poisons_the_log_and_the_record_is_not_acknowledged() {
    let vfs = SimVfs::new();
    let opts = || WalOptions::default().vfs(Arc::new(vfs.clone()));
    let wal = Wal::open("/wal", opts()).unwrap();
    wal.append(1, b"one").unwrap();
    vfs.inject(Some(OpKind::Sync), 0, Fault::Eio);
    assert!(matches!(wal.append(1, b"two"), Err(AppendError::Failed(_))));
    // The sync would now succeed, but the log must not trust it: refuse until reopened.
    assert!(matches!(wal.append(1, b"three"), Err(AppendError::Failed(_))));
    assert!(matches!(wal.sync(), Err(AppendError::Failed(_))));
    assert!(wal.truncate_before(1).is_err());
    assert!(wal.close().is_err());
    let wal = Wal::open("/wal", opts()).unwrap();
    let got = all(&wal, 1);
    assert_eq!(got[0].2, b"one");
    assert!(got.len() <= 2, "only what was submitted can come back");
    let lsn = wal.append(1, b"four").unwrap();
    assert_eq!(all(&wal, lsn)[0].2, b"four");
}

#[test]
fn enospc_and_short_writes_are_errors_to_the_appender_never_silent_loss() {
    for faults in [&[Fault::Enospc][..], &[Fault::ShortWrite, Fault::Enospc]] {
        let vfs = SimVfs::new();
        let opts = || WalOptions::default().vfs(Arc::new(vfs.clone()));
        let wal = Wal::open("/wal", opts()).unwrap();
        wal.append(1, b"kept").unwrap();
        // Each rule hits the next write: the short write, then its continuation.
        for f in faults {
            vfs.inject(Some(OpKind::Write), 0, *f);
        }
        let err = wal.append(1, &payload(9, 5000)).unwrap_err();
        assert!(
            matches!(err, AppendError::Failed(ref e) if e.raw_os_error() == Some(28)),
            "{err:?}"
        );
        drop(wal);
        vfs.crash(CrashMode::KeepAll);
        let wal = Wal::open("/wal", opts()).unwrap();
        let got = all(&wal, 1);
        assert_eq!(got.len(), 1, "the half-written record is a torn tail, cut at open");
        assert_eq!(wal.recovery().torn_bytes_cut > 0, faults.len() == 2);
    }
}

#[test]
fn a_short_write_alone_is_retried_and_loses_nothing() {
    // Buffered, and direct (where a write is cut at a block boundary, so the record spans
    // three blocks to be cut at all).
    for direct in [false, true] {
        let vfs = SimVfs::new();
        let opts = WalOptions::default().vfs(Arc::new(vfs.clone())).direct_io(direct);
        let wal = Wal::open("/wal", opts).unwrap();
        assert_eq!(wal.stats().direct_io, direct);
        vfs.inject(Some(OpKind::Write), 0, Fault::ShortWrite);
        wal.append(1, &payload(1, 10_000)).unwrap();
        assert_eq!(all(&wal, 1)[0].2, payload(1, 10_000), "direct: {direct}");
    }
}

#[test]
fn truncate_before_drops_whole_old_segments_durably_and_replay_refuses_dropped_lsns() {
    let vfs = SimVfs::new();
    let opts = || WalOptions::default().vfs(Arc::new(vfs.clone())).segment_bytes(4096);
    let wal = Wal::open("/wal", opts()).unwrap();
    for i in 0..40 {
        wal.append(0, &payload(i, 500)).unwrap();
    }
    let before = wal.segment_count();
    let removed = wal.truncate_before(25).unwrap();
    assert!(removed > 0 && wal.segment_count() == before - removed);
    let first = wal.first_lsn();
    assert!(first <= 25 && first > 1);
    assert!(
        matches!(wal.replay(1), Err(ReadError::Truncated { requested: 1, first: f }) if f == first)
    );
    wal.truncate_before(u64::MAX).unwrap();
    assert_eq!(wal.segment_count(), 1);
    drop(wal);
    vfs.crash(CrashMode::DropAll);
    let wal = Wal::open("/wal", opts()).unwrap();
    assert_eq!(wal.segment_count(), 1, "the active segment is never dropped");
    assert_eq!(wal.next_lsn(), 41);
    let got = all(&wal, wal.first_lsn());
    assert_eq!(got.last().unwrap().0, 40);
}

#[test]
fn pending_is_a_future_that_completes_when_durable() {
    let vfs = SimVfs::new();
    let wal = Wal::open("/wal", WalOptions::default().vfs(Arc::new(vfs))).unwrap();
    let pending: Vec<_> = (0..10).map(|i| wal.submit(1, &payload(i, 10)).unwrap()).collect();
    let lsns: Vec<u64> = pending.into_iter().map(block_on).collect::<Result<_, _>>().unwrap();
    assert_eq!(lsns, (1..=10).collect::<Vec<_>>());
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn non_default_sync_policies_still_make_records_durable_at_sync_and_close() {
    for policy in [SyncPolicy::Never, SyncPolicy::Interval(std::time::Duration::from_secs(3600))] {
        let vfs = SimVfs::new();
        let opts = || WalOptions::default().vfs(Arc::new(vfs.clone())).sync(policy);
        let wal = Wal::open("/wal", opts()).unwrap();
        wal.append(1, b"a").unwrap();
        assert_eq!(wal.durable_lsn(), 0, "{policy:?} acknowledges before syncing");
        assert_eq!(wal.sync().unwrap(), 1);
        wal.append(1, b"b").unwrap();
        wal.close().unwrap();
        vfs.crash(CrashMode::DropAll);
        let wal = Wal::open("/wal", opts()).unwrap();
        assert_eq!(all(&wal, 1).len(), 2);
    }
}

#[test]
fn oversized_records_and_bad_options_are_refused_up_front() {
    let vfs = SimVfs::new();
    let wal =
        Wal::open("/wal", WalOptions::default().vfs(Arc::new(vfs.clone())).max_record_bytes(100))
            .unwrap();
    assert!(matches!(wal.append(1, &[0; 101]), Err(AppendError::TooLarge { len: 101, max: 100 })));
    assert_eq!(wal.next_lsn(), 1);
    for bad in [
        WalOptions::default().segment_bytes(10),
        WalOptions::default().max_record_bytes(0),
        WalOptions::default().sync(SyncPolicy::Interval(std::time::Duration::ZERO)),
        WalOptions::default().compression(Compression::Zstd { level: 1000 }),
    ] {
        assert!(Wal::open(Path::new("/other"), bad.vfs(Arc::new(vfs.clone()))).is_err());
    }
}

/// `submit_owned` hands the payload buffer to the log, which pools it for the next `buffer()`.
/// A pooled buffer that kept old bytes would prefix them to the next record; this pins that down,
/// compressed and not, with a small record following a large one in a reused buffer.
#[test]
fn reused_payload_buffers_start_empty_and_owned_records_round_trip() {
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let vfs = SimVfs::new();
        let opts = || {
            WalOptions::default()
                .vfs(Arc::new(vfs.clone()))
                .compression(compression)
                .buffer_pool(2, 1 << 20)
        };
        let wal = Wal::open("/wal", opts()).unwrap();
        let mut want = Vec::new();
        for i in 0..20u64 {
            let mut buf = wal.buffer();
            assert!(buf.is_empty(), "a pooled buffer comes back cleared");
            let p = payload(i, if i % 2 == 0 { 200_000 } else { 7 });
            buf.extend_from_slice(&p);
            wal.submit_owned(1, buf).unwrap().wait().unwrap();
            want.push(p);
        }
        wal.close().unwrap();
        let wal = Wal::open("/wal", opts()).unwrap();
        let got: Vec<Vec<u8>> = all(&wal, 1).into_iter().map(|r| r.2).collect();
        assert_eq!(got, want, "{compression:?}");
    }
}

/// The counters monitoring reads (`Wal::stats`) must count what was written: every record and
/// payload byte once, at least one group and one sync per acknowledged append under
/// `EveryGroup`, and every sync in exactly one latency bucket.
#[test]
fn stats_count_every_record_byte_group_and_sync() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.stats().records, 0);
    let mut bytes = 0;
    for i in 0..40u64 {
        let p = payload(i, 100 + i as usize);
        bytes += p.len() as u64;
        wal.append(1, &p).unwrap();
    }
    let s = wal.stats();
    assert_eq!(s.records, 40);
    assert_eq!(s.bytes, bytes);
    assert!(s.groups >= 1 && s.groups <= 40, "{s:?}");
    assert!(s.syncs >= s.groups, "every group is synced under EveryGroup: {s:?}");
    assert_eq!(s.sync_buckets.iter().sum::<u64>(), s.syncs, "{s:?}");
    assert!(s.sync_seconds > 0.0);
    assert_eq!(s.queued_bytes, 0, "nothing waits once appends returned");
}

/// A payload logged as shared parts must come back as one record, byte for byte, compressed
/// or not, and an oversized one must be refused whole.
#[test]
fn a_payload_given_in_parts_is_one_record_compressed_or_not_and_an_oversized_one_is_refused() {
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let vfs = SimVfs::new();
        let opts = WalOptions::default()
            .vfs(Arc::new(vfs.clone()))
            .compression(compression)
            .max_record_bytes(50_000);
        let wal = Wal::open("/wal", opts).unwrap();
        let whole = [payload(3, 7), vec![0u8; 20_000], payload(4, 9_999)].concat();
        let parts = vec![
            bytes::Bytes::copy_from_slice(&whole[..7]),
            bytes::Bytes::new(),
            bytes::Bytes::copy_from_slice(&whole[7..20_007]),
            bytes::Bytes::copy_from_slice(&whole[20_007..]),
        ];
        let lsn = wal.submit_parts(2, parts).unwrap().wait().unwrap();
        let too_big =
            vec![bytes::Bytes::from(vec![1u8; 30_000]), bytes::Bytes::from(vec![2u8; 30_000])];
        assert!(matches!(
            wal.submit_parts(2, too_big),
            Err(AppendError::TooLarge { len: 60_000, max: 50_000 })
        ));
        let got = all(&wal, 1);
        assert_eq!(got.len(), 1, "{compression:?}");
        assert_eq!((got[0].0, got[0].1, &got[0].2), (lsn, 2, &whole), "{compression:?}");
    }
}
