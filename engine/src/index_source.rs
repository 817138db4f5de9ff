//! Binds a disk index to the segment it was built from.
//!
//! An index directory is named after its segment, but a name proves nothing: two directories
//! swapped (by hand, by a restore) still open, and with equal row counts the search returned
//! other rows' ids. Each index directory therefore holds a `SOURCE` file naming the segment's
//! id, row count, file length and CRC32C, and a fingerprint of the index's own files (the
//! stored checksums of the graph's first and last sectors and of the two PQ files), written and
//! synced before the directory is renamed into place. Opening an index whose `SOURCE` is
//! missing, damaged, names another segment, or whose files are not the ones it was written
//! with (a file swapped with another index's) is refused, and the index is rebuilt (it is
//! derived data). The fingerprint costs two sector reads and two 4-byte reads at open.
//!
//! Layout (56 bytes, integers little-endian):
//!
//! ```text
//! 0..8    magic "QVRIXSRC"
//! 8..16   u64 segment id
//! 16..24  u64 segment rows
//! 24..32  u64 segment file length
//! 32..36  u32 segment file CRC32C (as the manifest records it)
//! 36..40  u32 graph.qvr: the stored CRC32C of sector 0 (its last 4 bytes)
//! 40..44  u32 graph.qvr: the stored CRC32C of its last sector
//! 44..48  u32 pq_pivots.bin: its stored CRC32C (its last 4 bytes)
//! 48..52  u32 pq_codes.bin: its stored CRC32C (its last 4 bytes)
//! 52..56  u32 CRC32C of bytes 0..52
//! ```

use std::io::Write;
use std::path::Path;

/// The file in an index directory naming its segment.
pub const SOURCE_FILE: &str = "SOURCE";
const MAGIC: [u8; 8] = *b"QVRIXSRC";
const LEN: usize = 56;
const GRAPH_FILE: &str = "graph.qvr";
const INDEX_FILES: [&str; 2] = ["pq_pivots.bin", "pq_codes.bin"];
const SECTOR: u64 = 4096;

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

/// The stored checksums of an index's files (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([u32; 4]);

/// Reads the fingerprint of the index files in `dir`.
///
/// # Errors
/// Any I/O error, or a graph file shorter than a sector.
pub fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    use std::os::unix::fs::FileExt;
    let u32_at = |f: &std::fs::File, at: u64| -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, at)?;
        Ok(u32::from_le_bytes(b))
    };
    let last4 = |name: &str| -> std::io::Result<u32> {
        let f = std::fs::File::open(dir.join(name))?;
        let len = f.metadata()?.len();
        if len < 4 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "too short"));
        }
        u32_at(&f, len - 4)
    };
    let graph = std::fs::File::open(dir.join(GRAPH_FILE))?;
    let len = graph.metadata()?.len();
    if len < SECTOR || len % SECTOR != 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not whole sectors"));
    }
    Ok(Fingerprint([
        u32_at(&graph, SECTOR - 4)?,
        u32_at(&graph, len - 4)?,
        last4(INDEX_FILES[0])?,
        last4(INDEX_FILES[1])?,
    ]))
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
    /// Its files are not the ones it was built with (one was swapped or replaced).
    #[error(
        "its files are not the ones it was built with (fingerprint {found:x?}, recorded {recorded:x?})"
    )]
    Files {
        /// The files' fingerprint now.
        found: Fingerprint,
        /// The fingerprint `SOURCE` records.
        recorded: Fingerprint,
    },
}

fn encode(s: Source, f: Fingerprint) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&s.segment.to_le_bytes());
    b[16..24].copy_from_slice(&s.rows.to_le_bytes());
    b[24..32].copy_from_slice(&s.bytes.to_le_bytes());
    b[32..36].copy_from_slice(&s.crc.to_le_bytes());
    for (i, v) in f.0.iter().enumerate() {
        b[36 + 4 * i..40 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[0..52]);
    b[52..56].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(Source, Fingerprint)> {
    if b.len() != LEN || b[0..8] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if u32_at(52) != crc32c::crc32c(&b[0..52]) {
        return None;
    }
    let source =
        Source { segment: u64_at(8), rows: u64_at(16), bytes: u64_at(24), crc: u32_at(32) };
    Some((source, Fingerprint([u32_at(36), u32_at(40), u32_at(44), u32_at(48)])))
}

/// Writes `dir/SOURCE` for the index files now in `dir`, and syncs it and `dir`.
///
/// # Errors
/// Any I/O error.
pub fn write(dir: &Path, source: Source) -> std::io::Result<()> {
    let record = encode(source, fingerprint(dir)?);
    let mut f = std::fs::File::create(dir.join(SOURCE_FILE))?;
    f.write_all(&record)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Checks that the index in `dir` was built from `expected`, with the files it holds now.
///
/// # Errors
/// [`SourceError`] saying why not.
pub fn check(dir: &Path, expected: Source) -> Result<(), SourceError> {
    let bytes = match std::fs::read(dir.join(SOURCE_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SourceError::Missing),
        Err(e) => return Err(e.into()),
    };
    let (found, recorded) = decode(&bytes).ok_or(SourceError::Corrupt)?;
    if found != expected {
        return Err(SourceError::Mismatch { found, expected });
    }
    let now = fingerprint(dir)?;
    if now != recorded {
        return Err(SourceError::Files { found: now, recorded });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_round_trips_and_every_flipped_bit_is_refused() {
        let s = Source { segment: 0x1f, rows: 4096, bytes: 1 << 30, crc: 0xdead_beef };
        let f = Fingerprint([1, 2, 3, 4]);
        let b = encode(s, f);
        assert_eq!(decode(&b), Some((s, f)));
        for bit in 0..LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&c), None, "bit {bit}");
        }
        assert_eq!(decode(&b[..LEN - 1]), None);
    }
}
