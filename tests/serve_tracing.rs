//! OpenTelemetry tracing end to end: `quiver serve` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing
//! at an OTLP/gRPC receiver built on the official protobuf service definitions
//! (tests/python/otlp_client.py, grpcio + opentelemetry-proto). A pyarrow client sends W3C
//! trace context; the spans the server exports must continue the client's trace and nest the
//! engine's work under each call (a put's insert and WAL wait, a search and its segments). Pins
//! down spans that are lost, orphaned, or detached from the caller's trace.
//!
//! Needs Python with pyarrow, numpy, grpcio and opentelemetry-proto: the README's test command
//! installs them and sets `QUIVER_REQUIRE_PYARROW=1`, so a missing module fails instead of
//! skipping.

mod serve;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serve::Served;

#[test]
fn spans_continue_the_clients_trace_and_nest_the_engines_work() {
    let modules = "pyarrow.flight, numpy, grpc, opentelemetry.proto";
    let Some(py) = quiver_testkit::python_with(modules) else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_client.py");
    let mut client = Command::new(&py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("otlp ").unwrap_or_else(|| panic!("got {line:?}"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start_with_env(
        &dir.path().join("db"),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let mut input = client.stdin.take().unwrap();
    writeln!(input, "{}", server.uri()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done", "the client failed before its checks");
    server.terminate(); // flushes the spans not yet exported
    writeln!(input, "check").unwrap();
    drop(input);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = client.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "tracing checks failed:\n{rest}\n{err}");
    eprintln!("{}", rest.trim());
}
