//! Durable append throughput of the WAL against the naive baseline (one `fdatasync` per record),
//! side by side in one run, on the real file system.
//!
//! ```text
//! cargo bench -p quiver-wal --bench append -- [--seconds 2] [--rounds 3] [--writers 1,4,16,64]
//!     [--shapes large,small] [--group-bytes N]
//! ```
//!
//! For each record shape (1,000 × 128-d f32 rows = 512,000 bytes, and one row = 512 bytes), each
//! writer count, and with and without zstd, it runs Quiver's WAL (default policy: every
//! acknowledged record durable) and the baseline (writers take turns: write, `fdatasync`), and a
//! reference sequential writer (4 MiB writes, `fdatasync` after each: the disk's durable
//! bandwidth, what `fio` measures). Rounds are interleaved; medians are printed as a Markdown
//! table. Files go to `$QUIVER_BENCH_DIR` (default `target/wal-bench`) and are deleted after each
//! run.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quiver_wal::vfs::{OpenMode, OsVfs, Vfs};
use quiver_wal::{Compression, Wal, WalOptions};

const ROW_BYTES: usize = 128 * 4;

/// (record shape, writers, zstd), Quiver's rates, the baseline's rates.
type Row<'a> = ((&'a str, usize, bool), Vec<Rate>, Vec<Rate>);

#[derive(Clone, Copy, Debug)]
struct Rate {
    records: u64,
    bytes: u64,
    secs: f64,
}

impl Rate {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / self.secs / f64::from(1u32 << 20)
    }
    fn per_s(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

/// 128-d f32 rows with values like a normalised embedding's (little redundancy for zstd).
fn rows(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n * ROW_BYTES);
    for _ in 0..n * 128 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.18;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `writers` threads calling `op` until `secs` pass; returns records and bytes done.
fn drive(writers: usize, secs: f64, record_len: usize, op: impl Fn(usize) + Sync) -> Rate {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let (stop, count, op) = (&stop, &count, &op);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    op(w);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let secs = start.elapsed().as_secs_f64();
    let records = count.load(Ordering::Relaxed);
    Rate { records, bytes: records * record_len as u64, secs }
}

fn quiver(
    root: &Path,
    writers: usize,
    record: &[u8],
    zstd: bool,
    secs: f64,
    group: Option<usize>,
) -> Rate {
    let dir = fresh_dir(root, "quiver");
    let mut opts = WalOptions::default();
    if let Some(g) = group {
        opts = opts.max_group_bytes(g);
    }
    if zstd {
        opts = opts.compression(Compression::Zstd { level: 1 });
    }
    let wal = Wal::open(&dir, opts).unwrap();
    let rate = drive(writers, secs, record.len(), |_| {
        wal.append(1, record).unwrap();
    });
    wal.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    rate
}

/// One thread keeping `inflight` small records in flight (submit them all, then wait for all): how
/// an async server with many clients uses the log, without a thread per writer.
fn quiver_pipelined(root: &Path, inflight: usize, record: &[u8], secs: f64) -> Rate {
    let dir = fresh_dir(root, "pipelined");
    let wal = Wal::open(&dir, WalOptions::default()).unwrap();
    let rate = drive(1, secs, record.len() * inflight, |_| {
        let pending: Vec<_> = (0..inflight).map(|_| wal.submit(1, record).unwrap()).collect();
        for p in pending {
            p.wait().unwrap();
        }
    });
    wal.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Rate { records: rate.records * inflight as u64, ..rate }
}

fn baseline(root: &Path, writers: usize, record: &[u8], secs: f64) -> Rate {
    let dir = fresh_dir(root, "baseline");
    let file = OsVfs.open(&dir.join("log"), OpenMode::CreateNew).unwrap();
    OsVfs.sync_dir(&dir).unwrap();
    let offset = Mutex::new((file, 0u64));
    let rate = drive(writers, secs, record.len(), |_| {
        let mut g = offset.lock().unwrap();
        let at = g.1;
        g.0.write_all_at(record, at).unwrap();
        g.0.sync_data().unwrap();
        g.1 += record.len() as u64;
    });
    std::fs::remove_dir_all(&dir).unwrap();
    rate
}

fn sequential_reference(root: &Path, secs: f64) -> Rate {
    let chunk = rows(8192, 7); // 4 MiB
    let dir = fresh_dir(root, "sequential");
    let file = OsVfs.open(&dir.join("seq"), OpenMode::CreateNew).unwrap();
    let at = AtomicU64::new(0);
    let rate = drive(1, secs, chunk.len(), |_| {
        let off = at.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        file.write_all_at(&chunk, off).unwrap();
        file.sync_data().unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench --list` support
    }
    let secs: f64 = arg(&args, "--seconds", 2.0);
    let rounds: usize = arg(&args, "--rounds", 3);
    let writers: Vec<usize> = arg(&args, "--writers", "1,4,16,64".to_string())
        .split(',')
        .map(|w| w.parse().unwrap())
        .collect();
    let group: usize = arg(&args, "--group-bytes", 0);
    let group = (group > 0).then_some(group);
    let shapes: String = arg(&args, "--shapes", "large,small".to_string());
    let root = std::env::var_os("QUIVER_BENCH_DIR")
        .map_or_else(|| PathBuf::from("target/wal-bench"), PathBuf::from);
    std::fs::create_dir_all(&root).unwrap();

    let large = rows(1000, 1);
    let small = rows(1, 2);
    let mut seq = Vec::new();
    // (shape, writers, zstd) -> (quiver rates, baseline rates)
    let mut results: Vec<Row<'_>> = Vec::new();
    let mut pipelined = Vec::new();
    let mut wanted = Vec::new();
    if shapes.contains("large") {
        wanted.push("1000 rows (512,000 B)");
    }
    if shapes.contains("small") {
        wanted.push("1 row (512 B)");
    }
    for shape in wanted {
        for &w in &writers {
            for zstd in [false, true] {
                results.push(((shape, w, zstd), Vec::new(), Vec::new()));
            }
        }
    }
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        seq.push(sequential_reference(&root, secs));
        if shapes.contains("small") {
            pipelined.push(quiver_pipelined(&root, 64, &small, secs));
        }
        for ((shape, w, zstd), q, b) in &mut results {
            let record = if shape.starts_with("1000") { &large } else { &small };
            q.push(quiver(&root, *w, record, *zstd, secs, group));
            if !*zstd {
                b.push(baseline(&root, *w, record, secs));
            }
        }
    }
    let seq_mib = median(seq.iter().map(Rate::mib_s).collect());
    println!(
        "Reference: sequential 4 MiB writes + fdatasync each: {seq_mib:.0} MiB/s (median of {rounds})\n"
    );
    println!(
        "| record | writers | zstd | Quiver MiB/s | Quiver commits/s | baseline MiB/s | baseline commits/s | Quiver / baseline | Quiver / sequential |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let baseline_of = |shape: &str, w: usize| -> Option<Vec<Rate>> {
        results
            .iter()
            .find(|((s, ww, z), _, _)| *s == shape && *ww == w && !*z)
            .map(|(_, _, b)| b.clone())
    };
    if let Some(b) = baseline_of("1 row (512 B)", 1).filter(|_| !pipelined.is_empty()) {
        let (qm, qc) = (
            median(pipelined.iter().map(Rate::mib_s).collect()),
            median(pipelined.iter().map(Rate::per_s).collect()),
        );
        let bc = median(b.iter().map(Rate::per_s).collect());
        println!(
            "| 1 row (512 B) | 1 thread, 64 in flight | no | {qm:.1} | {qc:.0} | | | {:.2}× (vs 1 writer) | {:.0}% |",
            qc / bc,
            100.0 * qm / seq_mib
        );
    }
    for ((shape, w, zstd), q, _) in &results {
        let b = baseline_of(shape, *w).expect("every shape and writer count has a baseline row");
        let (qm, qc) = (
            median(q.iter().map(Rate::mib_s).collect()),
            median(q.iter().map(Rate::per_s).collect()),
        );
        let (bm, bc) = (
            median(b.iter().map(Rate::mib_s).collect()),
            median(b.iter().map(Rate::per_s).collect()),
        );
        println!(
            "| {shape} | {w} | {} | {qm:.1} | {qc:.0} | {bm:.1} | {bc:.0} | {:.2}× | {:.0}% |",
            if *zstd { "level 1" } else { "no" },
            qc / bc,
            100.0 * qm / seq_mib
        );
    }
}
