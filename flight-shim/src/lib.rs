//! # quiver-flight — the Arrow Flight shim over `quiver-engine`
//!
//! Puts a [`Database`] on the network as an Arrow Flight service that Longbow's pyarrow clients
//! drive unchanged:
//!
//! - **DoPut**: the collection is `descriptor.path[0]`, created on the first put from the batch
//!   schema (`vector`/`embedding` FixedSizeList column, `id` column, every other column an
//!   attribute; metric from schema metadata `quiver.metric` or `longbow.metric`). Each batch is
//!   acknowledged with a `PutResult` whose `app_metadata` is `{"collection", "rows", "lsn"}`,
//!   sent only after the batch is durable.
//! - **DoGet**: a JSON ticket — `{"search": {...}}` (Longbow's form), `{"name": N, "filters",
//!   "limit", "columns"}` or a bare name (a scan, streamed in batches that grow from small to
//!   64k rows), or `{"get": {"dataset", "ids"}}`.
//! - **DoAction** / **ListActions**: create, drop, delete, flush, stats, multi-query
//!   `VectorSearch`, readiness; Longbow's action names are accepted as aliases.
//! - **ListFlights** / **GetFlightInfo** / **GetSchema**: real schemas and row counts.
//! - **DoExchange** on path `["ingest", NAME]`: streaming ingest with a per-batch ack.
//!
//! Errors carry gRPC codes: `NotFound` (unknown collection), `InvalidArgument` (bad input),
//! `ResourceExhausted` (backpressure gave up), `Unauthenticated` (no token), `AlreadyExists`.
//!
//! May depend on: `quiver-engine` only among Quiver crates. Holds no storage logic of its own.

#![deny(missing_docs)]

pub mod auth;
pub mod convert;
pub mod filter;
pub mod metrics;
pub mod request;
mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
pub use auth::Auth;
pub use quiver_engine as engine;
use quiver_engine::Database;
pub use service::{ACTIONS, QuiverFlight, ServiceConfig};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// Default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
/// Default largest gRPC message accepted or sent: 256 MiB (pyarrow batches of 10k × 128 f32
/// are 5 MB; Longbow's clients allow 1 GiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How the server listens and what it allows. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Required token (`None`: no authentication).
    pub auth_token: Option<String>,
    /// PEM certificate chain and key: serve TLS (rustls) instead of plaintext.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Largest gRPC message decoded or encoded (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval (default 30 s; `None` disables pings).
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered before the connection is closed (20 s).
    pub keepalive_timeout: Duration,
    /// HTTP/2 per-stream flow-control window in bytes (default 4 MiB).
    pub stream_window: u32,
    /// HTTP/2 per-connection flow-control window in bytes (default 16 MiB).
    pub connection_window: u32,
    /// Most concurrent streams per connection (default 256).
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 frame the server accepts, in bytes (16 KiB to 16 MiB; default 1 MiB). A
    /// client may then send a 5 MB batch in 5 frames instead of 320: on a 4-stream put of
    /// 128-d f32, about 5% more MB/s for 8% less server CPU; no change measured on one stream
    /// (BENCHMARKS.md, issue 26). The transport reads a frame whole, so each connection may
    /// buffer one. `quiver serve
    /// --memory-budget` keeps HTTP/2's 16 KiB.
    pub max_frame_size: u32,
    /// The service's own tunables.
    pub service: ServiceConfig,
}

/// HTTP/2's smallest and largest frame size limits (RFC 9113, SETTINGS_MAX_FRAME_SIZE).
const MIN_FRAME_SIZE: u32 = 1 << 14;
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth_token: None,
            tls: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_concurrent_streams: 256,
            max_frame_size: 1 << 20,
            service: ServiceConfig::default(),
        }
    }
}

/// Why TLS material was refused by [`check_tls`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file holds no PEM `CERTIFICATE` block.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    /// The certificate file's PEM does not parse.
    #[error("the certificate PEM does not parse: {0}")]
    CertificatePem(String),
    /// The key file holds no private key that parses.
    #[error("no usable PEM private key: {0}")]
    Key(String),
    /// The certificate or key is unusable, or they do not belong together.
    #[error("the certificate and key do not make a usable identity: {0}")]
    Identity(String),
}

/// Parses a PEM certificate chain and private key the way the server will use them, and checks
/// that the key belongs to the first certificate. Run before listening, so bad material is
/// reported as such rather than as a transport failure after the port is bound.
///
/// # Errors
/// [`TlsError`] saying which part is wrong and why.
pub fn check_tls(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CertificatePem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    Ok(())
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS certificate or key was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
    /// TLS material that parsed was refused by the transport.
    #[error("TLS configuration: {0}")]
    TlsTransport(String),
    /// A configured auth token that can never be presented: empty, only whitespace, or with
    /// whitespace at either end (a token must not silently turn authentication off).
    #[error("the auth token is empty or has whitespace at an end; give a real token, or none")]
    BadToken,
    /// The transport failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Refuses a token that can never be presented (see [`ServeError::BadToken`]).
///
/// # Errors
/// [`ServeError::BadToken`].
pub fn check_token(token: Option<&str>) -> Result<(), ServeError> {
    match token {
        Some(t) if t.trim().is_empty() || t.trim() != t => Err(ServeError::BadToken),
        _ => Ok(()),
    }
}

/// Rewrites a status carried in the response headers (every error a call returns before
/// streaming, tonic's own included) by [`service::bounded_status`]: a request whose protobuf does
/// not parse (a descriptor path that is not UTF-8, say) is the client's fault, so tonic's
/// `INTERNAL` becomes `INVALID_ARGUMENT`; and a message is cut to a length every client's
/// metadata limit takes, however much of the client's input it echoes. Errors in the middle of a
/// stream are bounded where they are made.
fn bounded_header_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    if let Some(status) = Status::from_header_map(headers) {
        let status = service::bounded_status(status);
        headers.remove("grpc-message");
        if status.add_header(headers).is_err() {
            headers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        }
    }
    response
}

/// Binds `addr` (port 0 picks a free port; [`TcpListener::local_addr`] tells which).
///
/// # Errors
/// [`ServeError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `db` on `listener` until `shutdown` resolves, then stops accepting and lets calls in
/// flight finish (a caller that must bound that wait races this future against a timer).
///
/// # Errors
/// [`ServeError`]: bad TLS material or a transport failure.
pub async fn serve(
    db: Arc<Database>,
    listener: TcpListener,
    cfg: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    check_token(cfg.auth_token.as_deref())?;
    if let Some((cert, key)) = &cfg.tls {
        check_tls(cert, key)?;
    }
    let auth = Auth::new(cfg.auth_token.clone());
    let mut service = cfg.service.clone();
    // Encoded messages must fit the configured message size with room for the IPC and
    // protobuf framing around a batch's buffers; scans and results are cut to fit.
    service.max_flight_data_bytes =
        service.max_flight_data_bytes.min(cfg.max_message_bytes / 4 * 3).max(1);
    service.max_message_bytes = cfg.max_message_bytes;
    let flight = Arc::new(QuiverFlight::new(db, service, auth.clone()));
    let svc = FlightServiceServer::from_arc(flight.clone())
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    // DoGet on its own route, which sends batches from their buffers (service/wire.rs).
    let svc = service::DoGetRoute::new(svc, flight);
    let mut builder = Server::builder()
        .http2_keepalive_interval(cfg.keepalive_interval)
        .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
        .initial_stream_window_size(Some(cfg.stream_window))
        .initial_connection_window_size(Some(cfg.connection_window))
        .max_concurrent_streams(Some(cfg.max_concurrent_streams))
        .max_frame_size(Some(cfg.max_frame_size.clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE)));
    if let Some((cert, key)) = &cfg.tls {
        let identity = Identity::from_pem(cert, key);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::TlsTransport(e.to_string()))?;
    }
    let intercepted =
        tonic::service::interceptor::InterceptedService::new(svc, move |r| auth.check(r));
    builder
        .layer(tower::util::MapResponseLayer::new(bounded_header_status))
        .add_service(intercepted)
        // Nagle off on every accepted socket: with it on, a reply written in several small
        // frames waits for the client's delayed ACK (about 40 ms per call).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
