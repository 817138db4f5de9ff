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
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: `flock` reads only its two integer arguments; the descriptor is valid because
            // `file` owns it for the whole call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "database directory {} is already open (in this or another process)",
                            dir.display()
                        ),
                    ));
                }
                return Err(e);
            }
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}
