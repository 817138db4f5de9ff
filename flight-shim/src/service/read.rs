//! Reads: searches, gets and scans turned into Arrow batches for the client.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float32Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow_flight::FlightData;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::{Stream, TryStreamExt};
use quiver_engine::Metric;
use quiver_engine::{CollectionSchema, Database, IdType, MAX_K, SearchParams};
use quiver_engine::{DISTANCE_COLUMN, RESULT_DISTANCE_COLUMN, SCORE_COLUMN};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::chunker::Chunker;
use super::status::{bounded_status, collection_status, invalid, read_status};
use super::{BoxStream, ServiceConfig};
use crate::convert::{ID_COLUMN, VECTOR_COLUMN};
use crate::filter::{Filters, to_predicate};
use crate::metrics::Metrics;
use crate::request::{GetRequest, ScanRequest, SearchRequest};

pub(super) fn check_columns(cs: &CollectionSchema, cols: &[String]) -> Result<(), Status> {
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
pub(super) fn run_search(
    db: &Database,
    req: &SearchRequest,
    query: &[f32],
    metrics: Option<&Metrics>,
) -> Result<RecordBatch, Status> {
    let started = std::time::Instant::now();
    let result = search_and_shape(db, req, query);
    if let (Some(m), Ok(_)) = (metrics, &result) {
        m.searched(&req.dataset, started.elapsed());
    }
    result
}

fn search_and_shape(
    db: &Database,
    req: &SearchRequest,
    query: &[f32],
) -> Result<RecordBatch, Status> {
    let plan = SearchPlan::new(db, req)?;
    plan.check_query(query)?;
    let hits = db.search(&req.dataset, query, &plan.params).map_err(read_status)?;
    shape_hits(&hits, plan.metric, &plan.params.columns)
}

/// Runs the searches of `queries`, all with `req`'s options, as one engine batch (spread over
/// the engine's search pool), and shapes each reply as [`run_search`] does. The metrics count
/// each query with the batch's mean time.
pub(super) fn run_search_batch(
    db: &Database,
    req: &SearchRequest,
    queries: &[Vec<f32>],
    metrics: Option<&Metrics>,
) -> Result<Vec<RecordBatch>, Status> {
    let started = std::time::Instant::now();
    let plan = SearchPlan::new(db, req)?;
    for q in queries {
        plan.check_query(q)?;
    }
    let found = db.search_batch(&req.dataset, queries, &plan.params).map_err(read_status)?;
    let shaped = found
        .into_iter()
        .map(|hits| shape_hits(&hits.map_err(read_status)?, plan.metric, &plan.params.columns))
        .collect::<Result<Vec<_>, Status>>()?;
    if let Some(m) = metrics {
        let each = started.elapsed() / queries.len().max(1) as u32;
        for _ in queries {
            m.searched(&req.dataset, each);
        }
    }
    Ok(shaped)
}

/// A search request checked against its collection and turned into the engine's parameters.
struct SearchPlan {
    params: SearchParams,
    metric: Metric,
    dim: usize,
    dataset: String,
}

impl SearchPlan {
    fn new(db: &Database, req: &SearchRequest) -> Result<SearchPlan, Status> {
        if let Some(key) = req.unsupported_key() {
            return Err(hybrid_unimplemented(key));
        }
        if req.k < 1 || req.k as u64 > MAX_K as u64 {
            return Err(invalid(format!("k = {} must be in 1..={MAX_K}", req.k)));
        }
        let cs = db.schema(&req.dataset).map_err(collection_status)?;
        let filter = to_predicate(req.filters.as_deref().unwrap_or(&[]), &cs.arrow_schema())
            .map_err(|e| invalid(e.to_string()))?;
        let mut columns: Vec<String> = req.columns.clone().unwrap_or_default();
        check_columns(&cs, &columns)?;
        if req.include_vectors && !columns.iter().any(|c| c == VECTOR_COLUMN) {
            columns.push(VECTOR_COLUMN.into());
        }
        columns.retain(|c| c != ID_COLUMN);
        columns.dedup();
        let defaults = SearchParams::default();
        // The engine applies the filter as candidates enter the top-k.
        let params = SearchParams {
            k: req.k as usize,
            list_size: req.list_size.unwrap_or(defaults.list_size),
            beam_width: req.beam_width.unwrap_or(defaults.beam_width),
            exact: req.exact,
            columns,
            filter,
        };
        Ok(SearchPlan { params, metric: cs.metric(), dim: cs.dim(), dataset: req.dataset.clone() })
    }

    fn check_query(&self, query: &[f32]) -> Result<(), Status> {
        if query.len() == self.dim {
            return Ok(());
        }
        Err(invalid(format!(
            "the query vector has {} elements; collection {:?} has dimension {}",
            query.len(),
            self.dataset,
            self.dim
        )))
    }
}

/// The answer to a search that asks for hybrid or graph-blended ranking.
pub(super) fn hybrid_unimplemented(key: &str) -> Status {
    Status::unimplemented(format!(
        "{key:?} asks for hybrid (keyword or graph) ranking, which Quiver does not provide yet; \
         send a pure vector search (no text_query, alpha 1 or absent, graph_alpha 0 or absent)"
    ))
}

pub(super) fn shape_hits(
    hits: &RecordBatch,
    metric: Metric,
    cols: &[String],
) -> Result<RecordBatch, Status> {
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
pub(super) fn int_ids<T: std::str::FromStr>(
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
pub(super) fn ids_array(values: &[Value], id_type: IdType) -> Result<ArrayRef, Status> {
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

pub(super) fn run_get(db: &Database, req: &GetRequest) -> Result<RecordBatch, Status> {
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

/// What a DoGet answers: a schema and its batches, sent as messages of at most
/// `ServiceConfig::max_flight_data_bytes` of buffers (bigger batches are split by rows).
pub(crate) struct Reply {
    pub(crate) schema: SchemaRef,
    pub(crate) batches: BatchStream,
}

/// The batches of a [`Reply`].
pub(crate) type BatchStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static>>;

impl Reply {
    /// A reply of one batch.
    pub(super) fn one(batch: RecordBatch) -> Reply {
        Reply { schema: batch.schema(), batches: Box::pin(futures::stream::iter([Ok(batch)])) }
    }

    /// The reply as FlightData messages of at most `max_bytes` of buffers, encoded by
    /// arrow-flight (each message's body a copy of its batch's buffers).
    pub(super) fn into_flight_data(self, max_bytes: usize) -> BoxStream<FlightData> {
        encode_batches(self.schema, self.batches, max_bytes)
    }
}

pub(super) fn encode_batches(
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
pub(super) fn scan_stream(
    db: &Arc<Database>,
    cfg: &ServiceConfig,
    req: &ScanRequest,
) -> Result<Reply, Status> {
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
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.enter();
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
    Ok(Reply { schema: out_schema, batches: Box::pin(ReceiverStream::new(rx)) })
}
