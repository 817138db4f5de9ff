//! The manifest: the one file that says what the database is made of, replaced atomically.
//!
//! The engine serialises its state (live segments, indexes, tombstone files, the WAL checkpoint) into
//! a body; this module frames, checksums and commits it. Commit protocol (see `docs/durability.md`):
//!
//! 1. ([`ManifestStore::open`], once) remove a leftover `MANIFEST.tmp` from an interrupted commit;
//!    afterwards none can appear, since a commit either renames it away or poisons the store;
//! 2. write the new manifest to `MANIFEST.tmp` and `fdatasync` it;
//! 3. rename `MANIFEST.tmp` over `MANIFEST` (atomic);
//! 4. `fsync` the directory. Only now is the commit durable, and only now may the caller delete what
//!    the old manifest referenced or truncate the WAL.
//!
//! An I/O error at or after the rename poisons the store: whether the rename became durable is
//! unknown, so the caller must reopen (and reload) before committing again. An error before it
//! (creating, writing or syncing the temporary file: a full disk, say) leaves the old manifest in
//! force; the temporary file is removed and the store stays usable.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! 0..8    magic "QVRMANIF"
//! 8..12   u32 format version (1)
//! 12..16  u32 CRC32C of bytes 0..12 followed by bytes 16..end
//! 16..24  u64 manifest version: 1 for the first commit, +1 per commit
//! 24..32  u64 body length
//! 32..    body (the engine's JSON); the file ends exactly there
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quiver_wal::vfs::{OpenMode, Vfs};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Where a commit writes before the rename.
pub const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MAGIC: [u8; 8] = *b"QVRMANIF";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
/// The largest body accepted (a manifest lists files, not data).
pub const MAX_BODY: usize = 256 << 20;

/// Errors from opening or committing a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// An I/O error.
    #[error("manifest I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The manifest fails verification.
    #[error("manifest {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A body over 256 MiB (`MAX_BODY`).
    #[error("manifest body of {len} bytes exceeds the limit of {MAX_BODY}")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// An earlier commit failed part-way; reopen before committing again.
    #[error("an earlier manifest commit failed; reopen the database")]
    Poisoned,
}

/// A committed manifest: its version and body.
pub type Committed = (u64, Vec<u8>);

/// The manifest of one directory.
#[derive(Debug)]
pub struct ManifestStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    version: u64,
    poisoned: bool,
}

/// Maps an I/O error on `path` to [`ManifestError::Io`].
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io { path: path.to_path_buf(), source }
}

fn encode(version: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[0..12]), &out[16..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(path: &Path, bytes: &[u8]) -> Result<(u64, Vec<u8>), ManifestError> {
    let corrupt = |reason: &str| ManifestError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    if bytes[0..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(12) != crc32c::crc32c_append(crc32c::crc32c(&bytes[0..12]), &bytes[16..]) {
        return Err(corrupt("checksum mismatch"));
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(corrupt(&format!("format version {} is not supported", u32_at(8))));
    }
    let len = u64_at(24);
    if len != (bytes.len() - HEADER_LEN) as u64 {
        return Err(corrupt("body length does not match the file"));
    }
    Ok((u64_at(16), bytes[HEADER_LEN..].to_vec()))
}

impl ManifestStore {
    /// Opens the manifest of `dir` (which must exist), removing a leftover temporary file. Returns
    /// the store and the current body with its version, or `None` for a directory that has never
    /// committed one.
    ///
    /// # Errors
    /// [`ManifestError::Corrupt`] if `MANIFEST` fails verification; [`ManifestError::Io`].
    pub fn open(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
    ) -> Result<(ManifestStore, Option<Committed>), ManifestError> {
        let tmp = dir.join(MANIFEST_TMP);
        if vfs.exists(&tmp).map_err(io_err(&tmp))? {
            // An interrupted commit: it never became the manifest.
            vfs.remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        // The manifest read below may be one whose rename was never made durable (a commit
        // whose directory sync failed, then a restart without a crash): what this process
        // goes on from must not revert at the next power cut, so the directory is synced
        // before the manifest is read and trusted.
        vfs.sync_dir(dir).map_err(io_err(dir))?;
        let path = dir.join(MANIFEST_FILE);
        let current = match vfs.open(&path, OpenMode::Read) {
            Ok(f) => {
                let bytes = f.read_to_vec().map_err(io_err(&path))?;
                Some(decode(&path, &bytes)?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let version = current.as_ref().map_or(0, |(v, _)| *v);
        Ok((ManifestStore { vfs, dir: dir.to_path_buf(), version, poisoned: false }, current))
    }

    /// Whether a failed commit left the manifest's state unknown (the rename was attempted, or a
    /// temporary file could not be removed): then nothing may be committed until reopening.
    /// A commit that failed before that leaves the old manifest in force and the store usable.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The version of the last committed manifest (0: none yet).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Commits `body` as the next version, durably, and returns that version.
    ///
    /// # Errors
    /// [`ManifestError::Io`] (the store is then poisoned), [`ManifestError::Poisoned`],
    /// [`ManifestError::TooLarge`].
    pub fn commit(&mut self, body: &[u8]) -> Result<u64, ManifestError> {
        if self.poisoned {
            return Err(ManifestError::Poisoned);
        }
        if body.len() > MAX_BODY {
            return Err(ManifestError::TooLarge { len: body.len() });
        }
        let version = self.version + 1;
        self.poisoned = true; // cleared if the old manifest provably stands, or on success
        let (tmp, path) = (self.dir.join(MANIFEST_TMP), self.dir.join(MANIFEST_FILE));
        let staged = (|| {
            let file = self.vfs.open(&tmp, OpenMode::CreateNew)?;
            file.write_all_at(&encode(version, body), 0)?;
            file.sync_data()
        })();
        if let Err(e) = staged {
            // Before the rename the old manifest stands, whatever the temporary file holds:
            // once that file is gone, the next commit can start afresh (a full disk need not
            // stop the database). If it cannot be removed, the store stays poisoned.
            if self.vfs.remove_file(&tmp).is_ok() || !self.vfs.exists(&tmp).unwrap_or(true) {
                self.poisoned = false;
            }
            return Err(io_err(&tmp)(e));
        }
        self.vfs.rename(&tmp, &path).map_err(io_err(&path))?;
        self.vfs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.poisoned = false;
        self.version = version;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_rejects_trailing_bytes() {
        let bytes = encode(7, b"{\"x\":1}");
        assert_eq!(decode(Path::new("m"), &bytes).unwrap(), (7, b"{\"x\":1}".to_vec()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(Path::new("m"), &longer).is_err());
        assert!(decode(Path::new("m"), &bytes[..20]).is_err());
    }
}
