//! PQ codes steer every search hop, so a wrong table or a badly trained codebook silently costs
//! recall. These tests pin down that the query table sums to exactly the distance to the decoded
//! vector (for every metric, through the SIMD scorer too), that encoding picks the nearest
//! centroid, that training actually learns (distortion far below an untrained codebook), and that
//! training is deterministic under a seed.

use std::path::Path;

use quiver_diskgraph::data::{Metric, VectorSet, read_vectors};
use quiver_diskgraph::pq::{CENTROIDS, PqCodebook, PqParams};
use quiver_simd::{Isa, Kernels, PqTable};

fn bigann() -> VectorSet {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/datasets/fixtures/bigann10k/base.u8bin");
    read_vectors(&p).unwrap()
}

/// Gaussian-ish clustered floats (deterministic).
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<f32> = (0..16 * dim).map(|_| next() * 10.0).collect();
    (0..n)
        .flat_map(|i| {
            let c = (i * 7) % 16;
            (0..dim).map(|d| centres[c * dim + d] + next()).collect::<Vec<_>>()
        })
        .collect()
}

fn params(bytes: usize) -> PqParams {
    PqParams { bytes: Some(bytes), max_samples: 5_000, iterations: 8, ..PqParams::default() }
}

#[test]
fn table_sum_equals_distance_to_the_decoded_vector_for_every_metric() {
    let dim = 24;
    let raw = clustered(2_000, dim, 1);
    for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
        let mut data = VectorSet::from_f32(dim, &raw).unwrap();
        if metric == Metric::Cosine {
            data.normalize().unwrap();
        }
        let pq = PqCodebook::train(&data, metric, &params(6)).unwrap();
        let codes = pq.encode_all(&data);
        let q: Vec<f32> = data.row(17).to_f32().iter().map(|x| x * 0.9 + 0.1).collect();
        let mut table = vec![0.0f32; 6 * CENTROIDS];
        pq.query_table(&q, &mut table);
        let mut simd = vec![0.0f32; data.len()];
        Isa::active().pq_score(PqTable::new(&table, 6), &codes, &mut simd);
        for i in (0..data.len()).step_by(97) {
            let x = pq.decode(&codes[i * 6..(i + 1) * 6]);
            let want = match metric {
                Metric::L2 => q.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
                Metric::InnerProduct => -q.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>(),
                Metric::Cosine => 1.0 - q.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>(),
            };
            let tol = 1e-3 * (1.0 + want.abs());
            assert!(
                (simd[i] - want).abs() <= tol,
                "{metric} row {i}: table {} vs decoded {want}",
                simd[i]
            );
        }
    }
}

#[test]
fn encoding_picks_the_nearest_centroid_in_every_subspace() {
    let data = bigann().prefix(3_000);
    let pq = PqCodebook::train(&data, Metric::L2, &params(16)).unwrap();
    let codes = pq.encode_all(&data);
    // Changing any one byte of a code must not bring the reconstruction nearer to the vector.
    for i in (0..data.len()).step_by(211) {
        let x = data.row(i).to_f32();
        let code = &codes[i * 16..(i + 1) * 16];
        let err =
            |c: &[u8]| pq.decode(c).iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
        let best = err(code);
        for j in 0..16 {
            for alt in (0..=255u8).step_by(17) {
                let mut c = code.to_vec();
                c[j] = alt;
                assert!(err(&c) >= best - 1e-2, "row {i}: byte {j} = {alt} beats the encoder");
            }
        }
    }
}

#[test]
fn training_reduces_distortion_far_below_an_untrained_codebook() {
    let data = bigann();
    let trained = PqCodebook::train(&data, Metric::L2, &params(32)).unwrap();
    let untrained =
        PqCodebook::train(&data, Metric::L2, &PqParams { iterations: 0, ..params(32) }).unwrap();
    let distortion = |pq: &PqCodebook| {
        let codes = pq.encode_all(&data);
        (0..data.len())
            .step_by(7)
            .map(|i| {
                let x = data.row(i).to_f32();
                pq.decode(&codes[i * 32..(i + 1) * 32])
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| f64::from((a - b) * (a - b)))
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let (t, u) = (distortion(&trained), distortion(&untrained));
    // k-means++ seeding alone is decent; Lloyd iterations must still cut distortion clearly.
    assert!(t < 0.9 * u, "trained distortion {t} vs seeding-only {u}");
}

#[test]
fn the_same_seed_gives_the_same_codebook_and_another_seed_does_not() {
    let data = bigann().prefix(2_000);
    let a = PqCodebook::train(&data, Metric::L2, &params(8)).unwrap();
    let b = PqCodebook::train(&data, Metric::L2, &params(8)).unwrap();
    let c = PqCodebook::train(&data, Metric::L2, &PqParams { seed: 99, ..params(8) }).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn impossible_code_sizes_are_errors() {
    let data = VectorSet::from_f32(4, &[0.0; 40]).unwrap();
    assert!(PqCodebook::train(&data, Metric::L2, &params(5)).is_err());
    assert!(PqCodebook::train(&data, Metric::L2, &params(0)).is_err());
    assert!(PqCodebook::train(&data.prefix(0), Metric::L2, &params(2)).is_err());
}

#[test]
fn codes_written_in_pieces_read_back_whole_and_damage_is_refused() {
    use quiver_diskgraph::pq::{CodesWriter, PqFileError, read_codes};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pq_codes.bin");
    let (m, n) = (8usize, 1000u64);
    let codes: Vec<u8> = (0..n as usize * m).map(|i| (i * 31 % 251) as u8).collect();
    let mut writer = CodesWriter::create(&path, m, n).unwrap();
    // Pieces of uneven sizes, across code boundaries.
    for piece in codes.chunks(1000 * 3 + 5) {
        writer.push(piece).unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(read_codes(&path).unwrap(), (m, codes.clone()));

    let good = std::fs::read(&path).unwrap();
    let corrupt = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        matches!(read_codes(&path), Err(PqFileError::Corrupt { .. }))
    };
    let mut flipped = good.clone();
    flipped[24 + 500] ^= 0x10;
    assert!(corrupt(&flipped), "a flipped code byte must fail the checksum");
    assert!(corrupt(&good[..good.len() - 1]), "a truncated file must be refused");
    assert!(corrupt(&good[..20]), "a file shorter than its header must be refused");
    let mut longer = good.clone();
    longer.insert(30, 0);
    assert!(corrupt(&longer), "a count that disagrees with the length must be refused");
}

#[test]
#[should_panic(expected = "bytes short")]
fn a_codes_file_finished_short_of_its_count_is_a_bug_caught() {
    use quiver_diskgraph::pq::CodesWriter;
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CodesWriter::create(&dir.path().join("pq_codes.bin"), 4, 10).unwrap();
    writer.push(&[0u8; 36]).unwrap();
    let _ = writer.finish();
}

#[test]
fn a_codebook_read_back_encodes_as_the_trained_one_and_compares_equal() {
    // The encoding columns are made on first use: a codebook that has encoded and one that
    // has not must still be equal, and encode alike.
    let data = bigann();
    let pq = PqCodebook::train(&data, Metric::L2, &params(16)).unwrap();
    let before = pq.encode_all(&data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pq_pivots.bin");
    pq.write_to(&path).unwrap();
    let back = PqCodebook::read_from(&path).unwrap();
    assert_eq!(back, pq);
    assert_eq!(back.encode_all(&data), before);
    assert_eq!(back, pq);
}
