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

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    Array, ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use quiver_engine::Metric;
use quiver_engine::schema::{DISTANCE_COLUMN, RESULT_DISTANCE_COLUMN, SCORE_COLUMN};
use quiver_engine::{
    CollectionError, CollectionSchema, Database, FlushError, IdType, MAX_K, PendingWrite,
    ReadError, SearchParams, VectorType, WriteError,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Auth;
use crate::convert::{self, ID_COLUMN, VECTOR_COLUMN, metric_name};
use crate::filter::{Filters, to_predicate};
use crate::request::{
    self, CreateRequest, DeleteRequest, GetRequest, MAX_QUERIES, ScanRequest, SearchRequest,
    Ticket as TicketReq,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            scan_chunk_start: 1024,
            scan_chunk_max: 65_536,
            max_flight_data_bytes: 2 << 20,
            max_message_bytes: crate::DEFAULT_MAX_MESSAGE_BYTES,
            max_index_wait: Duration::from_secs(3600),
        }
    }
}

/// The Arrow Flight service over one [`Database`].
#[derive(Clone, Debug)]
pub struct QuiverFlight {
    db: Arc<Database>,
    cfg: Arc<ServiceConfig>,
    auth: Auth,
}

impl QuiverFlight {
    /// A service over `db`.
    pub fn new(db: Arc<Database>, cfg: ServiceConfig, auth: Auth) -> Self {
        QuiverFlight { db, cfg: Arc::new(cfg), auth }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn collection_status(e: CollectionError) -> Status {
    match e {
        CollectionError::NotFound(n) => Status::not_found(format!("no collection named {n:?}")),
        CollectionError::AlreadyExists(n) => {
            Status::already_exists(format!("collection {n:?} already exists"))
        }
        CollectionError::Name(e) => invalid(format!("bad collection name: {e}")),
        CollectionError::Schema(e) => invalid(format!("bad collection schema: {e}")),
        CollectionError::Poisoned(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

/// Backpressure gave up (the engine's `max_stall` passed): the client should retry later.
fn stalled_status(waited: Duration) -> Status {
    Status::resource_exhausted(format!(
        "background indexing is behind (waited {waited:?}); retry later"
    ))
}

/// A full disk, wherever in an error's chain it shows. After a failed log write the database
/// refuses writes until it is reopened; otherwise the client may retry once space is freed.
fn no_space_status(e: &(dyn std::error::Error + 'static), reopen: bool) -> Option<Status> {
    let next = if reopen {
        "free space, then restart the server (the write-ahead log refuses writes after a failed write)"
    } else {
        "retry once space is freed"
    };
    quiver_engine::is_no_space(e).then(|| {
        Status::resource_exhausted(format!(
            "the disk is full (ENOSPC): {e}; nothing acknowledged is lost; {next}"
        ))
    })
}

fn write_status(collection: &str, e: WriteError) -> Status {
    let reopen = matches!(e, WriteError::Wal(_) | WriteError::Poisoned(_));
    if let Some(s) = no_space_status(&e, reopen) {
        return s;
    }
    match e {
        WriteError::NotFound(n) => Status::not_found(format!("no collection named {n:?}")),
        WriteError::Batch(b) => invalid(format!("collection {collection:?}: {b}")),
        WriteError::Stalled(d) => stalled_status(d),
        WriteError::Poisoned(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

fn flush_status(e: FlushError) -> Status {
    let reopen = matches!(e, FlushError::Wal(_) | FlushError::Poisoned(_));
    if let Some(s) = no_space_status(&e, reopen) {
        return s;
    }
    match e {
        FlushError::Stalled(d) => stalled_status(d),
        FlushError::Poisoned(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

fn read_status(e: ReadError) -> Status {
    match e {
        ReadError::NotFound(n) => Status::not_found(format!("no collection named {n:?}")),
        ReadError::Query(m) => invalid(m),
        ReadError::UnknownColumn(c) => invalid(format!("no column named {c:?}")),
        ReadError::Ids(b) => invalid(b.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// A decoding failure of a client's stream is the client's fault unless it carries a status.
fn decode_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => invalid(format!("cannot decode the Arrow stream: {other}")),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker thread failed: {e}")))?
}

fn descriptor_collection(d: Option<&FlightDescriptor>) -> Result<String, Status> {
    let d = d.ok_or_else(|| invalid("the first message carries no flight descriptor"))?;
    match d.path.first() {
        Some(p) if !p.is_empty() => Ok(p.clone()),
        _ => Err(invalid("the flight descriptor's path[0] must name the collection")),
    }
}

// ---------------------------------------------------------------------------------------------
// Ingest (DoPut, DoExchange)
// ---------------------------------------------------------------------------------------------

/// A stream's batch handed to the engine: acknowledged once `pending` is durable.
struct Submitted {
    rows: usize,
    /// `None` for an empty batch (nothing to log).
    pending: Option<PendingWrite>,
}

/// Submits one batch into `name`, creating the collection from the batch's schema if it does
/// not exist. Returns before the batch is durable: [`acknowledge`] waits for it.
fn submit_batch(db: &Database, name: &str, batch: &RecordBatch) -> Result<Submitted, Status> {
    let in_schema = batch.schema();
    let cs = match db.schema(name) {
        Ok(cs) => {
            convert::check_metric(name, &in_schema, &cs).map_err(invalid)?;
            cs
        }
        Err(CollectionError::NotFound(_)) => {
            let cs = convert::infer_schema(&in_schema).map_err(|e| {
                invalid(format!("cannot create collection {name:?} from the batch: {e}"))
            })?;
            match db.create_collection(name, cs.clone()) {
                Ok(()) => cs,
                // Another stream created it first: conform to what it created.
                Err(CollectionError::AlreadyExists(_)) => {
                    let cs = db.schema(name).map_err(collection_status)?;
                    convert::check_metric(name, &in_schema, &cs).map_err(invalid)?;
                    cs
                }
                Err(e) => return Err(collection_status(e)),
            }
        }
        Err(e) => return Err(collection_status(e)),
    };
    let rows = batch.num_rows();
    if rows == 0 {
        return Ok(Submitted { rows, pending: None });
    }
    let b =
        convert::conform(batch, &cs).map_err(|e| invalid(format!("collection {name:?}: {e}")))?;
    let pending = db.submit_insert(name, &b).map_err(|e| write_status(name, e))?;
    Ok(Submitted { rows, pending: Some(pending) })
}

/// Waits until a submitted batch is durable (and visible); returns the acknowledgement JSON.
fn acknowledge(name: &str, s: Submitted) -> Result<Bytes, Status> {
    let lsn = match s.pending {
        Some(p) => Value::from(p.wait().map_err(|e| write_status(name, e))?),
        None => Value::Null,
    };
    Ok(json!({"collection": name, "rows": s.rows, "lsn": lsn}).to_string().into())
}

/// Batches of one ingest stream in flight at once: submitted to the WAL, not yet acknowledged.
/// While one is written and synced, the next is decoded and checked, and group commit can take
/// several together. Bounds what one stream holds beyond the WAL's own queue limit: one batch
/// being acknowledged, one just submitted waiting for room in the queue between the two tasks,
/// and the rest in that queue.
const MAX_IN_FLIGHT: usize = 8;
const _: () = assert!(MAX_IN_FLIGHT > 2, "the queue between the tasks needs room");

/// Reads batches from `input` and submits each, sending `wrap(ack)` for each, in order, once it
/// is durable. Stops at the first failure, which it sends (after the acknowledgements of the
/// batches before it) as the stream's error.
fn spawn_ingest<T: Send + 'static>(
    db: Arc<Database>,
    name: String,
    mut input: FlightRecordBatchStream,
    wrap: fn(Bytes) -> T,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(4);
    let (sub_tx, mut sub_rx) = mpsc::channel::<Result<Submitted, Status>>(MAX_IN_FLIGHT - 2);
    let ack_name = name.clone();
    tokio::spawn(async move {
        while let Some(next) = input.next().await {
            let submitted = match next {
                Err(e) => Err(decode_status(e)),
                Ok(batch) => {
                    let (db, name) = (db.clone(), name.clone());
                    blocking(move || submit_batch(&db, &name, &batch)).await
                }
            };
            let stop = submitted.is_err();
            if let Err(refused) = sub_tx.send(submitted).await {
                // The acknowledging task has stopped: wait for this batch (a dropped
                // PendingWrite waits) off the async workers, like the ones it left queued.
                let _ = tokio::task::spawn_blocking(move || drop(refused)).await;
                return;
            }
            if stop {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(submitted) = sub_rx.recv().await {
            let result = match submitted {
                Ok(s) => {
                    let name = ack_name.clone();
                    blocking(move || acknowledge(&name, s)).await
                }
                Err(e) => Err(e),
            };
            let stop = result.is_err();
            if tx.send(result.map(wrap).map_err(bounded_status)).await.is_err() || stop {
                break;
            }
        }
        // The client left or a batch failed: batches still in flight are waited for (a dropped
        // PendingWrite waits) off the async workers, so each is applied or failed, not leaked.
        sub_rx.close();
        let _ =
            tokio::task::spawn_blocking(move || while sub_rx.blocking_recv().is_some() {}).await;
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The batches of a client stream whose first message (already read) is `first`. A first
/// message that carries only the descriptor (no IPC message: pyarrow's DoExchange sends the
/// descriptor alone, then the schema) is dropped; decoding it as IPC fails.
fn batch_stream(first: FlightData, rest: Streaming<FlightData>) -> FlightRecordBatchStream {
    let first = (!first.data_header.is_empty() || !first.data_body.is_empty()).then_some(first);
    let all = futures::stream::iter(first.map(Ok))
        .chain(rest)
        .map_err(|s| FlightError::Tonic(Box::new(s)));
    FlightRecordBatchStream::new_from_flight_data(all)
}

/// tonic reports a request message that does not parse as protobuf (say, a descriptor path
/// that is not UTF-8) as `INTERNAL`, as gRPC's table of codes has it; it is the client's
/// input, so Quiver answers `INVALID_ARGUMENT`. Applied through [`bounded_status`] where
/// statuses leave the server (the response-header layer in `lib.rs`, and stream items).
fn client_decode_status(s: Status) -> Status {
    if s.code() == tonic::Code::Internal && s.message().starts_with(PROTOBUF_DECODE_PREFIX) {
        invalid(format!("the request does not parse: {}", s.message()))
    } else {
        s
    }
}

/// The longest status message sent, in bytes: error messages may quote the client's input
/// (names, filters), and gRPC clients refuse response metadata over a limit (8 KiB by default
/// in gRPC C++, so pyarrow), turning the error into `RESOURCE_EXHAUSTED`.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `s` fit to send: an unparsable request becomes `INVALID_ARGUMENT`
/// ([`client_decode_status`]), and the message is cut to [`MAX_STATUS_MESSAGE`] bytes at a
/// character boundary, saying how much was cut. Details and metadata are dropped.
pub(crate) fn bounded_status(s: Status) -> Status {
    let s = client_decode_status(s);
    let m = s.message();
    if m.len() <= MAX_STATUS_MESSAGE {
        return s;
    }
    let mut cut = MAX_STATUS_MESSAGE - 40;
    while !m.is_char_boundary(cut) {
        cut -= 1;
    }
    Status::new(s.code(), format!("{}… ({} more bytes cut)", &m[..cut], m.len() - cut))
}

/// How tonic's prost codec words a decode failure.
pub(crate) const PROTOBUF_DECODE_PREFIX: &str = "failed to decode Protobuf message";

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

fn check_columns(cs: &CollectionSchema, cols: &[String]) -> Result<(), Status> {
    let schema = cs.arrow_schema();
    for c in cols {
        if schema.index_of(c).is_err() {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(invalid(format!("no column named {c:?}; the columns are {names:?}")));
        }
    }
    Ok(())
}

/// Runs one search and shapes Longbow's reply: `id`, `score` (higher is better), `distance`, then
/// the asked-for columns (and `vector` with `include_vectors`).
fn run_search(db: &Database, req: &SearchRequest, query: &[f32]) -> Result<RecordBatch, Status> {
    if req.k < 1 || req.k as u64 > MAX_K as u64 {
        return Err(invalid(format!("k = {} must be in 1..={MAX_K}", req.k)));
    }
    let k = req.k as usize;
    let cs = db.schema(&req.dataset).map_err(collection_status)?;
    if query.len() != cs.dim() {
        return Err(invalid(format!(
            "the query vector has {} elements; collection {:?} has dimension {}",
            query.len(),
            req.dataset,
            cs.dim()
        )));
    }
    let filter =
        to_predicate(req.filters.as_deref().unwrap_or(&[])).map_err(|e| invalid(e.to_string()))?;
    let mut out_cols: Vec<String> = req.columns.clone().unwrap_or_default();
    check_columns(&cs, &out_cols)?;
    if req.include_vectors && !out_cols.iter().any(|c| c == VECTOR_COLUMN) {
        out_cols.push(VECTOR_COLUMN.into());
    }
    out_cols.retain(|c| c != ID_COLUMN);
    out_cols.dedup();
    let defaults = SearchParams::default();
    // The engine applies the filter as candidates enter the top-k.
    let params = SearchParams {
        k,
        list_size: req.list_size.unwrap_or(defaults.list_size),
        beam_width: req.beam_width.unwrap_or(defaults.beam_width),
        exact: req.exact,
        columns: out_cols.clone(),
        filter,
    };
    let hits = db.search(&req.dataset, query, &params).map_err(read_status)?;
    shape_hits(&hits, cs.metric(), &out_cols)
}

fn shape_hits(hits: &RecordBatch, metric: Metric, cols: &[String]) -> Result<RecordBatch, Status> {
    let d = hits
        .column_by_name(DISTANCE_COLUMN)
        .and_then(|a| a.as_any().downcast_ref::<Float32Array>())
        .ok_or_else(|| Status::internal("the engine's result has no _distance column"))?;
    let (distance, score): (Vec<f32>, Vec<f32>) = d
        .values()
        .iter()
        .map(|&x| match metric {
            Metric::L2 => {
                let e = x.max(0.0).sqrt();
                (e, 1.0 / (1.0 + e))
            }
            Metric::Cosine => (x, 1.0 / (1.0 + x)),
            Metric::InnerProduct => (x, -x),
        })
        .unzip();
    let id = hits.column_by_name(ID_COLUMN).ok_or_else(|| Status::internal("no id column"))?;
    let schema = hits.schema();
    let mut fields = vec![
        schema.field_with_name(ID_COLUMN).expect("checked").clone(),
        Field::new(SCORE_COLUMN, DataType::Float32, false),
        Field::new(RESULT_DISTANCE_COLUMN, DataType::Float32, false),
    ];
    let mut arrays: Vec<ArrayRef> = vec![
        id.clone(),
        Arc::new(Float32Array::from(score)),
        Arc::new(Float32Array::from(distance)),
    ];
    for c in cols {
        let i = schema.index_of(c).map_err(|e| Status::internal(e.to_string()))?;
        fields.push(schema.field(i).clone());
        arrays.push(hits.column(i).clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| Status::internal(e.to_string()))
}

/// Integer ids from JSON: numbers, or strings holding numbers (Longbow sends ids as strings).
fn int_ids<T: std::str::FromStr>(
    values: &[Value],
    from_number: impl Fn(&serde_json::Number) -> Option<T>,
    type_name: &str,
) -> Result<Vec<T>, Status> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let parsed = match v {
                Value::Number(n) => from_number(n),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            parsed.ok_or_else(|| invalid(format!("id {i} ({v}) is not a {type_name}")))
        })
        .collect()
}

/// Ids from JSON as an array of the collection's id type.
fn ids_array(values: &[Value], id_type: IdType) -> Result<ArrayRef, Status> {
    Ok(match id_type {
        IdType::U64 => Arc::new(UInt64Array::from(int_ids(values, |n| n.as_u64(), "uint64")?)),
        IdType::I64 => Arc::new(Int64Array::from(int_ids(values, |n| n.as_i64(), "int64")?)),
        IdType::Utf8 => Arc::new(StringArray::from(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(invalid(format!("id {i} ({v}) is not a string"))),
                })
                .collect::<Result<Vec<String>, _>>()?,
        )),
        _ => return Err(Status::internal("unsupported id type")),
    })
}

fn run_get(db: &Database, req: &GetRequest) -> Result<RecordBatch, Status> {
    let cs = db.schema(&req.dataset).map_err(collection_status)?;
    let ids = ids_array(&req.ids, cs.id_type())?;
    let all = db.get(&req.dataset, ids.as_ref()).map_err(read_status)?;
    match &req.columns {
        None => Ok(all),
        Some(cols) => {
            check_columns(&cs, cols)?;
            let idx: Vec<usize> =
                cols.iter().map(|c| all.schema().index_of(c).expect("checked")).collect();
            all.project(&idx).map_err(|e| Status::internal(e.to_string()))
        }
    }
}

fn encode_batches(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
    max_bytes: usize,
) -> BoxStream<FlightData> {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_max_flight_data_size(max_bytes)
            .build(batches)
            .map_err(|e| bounded_status(Status::from(e))),
    )
}

/// Streams a scan: batches start at `scan_chunk_start` rows and double up to `scan_chunk_max`.
fn scan_stream(
    db: &Arc<Database>,
    cfg: &ServiceConfig,
    req: &ScanRequest,
) -> Result<BoxStream<FlightData>, Status> {
    let cs = db.schema(&req.name).map_err(collection_status)?;
    let arrow = cs.arrow_schema();
    let filters = Filters::compile(req.filters.as_deref().unwrap_or(&[]), &arrow)
        .map_err(|e| invalid(e.to_string()))?;
    let out_cols: Vec<String> = match &req.columns {
        Some(c) => {
            check_columns(&cs, c)?;
            c.clone()
        }
        None => arrow.fields().iter().map(|f| f.name().clone()).collect(),
    };
    let mut read_cols = out_cols.clone();
    for c in filters.columns() {
        if !read_cols.iter().any(|r| r == c) {
            read_cols.push(c.to_string());
        }
    }
    let refs: Vec<&str> = read_cols.iter().map(String::as_str).collect();
    let mut scan = db.scan(&req.name, Some(&refs)).map_err(read_status)?;
    let out_idx: Vec<usize> = (0..out_cols.len()).collect();
    let out_schema = Arc::new(scan.schema().project(&out_idx).map_err(|e| invalid(e.to_string()))?);
    let mut chunker = Chunker::new(cfg.scan_chunk_start, cfg.scan_chunk_max)
        .with_max_bytes(cfg.max_flight_data_bytes);
    let mut left = req.limit.unwrap_or(u64::MAX);
    let (tx, rx) = mpsc::channel::<Result<RecordBatch, FlightError>>(4);
    tokio::task::spawn_blocking(move || {
        let send = |b: RecordBatch, left: &mut u64| -> bool {
            let n = (b.num_rows() as u64).min(*left) as usize;
            *left -= n as u64;
            tx.blocking_send(Ok(b.slice(0, n))).is_ok()
        };
        scan.set_batch_rows(chunker.chunk);
        while left > 0 {
            let Some(item) = scan.next() else { break };
            let batch = item
                .map_err(|e| FlightError::Tonic(Box::new(read_status(e))))
                .and_then(|b| {
                    filters
                        .apply(&b)
                        .map_err(|e| FlightError::Tonic(Box::new(Status::internal(e.to_string()))))
                })
                .and_then(|b| b.project(&out_idx).map_err(FlightError::Arrow));
            let ready = match batch.and_then(|b| chunker.push(b).map_err(FlightError::Arrow)) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            for b in ready {
                if left == 0 || !send(b, &mut left) {
                    return; // done, or the client went away
                }
            }
            scan.set_batch_rows(chunker.chunk);
        }
        match chunker.finish() {
            Ok(Some(b)) if left > 0 => {
                send(b, &mut left);
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(FlightError::Arrow(e)));
            }
        }
    });
    Ok(encode_batches(out_schema, ReceiverStream::new(rx), cfg.max_flight_data_bytes))
}

/// Adaptive chunking: regroups a stream of batches into batches of `chunk` rows, where `chunk`
/// starts small (the first rows reach the client quickly) and doubles after each batch up to a
/// maximum (large messages for throughput): `max` rows, or fewer when the rows' size (measured
/// on the first batch) would exceed `max_bytes`. A batch that already has the right size passes
/// without a copy.
#[derive(Debug)]
struct Chunker {
    pending: VecDeque<RecordBatch>,
    rows: usize,
    chunk: usize,
    max: usize,
    max_bytes: Option<usize>,
}

impl Chunker {
    fn new(start: usize, max: usize) -> Self {
        let max = max.max(1);
        Chunker {
            pending: VecDeque::new(),
            rows: 0,
            chunk: start.clamp(1, max),
            max,
            max_bytes: None,
        }
    }

    fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes.max(1));
        self
    }

    /// Lowers `max` to the rows of `b`'s size that fit in `max_bytes` (once, on the first rows).
    fn fit(&mut self, b: &RecordBatch) {
        let Some(bytes) = self.max_bytes.take() else { return };
        let row = quiver_engine::batch::value_bytes(b).div_ceil(b.num_rows()).max(1);
        self.max = self.max.min((bytes / row).max(1));
        self.chunk = self.chunk.min(self.max);
    }

    fn take(&mut self, n: usize) -> Result<RecordBatch, arrow_schema::ArrowError> {
        debug_assert!(n <= self.rows);
        let schema = self.pending[0].schema();
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let b = &self.pending[0];
            if b.num_rows() <= need {
                need -= b.num_rows();
                parts.push(self.pending.pop_front().expect("rows are pending"));
            } else {
                parts.push(b.slice(0, need));
                self.pending[0] = b.slice(need, b.num_rows() - need);
                need = 0;
            }
        }
        self.rows -= n;
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        arrow_select::concat::concat_batches(&schema, &parts)
    }

    fn push(&mut self, b: RecordBatch) -> Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
        if b.num_rows() > 0 {
            self.fit(&b);
            self.rows += b.num_rows();
            self.pending.push_back(b);
        }
        let mut out = Vec::new();
        while self.rows >= self.chunk {
            out.push(self.take(self.chunk)?);
            self.chunk = (self.chunk * 2).min(self.max);
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        if self.rows == 0 { Ok(None) } else { self.take(self.rows).map(Some) }
    }
}

fn ipc_stream_bytes(batch: &RecordBatch) -> Result<Bytes, Status> {
    let mut buf = Vec::new();
    let mut w = StreamWriter::try_new(&mut buf, &batch.schema())
        .map_err(|e| Status::internal(e.to_string()))?;
    w.write(batch).map_err(|e| Status::internal(e.to_string()))?;
    w.finish().map_err(|e| Status::internal(e.to_string()))?;
    drop(w);
    Ok(buf.into())
}

// ---------------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------------

/// Every action: its names (the first is Quiver's; the others are Longbow's) and what it does.
pub const ACTIONS: &[(&[&str], &str)] = &[
    (
        &["create_collection", "CreateNamespace", "create"],
        "Create a collection. Body: {\"name\", \"dim\", \"element_type\" (float32|float16|uint8|\
         int8), \"metric\" (euclidean|cosine|dot_product), \"id_type\" (uint64|int64|utf8), \
         \"attributes\": [{\"name\", \"type\", \"nullable\"}]}",
    ),
    (
        &[
            "drop_collection",
            "delete-dataset",
            "drop",
            "Drop",
            "DeleteNamespace",
            "delete-namespace",
        ],
        "Drop a collection and its files. Body: {\"name\": NAME}",
    ),
    (
        &["delete", "Delete"],
        "Delete rows by id (durable when answered). Body: {\"dataset\", \"ids\": [...]} or \
         {\"dataset\", \"id\"}",
    ),
    (&["flush", "ForceSnapshot"], "Write in-memory rows as Parquet segments."),
    (&["stats", "GetStats"], "Row, segment and index counts and the schema. Body: {\"name\"}"),
    (&["list_collections", "ListDatasets"], "The collections' names."),
    (
        &["VectorSearch", "search"],
        "Search with one or more query vectors. Body: a search request with \"vectors\": \
         [[...], ...] (or \"vector\"). One result per query: an Arrow IPC stream.",
    ),
    (
        &["check_readiness"],
        "{\"status\": READY|BUSY|NOT_FOUND}: BUSY while rows are in memory or segments await an index or a merge.",
    ),
    (
        &["wait-for-indexing"],
        "Flush the in-memory rows, then wait until background indexing and merging are done.",
    ),
];

fn canonical_action(name: &str) -> Option<&'static str> {
    ACTIONS.iter().find(|(names, _)| names.contains(&name)).map(|(names, _)| names[0])
}

fn parse_vector_type(s: Option<&str>) -> Result<VectorType, Status> {
    Ok(match s.map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("float32" | "f32" | "float") => VectorType::F32,
        Some("float16" | "f16" | "half") => VectorType::F16,
        Some("uint8" | "u8") => VectorType::U8,
        Some("int8" | "i8") => VectorType::I8,
        Some(other) => {
            return Err(invalid(format!(
                "unknown element type {other:?}; expected float32, float16, uint8 or int8"
            )));
        }
    })
}

fn parse_id_type(s: Option<&str>) -> Result<IdType, Status> {
    Ok(match s.map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("uint64" | "u64") => IdType::U64,
        Some("int64" | "i64") => IdType::I64,
        Some("utf8" | "string" | "str") => IdType::Utf8,
        Some(other) => {
            return Err(invalid(format!(
                "unknown id type {other:?}; expected uint64, int64 or utf8"
            )));
        }
    })
}

fn parse_attribute_type(s: &str) -> Result<DataType, Status> {
    use arrow_schema::TimeUnit;
    Ok(match s.to_ascii_lowercase().as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "utf8" | "string" => DataType::Utf8,
        "binary" => DataType::Binary,
        "date32" => DataType::Date32,
        "timestamp_us" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamp_ns" | "timestamp" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        other => {
            return Err(invalid(format!(
                "unknown attribute type {other:?}; expected bool, int8..int64, uint8..uint64, \
                 float32, float64, utf8, binary, date32, timestamp_us or timestamp_ns"
            )));
        }
    })
}

fn create_schema(req: &CreateRequest) -> Result<CollectionSchema, Status> {
    let metric = match &req.metric {
        None => Metric::L2,
        Some(m) => convert::parse_metric(m).map_err(invalid)?,
    };
    let mut cs =
        CollectionSchema::new(req.dim, parse_vector_type(req.element_type.as_deref())?, metric)
            .with_id_type(parse_id_type(req.id_type.as_deref())?);
    for a in &req.attributes {
        cs =
            cs.with_attribute(Field::new(&a.name, parse_attribute_type(&a.type_name)?, a.nullable));
    }
    Ok(cs)
}

fn stats_json(db: &Database, name: &str) -> Result<Value, Status> {
    let cs = db.schema(name).map_err(collection_status)?;
    let st = db.stats(name).map_err(collection_status)?;
    Ok(json!({
        "name": name,
        "dim": cs.dim(),
        "element_type": match cs.vector_type() {
            VectorType::F32 => "float32",
            VectorType::F16 => "float16",
            VectorType::U8 => "uint8",
            VectorType::I8 => "int8",
            _ => "other",
        },
        "metric": metric_name(cs.metric()),
        "id_type": match cs.id_type() {
            IdType::U64 => "uint64",
            IdType::I64 => "int64",
            IdType::Utf8 => "utf8",
            _ => "other",
        },
        "attributes": cs.attributes().iter().map(|f| json!({
            "name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()
        })).collect::<Vec<_>>(),
        "rows": st.rows,
        "memtable_rows": st.memtable_rows,
        "segments": st.segments,
        "indexed_segments": st.indexed_segments,
        "segment_rows": st.segment_rows,
        "deleted_segment_rows": st.deleted_segment_rows,
        "segment_bytes": st.segment_bytes,
        "index_failures": st.index_failures,
    }))
}

/// Results of a `VectorSearch` action that may wait to be sent: queries are searched one at a
/// time, each result encoded and handed to the client before the next is searched once this
/// many wait, so a request of 10,000 queries holds a few results in memory, not all of them.
const SEARCH_RESULTS_IN_FLIGHT: usize = 2;

/// The parsed queries of a `VectorSearch` body.
fn vector_search_queries(body: &[u8]) -> Result<(SearchRequest, Vec<Vec<f32>>), Status> {
    let mut req: SearchRequest = request::parse_body("VectorSearch", body).map_err(invalid)?;
    let queries: Vec<Vec<Value>> = match (req.vectors.take(), &req.vector) {
        (Some(vs), _) => vs,
        (None, Some(v)) => vec![v.clone()],
        (None, None) => {
            return Err(invalid("VectorSearch needs \"vectors\": [[...], ...] or \"vector\""));
        }
    };
    if queries.len() > MAX_QUERIES {
        return Err(invalid(format!(
            "{} query vectors exceed the limit of {MAX_QUERIES}",
            queries.len()
        )));
    }
    let queries = queries
        .iter()
        .map(|q| request::query_vector(q).map_err(invalid))
        .collect::<Result<_, _>>()?;
    Ok((req, queries))
}

/// Streams a `VectorSearch`: one Arrow IPC stream per query, in order, each searched only when
/// the one [`SEARCH_RESULTS_IN_FLIGHT`] before it has been taken by the transport. A result
/// larger than `max_message_bytes` is an error naming the query (lower k, or leave out the
/// vectors), since it could not be sent as one message anyway. Stops when the client leaves.
fn vector_search_stream(
    db: Arc<Database>,
    req: SearchRequest,
    queries: Vec<Vec<f32>>,
    max_message_bytes: usize,
) -> BoxStream<arrow_flight::Result> {
    let (tx, rx) = mpsc::channel::<Result<arrow_flight::Result, Status>>(SEARCH_RESULTS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        for (i, q) in queries.iter().enumerate() {
            let result = run_search(&db, &req, q)
                .and_then(|b| ipc_stream_bytes(&b))
                .and_then(|body| {
                    if body.len() + 64 > max_message_bytes {
                        return Err(Status::resource_exhausted(format!(
                            "the result of query {i} is {} bytes, over the message limit of {max_message_bytes}; lower k or leave out the vectors",
                            body.len()
                        )));
                    }
                    Ok(arrow_flight::Result { body })
                });
            let failed = result.is_err();
            if tx.blocking_send(result.map_err(bounded_status)).is_err() || failed {
                return; // the client left, or the error ends the stream
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

fn run_action(
    db: &Database,
    cfg: &ServiceConfig,
    action: &str,
    body: &[u8],
) -> Result<Vec<Bytes>, Status> {
    let json_body = |v: Value| -> Result<Vec<Bytes>, Status> { Ok(vec![v.to_string().into()]) };
    match action {
        "create_collection" => {
            let req: CreateRequest =
                request::parse_body("create_collection", body).map_err(invalid)?;
            db.create_collection(&req.name, create_schema(&req)?).map_err(collection_status)?;
            json_body(json!({"status": "created", "name": req.name}))
        }
        "drop_collection" => {
            let name = request::collection_in_body(body).map_err(invalid)?;
            db.drop_collection(&name).map_err(collection_status)?;
            json_body(json!({"status": "dropped", "name": name}))
        }
        "delete" => {
            let mut req: DeleteRequest = request::parse_body("delete", body).map_err(invalid)?;
            if let Some(id) = req.id.take() {
                req.ids.push(id);
            }
            if req.ids.is_empty() {
                return Err(invalid("delete names no ids; expected \"ids\": [...] or \"id\""));
            }
            let cs = db.schema(&req.dataset).map_err(collection_status)?;
            let ids = ids_array(&req.ids, cs.id_type())?;
            let lsn =
                db.delete(&req.dataset, ids.as_ref()).map_err(|e| write_status(&req.dataset, e))?;
            json_body(json!({"status": "deleted", "ids": req.ids.len(), "lsn": lsn}))
        }
        "flush" => {
            db.flush().map_err(flush_status)?;
            json_body(json!({"status": "flushed"}))
        }
        "stats" => {
            let name = request::collection_in_body(body).map_err(invalid)?;
            json_body(stats_json(db, &name)?)
        }
        "list_collections" => {
            let names: Vec<String> = db.list_collections().into_iter().map(|(n, _)| n).collect();
            json_body(json!({"collections": names}))
        }
        "VectorSearch" => {
            // Served by `vector_search_stream`, one query at a time.
            Err(Status::internal("VectorSearch is streamed, not run as a one-shot action"))
        }
        "check_readiness" => {
            let name = request::collection_in_body(body).ok();
            let v = match name {
                Some(n) if db.schema(&n).is_err() => {
                    json!({"status": "NOT_FOUND", "reason": format!("no collection named {n:?}")})
                }
                _ if db.indexing_pending() => json!({
                    "status": "BUSY",
                    "reason": "rows are in memory, or segments await an index or a merge"
                }),
                _ => json!({"status": "READY"}),
            };
            json_body(v)
        }
        "wait-for-indexing" => {
            let idle = db.wait_indexed(cfg.max_index_wait).map_err(flush_status)?;
            json_body(json!({"status": if idle { "complete" } else { "timeout" }}))
        }
        other => Err(Status::internal(format!("action {other} has no handler"))),
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
        let name = descriptor_collection(Some(request.get_ref()))?;
        let db = self.db.clone();
        Ok(Response::new(blocking(move || flight_info(&db, &name)).await?))
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

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = request::parse_ticket(&request.get_ref().ticket).map_err(invalid)?;
        let (db, cfg) = (self.db.clone(), self.cfg.clone());
        let stream = match ticket {
            TicketReq::Search(req) => {
                let v = req
                    .vector
                    .as_deref()
                    .ok_or_else(|| invalid("a search ticket needs \"vector\": [...]"))?;
                let q = request::query_vector(v).map_err(invalid)?;
                let b = blocking(move || run_search(&db, &req, &q)).await?;
                encode_batches(
                    b.schema(),
                    futures::stream::iter([Ok(b)]),
                    cfg.max_flight_data_bytes,
                )
            }
            TicketReq::Get(req) => {
                let b = blocking(move || run_get(&db, &req)).await?;
                encode_batches(
                    b.schema(),
                    futures::stream::iter([Ok(b)]),
                    cfg.max_flight_data_bytes,
                )
            }
            TicketReq::Scan(req) => blocking(move || scan_stream(&db, &cfg, &req)).await?,
        };
        Ok(Response::new(stream))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| invalid("the DoPut stream is empty"))?;
        let name = descriptor_collection(first.flight_descriptor.as_ref())?;
        let batches = batch_stream(first, input);
        Ok(Response::new(spawn_ingest(self.db.clone(), name, batches, |ack| PutResult {
            app_metadata: ack,
        })))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let Action { r#type, body } = request.into_inner();
        let action = canonical_action(&r#type).ok_or_else(|| {
            invalid(format!("unknown action {:?}; ListActions names the actions", r#type))
        })?;
        let (db, cfg) = (self.db.clone(), self.cfg.clone());
        if action == "VectorSearch" {
            let (req, queries) = blocking(move || vector_search_queries(&body)).await?;
            let max = cfg.max_message_bytes;
            return Ok(Response::new(vector_search_stream(db, req, queries, max)));
        }
        let results = blocking(move || run_action(&db, &cfg, action, &body)).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            results.into_iter().map(|body| Ok(arrow_flight::Result { body })),
        ))))
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
        let mut input = request.into_inner();
        let first =
            input.message().await?.ok_or_else(|| invalid("the DoExchange stream is empty"))?;
        let path = first.flight_descriptor.as_ref().map(|d| d.path.clone()).unwrap_or_default();
        let name = match path.as_slice() {
            [verb, name] if verb == "ingest" && !name.is_empty() => name.clone(),
            _ => {
                return Err(invalid(format!(
                    "DoExchange path {path:?} is not [\"ingest\", COLLECTION]"
                )));
            }
        };
        let batches = batch_stream(first, input);
        Ok(Response::new(spawn_ingest(self.db.clone(), name, batches, |ack| FlightData {
            app_metadata: ack,
            ..FlightData::default()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk was reported as INTERNAL (or, for a flush waiting on failing index builds,
    /// as "background work is behind" after 600 s); it must say ENOSPC, and whether a retry
    /// can succeed without a restart.
    #[test]
    fn a_full_disk_is_resource_exhausted_and_says_whether_to_restart() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        let wal = WriteError::Wal(quiver_engine::WalAppendError::Failed(Arc::new(enospc())));
        let s = write_status("c", wal);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("disk is full") && s.message().contains("restart"), "{s:?}");
        let background = |source| quiver_engine::BackgroundError::Io { path: "/x".into(), source };
        let bg = background(enospc());
        let s = flush_status(FlushError::NoSpace(Arc::new(bg)));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("retry once space is freed"), "{s:?}");
        let other = background(std::io::Error::other("x"));
        let s = flush_status(FlushError::NoSpace(Arc::new(other)));
        assert!(!s.message().contains("disk is full (ENOSPC)"), "only ENOSPC says so");
    }
    use arrow_array::UInt32Array;

    fn batch(from: u32, n: u32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::UInt32, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(UInt32Array::from_iter_values(from..from + n))])
            .unwrap()
    }

    /// Pushes batches of `ns` rows (numbered on from 0) through `c`, then finishes it. Returns
    /// the sizes of the batches `push` released, the size of the final one, and every row seen.
    fn run(mut c: Chunker, ns: &[u32]) -> (Vec<usize>, Option<usize>, Vec<u32>, u32) {
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        let mut next = 0;
        let take = |b: RecordBatch, seen: &mut Vec<u32>| {
            let x = b.column(0).as_any().downcast_ref::<UInt32Array>().unwrap();
            seen.extend(x.values().iter().copied());
            b.num_rows()
        };
        for &n in ns {
            for b in c.push(batch(next, n)).unwrap() {
                sizes.push(take(b, &mut seen));
            }
            next += n;
        }
        let last = c.finish().unwrap().map(|b| take(b, &mut seen));
        (sizes, last, seen, next)
    }

    #[test]
    fn chunker_grows_from_start_to_max_and_keeps_every_row_in_order() {
        let (sizes, _, seen, total) = run(Chunker::new(4, 32), &[3, 1, 7, 50, 0, 2, 100]);
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        assert_eq!(&sizes[..4], &[4, 8, 16, 32]);
        assert!(sizes[4..].iter().all(|&s| s == 32), "{sizes:?}");
    }

    /// A byte cap under the row cap must bound the batches (4-byte rows, 40 bytes: 10 rows),
    /// or scans of wide rows gather 64k-row batches only for the encoder to split them again.
    #[test]
    fn chunker_caps_batches_at_the_message_size_for_wide_rows() {
        let c = Chunker::new(4, 32).with_max_bytes(40);
        let (sizes, last, seen, total) = run(c, &[3, 50, 9, 100]);
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        assert_eq!(sizes[0], 4);
        assert!(sizes[1..].iter().all(|&s| s == 8 || s == 10), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&10));
        assert!(last.is_none_or(|n| n <= 10), "{last:?}");
    }
}
