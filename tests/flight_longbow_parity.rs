//! Longbow's SDK and scripts point at `quiver serve` and must keep working: filter values sent
//! as strings on numeric and boolean columns, an id repeated within one batch (the last row
//! wins), `utf8` and `large_string` columns interchangeable, hybrid keys (`text_query`,
//! `alpha`) refused as `Unimplemented` instead of silently answered as pure vector searches,
//! and readiness that says BUSY while rows wait in memory. The script
//! (tests/python/longbow_parity_client.py) sends the exact bodies Longbow's clients send and
//! checks values against numpy brute force.
//!
//! Needs Python with pyarrow and numpy (`QUIVER_PYTHON`); the README's test command installs
//! them and sets `QUIVER_REQUIRE_PYARROW=1`, so a missing pyarrow fails instead of skipping.

mod serve;

use serve::Served;

#[test]
fn longbow_client_bodies_get_longbow_answers() {
    let Some(py) = quiver_testkit::python_with("pyarrow.flight, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("db"), &[]);
    serve::run_python_client(
        &py,
        "longbow_parity_client.py",
        [server.uri()],
        "Longbow parity checks",
    );
    server.terminate();
}
