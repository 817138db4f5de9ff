//! # quiver-vfs — the file-system seam
//!
//! Every durable byte Quiver writes (WAL segments, and in the engine Parquet segments, tombstone files
//! and the manifest) goes through the two small traits here, [`Vfs`] (a directory tree) and
//! [`VfsFile`] (one open file with positional reads and writes). There are two implementations:
//!
//! - [`OsVfs`]: the real file system (`pread`/`pwrite`, `fdatasync`, and `fsync` of directories).
//! - [`sim::SimVfs`]: an in-memory file system for tests that keeps, per file, what has been
//!   written (the page cache) apart from what is durable (synced), and can *crash* (each unsynced
//!   write kept, dropped, or torn at sector granularity), *fail* a chosen operation (EIO, ENOSPC, a
//!   short write, or a power cut after which every operation fails) and *flip bits* in stored data.
//!
//! The contract the callers rely on is the POSIX one, stated per method: data written with
//! [`VfsFile::write_at`] is durable only after [`VfsFile::sync_data`] returns `Ok`; a new, renamed or
//! removed directory entry is durable only after [`Vfs::sync_dir`] of its parent returns `Ok`.
//! Anything else may survive a crash whole, in part (sector by sector), or not at all.
//!
//! May depend on: no other Quiver crate. Both `quiver-wal` and `quiver-engine` build on it.

#![deny(missing_docs)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

mod aligned;
pub mod sim;

pub use aligned::AlignedBuf;

/// What a direct write's offset, length and buffer address must be multiples of
/// ([`VfsFile::set_direct_io`]): 4 KiB, the page size and the largest logical block size of
/// the devices Quiver runs on, so it satisfies 512-byte devices too.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// How [`Vfs::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenMode {
    /// An existing file, read only.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails with `AlreadyExists` if the name is taken. The new
    /// directory entry is durable only after [`Vfs::sync_dir`] of the parent.
    CreateNew,
}

/// A directory tree: the operations on names.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    ///
    /// # Errors
    /// `NotFound` for a missing file (or parent directory), `AlreadyExists` for
    /// [`OpenMode::CreateNew`] on an existing name, or any I/O error.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;

    /// Creates `path` and any missing ancestors, and makes every directory it created durable (its
    /// parent is synced) before returning.
    ///
    /// # Errors
    /// Any I/O error; an existing directory is not an error.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// The names of the entries directly inside directory `path`, sorted.
    ///
    /// # Errors
    /// `NotFound` if the directory does not exist, or any I/O error.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;

    /// Removes the file `path`. The removal is durable after [`Vfs::sync_dir`] of its parent.
    ///
    /// # Errors
    /// `NotFound`, or any I/O error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Renames `from` to `to`, atomically replacing `to` if it exists. Durable after
    /// [`Vfs::sync_dir`] of the parent of `to` (and of `from`, when it differs).
    ///
    /// # Errors
    /// `NotFound`, or any I/O error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the entries of directory `path` (creations, renames, removals) durable.
    ///
    /// # Errors
    /// Any I/O error. Callers treat a failure as fatal for the writer that asked (see the WAL's
    /// poisoning).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Whether `path` names an existing file or directory.
    ///
    /// # Errors
    /// Any I/O error other than "not found".
    fn exists(&self, path: &Path) -> io::Result<bool>;

    /// The real file-system path behind `path`, if this tree is the real file system. Callers use
    /// it for work that cannot go through the seam (the disk index reads its graph with
    /// `O_DIRECT` through io_uring); a simulated tree returns `None` and such work is skipped.
    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        let _ = path;
        None
    }
}

/// One open file: positional reads and writes, so a handle can be shared between threads.
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    ///
    /// # Errors
    /// Any I/O error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes up to `buf.len()` bytes at `offset`; returns how many were written, which may be fewer
    /// (a short write). Not durable until [`VfsFile::sync_data`].
    ///
    /// # Errors
    /// Any I/O error, e.g. ENOSPC.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;

    /// Makes every byte written so far, and the file's length, durable (`fdatasync`).
    ///
    /// # Errors
    /// Any I/O error. After an error, which earlier writes are durable is unknown: callers must not
    /// retry and assume success (the fsyncgate lesson).
    fn sync_data(&self) -> io::Result<()>;

    /// Sets the file's length, cutting or zero-extending it. Durable after [`VfsFile::sync_data`].
    ///
    /// # Errors
    /// Any I/O error.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The file's current length in bytes.
    ///
    /// # Errors
    /// Any I/O error.
    fn len(&self) -> io::Result<u64>;

    /// Reserves disk space so the file is at least `len` bytes long; the bytes it adds read as
    /// zeros. Like a zero-extending [`VfsFile::set_len`] (and durable, like it, after
    /// [`VfsFile::sync_data`]), but the real file system also allocates the blocks, so later
    /// writes into the range neither allocate nor grow the file (on Linux, `fallocate`: writes
    /// into it cost a tenth of writes past the end of file, and their `fdatasync` less). A file
    /// already that long is left alone. Where the file system cannot reserve space this does
    /// nothing: callers may not rely on the length it leaves.
    ///
    /// # Errors
    /// Any I/O error, e.g. ENOSPC.
    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? < len { self.set_len(len) } else { Ok(()) }
    }

    /// Switches the file to direct I/O (`on`) or back to buffered I/O. A direct write goes from
    /// the caller's buffer to the device without the copy into the page cache that a buffered
    /// write makes (on Linux, `O_DIRECT` set with `fcntl`), and is durable, like any write, only
    /// after [`VfsFile::sync_data`] (the device may cache it). While direct, every write must
    /// start at a multiple of [`DIRECT_IO_ALIGN`] in the file, span a multiple of it, and come
    /// from a buffer whose address is a multiple of it; otherwise it fails with `EINVAL`.
    /// Returns whether the file is now direct: `false` where the file system has no direct I/O
    /// (tmpfs, other platforms), and then the file stays buffered.
    ///
    /// # Errors
    /// Any I/O error other than the file system's refusal of direct I/O.
    fn set_direct_io(&self, on: bool) -> io::Result<bool> {
        let _ = on;
        Ok(false)
    }

    /// Whether the file is empty.
    ///
    /// # Errors
    /// Any I/O error.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` if the file ends first, or any I/O error.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early"));
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`, continuing after short writes.
    ///
    /// # Errors
    /// `WriteZero` if a write makes no progress, or any I/O error. After an error, a prefix of
    /// `buf` may have been written.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress"));
                }
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the whole file.
    ///
    /// # Errors
    /// Any I/O error.
    fn read_to_vec(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "file larger than memory"))?;
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsVfs;

#[derive(Debug)]
struct OsFile(std::fs::File);

#[cfg(unix)]
impl VfsFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    #[cfg(target_os = "linux")]
    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length past off_t"))?;
        loop {
            // SAFETY: `fallocate` only reads its integer arguments; the descriptor is owned by
            // `self.0`, open for the duration of the call.
            let rc = unsafe { libc::fallocate(self.0.as_raw_fd(), 0, 0, len) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                // The file system cannot reserve space: an optimisation lost, nothing more.
                Some(libc::EOPNOTSUPP) => return Ok(()),
                _ => return Err(e),
            }
        }
    }
    #[cfg(target_os = "linux")]
    fn set_direct_io(&self, on: bool) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        // SAFETY: `F_GETFL` only reads the descriptor's flags; the descriptor is owned by
        // `self.0`, open for the duration of the call.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let wanted = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
        if wanted == flags {
            return Ok(on);
        }
        // SAFETY: `F_SETFL` only changes the descriptor's status flags (no memory is passed);
        // the descriptor is owned by `self.0`, open for the duration of the call.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) };
        if rc == 0 {
            return Ok(on);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The file system has no direct I/O (tmpfs, some FUSE and network file systems).
            Some(libc::EINVAL) if on => Ok(false),
            _ => Err(e),
        }
    }
}

#[cfg(unix)]
impl Vfs for OsVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut o = std::fs::OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
        };
        Ok(Box::new(OsFile(o.open(path)?)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        // Find the missing ancestors first, so exactly those get their parents synced.
        let mut missing: Vec<PathBuf> = Vec::new();
        let mut p = Some(path);
        while let Some(dir) = p {
            if dir.as_os_str().is_empty() || dir.exists() {
                break;
            }
            missing.push(dir.to_path_buf());
            p = dir.parent();
        }
        std::fs::create_dir_all(path)?;
        for dir in missing.iter().rev() {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn real_path(&self, path: &Path) -> Option<PathBuf> {
        Some(path.to_path_buf())
    }
}

/// The error a simulated power cut returns, and that [`is_simulated_crash`] recognises.
pub(crate) const CRASH_MESSAGE: &str = "simulated power loss: the machine is down";

/// Whether `e` is the error a [`sim::SimVfs`] returns after a simulated power cut (useful in tests
/// that must tell a crash from an injected I/O error).
#[must_use]
pub fn is_simulated_crash(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.to_string() == CRASH_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_vfs_round_trips_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = OsVfs;
        let sub = dir.path().join("a/b");
        vfs.create_dir_all(&sub).unwrap();
        let f = vfs.open(&sub.join("x"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 3).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&sub).unwrap();
        assert_eq!(f.read_to_vec().unwrap(), b"\0\0\0hello");
        assert_eq!(
            vfs.open(&sub.join("x"), OpenMode::CreateNew).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        vfs.rename(&sub.join("x"), &sub.join("y")).unwrap();
        assert_eq!(vfs.list_dir(&sub).unwrap(), vec!["y".to_string()]);
        assert!(vfs.exists(&sub.join("y")).unwrap());
        vfs.remove_file(&sub.join("y")).unwrap();
        assert!(!vfs.exists(&sub.join("y")).unwrap());
    }

    /// Direct I/O on the real file system: where it is granted, a block-aligned write lands and
    /// reads back through a buffered handle (the kernel keeps the two coherent), a misaligned
    /// one is refused, and switching back makes any write legal again.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_direct_file_takes_aligned_writes_and_refuses_misaligned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let f = OsVfs.open(&path, OpenMode::CreateNew).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        let mut blocks = crate::AlignedBuf::default();
        blocks.extend_from_slice(&[5; 2 * DIRECT_IO_ALIGN]);
        let aligned = blocks.as_slice();
        if !f.set_direct_io(true).unwrap() {
            // tmpfs and the like: the file stays buffered, and says so.
            f.write_all_at(&aligned[1..10], 1).unwrap();
            return;
        }
        assert_eq!(f.write_at(&aligned[1..4097], 4096).unwrap_err().raw_os_error(), Some(22));
        f.write_all_at(aligned, 4096).unwrap();
        f.sync_data().unwrap();
        let back = OsVfs.open(&path, OpenMode::Read).unwrap().read_to_vec().unwrap();
        assert_eq!(&back[..4], b"head");
        assert!(back[4096..].iter().all(|&b| b == 5) && back.len() == 3 * 4096);
        assert!(!f.set_direct_io(false).unwrap());
        f.write_all_at(b"tail", 3 * 4096).unwrap();
    }
}
