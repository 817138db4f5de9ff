//! One process per database directory: an advisory `flock` on `LOCK`, held while the database is
//! open. Two writers on one WAL would interleave records and corrupt it; this makes the second
//! `open` fail with a clear error instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The lock file's name inside a database directory.
pub const LOCK_FILE: &str = "LOCK";

/// A held directory lock; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist) without waiting.
    ///
    /// # Errors
    /// `WouldBlock` with a message naming the directory if another handle holds it; any I/O error.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        // `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Unix (LockFileEx elsewhere).
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "database directory {} is already open (in this or another process)",
                        dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}
