//! A Longbow user's pyarrow script against the real `quiver serve`: DoPut a table with a
//! FixedSizeList<float32, 128> vector column and string ids (acks checked), DoGet searches
//! checked against numpy brute force, a scan compared row by row, deletes in Longbow's and
//! Quiver's forms; then the server is stopped with SIGTERM and restarted, and everything
//! acknowledged must still be there. Pins down wire incompatibilities with pyarrow (message
//! sizes, descriptors, schemas, tickets) and writes lost across a restart.
//!
//! Needs Python with pyarrow and numpy: `QUIVER_PYTHON` names the interpreter (the README's test
//! command installs both in a venv and sets `QUIVER_REQUIRE_PYARROW=1`, so that a missing
//! pyarrow fails instead of skipping).

mod serve;

use std::path::Path;
use std::process::Command;

use serve::Served;

fn python() -> Option<String> {
    quiver_testkit::python_with("pyarrow.flight, numpy")
}

fn run(py: &str, phase: &str, uri: &str, state: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/flight_client.py");
    let out = Command::new(py).arg(script).args([phase, uri]).arg(state).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{phase} failed:\n{stdout}\n{stderr}");
    eprintln!("{phase}: {}", stdout.trim());
}

#[test]
fn pyarrow_client_round_trips_and_finds_everything_after_a_restart() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let server = Served::start(&data, &[]);
    run(&py, "write", &server.uri(), dir.path());
    server.terminate();
    let server = Served::start(&data, &[]);
    run(&py, "verify", &server.uri(), dir.path());
    server.terminate();
}
