//! Runs the real `quiver serve` binary for end-to-end tests: start it on a free loopback port,
//! learn the port from its first stdout line, stop it with SIGTERM or SIGKILL.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Served {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `127.0.0.1:PORT` of the metrics listener, when `--metrics-listen` was given.
    pub metrics_addr: Option<String>,
}

impl Served {
    pub fn start(data: &Path, extra: &[&str]) -> Served {
        Served::start_with_env(data, extra, &[])
    }

    /// [`Served::start`] with extra environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quiver"))
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn quiver serve");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on grpc://")
            .unwrap_or_else(|| panic!("unexpected first line from quiver serve: {line:?}"))
            .to_string();
        let metrics_addr = extra.contains(&"--metrics-listen").then(|| {
            line.clear();
            out.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix("metrics on http://")
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .unwrap_or_else(|| panic!("unexpected second line from quiver serve: {line:?}"))
                .to_string()
        });
        Served { child, addr, metrics_addr }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uri(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid with a valid signal number; no memory involved.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "quiver serve exited with {status} after SIGTERM");
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no exit 60 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the client `tests/python/{script}` with `py` and `args`, echoes its report and returns
/// what it printed on stdout. Panics with everything it printed, headed "`what` failed", if it
/// exits unsuccessfully.
pub fn run_python_client(
    py: &str,
    script: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    what: &str,
) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let out = Command::new(py).arg(path).args(args).output().expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    eprintln!("{what}: {}", stdout.trim());
    stdout.into_owned()
}
