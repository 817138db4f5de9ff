//! Logging, and OpenTelemetry tracing when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Log lines go to stderr, filtered by `RUST_LOG` (default `info`). The engine and the Flight
//! server open spans at DEBUG level (a Flight call, a search and each segment it reads, a
//! write's validation and its WAL wait, background builds, merges and flushes): with tracing off
//! and the default filter they are disabled at their call sites and cost nothing. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set (the standard variable; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_BSP_*` are honoured too), a second layer takes the
//! `quiver` spans and exports them over OTLP/gRPC in batches, on a one-thread tokio runtime of
//! its own; W3C trace context (`traceparent`) from a client's gRPC metadata makes a Flight call's
//! span a child of the client's. Dropping [`Telemetry`] flushes what is left.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The standard variable that turns the exporter on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Keeps the exporter alive; flushes and stops it when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The exporter's runtime, dropped after the provider's shutdown.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("quiver: flushing traces failed: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

/// Installs the global subscriber: the stderr log, and the OTLP exporter if configured. A
/// misconfigured exporter is reported and tracing stays off (the command still runs).
pub fn init() -> Telemetry {
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let exporter = std::env::var_os(OTLP_ENDPOINT_ENV).map(|_| otlp());
    match exporter {
        Some(Ok((provider, runtime))) => {
            let tracer = provider.tracer("quiver");
            let spans = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(
                EnvFilter::new("quiver=debug,quiver_flight=debug,quiver_engine=debug"),
            );
            tracing_subscriber::registry().with(log).with(spans).init();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            Telemetry { provider: Some(provider), runtime: Some(runtime) }
        }
        Some(Err(e)) => {
            tracing_subscriber::registry().with(log).init();
            tracing::error!("{OTLP_ENDPOINT_ENV} is set but the OTLP exporter failed: {e}");
            Telemetry { provider: None, runtime: None }
        }
        None => {
            tracing_subscriber::registry().with(log).init();
            Telemetry { provider: None, runtime: None }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The OTLP/gRPC span exporter behind a batch processor, on a runtime of its own.
fn otlp() -> Result<(SdkTracerProvider, tokio::runtime::Runtime), BoxError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("quiver-otlp")
        .enable_all()
        .build()?;
    let _inside = runtime.enter();
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Ok(endpoint) = std::env::var(OTLP_ENDPOINT_ENV) {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build()?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("quiver").build();
    let provider =
        SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    Ok((provider, runtime))
}
