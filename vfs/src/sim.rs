//! A simulated file system for durability tests.
//!
//! [`SimVfs`] keeps every file twice: the bytes a reader sees now (the page cache) and the bytes
//! that would survive a power cut (what the last successful `sync_data` made durable), plus the list
//! of writes and length changes made since. Directory entries are kept the same way: creations,
//! renames and removals are pending until the parent directory is synced.
//!
//! [`SimVfs::crash`] resolves all that pending state as a power cut would, under a [`CrashMode`]:
//! every pending write kept, every one dropped, or (seeded, reproducible) each write kept, dropped,
//! torn — each sector of it kept or not — or replaced by zeros with the file length extended (the
//! size reached the journal, the data did not); a random prefix of the pending directory operations
//! survives (journaled metadata commits in order). Open handles from before the crash stop working.
//!
//! [`SimVfs::inject`] fails a chosen operation: EIO, ENOSPC, a short write, or a power cut after
//! which every operation fails until [`SimVfs::crash`] (the process died). [`SimVfs::flip_bit`]
//! corrupts stored data.
//!
//! What the model does not do: a failed `sync_data` leaves the writes pending (a later sync may
//! still make them durable); Linux may instead drop them while reporting success later. Callers must
//! therefore never retry a failed sync and assume durability, which is the rule the WAL follows.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{CRASH_MESSAGE, DIRECT_IO_ALIGN, OpenMode, Vfs, VfsFile};

/// The kinds of operations a fault can be aimed at. Every kind but `Read` changes state and is
/// counted by [`SimVfs::op_count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpKind {
    /// `VfsFile::read_at`.
    Read,
    /// `VfsFile::write_at`.
    Write,
    /// `VfsFile::sync_data`.
    Sync,
    /// `VfsFile::set_len`.
    SetLen,
    /// `Vfs::open` with `CreateNew`.
    Create,
    /// `Vfs::rename`.
    Rename,
    /// `Vfs::remove_file`.
    Remove,
    /// `Vfs::sync_dir`.
    SyncDir,
}

/// What an injected fault does to the operation it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The operation fails with EIO and changes nothing.
    Eio,
    /// The operation fails with ENOSPC ("no space left on device") and changes nothing.
    Enospc,
    /// A write stores only the first half of its bytes (at least one when it has two or more) and
    /// reports that count; other operations fail with EIO.
    ShortWrite,
    /// Power cut: this operation and every later one fail, changing nothing, until
    /// [`SimVfs::crash`].
    Crash,
}

/// How [`SimVfs::crash`] resolves writes and directory operations that were not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything written survives (as if the kernel flushed it all just in time).
    KeepAll,
    /// Nothing unsynced survives.
    DropAll,
    /// Each pending write is kept, dropped, torn sector by sector, or zero-filled with the length
    /// extended; a random prefix of pending directory operations survives. Reproducible per seed.
    Random(u64),
}

#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<DataOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Clone, Debug)]
enum NsOp {
    Create { path: PathBuf, ino: u64 },
    Rename { from: PathBuf, to: PathBuf, ino: u64 },
    Remove { path: PathBuf },
}

impl NsOp {
    fn dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        match self {
            NsOp::Create { path, .. } | NsOp::Remove { path } => vec![parent(path)],
            NsOp::Rename { from, to, .. } => vec![parent(from), parent(to)],
        }
    }

    fn apply(&self, ns: &mut BTreeMap<PathBuf, Entry>) {
        match self {
            NsOp::Create { path, ino } => {
                ns.insert(path.clone(), Entry::File(*ino));
            }
            NsOp::Rename { from, to, ino } => {
                ns.remove(from);
                ns.insert(to.clone(), Entry::File(*ino));
            }
            NsOp::Remove { path } => {
                ns.remove(path);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    kind: Option<OpKind>,
    remaining: u64,
    fault: Fault,
}

#[derive(Clone, Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    current: BTreeMap<PathBuf, Entry>,
    durable: BTreeMap<PathBuf, Entry>,
    pending_ns: Vec<NsOp>,
    generation: u64,
    ops: u64,
    rules: Vec<Rule>,
    down: bool,
    sector: usize,
}

/// The simulated file system. Cloning gives another handle to the same state.
#[derive(Clone)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("SimVfs")
            .field("files", &s.current.len())
            .field("ops", &s.ops)
            .field("down", &s.down)
            .finish_non_exhaustive()
    }
}

impl Default for SimVfs {
    fn default() -> Self {
        Self::new()
    }
}

fn crash_error() -> io::Error {
    io::Error::other(CRASH_MESSAGE)
}

/// Linux's errno values for the injected errors.
const EIO: i32 = 5;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;

/// Whether a direct write of `buf` at `offset` is aligned as `O_DIRECT` requires: offset,
/// length and buffer address all multiples of [`DIRECT_IO_ALIGN`].
fn direct_aligned(buf: &[u8], offset: u64) -> bool {
    let align = DIRECT_IO_ALIGN as u64;
    offset.is_multiple_of(align)
        && buf.len().is_multiple_of(DIRECT_IO_ALIGN)
        && (buf.as_ptr() as usize).is_multiple_of(DIRECT_IO_ALIGN)
}

fn fault_error(fault: Fault) -> io::Error {
    match fault {
        Fault::Enospc => io::Error::from_raw_os_error(ENOSPC),
        Fault::Crash => crash_error(),
        Fault::Eio | Fault::ShortWrite => io::Error::from_raw_os_error(EIO),
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl SimVfs {
    /// An empty file system whose root `/` exists, with 512-byte sectors.
    #[must_use]
    pub fn new() -> Self {
        Self::with_sector_size(512)
    }

    /// An empty file system whose torn writes keep or lose `sector`-byte units.
    ///
    /// # Panics
    /// If `sector` is zero.
    #[must_use]
    pub fn with_sector_size(sector: usize) -> Self {
        assert!(sector > 0, "sector size must be positive");
        let mut root = BTreeMap::new();
        root.insert(PathBuf::from("/"), Entry::Dir);
        SimVfs {
            state: Arc::new(Mutex::new(State {
                inodes: HashMap::new(),
                next_ino: 1,
                current: root.clone(),
                durable: root,
                pending_ns: Vec::new(),
                generation: 0,
                ops: 0,
                rules: Vec::new(),
                down: false,
                sector,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a failed assertion in a test) must not hide the state.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An independent copy of the whole file system as it is now (handles are not copied).
    #[must_use]
    pub fn snapshot(&self) -> SimVfs {
        let mut state = self.lock().clone();
        state.generation += 1;
        SimVfs { state: Arc::new(Mutex::new(state)) }
    }

    /// Arms a one-shot fault: the operation of `kind` (any counted kind when `None`) that comes
    /// after `skip` more matching operations fails as `fault` says. Rules are independent.
    pub fn inject(&self, kind: Option<OpKind>, skip: u64, fault: Fault) {
        self.lock().rules.push(Rule { kind, remaining: skip, fault });
    }

    /// Cuts the power now: every operation fails until [`SimVfs::crash`].
    pub fn power_off(&self) {
        self.lock().down = true;
    }

    /// Drops all armed faults.
    pub fn clear_faults(&self) {
        self.lock().rules.clear();
    }

    /// How many state-changing operations (every [`OpKind`] but `Read`) have been attempted.
    #[must_use]
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Whether a simulated power cut is in effect.
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Resolves everything not yet durable as a power cut would (see [`CrashMode`]), then brings
    /// the machine back up: the durable state becomes the current one, armed faults are cleared,
    /// and handles opened before the crash fail with an error.
    pub fn crash(&self, mode: CrashMode) {
        let mut s = self.lock();
        let mut rng = match mode {
            CrashMode::Random(seed) => Some(StdRng::seed_from_u64(seed)),
            _ => None,
        };
        // Directory operations: journaled metadata commits in order, so a prefix survives.
        let pending_ns = std::mem::take(&mut s.pending_ns);
        let keep_ns = match rng.as_mut() {
            Some(r) => r.random_range(0..=pending_ns.len()),
            None if mode == CrashMode::KeepAll => pending_ns.len(),
            None => 0,
        };
        for op in &pending_ns[..keep_ns] {
            op.apply(&mut s.durable);
        }
        let sector = s.sector;
        let mut inos: Vec<u64> = s.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let inode = s.inodes.get_mut(&ino).expect("listed above");
            let mut bytes = std::mem::take(&mut inode.durable);
            for op in std::mem::take(&mut inode.pending) {
                resolve(&mut bytes, op, mode, rng.as_mut(), sector);
            }
            inode.current.clone_from(&bytes);
            inode.durable = bytes;
        }
        // Only files still named survive.
        let live: std::collections::HashSet<u64> = s
            .durable
            .values()
            .filter_map(|e| if let Entry::File(i) = e { Some(*i) } else { None })
            .collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        s.current = s.durable.clone();
        s.generation += 1;
        s.down = false;
        s.rules.clear();
    }

    /// Flips bit `bit` (counted from the first byte's least significant bit) of file `path`, in both
    /// the stored and the cached copy, as a storage error would.
    ///
    /// # Errors
    /// `NotFound`, or `InvalidInput` when `bit` is past the end of the durable file.
    pub fn flip_bit(&self, path: &Path, bit: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.file_ino(&normalize(path))?;
        let inode = s.inodes.get_mut(&ino).expect("named inode exists");
        let byte = usize::try_from(bit / 8).unwrap_or(usize::MAX);
        if byte >= inode.durable.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bit past the end of the durable file",
            ));
        }
        let mask = 1u8 << (bit % 8);
        inode.durable[byte] ^= mask;
        if byte < inode.current.len() {
            inode.current[byte] ^= mask;
        }
        Ok(())
    }

    /// The durable bytes of file `path` (what a crash with [`CrashMode::DropAll`] would leave).
    ///
    /// # Errors
    /// `NotFound`.
    pub fn durable_contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let ino = s.file_ino(&normalize(path))?;
        Ok(s.inodes[&ino].durable.clone())
    }

    /// Every file path that currently exists, sorted.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        let s = self.lock();
        s.current
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

fn resolve(
    bytes: &mut Vec<u8>,
    op: DataOp,
    mode: CrashMode,
    rng: Option<&mut StdRng>,
    sector: usize,
) {
    let write_range = |bytes: &mut Vec<u8>, offset: usize, data: &[u8]| {
        let end = offset + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset..end].copy_from_slice(data);
    };
    match (op, mode) {
        (DataOp::Write { offset, data }, CrashMode::KeepAll) => {
            write_range(bytes, to_usize(offset), &data)
        }
        (DataOp::SetLen(len), CrashMode::KeepAll) => bytes.resize(to_usize(len), 0),
        (_, CrashMode::DropAll) => {}
        (op, CrashMode::Random(_)) => {
            let rng = rng.expect("random mode has an rng");
            match op {
                DataOp::SetLen(len) => {
                    if rng.random_bool(0.5) {
                        bytes.resize(to_usize(len), 0);
                    }
                }
                DataOp::Write { offset, data } => {
                    let offset = to_usize(offset);
                    match rng.random_range(0..4u8) {
                        0 => write_range(bytes, offset, &data),
                        1 => {}
                        2 => {
                            // Size reached the journal, data did not.
                            let end = offset + data.len();
                            if bytes.len() < end {
                                bytes.resize(end, 0);
                            }
                        }
                        _ => {
                            // Torn: each sector-aligned piece survives or not.
                            let end = offset + data.len();
                            let mut pos = offset;
                            let mut grew = false;
                            while pos < end {
                                let piece_end = ((pos / sector) + 1) * sector;
                                let piece_end = piece_end.min(end);
                                if rng.random_bool(0.5) {
                                    write_range(
                                        bytes,
                                        pos,
                                        &data[pos - offset..piece_end - offset],
                                    );
                                    grew = true;
                                }
                                pos = piece_end;
                            }
                            if !grew && rng.random_bool(0.5) && bytes.len() < end {
                                bytes.resize(end, 0);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("simulated files fit in memory")
}

impl State {
    fn file_ino(&self, path: &Path) -> io::Result<u64> {
        match self.current.get(path) {
            Some(Entry::File(ino)) => Ok(*ino),
            Some(Entry::Dir) => Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory")),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )),
        }
    }

    /// Counts a state-changing operation and applies any armed fault to it.
    fn begin(&mut self, kind: OpKind) -> Result<(), Fault> {
        if self.down {
            return Err(Fault::Crash);
        }
        if kind != OpKind::Read {
            self.ops += 1;
        }
        let mut hit = None;
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let matches = match rule.kind {
                Some(k) => k == kind,
                None => kind != OpKind::Read,
            };
            if !matches {
                continue;
            }
            if rule.remaining == 0 {
                hit = Some(i);
                break;
            }
            rule.remaining -= 1;
        }
        if let Some(i) = hit {
            let fault = self.rules.remove(i).fault;
            if fault == Fault::Crash {
                self.down = true;
            }
            return Err(fault);
        }
        Ok(())
    }

    fn begin_io(&mut self, kind: OpKind) -> io::Result<()> {
        self.begin(kind).map_err(fault_error)
    }

    fn parent_is_dir(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        match self.current.get(parent) {
            Some(Entry::Dir) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("parent directory of {} not found", path.display()),
            )),
        }
    }
}

#[derive(Debug)]
struct SimFile {
    vfs: SimVfs,
    ino: u64,
    generation: u64,
    writable: bool,
    /// Direct I/O ([`VfsFile::set_direct_io`]): writes must then be aligned as Linux's
    /// `O_DIRECT` requires, or fail with `EINVAL`, so tests catch a misaligned caller.
    direct: std::sync::atomic::AtomicBool,
}

impl SimFile {
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.vfs.lock();
        if s.generation != self.generation {
            return Err(io::Error::other("stale handle: opened before a simulated crash"));
        }
        Ok(s)
    }

    fn writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"))
        }
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.state()?;
        s.begin_io(OpKind::Read)?;
        let data = &s.inodes[&self.ino].current;
        let start = to_usize(offset).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.writable()?;
        let direct = self.direct.load(std::sync::atomic::Ordering::Relaxed);
        if direct && !direct_aligned(buf, offset) {
            return Err(io::Error::from_raw_os_error(EINVAL));
        }
        let mut s = self.state()?;
        let n = match s.begin(OpKind::Write) {
            Ok(()) => buf.len(),
            // A direct write is cut at a block boundary, as the kernel cuts one.
            Err(Fault::ShortWrite) if direct && buf.len() >= 2 * DIRECT_IO_ALIGN => {
                buf.len() / 2 / DIRECT_IO_ALIGN * DIRECT_IO_ALIGN
            }
            Err(Fault::ShortWrite) if !direct && buf.len() >= 2 => buf.len() / 2,
            Err(f) => return Err(fault_error(f)),
        };
        if n == 0 {
            return Ok(0);
        }
        let data = buf[..n].to_vec();
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        let start = to_usize(offset);
        if inode.current.len() < start + n {
            inode.current.resize(start + n, 0);
        }
        inode.current[start..start + n].copy_from_slice(&data);
        inode.pending.push(DataOp::Write { offset, data });
        Ok(n)
    }

    fn set_direct_io(&self, on: bool) -> io::Result<bool> {
        let _live = self.state()?;
        self.direct.store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(on)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.state()?;
        s.begin_io(OpKind::Sync)?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        inode.durable.clone_from(&inode.current);
        inode.pending.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        let mut s = self.state()?;
        s.begin_io(OpKind::SetLen)?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        inode.current.resize(to_usize(len), 0);
        inode.pending.push(DataOp::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let s = self.state()?;
        if s.down {
            return Err(crash_error());
        }
        Ok(s.inodes[&self.ino].current.len() as u64)
    }
}

impl Vfs for SimVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let path = normalize(path);
        let mut s = self.lock();
        let ino = match mode {
            OpenMode::Read | OpenMode::ReadWrite => {
                if s.down {
                    return Err(crash_error());
                }
                s.file_ino(&path)?
            }
            OpenMode::CreateNew => {
                s.begin_io(OpKind::Create)?;
                s.parent_is_dir(&path)?;
                if s.current.contains_key(&path) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists", path.display()),
                    ));
                }
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.current.insert(path.clone(), Entry::File(ino));
                s.pending_ns.push(NsOp::Create { path, ino });
                ino
            }
        };
        Ok(Box::new(SimFile {
            vfs: self.clone(),
            ino,
            generation: s.generation,
            writable: mode != OpenMode::Read,
            direct: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut s = self.lock();
        if s.down {
            return Err(crash_error());
        }
        let mut missing = Vec::new();
        let mut p = Some(path.as_path());
        while let Some(dir) = p {
            match s.current.get(dir) {
                Some(Entry::Dir) => break,
                Some(Entry::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is a file", dir.display()),
                    ));
                }
                None => missing.push(dir.to_path_buf()),
            }
            p = dir.parent();
        }
        // Directory creation is durable on return (the contract syncs each new directory's parent).
        for dir in missing.into_iter().rev() {
            s.begin_io(OpKind::SyncDir)?;
            s.current.insert(dir.clone(), Entry::Dir);
            s.durable.insert(dir, Entry::Dir);
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let path = normalize(path);
        let s = self.lock();
        if s.down {
            return Err(crash_error());
        }
        if s.current.get(&path) != Some(&Entry::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(s.current
            .keys()
            .filter(|p| p.parent() == Some(path.as_path()))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut s = self.lock();
        s.begin_io(OpKind::Remove)?;
        s.file_ino(&path)?;
        s.current.remove(&path);
        s.pending_ns.push(NsOp::Remove { path });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (normalize(from), normalize(to));
        let mut s = self.lock();
        s.begin_io(OpKind::Rename)?;
        let ino = s.file_ino(&from)?;
        s.parent_is_dir(&to)?;
        if s.current.get(&to) == Some(&Entry::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "rename target is a directory",
            ));
        }
        s.current.remove(&from);
        s.current.insert(to.clone(), Entry::File(ino));
        s.pending_ns.push(NsOp::Rename { from, to, ino });
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut s = self.lock();
        s.begin_io(OpKind::SyncDir)?;
        if s.current.get(&path) != Some(&Entry::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", path.display()),
            ));
        }
        // Pending operations touching this directory become durable, in order; so do the
        // operations before them (journaled metadata commits in order).
        let last = s.pending_ns.iter().rposition(|op| op.dirs().contains(&path));
        if let Some(last) = last {
            let done: Vec<NsOp> = s.pending_ns.drain(..=last).collect();
            for op in &done {
                op.apply(&mut s.durable);
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = self.lock();
        if s.down {
            return Err(crash_error());
        }
        Ok(s.current.contains_key(&normalize(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_writes_vanish_on_drop_all_and_synced_ones_stay() {
        let vfs = SimVfs::new();
        vfs.create_dir_all(&p("/d")).unwrap();
        let f = vfs.open(&p("/d/f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&p("/d")).unwrap();
        f.write_all_at(b"-lost", 7).unwrap();
        assert_eq!(f.read_to_vec().unwrap(), b"durable-lost");
        vfs.crash(CrashMode::DropAll);
        assert!(f.read_to_vec().is_err(), "a handle from before the crash must not work");
        let f = vfs.open(&p("/d/f"), OpenMode::Read).unwrap();
        assert_eq!(f.read_to_vec().unwrap(), b"durable");
    }

    #[test]
    fn a_file_whose_directory_was_never_synced_can_vanish() {
        let vfs = SimVfs::new();
        let f = vfs.open(&p("/f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        vfs.crash(CrashMode::DropAll);
        assert!(!vfs.exists(&p("/f")).unwrap());
    }

    #[test]
    fn rename_is_durable_only_after_the_directory_sync() {
        let vfs = SimVfs::new();
        let f = vfs.open(&p("/a"), OpenMode::CreateNew).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&p("/")).unwrap();
        vfs.rename(&p("/a"), &p("/b")).unwrap();
        vfs.crash(CrashMode::DropAll);
        assert_eq!(vfs.files(), vec![p("/a")]);
        vfs.rename(&p("/a"), &p("/b")).unwrap();
        vfs.sync_dir(&p("/")).unwrap();
        vfs.crash(CrashMode::DropAll);
        assert_eq!(vfs.files(), vec![p("/b")]);
    }

    #[test]
    fn torn_writes_keep_whole_sectors_only() {
        for seed in 0..200 {
            let vfs = SimVfs::with_sector_size(4);
            let f = vfs.open(&p("/f"), OpenMode::CreateNew).unwrap();
            vfs.sync_dir(&p("/")).unwrap();
            f.write_all_at(&[7u8; 10], 2).unwrap();
            vfs.crash(CrashMode::Random(seed));
            let got = vfs.open(&p("/f"), OpenMode::Read).unwrap().read_to_vec().unwrap();
            assert!(got.len() <= 12);
            // Sector pieces are [2,4) [4,8) [8,12): each all 7s or all zeros.
            for piece in [2..4usize, 4..8, 8..12] {
                let piece = piece.start.min(got.len())..piece.end.min(got.len());
                let bytes = &got[piece];
                assert!(
                    bytes.iter().all(|&b| b == 7) || bytes.iter().all(|&b| b == 0),
                    "seed {seed}: {got:?}"
                );
            }
            assert!(got[..2.min(got.len())].iter().all(|&b| b == 0));
        }
    }

    /// The WAL's direct writes must be aligned as `O_DIRECT` requires, or Linux refuses them;
    /// the simulation refuses them too, so a misaligned caller fails in tests, not in production.
    #[test]
    fn a_direct_write_is_refused_unless_offset_length_and_buffer_are_block_aligned() {
        let vfs = SimVfs::new();
        let f = vfs.open(&p("/f"), OpenMode::CreateNew).unwrap();
        let mut blocks = crate::AlignedBuf::default();
        blocks.extend_from_slice(&[9; 4 * DIRECT_IO_ALIGN]);
        let aligned = blocks.as_slice();
        assert!(f.set_direct_io(true).unwrap());
        let einval = Some(EINVAL);
        assert_eq!(f.write_at(&aligned[1..4097], 0).unwrap_err().raw_os_error(), einval);
        assert_eq!(f.write_at(&aligned[..100], 0).unwrap_err().raw_os_error(), einval);
        assert_eq!(f.write_at(&aligned[..4096], 8).unwrap_err().raw_os_error(), einval);
        assert_eq!(f.write_at(&aligned[..8192], 4096).unwrap(), 8192);
        // A short direct write stops at a block boundary.
        vfs.inject(Some(OpKind::Write), 0, Fault::ShortWrite);
        assert_eq!(f.write_at(&aligned[..3 * 4096], 0).unwrap(), 4096);
        assert!(!f.set_direct_io(false).unwrap());
        assert_eq!(f.write_at(b"abc", 1).unwrap(), 3, "buffered again: any alignment");
    }

    #[test]
    fn injected_faults_hit_the_chosen_operation_once() {
        let vfs = SimVfs::new();
        let f = vfs.open(&p("/f"), OpenMode::CreateNew).unwrap();
        vfs.inject(Some(OpKind::Sync), 1, Fault::Eio);
        f.sync_data().unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        f.sync_data().unwrap();
        vfs.inject(Some(OpKind::Write), 0, Fault::ShortWrite);
        assert_eq!(f.write_at(b"abcd", 0).unwrap(), 2);
        vfs.inject(Some(OpKind::Write), 0, Fault::Enospc);
        assert_eq!(f.write_at(b"abcd", 0).unwrap_err().raw_os_error(), Some(28));
        vfs.inject(None, 0, Fault::Crash);
        let e = f.write_at(b"x", 0).unwrap_err();
        assert!(crate::is_simulated_crash(&e));
        assert!(f.sync_data().is_err() && vfs.is_down());
    }

    #[test]
    fn bit_flips_reach_stored_and_cached_bytes() {
        let vfs = SimVfs::new();
        let f = vfs.open(&p("/f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(&[0u8; 4], 0).unwrap();
        f.sync_data().unwrap();
        vfs.flip_bit(&p("/f"), 9).unwrap();
        assert_eq!(f.read_to_vec().unwrap(), vec![0, 2, 0, 0]);
        assert_eq!(vfs.durable_contents(&p("/f")).unwrap(), vec![0, 2, 0, 0]);
        assert!(vfs.flip_bit(&p("/f"), 32).is_err());
    }
}
