//! Every vector element type (f32, f16, u8, i8) and id type (u64, i64, string) put through
//! pyarrow's DoPut and read back through a DoGet scan, compared byte for byte — live, after a
//! kill -9 (the rows then come back from WAL records alone: nothing was flushed), and again
//! after a second kill -9 of a server that wrote its WAL buffered instead of with direct I/O.
//! Most batches are logged from the IPC message they arrived in; a zstd-compressed stream,
//! int32 ids and float64 vectors take the re-encoding path. Pins down a logged message that
//! recovers to other bytes than were acknowledged, on either path and either WAL write mode.
//!
//! Needs Python with pyarrow and numpy (see `tests/flight_pyarrow.rs`).

mod serve;

use std::ffi::OsStr;
use std::path::Path;

use serve::Served;

fn run(py: &str, phase: &str, uri: &str, state: &Path) {
    let args = [OsStr::new(phase), OsStr::new(uri), state.as_os_str()];
    serve::run_python_client(py, "roundtrip_client.py", args, phase);
}

#[test]
fn every_vector_and_id_type_round_trips_byte_for_byte_through_kill_9() {
    let Some(py) = quiver_testkit::python_with("pyarrow.flight, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let server = Served::start(&data, &["--no-index"]);
    run(&py, "write", &server.uri(), dir.path());
    server.kill9();
    let server = Served::start(&data, &["--no-index", "--wal-buffered"]);
    run(&py, "verify", &server.uri(), dir.path());
    server.kill9();
    let server = Served::start(&data, &["--no-index"]);
    run(&py, "verify", &server.uri(), dir.path());
    server.terminate();
}
