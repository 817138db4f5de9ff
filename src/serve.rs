//! `quiver serve`: the engine behind an Arrow Flight server (`quiver-flight`).
//!
//! Prints `listening on grpc://ADDR` (or `grpc+tls://`) on stdout once the port is bound, so
//! scripts and tests can use `--listen 127.0.0.1:0`. SIGINT or SIGTERM stops accepting calls and
//! lets calls in flight finish for up to `--shutdown-grace` seconds; every acknowledged write is
//! durable before it was acknowledged, so a cut-short put loses nothing that was acknowledged.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quiver_engine::{Database, Options};
use quiver_flight::{DEFAULT_LISTEN, ServerConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Environment variable holding the auth token (the `--auth-token` flag wins).
pub const TOKEN_ENV: &str = "QUIVER_AUTH_TOKEN";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory of the database (created if missing).
    #[arg(long, default_value = "quiver-data", env = "QUIVER_DATA")]
    data: PathBuf,
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this address, e.g.
    /// 127.0.0.1:9090 (off by default; port 0 picks a free port). Anyone who can reach it reads
    /// collection names and counts, so keep it on loopback or a private network.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Require this bearer token on every call.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    auth_token: Option<String>,
    /// PEM certificate chain: serve TLS (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest gRPC message accepted or sent, MiB [default: 256; with --memory-budget, a
    /// sixteenth of it, at least 1].
    #[arg(long)]
    max_message_mb: Option<usize>,
    /// HTTP/2 keepalive ping interval, seconds (0 disables).
    #[arg(long, default_value_t = 30)]
    keepalive_secs: u64,
    /// Seconds a keepalive ping may go unanswered.
    #[arg(long, default_value_t = 20)]
    keepalive_timeout_secs: u64,
    /// HTTP/2 per-stream flow-control window, KiB (with --memory-budget, at most a 32nd of it).
    #[arg(long, default_value_t = 4096)]
    stream_window_kb: u32,
    /// HTTP/2 per-connection flow-control window, KiB (with --memory-budget, at most a 16th of
    /// it).
    #[arg(long, default_value_t = 16384)]
    connection_window_kb: u32,
    /// Rows in the first batch of a scan (batches double from here).
    #[arg(long, default_value_t = 1024)]
    scan_chunk_start: usize,
    /// Rows per batch a scan grows to.
    #[arg(long, default_value_t = 65536)]
    scan_chunk_max: usize,
    /// Bound the server's memory to about this (e.g. 96MiB, 2GiB): the in-memory tables,
    /// unindexed segments, index builds, merges and row groups get fixed shares, and the
    /// sector cache what the per-row structures leave (docs/memory.md). --memtable-mb and
    /// --sector-cache-mb override their share when given.
    #[arg(long, value_parser = crate::parse_size)]
    memory_budget: Option<u64>,
    /// In-memory table size before it is written as a segment, MiB [default: 64; with
    /// --memory-budget, a sixteenth of it].
    #[arg(long)]
    memtable_mb: Option<usize>,
    /// Size of each WAL segment file, MiB, reserved when the segment is created [default: 64].
    /// Smaller segments rotate (and reserve disk space) more often.
    #[arg(long)]
    wal_segment_mb: Option<u64>,
    /// RAM an index build in the background may use, MiB: the segment's vectors go to a file
    /// and the budgeted build (one graph over 8-bit codes, or partitions) keeps within it. 0:
    /// the in-memory build, which holds the graph of the whole segment [default: 0; with
    /// --memory-budget, ignored: a build gets what the budget leaves, at least an eighth].
    #[arg(long)]
    index_build_budget_mb: Option<u64>,
    /// How far below searches the index builds and merges are scheduled (nice, 0..=19).
    #[arg(long, default_value_t = 10)]
    background_nice: i32,
    /// Run the index builds and merges at their nice value always, not in the idle scheduling
    /// class (which yields each core to a waking search at once, and is paced so that the
    /// builds keep at least a quarter of a core; used where the process may leave the class).
    #[arg(long)]
    no_background_idle: bool,
    /// Threads of the index builds and merges; 0 means one per core. Fewer keep cores free for
    /// searches while indexing runs longer.
    #[arg(long, default_value_t = 0)]
    background_threads: usize,
    /// RAM for verified index sectors shared by every disk index, MiB (CLOCK eviction); 0 turns
    /// it off [default: 128; with --memory-budget, what the budget leaves].
    #[arg(long)]
    sector_cache_mb: Option<usize>,
    /// What the filtered-search planner takes a disk index node read to cost, microseconds
    /// (it ranks passing rows by PQ or walks the graph, whichever costs less) [default:
    /// estimated from the sector cache's hit rate, about 2 from the cache, 25 from the disk].
    #[arg(long, value_parser = parse_micros)]
    node_read_cost_us: Option<std::time::Duration>,
    /// Do not build disk indexes in the background (searches stay exact).
    #[arg(long)]
    no_index: bool,
    /// Read every disk index into the sector cache before serving (verified, until the cache
    /// is full), so that searches answer from memory at once after a restart.
    #[arg(long)]
    warm_sector_cache: bool,
    /// Seconds to let calls in flight finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Open even if the WAL's last segment was truncated inside a record (not a crash's doing:
    /// the open is refused without this), cutting it there and losing the records from that
    /// record on, some of which may have been acknowledged. Restore the file instead if you can.
    #[arg(long)]
    cut_truncated_wal: bool,
    /// Write the WAL through the page cache instead of with direct I/O (which skips the page
    /// cache's copy of every record; the file system may not have it, and then the WAL is
    /// buffered anyway).
    #[arg(long)]
    wal_buffered: bool,
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The token to require, refusing one that would silently turn authentication off: an empty
/// or blank `--auth-token`, or `QUIVER_AUTH_TOKEN` set to nothing (which the flag parser would
/// otherwise take for "not set").
fn auth_token(args: &ServeArgs) -> Result<Option<String>, BoxError> {
    if args.auth_token.is_none()
        && let Some(v) = std::env::var_os(TOKEN_ENV)
    {
        if v.is_empty() {
            return Err(format!(
                "{TOKEN_ENV} is set but empty: refusing to start without authentication by accident (unset it to serve without a token)"
            )
            .into());
        }
        if v.to_str().is_none() {
            return Err(format!("{TOKEN_ENV} is not valid UTF-8").into());
        }
    }
    if quiver_flight::check_token(args.auth_token.as_deref()).is_err() {
        return Err("--auth-token (or QUIVER_AUTH_TOKEN) is empty or has whitespace at an end: refusing to start without authentication by accident; give a real token, or none".into());
    }
    Ok(args.auth_token.clone())
}

/// A PEM certificate chain and its private key.
type TlsPem = (Vec<u8>, Vec<u8>);

/// Reads and checks the TLS certificate and key, naming the file and the reason on failure.
fn tls_material(args: &ServeArgs) -> Result<Option<TlsPem>, BoxError> {
    let (Some(c), Some(k)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
    let cert = std::fs::read(c).map_err(|e| format!("--tls-cert {}: {e}", c.display()))?;
    let key = std::fs::read(k).map_err(|e| format!("--tls-key {}: {e}", k.display()))?;
    use quiver_flight::TlsError;
    quiver_flight::check_tls(&cert, &key).map_err(|e| -> BoxError {
        match e {
            TlsError::NoCertificate | TlsError::CertificatePem(_) => {
                format!("--tls-cert {}: {e}", c.display()).into()
            }
            TlsError::Key(_) => format!("--tls-key {}: {e}", k.display()).into(),
            _ => format!("--tls-cert {} with --tls-key {}: {e}", c.display(), k.display()).into(),
        }
    })?;
    Ok(Some((cert, key)))
}

/// The largest gRPC message, MiB: as given, else a sixteenth of the memory budget (at least 1),
/// else 256.
/// A duration given in microseconds (fractions allowed): finite, not negative, under an hour.
fn parse_micros(text: &str) -> Result<std::time::Duration, String> {
    let micros: f64 = text.parse().map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if !(0.0..3.6e9).contains(&micros) {
        return Err(format!("{text} µs: expected at least 0 and under an hour"));
    }
    Ok(std::time::Duration::from_secs_f64(micros / 1e6))
}

fn max_message_mb(args: &ServeArgs) -> usize {
    match (args.max_message_mb, args.memory_budget) {
        (Some(mb), _) => mb.max(1),
        (None, Some(budget)) => {
            ((budget >> 20) as usize / quiver_engine::budget_shares::MESSAGE).max(1)
        }
        (None, None) => 256,
    }
}

/// An HTTP/2 flow-control window, bytes: `kb` KiB (at least 64), and under a memory budget no
/// more than `1/share` of it (data a client may send ahead sits in the server's buffers).
fn window_bytes(kb: u32, budget: Option<u64>, share: u64) -> u32 {
    let given = kb.max(64) << 10;
    match budget {
        Some(b) => given.min(u32::try_from(b / share).unwrap_or(u32::MAX)).max(64 << 10),
        None => given,
    }
}

/// The engine's options from the flags: the memory budget's shares first, then each size flag
/// given over its share.
fn engine_options(args: &ServeArgs) -> Options {
    let mut opts = Options::default();
    if let Some(budget) = args.memory_budget {
        opts = opts.memory_budget(usize::try_from(budget).unwrap_or(usize::MAX));
    }
    if let Some(mb) = args.memtable_mb {
        opts = opts.memtable_bytes(mb.max(1) << 20);
    }
    if let Some(mb) = args.wal_segment_mb {
        opts = opts.wal_segment_bytes(mb.max(1) << 20);
    }
    if let Some(mb) = args.sector_cache_mb {
        opts = opts.sector_cache_bytes(mb << 20);
    }
    if args.node_read_cost_us.is_some() {
        opts = opts.node_read_cost(args.node_read_cost_us);
    }
    if let Some(mb) = args.index_build_budget_mb {
        let mut params = *opts.index_build_params();
        params.ram_budget = (mb > 0).then_some(mb << 20);
        opts = opts.index_params(params);
    }
    opts.background_nice(args.background_nice)
        .background_idle(!args.no_background_idle)
        .background_threads(args.background_threads)
        .build_indexes(!args.no_index)
        .cut_truncated_wal(args.cut_truncated_wal)
        .wal_direct_io(!args.wal_buffered)
}

pub fn serve(args: &ServeArgs) -> Result<(), BoxError> {
    if args.memory_budget.is_some() {
        // Within a budget, freed memory goes back at once, so what the budget counts is what
        // is resident. Without one, mimalloc keeps freed pages for reuse: scans and puts then
        // reuse buffers instead of faulting fresh pages in (scans ran 1.6× faster, with half
        // the server CPU a GB, on 600k rows of 128-d f32; BENCHMARKS.md, issue 26).
        crate::allocator_purges_at_once();
    }
    // Every check that can refuse the configuration runs before the database is opened or the
    // port bound, so a refused start prints no "listening" line.
    let token = auth_token(args)?;
    let tls = tls_material(args)?;
    let scheme = if tls.is_some() { "grpc+tls" } else { "grpc" };
    let mut cfg = ServerConfig {
        auth_token: token,
        tls,
        max_message_bytes: max_message_mb(args) << 20,
        keepalive_interval: (args.keepalive_secs > 0)
            .then(|| Duration::from_secs(args.keepalive_secs)),
        keepalive_timeout: Duration::from_secs(args.keepalive_timeout_secs.max(1)),
        stream_window: window_bytes(args.stream_window_kb, args.memory_budget, 32),
        connection_window: window_bytes(args.connection_window_kb, args.memory_budget, 16),
        ..ServerConfig::default()
    };
    cfg.service.scan_chunk_start = args.scan_chunk_start.max(1);
    cfg.service.scan_chunk_max = args.scan_chunk_max.max(args.scan_chunk_start).max(1);
    cfg.service.max_ingest_bytes = args.memory_budget.map(|b| {
        usize::try_from(b).unwrap_or(usize::MAX) / quiver_engine::budget_shares::IN_FLIGHT
    });
    if args.memory_budget.is_some() {
        // Within a budget freed memory goes back at once (see above): no pool keeps it, and
        // connections read HTTP/2's smallest frames.
        cfg.service.ingest_pool_bytes = 0;
        cfg.max_frame_size = 16 << 10;
    }
    let db = Arc::new(Database::open(&args.data, engine_options(args))?);
    if args.warm_sector_cache {
        let started = std::time::Instant::now();
        let admitted = db.warm_sector_cache()?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(admitted, seconds, "warmed the sector cache");
    }
    let metrics = args.metrics_listen.map(|_| quiver_flight::metrics::Metrics::new(&db));
    cfg.service.metrics = metrics.clone();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build()?;
    let grace = Duration::from_secs(args.shutdown_grace);
    rt.block_on(async {
        let listener = quiver_flight::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        let metrics_listener = match args.metrics_listen {
            Some(at) => Some(quiver_flight::bind(at).await?),
            None => None,
        };
        println!("listening on {scheme}://{addr}");
        if let (Some(listener), Some(metrics)) = (metrics_listener, metrics) {
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(e) = quiver_flight::metrics::serve_metrics(listener, metrics).await {
                    tracing::error!("the metrics listener failed: {e}");
                }
            });
        }
        std::io::stdout().flush()?;
        tracing::info!(data = %args.data.display(), %addr, "serving");
        tracing::info!(
            "authentication: {}; TLS: {}",
            if cfg.auth_token.is_some() { "on (bearer token)" } else { "OFF (no token)" },
            if cfg.tls.is_some() { "on" } else { "OFF (plaintext)" }
        );
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            signal().await;
            let _ = fired_tx.send(());
        };
        let server = quiver_flight::serve(db.clone(), listener, &cfg, shutdown);
        let deadline = async move {
            if fired_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = server => r?,
            () = deadline => tracing::warn!("calls still running after {grace:?}; stopping anyway"),
        }
        Ok::<(), BoxError>(())
    })?;
    // Stop runtime threads (and the blocking engine calls they wait on) before closing the
    // database, so no call races its shutdown.
    rt.shutdown_timeout(Duration::from_secs(5));
    match Arc::try_unwrap(db) {
        Ok(db) => drop(db),
        Err(_) => tracing::warn!("a call still holds the database; its files stay consistent"),
    }
    eprintln!("quiver: stopped");
    Ok(())
}
