//! Helpers shared by the diskgraph integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use quiver_diskgraph::data::ElemType;

/// A file of the bigann10k fixture (beside the repository, in `../shared/datasets`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/datasets/fixtures/bigann10k")
        .join(name)
}

/// `n × dim` deterministic pseudo-random floats, uniform in [-0.5, 0.5) (splitmix64).
pub fn synthetic(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * dim)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Writes `values` (rows of `dim` floats) as an `.fbin` file: row count, dimension, then the rows.
pub fn write_fbin(path: &Path, values: &[f32], dim: usize) {
    let bytes: &[u8] = bytemuck::cast_slice(values);
    quiver_diskgraph::source::write_bin(path, ElemType::F32, dim, &[bytes]).unwrap();
}
