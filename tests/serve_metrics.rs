//! `quiver serve --metrics-listen` under a real Prometheus server: Prometheus scrapes the
//! server on loopback while a pyarrow client puts rows (and one refused batch) and searches;
//! the counters must equal what was sent, read both from the server's own `/metrics` and from
//! Prometheus's query API. Pins down metrics that are missing, miscounted, misnamed for
//! Prometheus (the exposition must parse), or unreachable by a real scraper.
//!
//! Needs Debian's `prometheus` and Python with pyarrow and numpy. The README's test command
//! installs them and sets `QUIVER_REQUIRE_PROMETHEUS=1` and `QUIVER_REQUIRE_PYARROW=1`, so a
//! missing tool fails there instead of skipping.

mod serve;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serve::Served;

/// A Prometheus server scraping `target` every second, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> Option<String> {
    let found =
        Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some("prometheus".into());
    }
    assert!(
        std::env::var("QUIVER_REQUIRE_PROMETHEUS").is_err(),
        "prometheus required (QUIVER_REQUIRE_PROMETHEUS is set) but not on PATH"
    );
    eprintln!("skipping: no prometheus binary (run ./scripts/test.sh, which installs it)");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_prometheus(bin: &str, dir: &Path, target: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: quiver\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn prometheus");
    Prometheus { child, addr }
}

#[test]
fn prometheus_scrapes_counters_equal_to_what_was_sent() {
    let Some(py) = quiver_testkit::python_with("pyarrow.flight, numpy") else { return };
    let Some(bin) = prometheus_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("db"), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr.clone().expect("the metrics address");
    let prometheus = start_prometheus(&bin, dir.path(), &metrics);
    let args = [server.uri(), metrics, prometheus.addr.clone()];
    serve::run_python_client(&py, "metrics_client.py", args, "metrics checks");
    drop(prometheus);
    server.terminate();
}
