//! `quiver` — the command-line program of the Quiver vector storage engine.
//!
//! - `quiver serve`: the database behind an Arrow Flight server (see `src/serve.rs`).
//! - `quiver info`: the SIMD tiers this CPU supports and the one in use.
//! - `quiver build`: builds a disk index from a vector file.
//! - `quiver search`: searches a disk index with a query file and reports recall, QPS, I/O and
//!   latency per list size.

mod bench;
mod serve;
mod telemetry;

/// The program's allocator. Scans, flushes and Flight messages allocate and free buffers of
/// megabytes at a high rate; glibc serves those with fresh `mmap`s, so every batch paid page
/// faults and page zeroing (a fifth of a scan's time). mimalloc reuses them. It is built
/// without transparent huge pages (`no_thp`): a gRPC message lands in a fresh buffer of
/// megabytes, and zeroing it 2 MiB at a time cost more than the 4 KiB faults it saves (durable
/// Flight puts ran ~20% faster without; scans were unchanged; search over Flight on a
/// 100k-vector index was within noise, its median 4% lower in 12 alternating runs). The engine
/// and Flight crates leave the choice to the program that embeds them.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use quiver_diskgraph::cache::SectorCache;
use quiver_diskgraph::data::{Metric, read_ivecs, read_vectors};
use quiver_diskgraph::index::{BuildParams, build_index_from_file};
use quiver_diskgraph::pq::PqParams;
use quiver_diskgraph::search::{Backend, DiskIndex, OpenOptionsIndex, QueryStats, SearchParams};
use quiver_diskgraph::vamana::VamanaParams;
use quiver_simd::{Isa, Kernels, TIER_ENV, Tier};

#[derive(Debug, Parser)]
#[command(name = "quiver", version, about = "Quiver: an out-of-core vector storage engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a database over Arrow Flight (DoPut, DoGet, DoAction, DoExchange).
    Serve(serve::ServeArgs),
    /// Print the version, the SIMD tiers this CPU supports and the one in use.
    Info,
    /// Build a disk index from a vector file (.fbin, .u8bin, .i8bin, .fvecs, .bvecs).
    Build(BuildArgs),
    /// Search a disk index with a query file and report recall, QPS, I/O and latency.
    Search(SearchArgs),
    /// Grow a disk index without rebuilding it: drop some of its rows, add a vector file's.
    /// Kept rows are relabelled 0.. in their old label order; added rows follow, in file order.
    Grow(GrowArgs),
    /// Build (or open) an index, sweep list sizes, and write recall–QPS and recall–I/O charts
    /// (PNG) with a JSON and CSV table; `--peer diskann` adds DiskANN's curve from the same run.
    Bench(bench::BenchArgs),
}

#[derive(Debug, clap::Args)]
struct GrowArgs {
    /// The index to grow (left unchanged).
    #[arg(long)]
    index: PathBuf,
    /// Vector file whose rows are added (same type and dimension as the index's input).
    #[arg(long)]
    add: PathBuf,
    /// Rows of `--add` skipped before the first one added.
    #[arg(long, default_value_t = 0)]
    add_skip: usize,
    /// Rows of `--add` added (default: all after `--add-skip`).
    #[arg(long)]
    add_rows: Option<usize>,
    /// Drop every old row whose label is a multiple of this (for experiments; 0 drops none).
    #[arg(long, default_value_t = 0)]
    drop_every: u32,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// List size L of the searches that link each added row.
    #[arg(long, default_value_t = 100)]
    list_size: usize,
    /// Pruning factor α.
    #[arg(long, default_value_t = 1.2)]
    alpha: f32,
    /// Link the added rows this many at a time (0: all at once), as the engine does under a
    /// memory budget; here the rows themselves are still read whole.
    #[arg(long, default_value_t = 0)]
    chunk_rows: usize,
    /// Train a new PQ codebook on a sample of this many of the grown index's rows, and encode
    /// every row with it (0: keep the old index's codebook).
    #[arg(long, default_value_t = 0)]
    retrain_samples: usize,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Vector file to index.
    #[arg(long)]
    input: PathBuf,
    /// Distance: l2, ip (inner product) or cosine.
    #[arg(long)]
    metric: Metric,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Maximum out-degree R.
    #[arg(long, default_value_t = 64)]
    max_degree: usize,
    /// Build-time list size L.
    #[arg(long, default_value_t = 100)]
    list_size: usize,
    /// Pruning factor α (of the last pass).
    #[arg(long, default_value_t = 1.2)]
    alpha: f32,
    /// Insertion passes: 1 (as DiskANN builds) or 2 (the paper's α = 1 pass first).
    #[arg(long, default_value_t = 1)]
    passes: usize,
    /// Leave pruned lists short instead of filling them up to R with the nearest rejected
    /// candidates (DiskANN's disk builds fill them; so does Quiver by default).
    #[arg(long)]
    no_saturate: bool,
    /// PQ bytes per vector (default: one per 4 dimensions, 8..=64).
    #[arg(long)]
    pq_bytes: Option<usize>,
    /// Worker threads (0 = all cores). The graph does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed for PQ sampling and the insertion order.
    #[arg(long, default_value_t = 0x5155_4956)]
    seed: u64,
    /// Most memory the build may allocate, e.g. `96MiB`, `2GiB`, `500MB` (binary units KiB, MiB,
    /// GiB, TiB; decimal KB, MB, GB, TB; bare bytes). Inputs that do not fit are built as one
    /// graph over 8-bit codes when that fits, else a partition at a time. Default: build in
    /// memory.
    #[arg(long, value_parser = parse_size)]
    ram_budget: Option<u64>,
    /// Force the partitioned build with this many partitions; 1 forces the single graph over
    /// 8-bit codes (tuning and tests).
    #[arg(long)]
    partitions: Option<usize>,
}

/// Makes mimalloc return freed memory to the system at once. It waits 10 ms by default (100 ms
/// for its arenas), and a budgeted build frees one partition's arrays and allocates the next
/// one's within that time, so both would be resident: on 200k SIFT vectors under a 64 MiB
/// budget the build peaked at 80.9 MiB resident with the delay and 60.4 MiB without. A server
/// needs it more: a delayed purge happens only when the freeing thread next allocates, so the
/// arrays a background index build freed stayed resident while that thread idled (200k SIFT
/// over Flight, after indexing: 190 MiB resident with the delay, 42 MiB without). So `quiver
/// serve` purges at once under `--memory-budget`, and keeps mimalloc's delay without one: there
/// every scan batch and Flight message faulted fresh pages in, a third of a scan's server time
/// (scans 1.6× slower).
pub(crate) fn allocator_purges_at_once() {
    if cfg!(feature = "system-allocator") {
        return; // profiling build: glibc's allocator, whose options are its own
    }
    /// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3 alike); the crate does
    /// not name it.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: `mi_option_set` takes no pointers; its only requirements are a valid option id
    // (15 is `mi_option_purge_delay`, inside `mi_option_e`, whose last id is above it in both
    // mimalloc v2 and v3) and no concurrent option calls: this runs before the build or the
    // server starts any thread. 0 is a documented value of this option ("immediate purging").
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    // SAFETY: `mi_option_get` takes no pointers and reads the global option table at the same
    // valid id, on the same single thread, after the set above.
    let now = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
    if now != 0 {
        tracing::warn!(
            now,
            "could not make the allocator purge at once: the build may exceed its budget"
        );
    }
}

/// Parses a size such as `96MiB`, `1.5GiB`, `500MB` or `1048576` into bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?}: expected a size such as 96MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// This process's peak resident set (`VmHWM`), in bytes, if the kernel reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 =
        line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

#[derive(Debug, clap::Args)]
struct SearchArgs {
    /// Index directory written by `quiver build`.
    #[arg(long)]
    index: PathBuf,
    /// Query vector file.
    #[arg(long)]
    queries: PathBuf,
    /// Ground truth (.ivecs, nearest first) for recall.
    #[arg(long)]
    ground_truth: Option<PathBuf>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Comma-separated list sizes to try.
    #[arg(long, value_delimiter = ',', default_value = "10,20,50,100")]
    list_sizes: Vec<usize>,
    /// Nodes read per hop.
    #[arg(long, default_value_t = 4)]
    beam_width: usize,
    /// Search threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Nodes cached in RAM (BFS from the entry point).
    #[arg(long, default_value_t = 0)]
    cache_nodes: usize,
    /// RAM for a sector cache shared by the search threads (e.g. 256MiB): nodes read and
    /// verified join it, CLOCK evicts. Default: none (every node not in the BFS cache is read).
    #[arg(long, value_parser = parse_size)]
    sector_cache: Option<u64>,
    /// Nodes a search may start from (the nearest by PQ is taken); 1: the entry point alone.
    /// Default: the square root of the node count, at most 4096.
    #[arg(long)]
    start_candidates: Option<usize>,
    /// I/O backend: auto, io_uring or pread.
    #[arg(long, default_value = "auto")]
    backend: Backend,
    /// Use buffered reads instead of O_DIRECT.
    #[arg(long)]
    buffered: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// A report piped into `head` ends, as other Unix tools do, when its reader goes away: the
/// default `SIGPIPE` action instead of Rust's (ignore it, and panic in `println!` on the write
/// error). Not for `serve`, whose sockets must see a vanished client as an error to handle.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: `signal` with `SIG_DFL` only changes this process's disposition of `SIGPIPE`; it is
    // called at the start of `main`, before any thread exists that could race on it, and
    // installs no handler (so no async-signal-safety obligations arise).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let telemetry = telemetry::init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        end_quietly_on_a_closed_pipe();
    }
    let result = match cli.command {
        Command::Info => {
            info();
            Ok(())
        }
        Command::Serve(args) => serve::serve(&args).map_err(|e| -> BoxError { e }),
        Command::Build(args) => build(&args),
        Command::Search(args) => search(&args),
        Command::Grow(args) => grow(&args),
        Command::Bench(args) => bench::bench(&args),
    };
    drop(telemetry); // flushes the spans not yet exported
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() {
    println!("quiver {}", env!("CARGO_PKG_VERSION"));
    let supported: Vec<String> = Isa::supported().into_iter().map(Isa::describe).collect();
    println!("simd tiers supported: {}", supported.join(", "));
    let cap = std::env::var(TIER_ENV).unwrap_or_else(|_| "unset".to_owned());
    println!("simd tier active:     {} ({TIER_ENV}={cap})", Isa::active().describe());
    // A one-line self-check: the active tier against the scalar reference on a small vector.
    let a: Vec<f32> = (0..96u8).map(f32::from).collect();
    let b: Vec<f32> = a.iter().rev().copied().collect();
    let scalar = Isa::for_tier(Tier::Scalar).map_or(0.0, |s| s.l2_sq_f32(&a, &b));
    println!("self-check l2(96):    {} (scalar {scalar})", Isa::active().l2_sq_f32(&a, &b));
    // The binary's own footprint: what a budgeted build may use beyond its budget.
    if let Some(peak) = peak_rss_bytes() {
        println!("peak resident:        {:.1} MiB (VmHWM)", peak as f64 / MIB);
    }
}

type BoxError = Box<dyn std::error::Error>;

const MIB: f64 = 1_048_576.0;

/// One query's outcome: query index, result ids, counters.
type QueryOutcome = (usize, Vec<u32>, QueryStats);

fn grow(args: &GrowArgs) -> Result<(), BoxError> {
    use quiver_diskgraph::grow::{AddedRows, GrowShape, Growth, grow_index};
    use quiver_diskgraph::source::VectorFile;
    allocator_purges_at_once();
    let base = DiskIndex::open(&args.index, OpenOptionsIndex::default())?;
    let file = VectorFile::open(&args.add)?;
    let skip = args.add_skip.min(file.len());
    let count = args.add_rows.unwrap_or(file.len() - skip).min(file.len() - skip);
    let added = file.read_range(skip, count)?;
    let n = base.header().n as u32;
    let every = args.drop_every;
    let dropped = |l: u32| every > 0 && l.is_multiple_of(every);
    // Kept labels in order get 0..; the number of dropped labels below `l` is ⌈l / every⌉.
    let relabel = |l: u32| (!dropped(l)).then(|| if every > 0 { l - l.div_ceil(every) } else { l });
    let kept = (0..n).filter(|&l| !dropped(l)).count() as u32;
    let labels: Vec<u32> = (kept..kept + count as u32).collect();
    let params = BuildParams {
        graph: VamanaParams {
            list_size: args.list_size,
            alpha: args.alpha,
            ..VamanaParams::default()
        },
        ..BuildParams::default()
    };
    let shape = GrowShape::of(&base, u64::from(n - kept), count as u64)
        .retraining(args.retrain_samples as u64);
    let estimate = shape.peak_bytes(args.chunk_rows as u64);
    let open_index = base.ram_bytes() as u64;
    let growth = Growth {
        base: &base,
        relabel: &relabel,
        added: AddedRows::Memory(added),
        added_labels: &labels,
        params: &params,
        chunk_rows: args.chunk_rows,
        retrain: (args.retrain_samples > 0)
            .then(|| PqParams { max_samples: args.retrain_samples, ..PqParams::default() }),
        recode: None,
    };
    let bars = PhaseBars::default();
    let total = Instant::now();
    let summary = grow_index(growth, &args.out, &|phase, done, of| bars.report(phase, done, of))?;
    bars.finish();
    println!(
        "grew {} into {}: {} kept, {} dropped, {} added in {} chunks, {} lists patched, mean \
         degree {:.1}",
        args.index.display(),
        args.out.display(),
        summary.kept,
        summary.dropped,
        summary.added,
        summary.chunks,
        summary.patched,
        summary.mean_degree
    );
    println!(
        "time: scan {:.1}s, codebook trained on {} rows {:.1}s, added rows' graph {:.1}s, link \
         {:.1}s, write {:.1}s, total {:.1}s",
        summary.scan_seconds,
        summary.trained_rows,
        summary.train_seconds,
        summary.graph_seconds,
        summary.link_seconds,
        summary.write_seconds,
        total.elapsed().as_secs_f64()
    );
    let peak = peak_rss_bytes().map_or("unknown".into(), |p| format!("{:.1} MiB", p as f64 / MIB));
    println!(
        "memory: estimated peak {:.1} MiB (the growth) + {:.1} MiB (the old index, open), \
         measured peak resident {peak} (VmHWM, the process)",
        estimate as f64 / MIB,
        open_index as f64 / MIB
    );
    Ok(())
}

fn build(args: &BuildArgs) -> Result<(), BoxError> {
    let params = BuildParams {
        graph: VamanaParams {
            max_degree: args.max_degree,
            list_size: args.list_size,
            alpha: args.alpha,
            passes: args.passes,
            saturate: !args.no_saturate,
            seed: args.seed,
            threads: args.threads,
            ..VamanaParams::default()
        },
        pq: PqParams { bytes: args.pq_bytes, seed: args.seed, ..PqParams::default() },
        ram_budget: args.ram_budget,
        partitions: args.partitions,
    };
    if args.ram_budget.is_some() {
        allocator_purges_at_once();
    }
    if args.threads > 1 {
        // PQ training and encoding use rayon's global pool: size it too.
        if let Err(e) = quiver_diskgraph::rayon_global_pool(args.threads) {
            tracing::warn!(error = %e, "could not size the global thread pool");
        }
    }
    let bars = PhaseBars::default();
    let total = Instant::now();
    let summary =
        build_index_from_file(&args.input, args.metric, &params, &args.out, &|phase, done, of| {
            bars.report(phase, done, of)
        })?;
    bars.finish();
    println!("plan: {}", summary.plan);
    println!(
        "built {}: {} vectors, dim {} (stored {}), metric {}, R {}, L {}, alpha {}, {} pass(es), PQ {} bytes",
        args.out.display(),
        summary.n,
        summary.dim,
        summary.stored_dim,
        args.metric,
        args.max_degree,
        args.list_size,
        args.alpha,
        args.passes,
        summary.pq_bytes
    );
    println!(
        "time: PQ {:.1}s, graph {:.1}s, write {:.1}s, total {:.1}s; mean degree {:.1}; graph file {:.1} MiB",
        summary.pq_seconds,
        summary.graph_seconds,
        summary.write_seconds,
        total.elapsed().as_secs_f64(),
        summary.mean_degree,
        summary.graph_file_bytes as f64 / MIB
    );
    if let Some(peak) = peak_rss_bytes() {
        println!(
            "memory: estimated peak {:.1} MiB, measured peak resident {:.1} MiB (VmHWM)",
            summary.plan.estimated_peak as f64 / MIB,
            peak as f64 / MIB
        );
    }
    Ok(())
}

/// Refuses ground truth with fewer rows than queries or rows shorter than `k`.
pub(crate) fn check_ground_truth(
    gt: Option<&[Vec<u32>]>,
    queries: usize,
    k: usize,
) -> Result<(), BoxError> {
    let Some(gt) = gt else { return Ok(()) };
    if gt.len() < queries {
        return Err(format!("ground truth has {} rows for {queries} queries", gt.len()).into());
    }
    if let Some(short) = gt.iter().take(queries).position(|r| r.len() < k) {
        return Err(format!("ground truth row {short} has fewer than k = {k} ids").into());
    }
    Ok(())
}

/// What one list size measured over a query set.
#[derive(Clone, Debug)]
pub(crate) struct Point {
    pub(crate) list_size: usize,
    /// Mean recall@k against the ground truth, when there is one.
    pub(crate) recall: Option<f64>,
    pub(crate) qps: f64,
    pub(crate) mean_ios: f64,
    pub(crate) mean_hops: f64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Searches every query at list size `l` on `threads` threads; recall against `gt` (rows of at
/// least `k` ids, nearest first).
pub(crate) fn measure(
    index: &DiskIndex,
    queries: &quiver_diskgraph::data::VectorSet,
    gt: Option<&[Vec<u32>]>,
    k: usize,
    l: usize,
    beam_width: usize,
    threads: usize,
) -> Result<Point, BoxError> {
    let params = SearchParams { k, list_size: l, beam_width };
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let per_thread: Vec<Result<Vec<QueryOutcome>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut searcher = index.searcher().map_err(|e| e.to_string())?;
                    let mut out = Vec::new();
                    loop {
                        let qi = next.fetch_add(1, Ordering::Relaxed);
                        if qi >= queries.len() {
                            break;
                        }
                        let (found, stats) =
                            searcher.search(queries.row(qi), params).map_err(|e| e.to_string())?;
                        out.push((qi, found.iter().map(|n| n.id).collect(), stats));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("search thread panicked".into())))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut results = Vec::with_capacity(queries.len());
    for r in per_thread {
        results.extend(r?);
    }
    let n = results.len().max(1) as f64;
    let recall = gt.map(|gt| {
        let hits: usize = results
            .iter()
            .map(|(qi, ids, _)| ids.iter().filter(|id| gt[*qi][..k].contains(id)).count())
            .sum();
        hits as f64 / (n * k as f64)
    });
    let mut lat: Vec<f64> = results.iter().map(|r| r.2.latency_us).collect();
    lat.sort_by(f64::total_cmp);
    let pct =
        |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    Ok(Point {
        list_size: l,
        recall,
        qps: n / wall,
        mean_ios: results.iter().map(|r| r.2.ios as f64).sum::<f64>() / n,
        mean_hops: results.iter().map(|r| r.2.hops as f64).sum::<f64>() / n,
        mean_us: lat.iter().sum::<f64>() / n,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    })
}

/// One progress bar per build phase, each started when its phase first reports and finished
/// when the next begins.
#[derive(Default)]
struct PhaseBars {
    current: std::sync::Mutex<Option<(&'static str, indicatif::ProgressBar)>>,
}

/// A progress bar for a phase of `total` steps, in the style of every long phase of the CLI.
pub(crate) fn phase_bar(phase: &str, total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let template = format!("{phase:>7} {{bar:40}} {{pos}}/{{len}} ({{elapsed}}, {{eta}} left)");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("a valid template"));
    bar
}

impl PhaseBars {
    fn report(&self, phase: &'static str, done: usize, total: usize) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_none_or(|(p, _)| *p != phase) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            *current = Some((phase, phase_bar(phase, total)));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_position(done as u64);
        }
    }

    fn finish(&self) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, bar)) = current.take() {
            bar.finish();
        }
    }
}

fn search(args: &SearchArgs) -> Result<(), BoxError> {
    let queries = read_vectors(&args.queries)?;
    let gt = args.ground_truth.as_deref().map(read_ivecs).transpose()?;
    check_ground_truth(gt.as_deref(), queries.len(), args.k)?;
    let opts = OpenOptionsIndex {
        backend: args.backend,
        direct: !args.buffered,
        cache_nodes: args.cache_nodes,
        start_candidates: args.start_candidates,
        sector_cache: args.sector_cache.map(|b| Arc::new(SectorCache::new(b as usize))),
        ..OpenOptionsIndex::default()
    };
    let index = DiskIndex::open(&args.index, opts)?;
    if !args.json {
        println!(
            "index {}: {} nodes, backend {:?}, O_DIRECT {}, cache {} nodes, RAM {:.1} MiB, {} threads, W {}",
            args.index.display(),
            index.header().n,
            index.backend(),
            !args.buffered,
            args.cache_nodes,
            index.ram_bytes() as f64 / MIB,
            args.threads,
            args.beam_width
        );
        println!(
            "{:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "L", "recall@k", "QPS", "mean_ios", "mean_hops", "p50_us", "p99_us"
        );
    }
    for &l in &args.list_sizes {
        let p = measure(&index, &queries, gt.as_deref(), args.k, l, args.beam_width, args.threads)?;
        if args.json {
            let recall = p.recall.map_or("null".to_owned(), |r| format!("{r:.4}"));
            println!(
                "{{\"list_size\":{l},\"k\":{},\"recall_at_k\":{recall},\"qps\":{:.1},\"mean_ios\":{:.2},\"mean_hops\":{:.2},\"mean_us\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"ram_bytes\":{},\"threads\":{},\"beam_width\":{}}}",
                args.k,
                p.qps,
                p.mean_ios,
                p.mean_hops,
                p.mean_us,
                p.p50_us,
                p.p99_us,
                index.ram_bytes(),
                args.threads,
                args.beam_width
            );
        } else {
            let recall = p.recall.map_or("-".to_owned(), |r| format!("{r:.4}"));
            println!(
                "{l:>6} {recall:>10} {:>10.1} {:>9.2} {:>9.2} {:>9.1} {:>9.1}",
                p.qps, p.mean_ios, p.mean_hops, p.p50_us, p.p99_us
            );
        }
    }
    Ok(())
}
