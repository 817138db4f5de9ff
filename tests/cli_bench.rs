//! `quiver bench` as a user runs it on the bigann10k fixture: it builds the index, sweeps list
//! sizes and writes two PNG charts and a JSON and CSV table. The charts must be real PNGs of the
//! size drawn (not empty files), the table must hold a row per list size, and its recall must
//! equal what `quiver search` reports on the same index — a bench that measured something else
//! than the search users run would fail here. A second run opens the index instead of
//! rebuilding it; bad arguments end in a clear error before anything long runs.

mod cli;

use cli::{fixture, quiver, s};

/// Width and height from a PNG's IHDR chunk, if the bytes are a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    Some((be(16), be(20)))
}

#[test]
fn bench_writes_real_charts_and_a_table_whose_recall_matches_quiver_search() {
    let dir = tempfile::tempdir().unwrap();
    let (index, out) = (dir.path().join("index"), dir.path().join("out"));
    let (base, queries, gt) =
        (fixture("base.u8bin"), fixture("query.u8bin"), fixture("groundtruth.l2.ivecs"));
    let args = [
        "bench",
        "--index",
        s(&index),
        "--base",
        s(&base),
        "--queries",
        s(&queries),
        "--ground-truth",
        s(&gt),
        "--out",
        s(&out),
        "--list-sizes",
        "10,20,50",
        "--max-degree",
        "32",
        "--build-list-size",
        "64",
    ];
    let run = quiver(&args);
    assert!(run.status.success(), "bench failed: {}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("built "), "the first run builds");
    for chart in ["recall_qps.png", "recall_ios.png"] {
        let bytes = std::fs::read(out.join(chart)).unwrap();
        assert_eq!(png_size(&bytes), Some((900, 600)), "{chart} is a 900x600 PNG");
        assert!(bytes.len() > 20_000, "{chart} is {} bytes: nothing drawn?", bytes.len());
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);

    let search = quiver(&[
        "search",
        "--index",
        s(&index),
        "--queries",
        s(&queries),
        "--ground-truth",
        s(&gt),
        "--list-sizes",
        "10,20,50",
        "--json",
    ]);
    assert!(search.status.success(), "{}", String::from_utf8_lossy(&search.stderr));
    let searched: Vec<serde_json::Value> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (row, s) in rows.iter().zip(&searched) {
        assert_eq!(row[0], "quiver");
        assert_eq!(row[1], s["list_size"].to_string());
        let bench_recall: f64 = row[3].parse().unwrap();
        let search_recall = s["recall_at_k"].as_f64().unwrap();
        assert!((bench_recall - search_recall).abs() < 1e-9, "L {}: {row:?} vs {s}", row[1]);
    }
    assert!(rows[2][3].parse::<f64>().unwrap() >= 0.95, "recall at L 50: {rows:?}");

    // A second run opens the index; bad arguments fail fast and say why.
    let again = quiver(&args);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains("built "), "reopened, not rebuilt");
    let mut bad = args.to_vec();
    bad.extend(["--peer", "faiss"]);
    let e = quiver(&bad);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("unknown peer"));
    let e = quiver(&[
        "bench",
        "--index",
        s(&dir.path().join("none")),
        "--queries",
        s(&queries),
        "--ground-truth",
        s(&gt),
        "--out",
        s(&out),
    ]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("give --base"), "{e:?}");
}
