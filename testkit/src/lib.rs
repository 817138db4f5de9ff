//! Helpers shared by the tests of several Quiver crates: deterministic synthetic vectors,
//! finding a Python interpreter with the modules a test needs, and a small real file system
//! to fill up. A dev-dependency only; it depends
//! on no Quiver crate, so any crate's tests may use it without breaking the layering.

use std::path::PathBuf;
use std::process::Command;

/// A deterministic pseudo-random vector for `(seed, id)`: `dim` values in [-1, 1) from xorshift.
#[must_use]
pub fn vector(seed: u64, id: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The Python interpreter (`QUIVER_PYTHON`, else `python3`) if it can `import {modules}`
/// (e.g. `"pyarrow.flight, numpy"`); `None` (the test skips, saying why) if not.
///
/// # Panics
/// If the modules are missing while `QUIVER_REQUIRE_PYARROW` is set (the README's test command
/// sets it, so a missing module fails there instead of skipping).
#[must_use]
pub fn python_with(modules: &str) -> Option<String> {
    let py = std::env::var("QUIVER_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var("QUIVER_REQUIRE_PYARROW").is_err(),
        "{modules} required (QUIVER_REQUIRE_PYARROW is set) but {py} cannot import them"
    );
    eprintln!(
        "skipping: {py} cannot import {modules} (run ./scripts/test.sh, which installs them)"
    );
    None
}

/// A tmpfs of a given size mounted on a fresh directory ([`SmallDisk::path`]), unmounted on
/// drop: a real file system a test can fill up.
#[derive(Debug)]
pub struct SmallDisk {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes`; `None` (the test skips, saying why) if mounting is not
    /// permitted.
    ///
    /// # Panics
    /// If the mount fails while `QUIVER_REQUIRE_MOUNT` is set (the README's test command runs
    /// as root and sets it, so a failed mount fails there instead of skipping).
    #[must_use]
    pub fn mount(bytes: u64) -> Option<SmallDisk> {
        let parent = tempfile::tempdir().expect("a temporary directory");
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).expect("the mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("QUIVER_REQUIRE_MOUNT").is_err(),
                "cannot mount a tmpfs (QUIVER_REQUIRE_MOUNT is set): run as root"
            );
            eprintln!("skipping: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallDisk { _parent: parent, path })
    }

    /// The mounted directory.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
