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

use std::ffi::OsStr;
use std::path::Path;

use serve::Served;

fn python() -> Option<String> {
    quiver_testkit::python_with("pyarrow.flight, numpy")
}

fn run(py: &str, phase: &str, uri: &str, state: &Path) {
    let args = [OsStr::new(phase), OsStr::new(uri), state.as_os_str()];
    serve::run_python_client(py, "flight_client.py", args, phase);
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
