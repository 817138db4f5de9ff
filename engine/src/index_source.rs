//! Binds a disk index to the segment it was built from.
//!
//! An index directory is named after its segment, but a name proves nothing: two directories
//! swapped (by hand, by a restore) still open, and with equal row counts the search returned
//! other rows' ids. Each index directory therefore holds a `SOURCE` file naming the segment's
//! id, row count, file length and CRC32C, written and synced before the directory is renamed
//! into place; opening an index whose `SOURCE` is missing, damaged or names another segment is
//! refused, and the index is rebuilt (it is derived data).
//!
//! Layout (40 bytes, integers little-endian):
//!
//! ```text
//! 0..8    magic "QVRIXSRC"
//! 8..16   u64 segment id
//! 16..24  u64 segment rows
//! 24..32  u64 segment file length
//! 32..36  u32 segment file CRC32C (as the manifest records it)
//! 36..40  u32 CRC32C of bytes 0..36
//! ```

use std::io::Write;
use std::path::Path;

/// The file in an index directory naming its segment.
pub const SOURCE_FILE: &str = "SOURCE";
const MAGIC: [u8; 8] = *b"QVRIXSRC";
const LEN: usize = 40;

/// The segment an index was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The segment's id.
    pub segment: u64,
    /// Its rows.
    pub rows: u64,
    /// Its file's length.
    pub bytes: u64,
    /// Its file's CRC32C.
    pub crc: u32,
}

/// Why an index is not bound to the segment asking for it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// No `SOURCE` file (an index built before binding existed, or a damaged directory).
    #[error("it records no source segment")]
    Missing,
    /// The file could not be read.
    #[error("its source record cannot be read: {0}")]
    Io(#[from] std::io::Error),
    /// The file fails its checksum or has the wrong size.
    #[error("its source record is damaged")]
    Corrupt,
    /// The index was built from another segment, or another version of this one.
    #[error("it was built from {found:?}, not {expected:?}")]
    Mismatch {
        /// What the index records.
        found: Source,
        /// The segment asking.
        expected: Source,
    },
}

fn encode(s: Source) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&s.segment.to_le_bytes());
    b[16..24].copy_from_slice(&s.rows.to_le_bytes());
    b[24..32].copy_from_slice(&s.bytes.to_le_bytes());
    b[32..36].copy_from_slice(&s.crc.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..36]);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<Source> {
    if b.len() != LEN || b[0..8] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if u32_at(36) != crc32c::crc32c(&b[0..36]) {
        return None;
    }
    Some(Source { segment: u64_at(8), rows: u64_at(16), bytes: u64_at(24), crc: u32_at(32) })
}

/// Writes `dir/SOURCE` and syncs it and `dir`.
///
/// # Errors
/// Any I/O error.
pub fn write(dir: &Path, source: Source) -> std::io::Result<()> {
    let path = dir.join(SOURCE_FILE);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&encode(source))?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Checks that the index in `dir` was built from `expected`.
///
/// # Errors
/// [`SourceError`] saying why not.
pub fn check(dir: &Path, expected: Source) -> Result<(), SourceError> {
    let bytes = match std::fs::read(dir.join(SOURCE_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SourceError::Missing),
        Err(e) => return Err(e.into()),
    };
    let found = decode(&bytes).ok_or(SourceError::Corrupt)?;
    if found != expected {
        return Err(SourceError::Mismatch { found, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_round_trips_and_every_flipped_bit_is_refused() {
        let s = Source { segment: 0x1f, rows: 4096, bytes: 1 << 30, crc: 0xdead_beef };
        let b = encode(s);
        assert_eq!(decode(&b), Some(s));
        for bit in 0..LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&c), None, "bit {bit}");
        }
        assert_eq!(decode(&b[..LEN - 1]), None);
    }
}
