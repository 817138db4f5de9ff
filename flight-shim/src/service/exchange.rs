//! DoExchange searches, the binary search form of Longbow's benchmark: descriptor command
//! `VectorSearch` (or `search`), then batches whose rows are queries. A row holds `dataset`
//! (utf8), `query_vector` (a fixed-size or variable list of float32 or float64), and optionally
//! `k` (an integer, default 10) and `ef` (the index's list size). The answer is one Arrow stream
//! of the rows' results in order, each as a search ticket's result (`id`, `score`, `distance`).
//! The client ends its stream (pyarrow's `done_writing`) before the answer is sent.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_flight::FlightData;
use arrow_schema::DataType;
use futures::StreamExt;
use quiver_engine::Database;
use tonic::{Status, Streaming};

use super::ingest::batch_stream;
use super::ingest_decode::BodyPool;
use super::read::{encode_batches, run_search_batch};
use super::status::{decode_status, invalid};
use super::{BoxStream, ServiceConfig, blocking};
use crate::metrics::Metrics;
use crate::request::{MAX_QUERIES, SearchRequest};

/// The descriptor commands that make a DoExchange a search.
pub(super) const SEARCH_COMMANDS: [&[u8]; 2] = [b"VectorSearch", b"search"];

/// Reads every query row of the client's stream, searches each, and streams the results.
pub(super) async fn exchange_search(
    db: Arc<Database>,
    cfg: Arc<ServiceConfig>,
    first: FlightData,
    rest: Streaming<FlightData>,
) -> Result<BoxStream<FlightData>, Status> {
    // Query rows are few: their bodies need no pool.
    let mut input = batch_stream(first, rest, BodyPool::new(0));
    let mut batches = Vec::new();
    let mut rows = 0;
    while let Some(batch) = input.next().await {
        let batch = batch.map_err(decode_status)?.batch;
        rows += batch.num_rows();
        if rows > MAX_QUERIES {
            return Err(invalid(format!("more than {MAX_QUERIES} queries in one DoExchange")));
        }
        batches.push(batch);
    }
    if rows == 0 {
        return Err(invalid("a DoExchange search sent no query rows"));
    }
    let metrics = cfg.metrics.clone();
    let results = blocking(move || {
        let mut rows = Vec::with_capacity(rows);
        for batch in &batches {
            for row in 0..batch.num_rows() {
                rows.push(query_row(batch, row)?);
            }
        }
        search_runs(&db, rows, metrics.as_deref())
    })
    .await?;
    let schema = results[0].schema();
    let stream = futures::stream::iter(results.into_iter().map(Ok));
    Ok(encode_batches(schema, stream, cfg.max_flight_data_bytes))
}

/// Searches every query row, in order: each run of consecutive rows asking for the same `k`
/// and list size is one engine batch, its queries searched in parallel.
fn search_runs(
    db: &Database,
    rows: Vec<(SearchRequest, Vec<f32>)>,
    metrics: Option<&Metrics>,
) -> Result<Vec<RecordBatch>, Status> {
    if rows.iter().any(|(req, _)| req.dataset != rows[0].0.dataset) {
        return Err(invalid("the queries of one DoExchange search must name one collection"));
    }
    let mut out: Vec<RecordBatch> = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter().peekable();
    while let Some((req, first)) = rows.next() {
        let mut queries = vec![first];
        while let Some((next, _)) = rows.peek() {
            if next.k != req.k || next.list_size != req.list_size {
                break;
            }
            queries.push(rows.next().expect("peeked").1);
        }
        out.extend(run_search_batch(db, &req, &queries, metrics)?);
    }
    Ok(out)
}

/// The search a query row asks for.
fn query_row(batch: &RecordBatch, row: usize) -> Result<(SearchRequest, Vec<f32>), Status> {
    let column = |name: &str| batch.column_by_name(name).filter(|c| c.is_valid(row));
    let dataset = column("dataset")
        .and_then(|c| text(c, row))
        .ok_or_else(|| invalid("a DoExchange query row needs a \"dataset\" string"))?;
    let integer = |name: &str| -> Result<Option<i64>, Status> {
        let Some(c) = column(name) else { return Ok(None) };
        let cast = arrow_cast::cast(c, &DataType::Int64).map_err(|_| {
            invalid(format!("\"{name}\" must be an integer, not {}", c.data_type()))
        })?;
        Ok(Some(cast.as_primitive::<arrow_array::types::Int64Type>().value(row)))
    };
    let k = integer("k")?.unwrap_or(10);
    let list_size = integer("ef")?.filter(|&ef| ef > 0).map(|ef| ef as usize);
    let vector = column("query_vector").ok_or_else(|| {
        invalid("a DoExchange query row needs \"query_vector\": a list of float32 or float64")
    })?;
    let query = floats(vector, row)?;
    let req = SearchRequest {
        dataset,
        vector: None,
        vectors: None,
        k,
        filters: None,
        include_vectors: false,
        columns: None,
        list_size,
        beam_width: None,
        exact: false,
        text_query: None,
        alpha: None,
        graph_alpha: None,
    };
    Ok((req, query))
}

fn text(c: &ArrayRef, row: usize) -> Option<String> {
    match c.data_type() {
        DataType::Utf8 => Some(c.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Some(c.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Some(c.as_string_view().value(row).to_string()),
        _ => None,
    }
}

/// Row `row` of a list column of float32 or float64, as `f32` (each value finite in `f32`).
fn floats(c: &ArrayRef, row: usize) -> Result<Vec<f32>, Status> {
    let values = match c.data_type() {
        DataType::FixedSizeList(..) => c.as_fixed_size_list().value(row),
        DataType::List(_) => c.as_list::<i32>().value(row),
        DataType::LargeList(_) => c.as_list::<i64>().value(row),
        other => return Err(invalid(format!("\"query_vector\" is {other}, not a list"))),
    };
    let out: Vec<f32> = match values.data_type() {
        DataType::Float32 => values.as_primitive::<Float32Type>().values().to_vec(),
        DataType::Float64 => {
            values.as_primitive::<Float64Type>().values().iter().map(|&v| v as f32).collect()
        }
        other => {
            return Err(invalid(format!(
                "\"query_vector\" holds {other}; expected float32 or float64"
            )));
        }
    };
    if values.null_count() > 0 {
        return Err(invalid("\"query_vector\" holds a null"));
    }
    match out.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(invalid(format!("query vector element {i} is not a finite f32"))),
        None => Ok(out),
    }
}
