//! pyarrow against the real `quiver serve` for the defects of a hostile-user probe that live
//! where Flight meets the engine: reserved column names, float32 filters, get after a flush,
//! scans under a 1 MiB message limit, DoExchange from pyarrow, echoed 10 KiB names, non-UTF-8
//! descriptors, and VectorSearch results streamed instead of built whole (the server's peak RSS
//! is read from /proc). The script (tests/python/reliability_client.py) says what each check
//! pins down.
//!
//! Needs Python with pyarrow and numpy (`QUIVER_PYTHON`); the README's test command installs
//! them and sets `QUIVER_REQUIRE_PYARROW=1`, so a missing pyarrow fails instead of skipping.

mod serve;

use std::path::Path;
use std::process::Command;

use serve::Served;

#[test]
fn pyarrow_probes_of_reliability_defects_pass() {
    let Some(py) = quiver_testkit::python_with("pyarrow.flight, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("db"), &["--max-message-mb", "1"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reliability_client.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(server.uri())
        .arg(server.pid().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reliability probes failed:\n{stdout}\n{stderr}");
    eprintln!("{}", stdout.trim());
    server.terminate();
}
