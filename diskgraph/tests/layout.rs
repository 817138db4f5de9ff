//! The index file is read a sector at a time by searches that trust what they read. These tests pin
//! down that whatever the writer stores reads back identically (packed and multi-sector nodes alike),
//! and that a truncated file, a flipped byte in any sector, or a forged header is refused with an
//! error naming the problem — never returned as a vector or a neighbour id. Files of format
//! version 1 (no labels; written by earlier builds, e.g. in engine data directories) still read,
//! with each node's label its position.

use std::path::Path;

use proptest::prelude::*;
use quiver_diskgraph::data::{ElemType, Metric};
use quiver_diskgraph::layout::{Header, IndexReader, IndexWriter, LayoutError, SECTOR, VERSION};

fn header(elem: ElemType, dim: u32, n: u64, r: u32) -> Header {
    Header {
        version: VERSION,
        elem,
        metric: Metric::L2,
        user_metric: Metric::L2,
        dim,
        n,
        max_degree: r,
        entry: 0,
        mips_max_norm_sq: 0.0,
    }
}

/// Writes `n` nodes whose bytes and neighbour lists derive from `seed`, labelled `n - 1 - i` (the
/// position itself in a version 1 file); returns them.
fn write(path: &Path, h: Header, seed: u64) -> Vec<(Vec<u8>, Vec<u32>)> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s >> 33
    };
    let vbytes = h.dim as usize * h.elem.size();
    let nodes: Vec<(Vec<u8>, Vec<u32>)> = (0..h.n)
        .map(|_| {
            let v: Vec<u8> = (0..vbytes).map(|_| next() as u8).collect();
            let deg = (next() % (u64::from(h.max_degree) + 1)) as usize;
            let nb: Vec<u32> = (0..deg).map(|_| (next() % h.n) as u32).collect();
            (v, nb)
        })
        .collect();
    let mut w = IndexWriter::create(path, h).unwrap();
    for (i, (v, nb)) in nodes.iter().enumerate() {
        w.push(v, nb, label(h, i)).unwrap();
    }
    w.finish().unwrap();
    nodes
}

fn label(h: Header, i: usize) -> u32 {
    if h.version >= 2 { (h.n as usize - 1 - i) as u32 } else { i as u32 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn every_node_reads_back_exactly_packed_or_spanning_sectors(
        elem in prop_oneof![Just(ElemType::F32), Just(ElemType::U8), Just(ElemType::I8)],
        dim in prop_oneof![1u32..200, 900u32..1300],
        n in 1u64..40,
        r in 1u32..80,
        version in 1u32..=VERSION,
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.qvr");
        let h = Header { version, ..header(elem, dim, n, r) };
        let nodes = write(&path, h, seed);
        let rd = IndexReader::open(&path).unwrap();
        prop_assert_eq!(*rd.header(), h);
        prop_assert_eq!(std::fs::metadata(&path).unwrap().len(), h.file_len());
        let mut buf = Vec::new();
        for (i, (v, nb)) in nodes.iter().enumerate() {
            let node = rd.read_node(i as u32, &mut buf).unwrap();
            prop_assert_eq!(node.vector, &v[..]);
            prop_assert_eq!(&node.neighbours, nb);
            prop_assert_eq!(node.label, label(h, i));
        }
        rd.verify().unwrap();
    }
}

#[test]
fn both_packing_modes_are_exercised() {
    // 128-d u8 with R = 64: 392-byte nodes, 10 per sector. 960-d f32 with R = 64: 4104 bytes, 2 sectors.
    assert_eq!(header(ElemType::U8, 128, 1, 64).nodes_per_sector(), 10);
    let big = header(ElemType::F32, 960, 1, 64);
    assert_eq!((big.nodes_per_sector(), big.sectors_per_node()), (0, 2));
}

fn corrupt_reason(r: Result<impl std::fmt::Debug, LayoutError>) -> String {
    match r {
        Err(LayoutError::Corrupt { reason, .. }) => reason,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_truncated_index_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.qvr");
    write(&path, header(ElemType::U8, 128, 25, 16), 1);
    let len = std::fs::metadata(&path).unwrap().len();
    for cut in [len - 1, len - SECTOR as u64, SECTOR as u64, 100, 0] {
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(cut).unwrap();
        let reason = corrupt_reason(IndexReader::open(&path));
        assert!(reason.contains("truncated") || reason.contains("shorter"), "{cut}: {reason}");
    }
}

#[test]
fn a_flipped_byte_in_any_sector_is_detected_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.qvr");
    let h = header(ElemType::F32, 700, 9, 32); // 2,932-byte nodes: one per sector
    write(&path, h, 2);
    let clean = std::fs::read(&path).unwrap();
    let sectors = clean.len() / SECTOR;
    for sector in 0..sectors {
        for pos in [0, 17, 1000, SECTOR - 5, SECTOR - 1] {
            let mut bad = clean.clone();
            bad[sector * SECTOR + pos] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let outcome = IndexReader::open(&path).and_then(|r| r.verify());
            assert!(outcome.is_err(), "flip at sector {sector} byte {pos} went unnoticed");
        }
    }
}

#[test]
fn a_forged_header_with_a_valid_checksum_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.qvr");
    write(&path, header(ElemType::U8, 64, 5, 8), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[48] ^= 1; // node size field
    let crc = crc32c::crc32c(&bytes[..SECTOR - 4]);
    bytes[SECTOR - 4..SECTOR].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(corrupt_reason(IndexReader::open(&path)).contains("byte 48"));
    bytes[0] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    assert!(corrupt_reason(IndexReader::open(&path)).contains("magic"));
}

#[test]
fn writer_misuse_is_an_error_not_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.qvr");
    let mut w = IndexWriter::create(&path, header(ElemType::U8, 4, 2, 2)).unwrap();
    assert!(w.push(&[1, 2, 3], &[], 0).is_err(), "wrong vector size");
    assert!(w.push(&[1, 2, 3, 4], &[5], 0).is_err(), "neighbour id out of range");
    assert!(w.push(&[1, 2, 3, 4], &[1, 0, 1], 0).is_err(), "too many neighbours");
    assert!(w.push(&[1, 2, 3, 4], &[1], 2).is_err(), "label out of range");
    w.push(&[1, 2, 3, 4], &[1], 1).unwrap();
    assert!(w.finish().is_err(), "one node short");
    let bad_entry = Header { entry: 9, ..header(ElemType::U8, 4, 2, 2) };
    assert!(IndexWriter::create(&path, bad_entry).is_err());
    let v1 = Header { version: 1, ..header(ElemType::U8, 4, 2, 2) };
    let mut w = IndexWriter::create(&path, v1).unwrap();
    assert!(w.push(&[1, 2, 3, 4], &[1], 1).is_err(), "a version 1 label must be the position");
    for version in [0, VERSION + 1] {
        let h = Header { version, ..header(ElemType::U8, 4, 2, 2) };
        assert!(IndexWriter::create(&path, h).is_err(), "version {version}");
    }
}

#[test]
fn a_label_out_of_range_is_refused_even_under_a_valid_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.qvr");
    let h = header(ElemType::U8, 8, 3, 2); // 8 + 4 + 8 + 4 = 24-byte nodes, label at byte 20
    write(&path, h, 4);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[SECTOR + 24 + 20..SECTOR + 24 + 24].copy_from_slice(&7u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[SECTOR..2 * SECTOR - 4]);
    bytes[2 * SECTOR - 4..2 * SECTOR].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let r = IndexReader::open(&path).unwrap();
    let reason = corrupt_reason(r.read_node(1, &mut Vec::new()));
    assert!(reason.contains("label 7 out of range"), "{reason}");
}
