//! The Flight service: each RPC parsed, checked, and handed to the engine on a blocking thread.
//!
//! Invariants:
//! - A `PutResult` (DoPut) or ack message (DoExchange) is sent only after the batch's
//!   `PendingWrite::wait` returned, i.e. after the batch is durable in the WAL and visible. A
//!   batch that fails ends the stream with an error status, sent after the acknowledgements of
//!   the batches before it; those stay acknowledged.
//! - Batches of one stream are submitted in order (upserts keep their order) and acknowledged in
//!   that order; up to `MAX_IN_FLIGHT` are in the WAL's queue at once, so a client that streams
//!   without waiting for each acknowledgement is not held to one sync per batch. Streams run
//!   concurrently and share the WAL's group commit.
//! - Engine calls never run on the async runtime's threads (`spawn_blocking`).
//!
//! Rooms: this file holds the RPC handlers; `ingest` the DoPut/DoExchange write path,
//! `read` searches, gets and scans, `chunker` the adaptive batching of streamed results,
//! `actions` every DoAction, `status` how engine errors become gRPC statuses, and `wire` the
//! DoGet route that writes its gRPC frames from the batches' own buffers.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use bytes::Bytes;
use futures::Stream;
use quiver_engine::Database;
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::request::{self, Ticket as TicketReq};
pub use actions::ACTIONS;
use actions::{canonical_action, run_action, unknown_action};
use actions::{vector_search_queries, vector_search_stream};
use exchange::{SEARCH_COMMANDS, exchange_search};
use ingest::{IngestGate, batch_stream, spawn_ingest};
use ingest_decode::BodyPool;
use read::{Reply, run_get, run_search, scan_stream};
pub(crate) use status::bounded_status;
use status::{collection_status, invalid};
pub(crate) use wire::DoGetRoute;

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

mod actions;
mod chunker;
mod exchange;
mod ingest;
mod ingest_decode;
mod read;
mod status;
mod wire;

/// Tunables of the service (the server's flags set them).
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Rows in the first batch of a scan.
    pub scan_chunk_start: usize,
    /// Rows per batch a scan grows to (fewer when a batch of that many rows would exceed
    /// `max_flight_data_bytes`: the encoder would split it into messages of that size anyway,
    /// so gathering more only costs a copy through memory instead of cache).
    pub scan_chunk_max: usize,
    /// Largest FlightData message the encoder produces (bigger batches are split).
    pub max_flight_data_bytes: usize,
    /// Largest message the transport sends (the server sets it from its own limit); a
    /// `VectorSearch` result over it is refused.
    pub max_message_bytes: usize,
    /// How long `wait-for-indexing` waits at most.
    pub max_index_wait: Duration,
    /// Bytes of ingest batches in flight over every stream (decoded and logged, not yet
    /// acknowledged; a batch counts twice its Arrow bytes, for the WAL's copy). `None`: no bound
    /// but eight batches a stream. `quiver serve --memory-budget` sets a sixteenth of it.
    pub max_ingest_bytes: Option<usize>,
    /// Bytes of freed ingest message bodies kept for the next batches to reuse (their pages
    /// stay resident; a fresh buffer faults every page in). 0 keeps none. Default 128 MiB, the
    /// engine's two default memtables; `quiver serve --memory-budget` sets 0, as freed memory
    /// must then go back at once.
    pub ingest_pool_bytes: usize,
    /// Prometheus metrics to count into (`None`: off, nothing is counted).
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            scan_chunk_start: 1024,
            scan_chunk_max: 65_536,
            max_flight_data_bytes: 2 << 20,
            max_message_bytes: crate::DEFAULT_MAX_MESSAGE_BYTES,
            max_index_wait: Duration::from_secs(3600),
            max_ingest_bytes: None,
            ingest_pool_bytes: 128 << 20,
            metrics: None,
        }
    }
}

/// The Arrow Flight service over one [`Database`].
#[derive(Clone, Debug)]
pub struct QuiverFlight {
    db: Arc<Database>,
    cfg: Arc<ServiceConfig>,
    auth: Auth,
    ingest_gate: IngestGate,
    /// Buffers for ingest message bodies, reused after flushes ([`ingest_decode`]).
    bodies: Arc<BodyPool>,
}

impl QuiverFlight {
    /// A service over `db`.
    pub fn new(db: Arc<Database>, cfg: ServiceConfig, auth: Auth) -> Self {
        let ingest_gate = IngestGate::new(cfg.max_ingest_bytes);
        let bodies = BodyPool::new(cfg.ingest_pool_bytes);
        QuiverFlight { db, cfg: Arc::new(cfg), auth, ingest_gate, bodies }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Status::internal(format!("worker thread failed: {e}")))?
}

/// The span of one Flight call, a child of the client's trace when its gRPC metadata carries
/// W3C trace context (`traceparent`). Disabled, and nothing extracted, when tracing is off.
fn rpc_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = match method {
        "do_get" => tracing::debug_span!("do_get"),
        "do_put" => tracing::debug_span!("do_put"),
        "do_action" => tracing::debug_span!("do_action"),
        "do_exchange" => tracing::debug_span!("do_exchange"),
        _ => tracing::debug_span!("flight", rpc = method),
    };
    if !span.is_disabled() {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&MetadataExtractor(metadata))
        });
        let _ = span.set_parent(parent);
    }
    span
}

/// Reads W3C trace context from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

fn descriptor_collection(d: Option<&FlightDescriptor>) -> Result<String, Status> {
    let d = d.ok_or_else(|| invalid("the first message carries no flight descriptor"))?;
    match d.path.first() {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => Err(invalid("the flight descriptor's path[0] must name the collection")),
    }
}

fn flight_info(db: &Database, name: &str) -> Result<FlightInfo, Status> {
    let cs = db.schema(name).map_err(collection_status)?;
    let st = db.stats(name).map_err(collection_status)?;
    let ticket = json!({"name": name}).to_string();
    FlightInfo::new()
        .try_with_schema(&cs.arrow_schema())
        .map_err(|e| Status::internal(e.to_string()))
        .map(|i| {
            i.with_descriptor(FlightDescriptor::new_path(vec![name.to_string()]))
                .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                .with_total_records(st.rows as i64)
                .with_total_bytes((st.segment_bytes + st.resident_vector_bytes) as i64)
        })
}

#[tonic::async_trait]
impl FlightService for QuiverFlight {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        // The interceptor has already checked the credentials (a bearer token, or basic auth
        // whose password is the token); answer with the bearer token clients should send.
        let token = self.auth.bearer_for(request.metadata());
        let mut input = request.into_inner();
        let payload = match input.message().await? {
            Some(m) => m.payload,
            None => Bytes::new(),
        };
        let reply = HandshakeResponse { protocol_version: 0, payload };
        let mut resp: Response<Self::HandshakeStream> =
            Response::new(Box::pin(futures::stream::once(async move { Ok(reply) })));
        if let Some(t) = token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            resp.metadata_mut().insert("authorization", v);
        }
        Ok(resp)
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let db = self.db.clone();
        let infos = blocking(move || {
            db.list_collections()
                .into_iter()
                .filter_map(|(name, _)| match flight_info(&db, &name) {
                    Err(s) if s.code() == tonic::Code::NotFound => None, // dropped meanwhile
                    r => Some(r),
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        Ok(Response::new(Box::pin(futures::stream::iter(infos.into_iter().map(Ok)))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let span = rpc_span("get_flight_info", request.metadata());
        let result = self.get_flight_info_call(request).instrument(span).await;
        self.counted("get_flight_info", result)
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("PollFlightInfo: queries complete at once; use GetFlightInfo"))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let name = descriptor_collection(Some(request.get_ref()))?;
        let cs = self.db.schema(&name).map_err(collection_status)?;
        let schema = cs.arrow_schema();
        let r: SchemaResult = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(r))
    }

    /// Served here for callers of this trait; `quiver_flight::serve` answers DoGet on its own
    /// route (`service/wire.rs`), which encodes the same reply without copying the batches' buffers.
    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let reply = self.do_get_reply(request).await?;
        Ok(Response::new(reply.into_flight_data(self.cfg.max_flight_data_bytes)))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let span = rpc_span("do_put", request.metadata());
        let result = self.do_put_call(request).instrument(span).await;
        self.counted("do_put", result)
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let span = rpc_span("do_action", request.metadata());
        let result = self.do_action_call(request).instrument(span).await;
        self.counted("do_action", result)
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let types: Vec<Result<ActionType, Status>> = ACTIONS
            .iter()
            .flat_map(|(names, what)| {
                names.iter().enumerate().map(move |(i, n)| {
                    let description = if i == 0 {
                        (*what).to_string()
                    } else {
                        format!("Longbow's name for {}.", names[0])
                    };
                    Ok(ActionType { r#type: (*n).to_string(), description })
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(types))))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let span = rpc_span("do_exchange", request.metadata());
        let result = self.do_exchange_call(request).instrument(span).await;
        self.counted("do_exchange", result)
    }
}

impl QuiverFlight {
    /// `result`, counted in the metrics (if on) when it is an error.
    fn counted<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        if let (Err(status), Some(m)) = (&result, &self.cfg.metrics) {
            m.failed(method, status.code());
        }
        result
    }

    /// The reply to a DoGet: its schema and batches, not yet encoded.
    pub(crate) async fn do_get_reply(&self, request: Request<Ticket>) -> Result<Reply, Status> {
        let span = rpc_span("do_get", request.metadata());
        let result = self.do_get_call(request).instrument(span).await;
        self.counted("do_get", result)
    }

    async fn do_get_call(&self, request: Request<Ticket>) -> Result<Reply, Status> {
        let ticket =
            request::parse_ticket(&request.get_ref().ticket).map_err(|e| invalid(e.to_string()))?;
        let (db, cfg) = (self.db.clone(), self.cfg.clone());
        match ticket {
            TicketReq::Search(req) => {
                let v = req
                    .vector
                    .as_deref()
                    .ok_or_else(|| invalid("a search ticket needs \"vector\": [...]"))?;
                let q = request::query_vector(v).map_err(|e| invalid(e.to_string()))?;
                let metrics = cfg.metrics.clone();
                let b = blocking(move || run_search(&db, &req, &q, metrics.as_deref())).await?;
                Ok(Reply::one(b))
            }
            TicketReq::Get(req) => {
                let b = blocking(move || run_get(&db, &req)).await?;
                Ok(Reply::one(b))
            }
            TicketReq::Scan(req) => blocking(move || scan_stream(&db, &cfg, &req)).await,
        }
    }

    async fn do_put_call(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<<QuiverFlight as FlightService>::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| invalid("the DoPut stream is empty"))?;
        let name = descriptor_collection(first.flight_descriptor.as_ref())?;
        let batches = batch_stream(first, input, self.bodies.clone());
        let metrics = self.cfg.metrics.clone();
        let gate = self.ingest_gate.clone();
        Ok(Response::new(spawn_ingest(
            self.db.clone(),
            gate,
            name,
            batches,
            metrics,
            "do_put",
            |ack| PutResult { app_metadata: ack },
        )))
    }

    async fn do_action_call(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<QuiverFlight as FlightService>::DoActionStream>, Status> {
        let Action { r#type, body } = request.into_inner();
        let action = canonical_action(&r#type).ok_or_else(|| unknown_action(&r#type))?;
        let (db, cfg) = (self.db.clone(), self.cfg.clone());
        if action == "VectorSearch" {
            let (req, queries) = blocking(move || vector_search_queries(&body)).await?;
            let max = cfg.max_message_bytes;
            let metrics = cfg.metrics.clone();
            return Ok(Response::new(vector_search_stream(db, req, queries, max, metrics)));
        }
        let results = blocking(move || run_action(&db, &cfg, action, &body)).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            results.into_iter().map(|body| Ok(arrow_flight::Result { body })),
        ))))
    }

    async fn do_exchange_call(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<<QuiverFlight as FlightService>::DoExchangeStream>, Status> {
        let mut input = request.into_inner();
        let first =
            input.message().await?.ok_or_else(|| invalid("the DoExchange stream is empty"))?;
        let command = first.flight_descriptor.as_ref().map(|d| d.cmd.clone()).unwrap_or_default();
        if SEARCH_COMMANDS.contains(&command.as_ref()) {
            let stream = exchange_search(self.db.clone(), self.cfg.clone(), first, input).await?;
            return Ok(Response::new(stream));
        }
        let path = first.flight_descriptor.as_ref().map(|d| d.path.clone()).unwrap_or_default();
        let name = match path.as_slice() {
            [verb, name] if verb == "ingest" && !name.is_empty() => name.clone(),
            _ => {
                return Err(invalid(format!(
                    "DoExchange takes the path [\"ingest\", COLLECTION] (streaming ingest) or \
                     the command \"VectorSearch\" (or \"search\": query rows); got path \
                     {path:?}, command {:?}",
                    String::from_utf8_lossy(&command)
                )));
            }
        };
        let batches = batch_stream(first, input, self.bodies.clone());
        let metrics = self.cfg.metrics.clone();
        Ok(Response::new(spawn_ingest(
            self.db.clone(),
            self.ingest_gate.clone(),
            name,
            batches,
            metrics,
            "do_exchange",
            |ack| FlightData { app_metadata: ack, ..FlightData::default() },
        )))
    }

    async fn get_flight_info_call(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let name = descriptor_collection(Some(request.get_ref()))?;
        let db = self.db.clone();
        Ok(Response::new(blocking(move || flight_info(&db, &name)).await?))
    }
}
