//! The log's bytes: segment names, the segment header and the record header (see `docs/format.md`).
//!
//! All integers are little-endian. Records start at 8-byte aligned offsets; the bytes between a
//! record's payload and the next record are zero padding that no checksum covers.

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"QVRWAL\0\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes in the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// The first four bytes of every record header ("QREC").
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"QREC");
/// Bytes in a record header.
pub const RECORD_HEADER_LEN: usize = 40;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// Record flag: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
/// The largest stored payload a record may have (the length field is 32 bits; one less keeps
/// every offset computation far from overflow).
pub const MAX_PAYLOAD: usize = (u32::MAX >> 1) as usize;
/// Segment files are named `{first_lsn:020}.wal`.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// The file name of the segment whose first record has sequence number `first_lsn`.
#[must_use]
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The first LSN encoded in a segment file name, or `None` if the name is not a segment's.
#[must_use]
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Rounds `n` up to the record alignment.
#[must_use]
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The segment header: magic, version, first LSN, the space reserved at creation, and a CRC32C of
/// the rest.
///
/// ```text
/// 0..8    magic "QVRWAL\0\0"
/// 8..12   u32 format version (1)
/// 12..16  u32 CRC32C of bytes 0..12 and 16..32
/// 16..24  u64 first LSN (equals the number in the file name)
/// 24..32  u64 bytes reserved for the segment when it was created (0: none, or not recorded by
///         the writer that made it)
/// ```
///
/// The reservation lets recovery tell a torn write from a truncated file: while the segment is
/// the active one, its length never drops below the reservation except at a record boundary, so
/// a last segment that is shorter than it *and* ends inside a record was cut by something other
/// than a crash of the log.
#[must_use]
pub fn encode_segment_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&header.first_lsn.to_le_bytes());
    h[24..32].copy_from_slice(&header.reserved.to_le_bytes());
    let crc = segment_header_crc(&h);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The LSN of the segment's first record.
    pub first_lsn: u64,
    /// Bytes reserved for the segment at creation; 0 if none were (or the writer predates the
    /// field).
    pub reserved: u64,
}

fn segment_header_crc(h: &[u8; SEGMENT_HEADER_LEN]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&h[0..12]), &h[16..32])
}

/// Why a segment header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// Not the magic bytes.
    Magic,
    /// A version this code does not read.
    Version(u32),
    /// The checksum does not match.
    Checksum,
}

/// Decodes a segment header.
///
/// # Errors
/// If the magic, version or checksum is wrong.
pub fn decode_segment_header(
    h: &[u8; SEGMENT_HEADER_LEN],
) -> Result<SegmentHeader, SegmentHeaderError> {
    if h[0..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Magic);
    }
    let stored = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
    if stored != segment_header_crc(h) {
        return Err(SegmentHeaderError::Checksum);
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(SegmentHeaderError::Version(version));
    }
    Ok(SegmentHeader {
        first_lsn: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
        reserved: u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")),
    })
}

/// A record header.
///
/// ```text
/// 0..4    u32 magic "QREC"
/// 4..12   u64 LSN
/// 12..20  u64 durable LSN: every record with an LSN ≤ this was durable when this one was written
/// 20..24  u32 stored payload length (bytes on disk, after compression)
/// 24..28  u32 raw payload length (after decompression; equal to stored when not compressed)
/// 28..32  u32 CRC32C of the stored payload
/// 32      u8  record type (chosen by the caller)
/// 33      u8  flags (bit 0: zstd)
/// 34..36  reserved, zero
/// 36..40  u32 CRC32C of bytes 0..36
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The record's sequence number.
    pub lsn: u64,
    /// Every record up to and including this LSN was durable when this record was written.
    pub durable_lsn: u64,
    /// Payload bytes as stored.
    pub stored_len: u32,
    /// Payload bytes after decompression.
    pub raw_len: u32,
    /// CRC32C of the stored payload.
    pub payload_crc: u32,
    /// The caller's record type.
    pub kind: u8,
    /// [`FLAG_ZSTD`] or zero.
    pub flags: u8,
}

impl RecordHeader {
    /// The header's bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        h[4..12].copy_from_slice(&self.lsn.to_le_bytes());
        h[12..20].copy_from_slice(&self.durable_lsn.to_le_bytes());
        h[20..24].copy_from_slice(&self.stored_len.to_le_bytes());
        h[24..28].copy_from_slice(&self.raw_len.to_le_bytes());
        h[28..32].copy_from_slice(&self.payload_crc.to_le_bytes());
        h[32] = self.kind;
        h[33] = self.flags;
        let crc = crc32c::crc32c(&h[0..36]);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes a header whose magic, checksum and reserved bits are right, or `None`.
    #[must_use]
    pub fn decode(h: &[u8]) -> Option<RecordHeader> {
        let h: &[u8; RECORD_HEADER_LEN] = h.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != RECORD_MAGIC || u32_at(36) != crc32c::crc32c(&h[0..36]) {
            return None;
        }
        let header = RecordHeader {
            lsn: u64_at(4),
            durable_lsn: u64_at(12),
            stored_len: u32_at(20),
            raw_len: u32_at(24),
            payload_crc: u32_at(28),
            kind: h[32],
            flags: h[33],
        };
        let sane = h[34] == 0
            && h[35] == 0
            && header.flags & !FLAG_ZSTD == 0
            && (header.stored_len as usize) <= MAX_PAYLOAD
            && (header.raw_len as usize) <= MAX_PAYLOAD
            && (header.flags & FLAG_ZSTD != 0 || header.raw_len == header.stored_len);
        sane.then_some(header)
    }

    /// Bytes from the start of this record to the start of the next.
    #[must_use]
    pub fn span(&self) -> usize {
        align_up(RECORD_HEADER_LEN + self.stored_len as usize)
    }
}

/// The first four bytes of a seal ("QSEL").
pub const SEAL_MAGIC: u32 = u32::from_le_bytes(*b"QSEL");
/// Bytes in a seal.
pub const SEAL_LEN: usize = 16;

/// The seal written after a segment's last record once the next segment exists durably:
///
/// ```text
/// 0..4    u32 magic "QSEL"
/// 4..12   u64 the next segment's first LSN (one past this segment's last record)
/// 12..16  u32 CRC32C of bytes 0..12
/// ```
///
/// Recovery reads a seal on the newest segment as proof that a newer one existed and is gone
/// (deleted, not a crash: the seal is written only after the next segment is synced and named
/// durably), instead of taking the log to end there.
#[must_use]
pub fn encode_seal(next_lsn: u64) -> [u8; SEAL_LEN] {
    let mut b = [0u8; SEAL_LEN];
    b[0..4].copy_from_slice(&SEAL_MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&next_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The next segment's first LSN if `b` is exactly a valid seal.
#[must_use]
pub fn decode_seal(b: &[u8]) -> Option<u64> {
    if b.len() != SEAL_LEN || b[0..4] != SEAL_MAGIC.to_le_bytes() {
        return None;
    }
    let crc = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
    (crc == crc32c::crc32c(&b[0..12]))
        .then(|| u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_round_trip_and_reject_any_single_bit_flip() {
        let s = encode_seal(77);
        assert_eq!(decode_seal(&s), Some(77));
        for bit in 0..SEAL_LEN * 8 {
            let mut b = s;
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_seal(&b), None, "bit {bit}");
        }
        assert_eq!(decode_seal(&s[..15]), None);
    }

    #[test]
    fn headers_round_trip_and_reject_any_single_bit_flip() {
        let h = RecordHeader {
            lsn: 42,
            durable_lsn: 40,
            stored_len: 100,
            raw_len: 300,
            payload_crc: 0xdead_beef,
            kind: 7,
            flags: FLAG_ZSTD,
        };
        let bytes = h.encode();
        assert_eq!(RecordHeader::decode(&bytes), Some(h));
        for bit in 0..RECORD_HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(RecordHeader::decode(&b), None, "bit {bit}");
        }
        let header = SegmentHeader { first_lsn: 9, reserved: 64 << 20 };
        let s = encode_segment_header(header);
        assert_eq!(decode_segment_header(&s), Ok(header));
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut b = s;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&b).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        assert_eq!(parse_segment_name(&segment_name(1)), Some(1));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in ["1.wal", "0000000000000000000a.wal", "00000000000000000001.log", "x"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
