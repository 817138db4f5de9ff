//! What every durability test checks after recovery, in one place.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use quiver_wal::{OpenError, Wal, WalOptions};

/// Every record a log holds: (LSN, kind, payload), and its next LSN.
pub type Contents = (Vec<(u64, u8, Vec<u8>)>, u64);

/// Reads every record of an open log.
pub fn read_all(wal: &Wal) -> Contents {
    let records = wal
        .replay(wal.first_lsn())
        .expect("replay from the first LSN")
        .map(|r| {
            r.map(|r| (r.lsn, r.kind, r.payload))
                .expect("a record that verified at open verifies again")
        })
        .collect();
    (records, wal.next_lsn())
}

/// What a test submitted and what the log acknowledged.
#[derive(Default, Debug)]
pub struct Expect {
    /// What each assigned LSN was submitted with (kind, payload).
    pub submitted: BTreeMap<u64, (u8, Vec<u8>)>,
    pub acked: BTreeSet<u64>,
    /// Records below this LSN may have been dropped by a checkpoint.
    pub floor: u64,
}

impl Expect {
    /// Checks an opened log against what was submitted and acknowledged: recovered LSNs are
    /// contiguous, every recovered record is exactly what was submitted under its LSN, and every
    /// acknowledged record at or above the checkpoint floor is present. Returns the contents.
    pub fn check(&self, wal: &Wal) -> Contents {
        let first = wal.first_lsn();
        let (records, next) = read_all(wal);
        let lsns: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(lsns, (first..next).collect::<Vec<_>>(), "recovered LSNs must be contiguous");
        assert!(
            first <= self.floor.max(1),
            "checkpoint at {} dropped records from {first}",
            self.floor
        );
        for (lsn, kind, p) in &records {
            let (k, sp) = self
                .submitted
                .get(lsn)
                .unwrap_or_else(|| panic!("LSN {lsn} recovered but never submitted"));
            assert!(k == kind && sp == p, "LSN {lsn} recovered with different contents");
        }
        for lsn in self.acked.range(self.floor..) {
            assert!(
                *lsn < next && *lsn >= first,
                "acknowledged LSN {lsn} lost (log holds {first}..{next})"
            );
        }
        (records, next)
    }

    /// After recovery to `next`, LSNs from `next` on will be given out again.
    pub fn forget_from(&mut self, next: u64) {
        self.submitted.retain(|lsn, _| *lsn < next);
        self.acked.retain(|lsn| *lsn < next);
    }
}

/// Opens, panicking with the error if recovery reports anything (crashes must never look like
/// corruption).
pub fn open_clean(dir: &str, opts: WalOptions) -> Wal {
    match Wal::open(dir, opts) {
        Ok(w) => w,
        Err(e @ OpenError::Corrupt { .. }) => panic!("a crash was reported as corruption: {e}"),
        Err(e) => panic!("open failed: {e}"),
    }
}

/// A payload that is recognisably this (seed, len), compressible, and never all zeros.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((seed as usize).wrapping_mul(131) ^ (j / 16)) as u8 | 1).collect()
}
