//! Vector files come from outside and may be truncated, mislabelled or corrupt. These tests pin down
//! that every such file is refused with an error naming the file and the problem — never a panic,
//! never vectors silently shifted by a bad header — and that well-formed files read back exactly.

mod common;
use common::fixture;

use std::path::PathBuf;

use quiver_diskgraph::data::{DataError, ElemType, Row, read_ivecs, read_vectors};

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn bin(n: u32, dim: u32, body: &[u8]) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.extend(dim.to_le_bytes());
    v.extend(body);
    v
}

fn malformed(r: Result<impl std::fmt::Debug, DataError>, needle: &str) {
    match r {
        Err(DataError::Malformed { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("expected a Malformed error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn the_bigann_fixture_reads_with_the_shape_its_manifest_states() {
    let base = read_vectors(&fixture("base.u8bin")).unwrap();
    assert_eq!((base.len(), base.dim(), base.elem()), (9000, 128, ElemType::U8));
    let raw = std::fs::read(fixture("base.u8bin")).unwrap();
    // Row 4321 must be exactly the bytes at its offset in the file.
    assert_eq!(base.row_bytes(4321), &raw[8 + 4321 * 128..8 + 4322 * 128]);
    let gt = read_ivecs(&fixture("groundtruth.l2.ivecs")).unwrap();
    assert_eq!(gt.len(), 1000);
    assert!(gt.iter().all(|r| r.len() == 100 && r.iter().all(|&id| id < 9000)));
}

#[test]
fn fvecs_and_fbin_round_trip_the_same_floats() {
    let dir = tempfile::tempdir().unwrap();
    let vals: Vec<f32> = (0..15).map(|i| i as f32 * 0.5 - 3.0).collect();
    let body: Vec<u8> = bytemuck::cast_slice(&vals).to_vec();
    let fbin = read_vectors(&write(&dir, "a.fbin", &bin(5, 3, &body))).unwrap();
    let mut fvecs = Vec::new();
    for row in vals.chunks(3) {
        fvecs.extend(3i32.to_le_bytes());
        fvecs.extend(bytemuck::cast_slice::<f32, u8>(row));
    }
    let fv = read_vectors(&write(&dir, "a.fvecs", &fvecs)).unwrap();
    for i in 0..5 {
        match (fbin.row(i), fv.row(i)) {
            (Row::F32(a), Row::F32(b)) => {
                assert_eq!(a, &vals[i * 3..i * 3 + 3]);
                assert_eq!(a, b);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_truncated_bin_file_is_refused_with_sizes_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    malformed(read_vectors(&write(&dir, "t.u8bin", &bin(4, 8, &[0; 31]))), "the file has 39 bytes");
    malformed(read_vectors(&write(&dir, "t2.u8bin", &[1, 0, 0])), "header");
}

#[test]
fn trailing_bytes_after_the_declared_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    malformed(read_vectors(&write(&dir, "x.u8bin", &bin(1, 4, &[0; 5]))), "header says 1 vectors");
}

#[test]
fn zero_or_huge_dimensions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    malformed(read_vectors(&write(&dir, "z.fbin", &bin(0, 0, &[]))), "dimension 0");
    malformed(read_vectors(&write(&dir, "h.fbin", &bin(1, u32::MAX, &[]))), "dimension");
}

#[test]
fn a_dimension_change_inside_fvecs_is_refused_with_the_row_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Vec::new();
    for d in [2i32, 2, 3] {
        f.extend(d.to_le_bytes());
        f.extend([0u8; 8]);
    }
    // 3 rows of 12 bytes: the size is consistent, only the third prefix is wrong.
    malformed(read_vectors(&write(&dir, "d.fvecs", &f)), "row 2 declares dimension 3");
}

#[test]
fn nan_in_a_float_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = bytemuck::cast_slice(&[1.0f32, f32::NAN]).to_vec();
    malformed(read_vectors(&write(&dir, "n.fbin", &bin(1, 2, &body))), "non-finite");
}

#[test]
fn unknown_extensions_and_missing_files_are_distinct_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "v.csv", b"1,2,3");
    assert!(matches!(read_vectors(&p), Err(DataError::UnknownFormat { .. })));
    assert!(matches!(read_vectors(&dir.path().join("absent.fbin")), Err(DataError::Io { .. })));
}

#[test]
fn a_negative_id_in_ground_truth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = 2i32.to_le_bytes().to_vec();
    f.extend(5i32.to_le_bytes());
    f.extend((-1i32).to_le_bytes());
    malformed(read_ivecs(&write(&dir, "g.ivecs", &f)), "negative id");
}
