//! The manifest is the engine's single point of truth, so a crash at any moment of a commit must
//! leave either the old manifest or the new one — never a mix, never nothing when there was
//! something, never garbage — and a commit that returned `Ok` must survive. Damage to a committed
//! manifest must be reported, never read as a different manifest. A failed commit poisons the store.

use std::path::Path;
use std::sync::Arc;

use quiver_engine::ManifestError;
use quiver_engine::internals::{MANIFEST_FILE, MANIFEST_TMP, ManifestStore};
use quiver_vfs::Vfs;
use quiver_vfs::sim::{CrashMode, Fault, OpKind, SimVfs};

const DIR: &str = "/db";

fn store(vfs: &SimVfs) -> (ManifestStore, Option<(u64, Vec<u8>)>) {
    ManifestStore::open(Arc::new(vfs.clone()), Path::new(DIR)).unwrap()
}

fn fresh() -> SimVfs {
    let vfs = SimVfs::new();
    vfs.create_dir_all(Path::new(DIR)).unwrap();
    vfs
}

#[test]
fn commits_round_trip_with_increasing_versions() {
    let vfs = fresh();
    let (mut s, current) = store(&vfs);
    assert!(current.is_none());
    assert_eq!(s.commit(b"one").unwrap(), 1);
    assert_eq!(s.commit(b"two").unwrap(), 2);
    vfs.crash(CrashMode::DropAll);
    let (s, current) = store(&vfs);
    assert_eq!(current, Some((2, b"two".to_vec())));
    assert_eq!(s.version(), 2);
}

#[test]
fn a_crash_at_any_point_of_a_commit_leaves_the_old_or_the_new_manifest() {
    // Count the operations of: open, commit A, commit B.
    let probe = fresh();
    let base = probe.op_count();
    let (mut s, _) = store(&probe);
    s.commit(b"A").unwrap();
    s.commit(b"B-longer-body").unwrap();
    let ops = probe.op_count() - base;
    assert!(ops >= 8);
    let mut saw = std::collections::BTreeSet::new();
    for at in 0..=ops {
        for mode in [
            CrashMode::KeepAll,
            CrashMode::DropAll,
            CrashMode::Random(at),
            CrashMode::Random(at + 1000),
        ] {
            let vfs = fresh();
            vfs.inject(None, at, Fault::Crash);
            let mut acked = None;
            if let Ok((mut s, _)) = ManifestStore::open(Arc::new(vfs.clone()), Path::new(DIR))
                && s.commit(b"A").is_ok()
            {
                acked = Some(1);
                if s.commit(b"B-longer-body").is_ok() {
                    acked = Some(2);
                }
            }
            vfs.crash(mode);
            let (s, current) = store(&vfs);
            let got = current.as_ref().map(|(v, b)| (*v, String::from_utf8(b.clone()).unwrap()));
            match (&got, acked) {
                (None, None) | (Some((1, _)), None | Some(1)) | (Some((2, _)), _) => {}
                _ => {
                    panic!("crash at op {at} ({mode:?}): acknowledged {acked:?}, recovered {got:?}")
                }
            }
            if let Some((v, body)) = &got {
                assert_eq!(body, if *v == 1 { "A" } else { "B-longer-body" });
            }
            assert!(
                !vfs.exists(&Path::new(DIR).join(MANIFEST_TMP)).unwrap(),
                "leftover temporary file not removed"
            );
            assert_eq!(s.version(), got.as_ref().map_or(0, |g| g.0));
            saw.insert(got.map(|g| g.0));
        }
    }
    assert_eq!(
        saw.len(),
        3,
        "the sweep should see no manifest, the old one and the new one: {saw:?}"
    );
}

#[test]
fn every_bit_flip_of_a_manifest_is_reported_as_corruption() {
    let vfs = fresh();
    let (mut s, _) = store(&vfs);
    s.commit(br#"{"collections":{"a":{"dim":128}},"wal_checkpoint":42}"#).unwrap();
    let path = Path::new(DIR).join(MANIFEST_FILE);
    let bits = vfs.durable_contents(&path).unwrap().len() as u64 * 8;
    for bit in 0..bits {
        let copy = vfs.snapshot();
        copy.flip_bit(&path, bit).unwrap();
        match ManifestStore::open(Arc::new(copy), Path::new(DIR)) {
            Err(ManifestError::Corrupt { .. }) => {}
            other => panic!("bit {bit}: {other:?}"),
        }
    }
}

#[test]
fn a_failed_commit_poisons_the_store_until_reopened() {
    let vfs = fresh();
    let (mut s, _) = store(&vfs);
    s.commit(b"A").unwrap();
    vfs.inject(Some(OpKind::SyncDir), 0, Fault::Eio);
    assert!(matches!(s.commit(b"B"), Err(ManifestError::Io { .. })));
    assert!(matches!(s.commit(b"C"), Err(ManifestError::Poisoned)));
    // The rename happened; the directory sync did not. Either version is a valid outcome.
    let (mut s, current) = store(&vfs);
    let v = current.unwrap().0;
    assert!(v == 1 || v == 2);
    assert_eq!(s.commit(b"D").unwrap(), v + 1);
}

#[test]
fn a_commit_that_fails_before_its_rename_leaves_the_old_manifest_and_the_store_usable() {
    // A full disk while writing MANIFEST.tmp used to poison the store, so every later flush,
    // merge and index install failed until the database was reopened, even after space was
    // freed. Before the rename the old manifest provably stands.
    for (kind, fault) in [
        (OpKind::Create, Fault::Enospc),
        (OpKind::Write, Fault::Enospc),
        (OpKind::Sync, Fault::Eio),
    ] {
        let vfs = fresh();
        let (mut s, _) = store(&vfs);
        s.commit(b"A").unwrap();
        vfs.inject(Some(kind), 0, fault);
        assert!(matches!(s.commit(b"B"), Err(ManifestError::Io { .. })), "{kind:?}");
        assert!(!s.is_poisoned(), "{kind:?}: the old manifest stands");
        assert_eq!(store(&vfs).1.unwrap(), (1, b"A".to_vec()), "{kind:?}");
        assert_eq!(s.commit(b"C").unwrap(), 2, "{kind:?}: the next commit goes through");
        assert_eq!(store(&vfs).1.unwrap(), (2, b"C".to_vec()), "{kind:?}");
    }
    // If the temporary file cannot be removed, the store stays poisoned.
    let vfs = fresh();
    let (mut s, _) = store(&vfs);
    vfs.inject(Some(OpKind::Write), 0, Fault::Enospc);
    vfs.inject(Some(OpKind::Remove), 0, Fault::Eio);
    assert!(s.commit(b"B").is_err());
    assert!(s.is_poisoned());
    assert!(matches!(s.commit(b"C"), Err(ManifestError::Poisoned)));
}

/// A commit whose directory sync fails leaves a rename that may not be durable. A restart
/// without a crash reads the new manifest and builds on it, so opening must make that rename
/// durable before trusting it: the version a reopened store reports must survive a power cut.
#[test]
fn a_manifest_read_after_a_failed_directory_sync_survives_the_next_power_cut() {
    let vfs = fresh();
    let (mut s, _) = store(&vfs);
    s.commit(b"one").unwrap();
    vfs.inject(Some(OpKind::SyncDir), 0, Fault::Eio);
    assert!(s.commit(b"two").is_err(), "the directory sync failed");
    assert!(s.is_poisoned());
    drop(s);
    vfs.clear_faults();
    let (_, seen) = store(&vfs); // a clean restart: the rename is visible
    assert_eq!(seen, Some((2, b"two".to_vec())));
    vfs.power_off();
    vfs.crash(CrashMode::DropAll); // only what was synced survives
    let (_, after) = store(&vfs);
    assert_eq!(after, seen, "the manifest a restart read reverted at a power cut");
}
