//! `quiver bench`: one command from a vector file to recall–QPS and recall–I/O curves.
//!
//! Opens the index at `--index` (or builds it there from `--base` first, with a progress bar per
//! phase), searches every query at each list size (a progress bar over the sweep), and writes to
//! `--out`: `results.json` and `results.csv` (one row per system and list size) and two PNG
//! charts, `recall_qps.png` and `recall_ios.png`. With `--peer diskann` the installed DiskANN
//! Python package (`diskannpy`) builds and searches the same data with the same parameters in the
//! same run (the script is `benches/diskann/peer.py`, built into the binary), and its curve is
//! drawn beside Quiver's.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use quiver_diskgraph::data::{Metric, read_ivecs, read_vectors};
use quiver_diskgraph::search::{DiskIndex, OpenOptionsIndex};

use crate::{BoxError, BuildArgs, Point, build, check_ground_truth, measure};

/// The DiskANN peer script, written next to the results when `--peer diskann` runs it.
const PEER_SCRIPT: &str = include_str!("../benches/diskann/peer.py");

/// Where a TrueType font for the charts' text is looked for when `--font` is not given.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Index directory: opened if it holds an index, else built there from `--base`.
    #[arg(long)]
    index: PathBuf,
    /// Vector file to build the index from (when `--index` holds none).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Query vector file.
    #[arg(long)]
    queries: PathBuf,
    /// Ground truth (.ivecs, nearest first).
    #[arg(long)]
    ground_truth: PathBuf,
    /// Directory for results.json, results.csv and the charts (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Distance, for a build: l2, ip or cosine.
    #[arg(long, default_value = "l2")]
    metric: Metric,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Comma-separated list sizes to sweep.
    #[arg(long, value_delimiter = ',', default_value = "10,15,20,30,40,50,75,100,150,200")]
    list_sizes: Vec<usize>,
    /// Nodes read per hop.
    #[arg(long, default_value_t = 4)]
    beam_width: usize,
    /// Search threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Maximum out-degree R, for a build.
    #[arg(long, default_value_t = 64)]
    max_degree: usize,
    /// Build-time list size L, for a build.
    #[arg(long, default_value_t = 100)]
    build_list_size: usize,
    /// Pruning factor α, for a build.
    #[arg(long, default_value_t = 1.2)]
    alpha: f32,
    /// PQ bytes per vector, for a build (default: one per 4 dimensions, 8..=64).
    #[arg(long)]
    pq_bytes: Option<usize>,
    /// Most memory a build may allocate (e.g. 256MiB); default: in memory.
    #[arg(long, value_parser = crate::parse_size)]
    ram_budget: Option<u64>,
    /// Also run a peer on the same data: `diskann` (the `diskannpy` Python package).
    #[arg(long)]
    peer: Option<String>,
    /// Python interpreter with the peer's package installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// TrueType font for the charts' text (default: DejaVu Sans where Debian puts it).
    #[arg(long)]
    font: Option<PathBuf>,
}

/// One system's measured curve.
struct Curve {
    system: String,
    points: Vec<Point>,
}

pub(crate) fn bench(args: &BenchArgs) -> Result<(), BoxError> {
    if args.k == 0 || args.list_sizes.is_empty() {
        return Err("k and at least one list size are needed".into());
    }
    if let Some(l) = args.list_sizes.iter().find(|&&l| l < args.k) {
        return Err(format!("list size {l} is below k = {}", args.k).into());
    }
    // Checked before anything long runs.
    load_font(args.font.as_deref())?;
    if let Some(peer) = args.peer.as_deref()
        && peer != "diskann"
    {
        return Err(format!("unknown peer {peer:?}; the peer Quiver knows is diskann").into());
    }
    if args.peer.is_some() && args.threads < 2 {
        // Seen with diskannpy 0.7.0: its batch search with one thread stalls after loading the
        // index (20% of a core for ten minutes on bigann10k); with two it answers at once.
        return Err("--peer diskann needs --threads 2 or more (DiskANN's one-thread batch \
                    search stalls); both systems run with the same thread count"
            .into());
    }
    let queries = read_vectors(&args.queries)?;
    let gt = read_ivecs(&args.ground_truth)?;
    check_ground_truth(Some(&gt), queries.len(), args.k)?;
    std::fs::create_dir_all(&args.out)?;
    let index = open_or_build(args)?;
    println!(
        "index {}: {} nodes; {} queries, k {}, W {}, {} thread(s)",
        args.index.display(),
        index.header().n,
        queries.len(),
        args.k,
        args.beam_width,
        args.threads
    );
    let bar = crate::phase_bar("sweep", args.list_sizes.len());
    let mut points = Vec::with_capacity(args.list_sizes.len());
    for &l in &args.list_sizes {
        points.push(measure(
            &index,
            &queries,
            Some(&gt),
            args.k,
            l,
            args.beam_width,
            args.threads,
        )?);
        bar.inc(1);
    }
    bar.finish();
    let mut curves = vec![Curve { system: "quiver".into(), points }];
    if args.peer.is_some() {
        curves.push(run_diskann(args)?);
    }
    write_tables(&args.out, args.k, &curves)?;
    chart(&args.out.join("recall_qps.png"), args.k, &curves, "QPS", |p| p.qps)?;
    let reads = "sector reads per query";
    chart(&args.out.join("recall_ios.png"), args.k, &curves, reads, |p| p.mean_ios)?;
    print_table(&curves);
    println!(
        "wrote {}/results.json, results.csv, recall_qps.png, recall_ios.png",
        args.out.display()
    );
    Ok(())
}

/// The index at `--index`, built from `--base` first if the directory holds none.
fn open_or_build(args: &BenchArgs) -> Result<DiskIndex, BoxError> {
    let holds_index = args.index.join(quiver_diskgraph::index::GRAPH_FILE).exists();
    if !holds_index {
        let Some(base) = &args.base else {
            return Err(format!(
                "{} holds no index; give --base to build one there",
                args.index.display()
            )
            .into());
        };
        build(&BuildArgs {
            input: base.clone(),
            metric: args.metric,
            out: args.index.clone(),
            max_degree: args.max_degree,
            list_size: args.build_list_size,
            alpha: args.alpha,
            passes: 1,
            no_saturate: false,
            pq_bytes: args.pq_bytes,
            threads: 0,
            seed: 0x5155_4956,
            ram_budget: args.ram_budget,
            partitions: None,
        })?;
    }
    Ok(DiskIndex::open(&args.index, OpenOptionsIndex::default())?)
}

/// Runs `benches/diskann/peer.py` (DiskANN's C++ build through `diskannpy`) with the same
/// parameters, parsing its JSON lines.
fn run_diskann(args: &BenchArgs) -> Result<Curve, BoxError> {
    let Some(base) = &args.base else {
        return Err("--peer diskann needs --base (the peer builds its own index)".into());
    };
    let dir = args.out.join("diskann");
    std::fs::create_dir_all(&dir)?;
    let script = args.out.join("peer.py");
    std::fs::File::create(&script)?.write_all(PEER_SCRIPT.as_bytes())?;
    let metric = match args.metric {
        Metric::L2 => "l2",
        Metric::InnerProduct => "mips",
        Metric::Cosine => "cosine",
    };
    let dim = read_vectors(&args.queries)?.dim();
    let pq = args.pq_bytes.unwrap_or_else(|| (dim / 4).clamp(8, 64));
    let list_sizes: Vec<String> = args.list_sizes.iter().map(ToString::to_string).collect();
    let path = |p: &Path| p.display().to_string();
    let mut cmd = std::process::Command::new(&args.python);
    cmd.arg(&script)
        .args(["--impl", "cpp", "--base", &path(base), "--queries", &path(&args.queries)])
        .args(["--gt", &path(&args.ground_truth), "--out", &path(&dir), "--metric", metric])
        .args(["--R", &args.max_degree.to_string(), "--L", &args.build_list_size.to_string()])
        .args(["--alpha", &args.alpha.to_string(), "--pq-bytes", &pq.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--beam-width", &args.beam_width.to_string(), "--k", &args.k.to_string()])
        .args(["--list-sizes", &list_sizes.join(","), "--phase", "both"]);
    println!("peer: {} {}", args.python, script.display());
    // The peer builds and searches in one process: a spinner with the elapsed time meanwhile.
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} DiskANN build and sweep ({elapsed})")
            .expect("a valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let out = cmd.output().map_err(|e| format!("could not run {}: {e}", args.python));
    spinner.finish_and_clear();
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "the DiskANN peer failed (is diskannpy installed for {}?):\n{}",
            args.python,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut points = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(list_size) = v.get("list_size").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        // A figure the peer does not report (the C++ DiskANN reports no I/O counts) is NaN:
        // left out of the charts, empty in the CSV, null in the JSON.
        let f = |key: &str| v.get(key).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        points.push(Point {
            list_size: list_size as usize,
            recall: v.get("recall_at_k").and_then(serde_json::Value::as_f64),
            qps: f("qps"),
            mean_ios: f("mean_ios"),
            mean_hops: f("mean_hops"),
            mean_us: f("mean_us"),
            p50_us: f("p50_us"),
            p99_us: f("p99_us"),
        });
    }
    if points.is_empty() {
        return Err("the DiskANN peer printed no results".into());
    }
    Ok(Curve { system: "diskann".into(), points })
}

fn write_tables(out: &Path, k: usize, curves: &[Curve]) -> Result<(), BoxError> {
    let mut rows = Vec::new();
    let mut csv = String::from(
        "system,list_size,k,recall_at_k,qps,mean_ios,mean_hops,mean_us,p50_us,p99_us\n",
    );
    for c in curves {
        for p in &c.points {
            rows.push(serde_json::json!({
                "system": c.system, "list_size": p.list_size, "k": k, "recall_at_k": p.recall,
                "qps": p.qps, "mean_ios": p.mean_ios, "mean_hops": p.mean_hops,
                "mean_us": p.mean_us, "p50_us": p.p50_us, "p99_us": p.p99_us,
            }));
            let recall = p.recall.map_or(String::new(), |r| format!("{r:.4}"));
            let cell = |v: f64, digits: usize| {
                if v.is_finite() { format!("{v:.digits$}") } else { String::new() }
            };
            csv.push_str(&format!(
                "{},{},{k},{recall},{},{},{},{},{},{}\n",
                c.system,
                p.list_size,
                cell(p.qps, 1),
                cell(p.mean_ios, 2),
                cell(p.mean_hops, 2),
                cell(p.mean_us, 1),
                cell(p.p50_us, 1),
                cell(p.p99_us, 1)
            ));
        }
    }
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&rows)?)?;
    std::fs::write(out.join("results.csv"), csv)?;
    Ok(())
}

fn print_table(curves: &[Curve]) {
    println!(
        "{:>8} {:>6} {:>10} {:>10} {:>9} {:>9}",
        "system", "L", "recall@k", "QPS", "mean_ios", "p99_us"
    );
    for c in curves {
        for p in &c.points {
            let recall = p.recall.map_or("-".to_owned(), |r| format!("{r:.4}"));
            // A figure the peer does not report is NaN: shown as "-".
            let shown = |v: f64, digits: usize| {
                if v.is_finite() { format!("{v:.digits$}") } else { "-".to_owned() }
            };
            println!(
                "{:>8} {:>6} {recall:>10} {:>10} {:>9} {:>9}",
                c.system,
                p.list_size,
                shown(p.qps, 1),
                shown(p.mean_ios, 2),
                shown(p.p99_us, 1)
            );
        }
    }
}

/// The charts' font, registered with plotters for the family `sans-serif`.
fn load_font(path: Option<&Path>) -> Result<(), BoxError> {
    let candidates: Vec<PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => FONT_PATHS.iter().map(PathBuf::from).collect(),
    };
    let Some((found, bytes)) =
        candidates.iter().find_map(|p| std::fs::read(p).ok().map(|b| (p, b)))
    else {
        return Err(format!(
            "no font for the charts' text at {candidates:?}: install fonts-dejavu-core or give --font"
        )
        .into());
    };
    // plotters keeps the font for the process's life.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{} is not a TrueType font plotters can use", found.display()))?;
    Ok(())
}

/// One chart: recall@k on x, `metric` of each point on y, a line and markers per system.
fn chart(
    path: &Path,
    k: usize,
    curves: &[Curve],
    y_label: &str,
    metric: impl Fn(&Point) -> f64,
) -> Result<(), BoxError> {
    let xy: Vec<Vec<(f64, f64)>> = curves
        .iter()
        .map(|c| {
            c.points
                .iter()
                .filter_map(|p| p.recall.map(|r| (r, metric(p))))
                .filter(|(_, y)| y.is_finite())
                .collect()
        })
        .collect();
    let all = xy.iter().flatten();
    let (mut x0, mut x1, mut y1) = (1.0f64, 0.0f64, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let x0 = (x0 - 0.02).max(0.0);
    let x1 = (x1 + 0.01).min(1.0).max(x0 + 0.01);
    let y1 = (y1 * 1.1).max(1.0);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("recall@{k} vs {y_label}"), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1)?;
    chart.configure_mesh().x_desc(format!("recall@{k}")).y_desc(y_label).draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (c, points)) in curves.iter().zip(&xy).enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(c.system.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
