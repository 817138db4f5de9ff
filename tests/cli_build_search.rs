//! `quiver build` and `quiver search` as a user runs them: a real index built from the bigann10k
//! fixture must reach recall@10 ≥ 0.95 at a list size of 50 through the JSON report, and bad input
//! (a missing file, cosine on bytes, a query file of the wrong dimension) must end in a clear error
//! and a failing exit status, never a panic.

mod cli;

use cli::{fixture, quiver, s};
use std::process::Output;

#[test]
fn build_then_search_reports_recall_at_10_above_0_95_at_list_size_50() {
    let dir = tempfile::tempdir().unwrap();
    let out = quiver(&[
        "build",
        "--input",
        s(&fixture("base.u8bin")),
        "--metric",
        "l2",
        "--out",
        s(dir.path()),
        "--max-degree",
        "32",
        "--list-size",
        "64",
        "--pq-bytes",
        "32",
    ]);
    assert!(out.status.success(), "build failed: {}", String::from_utf8_lossy(&out.stderr));
    for backend in ["io_uring", "pread"] {
        let out = quiver(&[
            "search",
            "--index",
            s(dir.path()),
            "--queries",
            s(&fixture("query.u8bin")),
            "--ground-truth",
            s(&fixture("groundtruth.l2.ivecs")),
            "--k",
            "10",
            "--list-sizes",
            "20,50",
            "--json",
            "--backend",
            backend,
            "--threads",
            "2",
        ]);
        assert!(out.status.success(), "search failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        for key in [
            "\"list_size\":",
            "\"recall_at_k\":",
            "\"qps\":",
            "\"mean_ios\":",
            "\"mean_hops\":",
            "\"p50_us\":",
            "\"p99_us\":",
            "\"ram_bytes\":",
        ] {
            assert!(lines.iter().all(|l| l.contains(key)), "{key} missing: {stdout}");
        }
        let recall: f64 = lines[1]
            .split("\"recall_at_k\":")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(recall >= 0.95, "{backend}: recall@10 at L=50 = {recall}");
    }
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &quiver(&[
            "build",
            "--input",
            "/nonexistent.fbin",
            "--metric",
            "l2",
            "--out",
            s(dir.path()),
        ]),
        "nonexistent.fbin",
    );
    fails_with(
        &quiver(&[
            "build",
            "--input",
            s(&fixture("base.u8bin")),
            "--metric",
            "cosine",
            "--out",
            s(dir.path()),
        ]),
        "cosine",
    );
    // Build a small index, then query it with vectors of another dimension.
    let idx = dir.path().join("idx");
    let q = dir.path().join("q.fbin");
    let mut bytes = 2u32.to_le_bytes().to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend([0u8; 24]);
    std::fs::write(&q, bytes).unwrap();
    let data = dir.path().join("d.fbin");
    let mut bytes = 300u32.to_le_bytes().to_vec();
    bytes.extend(4u32.to_le_bytes());
    bytes.extend((0..1200).flat_map(|i| (i as f32).to_le_bytes()));
    std::fs::write(&data, bytes).unwrap();
    let out = quiver(&[
        "build",
        "--input",
        s(&data),
        "--metric",
        "l2",
        "--out",
        s(&idx),
        "--max-degree",
        "8",
        "--list-size",
        "16",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fails_with(&quiver(&["search", "--index", s(&idx), "--queries", s(&q)]), "dimension 3");
    fails_with(&quiver(&["search", "--index", s(dir.path()), "--queries", s(&q)]), "graph.qvr");
}
