//! `quiver build --ram-budget` as a user with more vectors than RAM runs it: the input file is
//! several times the budget, and the child process's peak resident set (the kernel's `VmHWM`
//! of the process after `exec`, which it prints from `/proc/self/status` as it ends) must stay
//! within the budget plus 10% plus the binary's own footprint (the same figure from `quiver
//! info`, the binary doing nothing, measured in the same test). Not `wait4`'s `ru_maxrss`: a
//! child forked from this test inherits the test's own high-water mark (it read 65 MiB for
//! `quiver info` here), so it would hide an overrun. The index must then answer as an index should:
//! recall@10 against brute force. Before the budgeted build existed, `quiver build` read the
//! whole file into RAM and a capped run was OOM-killed.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Runs `quiver args…`, returning (exit success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).output().expect("run quiver");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// The `VmHWM` figure (in bytes) a `quiver` command printed: the number before `MiB (VmHWM)` on
/// the line that has it.
fn printed_peak(stdout: &str) -> u64 {
    let line = stdout.lines().find(|l| l.contains("(VmHWM)")).expect("a VmHWM line");
    let before = line.split("MiB (VmHWM)").next().unwrap();
    let mib: f64 = before.split_whitespace().last().unwrap().parse().expect("a number");
    (mib * 1048576.0) as u64
}

/// Deterministic pseudo-random numbers (splitmix64), uniform in [0, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` points near a random 12-dimensional subspace of `dim` dimensions, in 32 clusters (real
/// vectors have a low intrinsic dimension; uniform noise in 256 dimensions has no near neighbours
/// worth finding). The subspace and clusters depend only on `space`, the points on `seed`.
fn clustered(n: usize, dim: usize, space: u64, seed: u64) -> Vec<f32> {
    const LATENT: usize = 12;
    let mut shape = Rng(space);
    let basis: Vec<f32> = (0..LATENT * dim).map(|_| shape.next() - 0.5).collect();
    let centres: Vec<f32> = (0..32 * LATENT).map(|_| shape.next() * 40.0).collect();
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = (rng.next() * 32.0) as usize % 32;
        let z: Vec<f32> =
            (0..LATENT).map(|k| centres[c * LATENT + k] + rng.next() * 10.0).collect();
        for j in 0..dim {
            let x: f32 = (0..LATENT).map(|k| z[k] * basis[k * dim + j]).sum();
            out.push(x + (rng.next() - 0.5) * 0.5);
        }
    }
    out
}

fn write_fbin(path: &Path, values: &[f32], dim: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&((values.len() / dim) as u32).to_le_bytes()).unwrap();
    f.write_all(&(dim as u32).to_le_bytes()).unwrap();
    for v in values {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
}

fn write_ivecs(path: &Path, rows: &[Vec<u32>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for r in rows {
        f.write_all(&(r.len() as i32).to_le_bytes()).unwrap();
        for &id in r {
            f.write_all(&(id as i32).to_le_bytes()).unwrap();
        }
    }
}

#[test]
fn a_build_from_a_file_three_times_its_budget_stays_within_it_and_finds_the_neighbours() {
    const N: usize = 64_000;
    const DIM: usize = 256;
    const BUDGET: u64 = 20 << 20;
    let dir = tempfile::tempdir().unwrap();
    let base = clustered(N, DIM, 1, 2);
    let input = dir.path().join("base.fbin");
    write_fbin(&input, &base, DIM);
    let file_bytes = std::fs::metadata(&input).unwrap().len();
    assert!(file_bytes > 3 * BUDGET, "the input ({file_bytes} bytes) must dwarf the budget");

    let (ok, stdout, err) = run(&["info"]);
    assert!(ok, "quiver info failed: {err}");
    let baseline = printed_peak(&stdout);

    let out_dir = dir.path().join("index");
    let budget = format!("{}MiB", BUDGET >> 20);
    let (ok, stdout, stderr) = run(&[
        "build",
        "--input",
        input.to_str().unwrap(),
        "--metric",
        "l2",
        "--out",
        out_dir.to_str().unwrap(),
        "--max-degree",
        "32",
        "--list-size",
        "50",
        "--ram-budget",
        &budget,
    ]);
    assert!(ok, "budgeted build failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("partitioned build"), "the planner should partition:\n{stdout}");
    let peak = printed_peak(&stdout);
    let allowed = BUDGET + BUDGET / 10 + baseline;
    assert!(
        peak <= allowed,
        "peak resident {:.1} MiB over budget {:.1} MiB + 10% + the binary's own {:.1} MiB:\n{stdout}",
        peak as f64 / 1048576.0,
        BUDGET as f64 / 1048576.0,
        baseline as f64 / 1048576.0
    );

    // Recall against brute force, through `quiver search` as a user measures it.
    let queries = clustered(50, DIM, 1, 3);
    let truth: Vec<Vec<u32>> = queries
        .chunks_exact(DIM)
        .map(|q| {
            let mut d: Vec<(f32, u32)> = base
                .chunks_exact(DIM)
                .enumerate()
                .map(|(i, x)| (q.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum(), i as u32))
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            d[..10].iter().map(|&(_, i)| i).collect()
        })
        .collect();
    let qpath = dir.path().join("queries.fbin");
    let gpath = dir.path().join("gt.ivecs");
    write_fbin(&qpath, &queries, DIM);
    write_ivecs(&gpath, &truth);
    let (ok, stdout, stderr) = run(&[
        "search",
        "--index",
        out_dir.to_str().unwrap(),
        "--queries",
        qpath.to_str().unwrap(),
        "--ground-truth",
        gpath.to_str().unwrap(),
        "--list-sizes",
        "100",
        "--json",
    ]);
    assert!(ok, "search failed: {stderr}");
    let line = stdout.lines().find(|l| l.contains("recall_at_k")).expect("a JSON report");
    let recall: f64 = line
        .split("\"recall_at_k\":")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|r| r.parse().ok())
        .expect("a recall figure");
    eprintln!(
        "input {:.1} MiB, budget {:.1} MiB, peak resident {:.1} MiB (binary alone {:.1} MiB), \
         recall@10 at L = 100: {recall}",
        file_bytes as f64 / 1048576.0,
        BUDGET as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        baseline as f64 / 1048576.0
    );
    assert!(recall >= 0.95, "recall@10 at L = 100 after a budgeted build: {recall}");
}

#[test]
fn a_malformed_budget_is_refused_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["lots", "12 parsecs", "-5MiB", "0"] {
        let flag = format!("--ram-budget={bad}");
        let (ok, _, stderr) = run(&[
            "build",
            "--input",
            "/nonexistent.fbin",
            "--metric",
            "l2",
            "--out",
            dir.path().join("ix").to_str().unwrap(),
            &flag,
        ]);
        assert!(!ok, "budget {bad:?} was accepted");
        assert!(stderr.contains("ram-budget"), "budget {bad:?}: {stderr}");
    }
}
