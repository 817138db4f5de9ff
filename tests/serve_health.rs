//! `quiver serve`'s health endpoints when the disk fills up: the WAL cannot reserve its next
//! segment, the database poisons itself (it refuses writes until a restart, which recovers), and
//! `/live` and `/ready` must then answer 503 naming the failure so that Kubernetes restarts the
//! pod and takes it out of its Service. Before this test the 503 path was only read, never run:
//! a probe that kept answering 200 would leave a server that refuses every write in rotation.
//!
//! A real file system fills up: a small tmpfs mounted for the test. The README's test command
//! runs as root and sets `QUIVER_REQUIRE_MOUNT=1` (a failed mount then fails the test instead of
//! skipping it) and `QUIVER_REQUIRE_PYARROW=1` (the client is pyarrow).

mod serve;

use quiver_testkit::SmallDisk;
use serve::Served;

#[test]
fn a_full_disk_turns_live_and_ready_to_503_naming_the_failure() {
    let Some(py) = quiver_testkit::python_with("pyarrow.flight, numpy") else { return };
    let Some(disk) = SmallDisk::mount(16 << 20) else { return };
    let server = Served::start(
        &disk.path().join("db"),
        &["--metrics-listen", "127.0.0.1:0", "--wal-segment-mb", "1", "--no-index"],
    );
    let metrics = server.metrics_addr.clone().expect("the metrics address");
    let filler = disk.path().join("filler").display().to_string();
    serve::run_python_client(
        &py,
        "health_client.py",
        [server.uri(), metrics, filler],
        "health checks",
    );
    server.kill9();
}
