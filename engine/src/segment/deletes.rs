//! Deletion files: a segment's deleted rows, written beside it (format in docs/format.md).

/// The deletion file's magic.
const DEL_MAGIC: [u8; 8] = *b"QVRDEL\0\0";
const DEL_VERSION: u32 = 1;
const DEL_HEADER: usize = 40;

/// Encodes a deletion file for `segment` of `rows` rows listing `deleted` (strictly increasing).
pub fn encode_deletes(segment: u64, rows: u64, deleted: &[u32]) -> Vec<u8> {
    assert!(deleted.windows(2).all(|w| w[0] < w[1]), "deleted rows must be strictly increasing");
    assert!(deleted.last().is_none_or(|&r| u64::from(r) < rows), "deleted row out of range");
    let mut out = Vec::with_capacity(DEL_HEADER + 4 * deleted.len());
    out.extend_from_slice(&DEL_MAGIC);
    out.extend_from_slice(&DEL_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&segment.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&(deleted.len() as u64).to_le_bytes());
    for r in deleted {
        out.extend_from_slice(&r.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..12]), &out[16..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why a deletion file was refused ([`decode_deletes`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeletesError {
    /// Fewer bytes than the header.
    #[error("shorter than its header")]
    Short,
    /// Not a deletion file.
    #[error("bad magic")]
    Magic,
    /// The CRC32C does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// A format version this build does not read.
    #[error("format version {0} is not supported")]
    Version(u32),
    /// Written for another segment (or another row count).
    #[error(
        "written for segment {segment} of {rows} rows, expected segment {want_segment} of {want_rows}"
    )]
    OtherSegment {
        /// The segment it names.
        segment: u64,
        /// The rows it names.
        rows: u64,
        /// The segment expected.
        want_segment: u64,
        /// The rows expected.
        want_rows: u64,
    },
    /// The file's length disagrees with its count.
    #[error("length does not match the count")]
    Length,
    /// Rows out of order or past the segment's end.
    #[error("rows not strictly increasing or out of range")]
    Rows,
}

/// Decodes a deletion file, checking everything [`encode_deletes`] promises.
///
/// # Errors
/// [`DeletesError`]: the first problem found.
pub fn decode_deletes(bytes: &[u8], segment: u64, rows: u64) -> Result<Vec<u32>, DeletesError> {
    if bytes.len() < DEL_HEADER {
        return Err(DeletesError::Short);
    }
    if bytes[0..8] != DEL_MAGIC {
        return Err(DeletesError::Magic);
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(12) != crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..]) {
        return Err(DeletesError::Checksum);
    }
    if u32_at(8) != DEL_VERSION {
        return Err(DeletesError::Version(u32_at(8)));
    }
    if u64_at(16) != segment || u64_at(24) != rows {
        return Err(DeletesError::OtherSegment {
            segment: u64_at(16),
            rows: u64_at(24),
            want_segment: segment,
            want_rows: rows,
        });
    }
    let count = u64_at(32);
    if (bytes.len() - DEL_HEADER) as u64 != count.saturating_mul(4) {
        return Err(DeletesError::Length);
    }
    let out: Vec<u32> = (0..count as usize).map(|i| u32_at(DEL_HEADER + 4 * i)).collect();
    if !out.windows(2).all(|w| w[0] < w[1]) || out.last().is_some_and(|&r| u64::from(r) >= rows) {
        return Err(DeletesError::Rows);
    }
    Ok(out)
}
