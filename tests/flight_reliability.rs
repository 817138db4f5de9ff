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

use serve::Served;

#[test]
fn pyarrow_probes_of_reliability_defects_pass() {
    let Some(py) = quiver_testkit::python_with("pyarrow.flight, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("db"), &["--max-message-mb", "1"]);
    let args = [server.uri(), server.pid().to_string()];
    serve::run_python_client(&py, "reliability_client.py", args, "reliability probes");
    server.terminate();
}
