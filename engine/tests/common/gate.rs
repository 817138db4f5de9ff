//! A simulated file system with a gate: once armed, the next operation the gate is set for
//! stops until the test releases it, so a test can hold a flush at a chosen step (creating its
//! segment file, renaming its manifest) and act meanwhile.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use quiver_vfs::sim::SimVfs;
use quiver_vfs::{OpenMode, Vfs, VfsFile};

/// An operation the gate may hold.
#[derive(Clone, Copy, Debug)]
pub enum GateOp<'a> {
    /// `Vfs::open` with `CreateNew` of this path.
    Create(&'a Path),
    /// `Vfs::rename` to this path.
    RenameTo(&'a Path),
}

#[derive(Debug, Default)]
struct GateState {
    armed: bool,
    entered: bool,
    released: bool,
}

/// [`SimVfs`] with a gate on the operations `holds` picks.
#[derive(Debug, Clone)]
pub struct GateVfs {
    pub inner: SimVfs,
    holds: fn(GateOp<'_>) -> bool,
    gate: Arc<(Mutex<GateState>, Condvar)>,
}

impl GateVfs {
    pub fn new(inner: SimVfs, holds: fn(GateOp<'_>) -> bool) -> Self {
        GateVfs { inner, holds, gate: Arc::default() }
    }

    /// The next operation `holds` picks will stop until [`GateVfs::release`].
    pub fn arm(&self) {
        *self.gate.0.lock().unwrap() = GateState { armed: true, ..GateState::default() };
    }

    /// Waits until an operation is held at the gate.
    pub fn wait_entered(&self) {
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        while !g.entered {
            g = cv.wait(g).unwrap();
        }
    }

    /// Lets the held operation go on.
    pub fn release(&self) {
        let (m, cv) = &*self.gate;
        m.lock().unwrap().released = true;
        cv.notify_all();
    }

    fn pass(&self, op: GateOp<'_>) {
        if !(self.holds)(op) {
            return;
        }
        let (m, cv) = &*self.gate;
        let mut g = m.lock().unwrap();
        if g.armed {
            g.armed = false;
            g.entered = true;
            cv.notify_all();
            while !g.released {
                g = cv.wait(g).unwrap();
            }
        }
    }
}

impl Vfs for GateVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        if matches!(mode, OpenMode::CreateNew) {
            self.pass(GateOp::Create(path));
        }
        self.inner.open(path, mode)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.pass(GateOp::RenameTo(to));
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn real_path(&self, _: &Path) -> Option<PathBuf> {
        None
    }
}
