//! Helpers of the tests that run the `quiver` command as a user does: the committed fixtures,
//! a run of the binary, and paths as arguments.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file of the bigann10k fixture (beside the project, under `../shared/datasets`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/fixtures/bigann10k").join(name)
}

/// Runs `quiver` with `args` to completion.
pub fn quiver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).output().expect("run quiver")
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
