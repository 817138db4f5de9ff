//! A truncated log must not pass for a torn one. Segments reserve their space when created and
//! record the reservation in their header, and the log shortens its active segment only at a
//! record boundary, so a last segment that is shorter than its reservation and ends inside a
//! record was cut by something other than a crash — and the records cut may have been
//! acknowledged. Before this was pinned down, cutting the last segment one byte into its last
//! record made recovery log "cutting a torn tail" and drop an acknowledged write. These tests
//! also pin down that scanning the log repairs nothing: a caller that refuses to open after the
//! scan finds the files exactly as they were.

mod common;

use std::path::{Path, PathBuf};

use common::payload;
use quiver_wal::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, align_up, segment_name};
use quiver_wal::{OpenError, Wal, WalOptions};

const SEGMENT: u64 = 64 << 10;

/// A closed log of `sizes.len()` records in one segment; returns the segment's path and each
/// record's offset.
fn write_log(dir: &Path, sizes: &[usize]) -> (PathBuf, Vec<usize>) {
    let wal = Wal::open(dir, WalOptions::default().segment_bytes(SEGMENT)).unwrap();
    let mut offsets = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    for (i, &n) in sizes.iter().enumerate() {
        assert_eq!(wal.append(1, &payload(i as u64, n)).unwrap(), i as u64 + 1);
        offsets.push(off);
        off += align_up(RECORD_HEADER_LEN + n);
    }
    wal.close().unwrap();
    let path = dir.join(segment_name(1));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT, "the segment is reserved whole");
    (path, offsets)
}

fn payloads_of(wal: &Wal) -> Vec<Vec<u8>> {
    wal.replay(wal.first_lsn()).unwrap().map(|r| r.unwrap().payload).collect()
}

#[test]
fn a_last_segment_truncated_inside_its_last_record_is_refused_untouched_until_cut_by_choice() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = write_log(dir.path(), &[300, 500, 700]);
    let cut = offsets[2] + 1;
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(cut as u64).unwrap();
    drop(file);
    let before = std::fs::read(&path).unwrap();

    for _ in 0..2 {
        match Wal::open(dir.path(), WalOptions::default().segment_bytes(SEGMENT)) {
            Err(OpenError::Truncated { segment, offset, lsn, len, reserved }) => {
                assert_eq!(segment, path);
                assert_eq!(
                    (offset, lsn, len, reserved),
                    (offsets[2] as u64, 3, cut as u64, SEGMENT)
                );
            }
            other => panic!("a truncated segment must be refused, got {other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "a refused open changes nothing");
    }
    // A changed segment size does not change the verdict: the header holds the reservation.
    let err = Wal::open(dir.path(), WalOptions::default().segment_bytes(4096)).unwrap_err();
    assert!(matches!(err, OpenError::Truncated { lsn: 3, .. }), "{err}");
    assert!(err.to_string().contains("LSN 3"), "the message names the LSNs at stake: {err}");

    let opts = WalOptions::default().segment_bytes(SEGMENT).cut_truncated_tail(true);
    let wal = Wal::open(dir.path(), opts).unwrap();
    assert!(wal.recovery().truncated_tail_cut);
    assert_eq!(wal.next_lsn(), 3);
    assert_eq!(payloads_of(&wal), vec![payload(0, 300), payload(1, 500)]);
    assert_eq!(wal.append(1, b"after").unwrap(), 3);
    wal.close().unwrap();
    // Cut and reserved again: an ordinary log from here on.
    let wal = Wal::open(dir.path(), WalOptions::default().segment_bytes(SEGMENT)).unwrap();
    assert_eq!(wal.next_lsn(), 4);
    assert!(!wal.recovery().truncated_tail_cut);
}

#[test]
fn scanning_repairs_nothing_and_opening_makes_the_repairs_it_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = write_log(dir.path(), &[300, 2000]);
    // Record 2's header never reached the disk (a lost write), its payload did: a torn tail.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[1]..offsets[1] + RECORD_HEADER_LEN].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let opts = || WalOptions::default().segment_bytes(SEGMENT);
    let scan = Wal::scan(dir.path(), opts()).unwrap();
    assert_eq!((scan.first_lsn(), scan.next_lsn()), (1, 2));
    assert!(scan.report().torn_bytes_cut > 0);
    assert!(!scan.is_new());
    drop(scan);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "a scan changes nothing");

    let wal = Wal::scan(dir.path(), opts()).unwrap().open().unwrap();
    assert_eq!(wal.recovery().torn_bytes_cut, SEGMENT - offsets[1] as u64);
    assert_eq!(payloads_of(&wal), vec![payload(0, 300)]);
    drop(wal);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SEGMENT, "cut, then reserved again");

    // A directory that does not exist is a new log, and scanning it creates nothing.
    let missing = dir.path().join("absent");
    let scan = Wal::scan(&missing, opts()).unwrap();
    assert!(scan.is_new() && scan.next_lsn() == 1);
    assert!(!missing.exists());
}

#[test]
fn a_deleted_newest_segment_is_corruption_not_the_end_of_the_log() {
    // The older segment was sealed once the newer one was durable; without the seal, the log
    // opened as if it ended there, and every record of the deleted segment was gone unnoticed.
    let dir = tempfile::tempdir().unwrap();
    let opts = || WalOptions::default().segment_bytes(8192);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    for i in 0..40u64 {
        wal.append(1, &payload(i, 1000)).unwrap();
    }
    assert!(wal.segment_count() >= 3);
    wal.close().unwrap();
    let mut segments: Vec<PathBuf> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    std::fs::remove_file(segments.last().unwrap()).unwrap();
    match Wal::open(dir.path(), opts()) {
        Err(OpenError::Corrupt { segment, reason, .. }) => {
            assert_eq!(&segment, &segments[segments.len() - 2]);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("a deleted newest segment must be reported, got {other:?}"),
    }
    // Deleting every segment but the first: the same.
    for s in &segments[1..segments.len() - 1] {
        std::fs::remove_file(s).unwrap();
    }
    assert!(matches!(Wal::open(dir.path(), opts()), Err(OpenError::Corrupt { .. })));
}
