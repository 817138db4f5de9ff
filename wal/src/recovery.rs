//! Scanning segments at open: find every whole record, tell a torn tail from corruption.
//!
//! The rule (argued in `docs/durability.md`): a record that does not verify is a *torn tail* — the
//! remains of a write that never completed, cut off — only if
//! 1. it is in the last segment (a segment is synced before the next one is created), and
//! 2. its damage looks like a lost write: part of it lies past the end of the file, or some
//!    sector-sized piece of it reads as all zeros (an unwritten sector; the log only appends to
//!    fresh space: past the end of the file, or space it reserved with zeros), and
//! 3. no later record that verifies says (in its durable-LSN field) that this record had been made
//!    durable.
//!
//! Anything else is corruption, reported with its segment, offset and LSN, and never skipped.
//!
//! One lost-write look-alike is not a crash's doing: a last segment that ends inside a record
//! while it is shorter than the space reserved for it at creation (recorded in its header). The
//! log only ever shortens its active segment at a record boundary (sealing, cutting a torn tail),
//! so such a file was truncated by something else, and the records at stake may have been
//! acknowledged. That is reported as [`Damage::Truncated`] and cut only when the caller opts in.
//!
//! A sealed segment may end in a seal (see [`crate::format::encode_seal`]) after its last record,
//! written once the next segment exists durably. On a segment that is not the newest, a seal,
//! or the remains of one cut short by a crash (at most [`SEAL_LEN`] bytes), is accepted. On the
//! newest segment a valid seal proves a newer segment existed and is gone: corruption, not the
//! end of the log.

use std::path::PathBuf;

use crate::format::{
    RECORD_ALIGN, RECORD_HEADER_LEN, RecordHeader, SEAL_LEN, SEGMENT_HEADER_LEN, SegmentHeader,
    SegmentHeaderError, decode_seal, decode_segment_header,
};

/// The granularity at which a lost write leaves zeros (the smallest sector size in use).
pub(crate) const TEAR_SECTOR: usize = 512;

/// What a segment scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SegmentScan {
    /// The header was never written (file shorter than a header, or all zeros): a segment whose
    /// creation was cut short. Only possible for the last segment.
    TornHeader,
    /// Whole records `first_lsn..next_lsn` occupy `..valid_len`; the bytes after it (if any) are a
    /// torn tail to cut.
    Records { next_lsn: u64, valid_len: u64, records: u64 },
}

/// A verification failure that is not a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corruption {
    pub(crate) offset: u64,
    pub(crate) lsn: u64,
    pub(crate) damage: Damage,
}

/// What kind of damage a [`Corruption`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Bytes that no crash of the log can leave.
    Corrupt(String),
    /// The last segment ends inside a record at `len` bytes, short of the `reserved` bytes it had
    /// since its creation: truncated by something other than a crash.
    Truncated { len: u64, reserved: u64 },
}

enum Bad {
    /// The damage looks like a lost write.
    LostWrite(&'static str),
    /// The record runs past the end of the file: a lost write, unless the file is shorter than
    /// its reservation.
    CutOff(&'static str),
    /// The damage cannot come from a lost write.
    Garbage(String),
}

pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether any sector-aligned piece of `bytes[start..end]` is all zeros.
fn has_zero_sector_piece(bytes: &[u8], start: usize, end: usize) -> bool {
    let mut pos = start;
    while pos < end {
        let piece_end = ((pos / TEAR_SECTOR + 1) * TEAR_SECTOR).min(end);
        if all_zero(&bytes[pos..piece_end]) {
            return true;
        }
        pos = piece_end;
    }
    false
}

/// Verifies the record at `off`, whose LSN should be `expected`.
fn check_record(bytes: &[u8], off: usize, expected: u64) -> Result<RecordHeader, Bad> {
    let len = bytes.len();
    if len - off < RECORD_HEADER_LEN {
        return Err(Bad::CutOff("record header cut off by the end of the file"));
    }
    let Some(h) = RecordHeader::decode(&bytes[off..off + RECORD_HEADER_LEN]) else {
        if has_zero_sector_piece(bytes, off, off + RECORD_HEADER_LEN) {
            return Err(Bad::LostWrite("record header not written"));
        }
        return Err(Bad::Garbage("record header fails its checksum".into()));
    };
    if h.lsn != expected {
        return Err(Bad::Garbage(format!(
            "record has LSN {} where {expected} was expected",
            h.lsn
        )));
    }
    let end = off + RECORD_HEADER_LEN + h.stored_len as usize;
    if end > len {
        return Err(Bad::CutOff("record payload cut off by the end of the file"));
    }
    if crc32c::crc32c(&bytes[off + RECORD_HEADER_LEN..end]) != h.payload_crc {
        if has_zero_sector_piece(bytes, off, end) {
            return Err(Bad::LostWrite("record payload partly not written"));
        }
        return Err(Bad::Garbage("record payload fails its checksum".into()));
    }
    Ok(h)
}

/// A later record that verifies and claims `lsn` was durable, if any (its offset).
fn durability_witness(bytes: &[u8], from: usize, lsn: u64) -> Option<usize> {
    let mut pos = from.next_multiple_of(RECORD_ALIGN);
    while pos + RECORD_HEADER_LEN <= bytes.len() {
        if let Some(h) = RecordHeader::decode(&bytes[pos..pos + RECORD_HEADER_LEN]) {
            let end = pos + RECORD_HEADER_LEN + h.stored_len as usize;
            if end <= bytes.len()
                && crc32c::crc32c(&bytes[pos + RECORD_HEADER_LEN..end]) == h.payload_crc
                && h.durable_lsn >= lsn
            {
                return Some(pos);
            }
        }
        pos += RECORD_ALIGN;
    }
    None
}

/// Scans one segment's bytes. `first_lsn` comes from the file name; `is_last` says whether a torn
/// tail is possible here; `cut_truncated` treats a truncated last segment as a torn tail (the
/// caller's explicit choice to lose the records at stake).
pub(crate) fn scan_segment(
    bytes: &[u8],
    first_lsn: u64,
    is_last: bool,
    cut_truncated: bool,
) -> Result<SegmentScan, Corruption> {
    let corrupt = |offset: usize, lsn: u64, reason: String| Corruption {
        offset: offset as u64,
        lsn,
        damage: Damage::Corrupt(reason),
    };
    // The last segment with no bytes past its header holds no records: if its header is missing,
    // cut short or unreadable, its creation was interrupted (a crash, or a short write before the
    // header was synced), and writing the header again loses nothing.
    let header_only = bytes.len() <= SEGMENT_HEADER_LEN || all_zero(&bytes[SEGMENT_HEADER_LEN..]);
    let decoded = bytes
        .get(..SEGMENT_HEADER_LEN)
        .map(|h| decode_segment_header(h.try_into().expect("a header's length")));
    if is_last && header_only && !matches!(decoded, Some(Ok(_))) {
        return Ok(SegmentScan::TornHeader);
    }
    let Some(decoded) = decoded else {
        return Err(corrupt(0, first_lsn, "segment header cut short".into()));
    };
    let reserved = match decoded {
        Ok(SegmentHeader { first_lsn: lsn, reserved }) if lsn == first_lsn => reserved,
        Ok(SegmentHeader { first_lsn: lsn, .. }) => {
            return Err(corrupt(
                0,
                first_lsn,
                format!("segment header says first LSN {lsn}, file name says {first_lsn}"),
            ));
        }
        Err(SegmentHeaderError::Version(v)) => {
            return Err(corrupt(
                0,
                first_lsn,
                format!("segment format version {v} is not supported"),
            ));
        }
        Err(e) => return Err(corrupt(0, first_lsn, format!("segment header invalid ({e:?})"))),
    };
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = first_lsn;
    let mut records = 0u64;
    while off < bytes.len() {
        let rest = &bytes[off..];
        if let Some(next) = decode_seal(rest) {
            if next != expected {
                return Err(corrupt(
                    off,
                    expected,
                    format!(
                        "the segment's seal names LSN {next} as next, its records end before {expected}"
                    ),
                ));
            }
            if is_last {
                return Err(corrupt(
                    off,
                    expected,
                    format!(
                        "the segment was sealed after a newer segment (first LSN {expected}) was made durable, and that segment is missing: records from LSN {expected} on are gone"
                    ),
                ));
            }
            return Ok(SegmentScan::Records { next_lsn: expected, valid_len: off as u64, records });
        }
        if !is_last && rest.len() <= SEAL_LEN {
            // A seal cut short by a crash: the next segment exists, so nothing is at stake.
            return Ok(SegmentScan::Records { next_lsn: expected, valid_len: off as u64, records });
        }
        match check_record(bytes, off, expected) {
            Ok(h) => {
                off += h.span();
                expected += 1;
                records += 1;
            }
            Err(Bad::Garbage(reason)) => return Err(corrupt(off, expected, reason)),
            Err(Bad::CutOff(_)) if is_last && (bytes.len() as u64) < reserved && !cut_truncated => {
                return Err(Corruption {
                    offset: off as u64,
                    lsn: expected,
                    damage: Damage::Truncated { len: bytes.len() as u64, reserved },
                });
            }
            Err(Bad::LostWrite(reason) | Bad::CutOff(reason)) => {
                if !is_last {
                    return Err(corrupt(
                        off,
                        expected,
                        format!("{reason}, in a segment that was sealed"),
                    ));
                }
                // Only zeros after it (space the log reserved and never wrote, or a lost write
                // at the very end): no record can witness anything.
                let witness = if all_zero(&bytes[off.min(bytes.len())..]) {
                    None
                } else {
                    durability_witness(bytes, off + RECORD_ALIGN, expected)
                };
                if let Some(w) = witness {
                    return Err(corrupt(
                        off,
                        expected,
                        format!(
                            "{reason}, but the record at offset {w} proves it had been made durable"
                        ),
                    ));
                }
                return Ok(SegmentScan::Records {
                    next_lsn: expected,
                    valid_len: off as u64,
                    records,
                });
            }
        }
    }
    // `off` may pass the end of the file by a record's padding (the file was cut inside it); the
    // caller then restores the padding, so the next record starts aligned.
    Ok(SegmentScan::Records { next_lsn: expected, valid_len: off as u64, records })
}

/// A located segment file.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    pub(crate) first_lsn: u64,
    pub(crate) path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_segment_header;

    fn segment(first: u64, payloads: &[&[u8]], durable: impl Fn(u64) -> u64) -> Vec<u8> {
        reserved_segment(first, payloads, durable, 0)
    }

    fn reserved_segment(
        first: u64,
        payloads: &[&[u8]],
        durable: impl Fn(u64) -> u64,
        reserved: u64,
    ) -> Vec<u8> {
        let mut out = encode_segment_header(SegmentHeader { first_lsn: first, reserved }).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            let lsn = first + i as u64;
            let h = RecordHeader {
                lsn,
                durable_lsn: durable(lsn),
                stored_len: p.len() as u32,
                raw_len: p.len() as u32,
                payload_crc: crc32c::crc32c(p),
                kind: 1,
                flags: 0,
            };
            out.extend_from_slice(&h.encode());
            out.extend_from_slice(p);
            out.resize(crate::format::align_up(out.len()), 0);
        }
        out
    }

    #[test]
    fn a_zeroed_tail_record_is_cut_but_a_proven_durable_one_is_corruption() {
        let payloads: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 + 1; 700]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        // Nothing claims durability: zeroing record 2's first sector is a torn tail.
        let mut seg = segment(1, &refs, |_| 0);
        let second = SEGMENT_HEADER_LEN + crate::format::align_up(RECORD_HEADER_LEN + 700);
        let sector_end = (second / TEAR_SECTOR + 1) * TEAR_SECTOR;
        seg[second..sector_end].fill(0);
        assert_eq!(
            scan_segment(&seg, 1, true, false),
            Ok(SegmentScan::Records { next_lsn: 2, valid_len: second as u64, records: 1 })
        );
        assert!(scan_segment(&seg, 1, false, false).is_err(), "a sealed segment has no torn tail");
        // Record 3 says records ≤ 2 were durable: the same damage is corruption.
        let mut seg = segment(1, &refs, |lsn| lsn - 1);
        seg[second..sector_end].fill(0);
        let err = scan_segment(&seg, 1, true, false).unwrap_err();
        assert_eq!((err.offset, err.lsn), (second as u64, 2), "{:?}", err.damage);
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_is_corruption_not_a_tear() {
        let seg = segment(5, &[b"first record", b"second record"], |_| 0);
        for bit in (SEGMENT_HEADER_LEN * 8)..(seg.len() * 8) {
            let mut s = seg.clone();
            s[bit / 8] ^= 1 << (bit % 8);
            match scan_segment(&s, 5, true, false) {
                Err(_) => {}
                Ok(SegmentScan::Records { next_lsn: 7, .. }) => {} // padding: harmless
                other => panic!("bit {bit}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_last_segment_cut_inside_a_record_below_its_reservation_is_truncation_not_a_tear() {
        let payloads: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 + 1; 300]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let whole = reserved_segment(1, &refs, |lsn| lsn - 1, 1 << 20);
        let third = SEGMENT_HEADER_LEN + 2 * crate::format::align_up(RECORD_HEADER_LEN + 300);
        // One byte into the last record, and one byte short of its end: both truncations.
        for cut in [third + 1, third + RECORD_HEADER_LEN + 299] {
            let seg = &whole[..cut];
            let err = scan_segment(seg, 1, true, false).unwrap_err();
            assert_eq!((err.offset, err.lsn), (third as u64, 3));
            assert_eq!(err.damage, Damage::Truncated { len: cut as u64, reserved: 1 << 20 });
            // Opted in, it is cut like a torn tail.
            assert_eq!(
                scan_segment(seg, 1, true, true),
                Ok(SegmentScan::Records { next_lsn: 3, valid_len: third as u64, records: 2 })
            );
        }
        // Without a recorded reservation (an older writer, or no space reserved), or at a length
        // the log itself can leave (at least the reservation), the same cut is a torn tail.
        let unreserved = segment(1, &refs, |lsn| lsn - 1);
        assert!(matches!(
            scan_segment(&unreserved[..third + 1], 1, true, false),
            Ok(SegmentScan::Records { next_lsn: 3, .. })
        ));
        let small = reserved_segment(1, &refs, |lsn| lsn - 1, third as u64 + 1);
        assert!(matches!(
            scan_segment(&small[..third + 1], 1, true, false),
            Ok(SegmentScan::Records { next_lsn: 3, .. })
        ));
        // Cut at a record boundary: nothing is torn, nothing to report.
        assert!(matches!(
            scan_segment(&whole[..third], 1, true, false),
            Ok(SegmentScan::Records { next_lsn: 3, .. })
        ));
    }

    #[test]
    fn a_seal_is_accepted_on_an_older_segment_and_proves_a_newer_one_missing_on_the_newest() {
        let mut seg = segment(1, &[b"one", b"two"], |lsn| lsn - 1);
        seg.extend_from_slice(&crate::format::encode_seal(3));
        let end = seg.len() - SEAL_LEN;
        let whole = Ok(SegmentScan::Records { next_lsn: 3, valid_len: end as u64, records: 2 });
        assert_eq!(scan_segment(&seg, 1, false, false), whole);
        let err = scan_segment(&seg, 1, true, false).unwrap_err();
        assert_eq!((err.offset, err.lsn), (end as u64, 3), "{:?}", err.damage);
        // Cut short by a crash while it was written: harmless on an older segment.
        for cut in 1..SEAL_LEN {
            assert_eq!(scan_segment(&seg[..end + cut], 1, false, false), whole, "cut {cut}");
        }
        // A seal that names another LSN is corruption anywhere.
        let mut bad = segment(1, &[b"one", b"two"], |lsn| lsn - 1);
        bad.extend_from_slice(&crate::format::encode_seal(9));
        assert!(scan_segment(&bad, 1, false, false).is_err());
    }
}
