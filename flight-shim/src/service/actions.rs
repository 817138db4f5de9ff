//! DoAction: every action's names, its body's parsing, and its handler.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field};
use bytes::Bytes;
use quiver_engine::Metric;
use quiver_engine::{CollectionSchema, Database, IdType, VectorType};
use quiver_engine::{RESULT_DISTANCE_COLUMN, SCORE_COLUMN};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::chunker::ipc_stream_bytes;
use super::read::{hybrid_unimplemented, ids_array, run_search, run_search_batch};
use super::status::write_status;
use super::status::{bounded_status, collection_status, flush_status, invalid, read_status};
use super::{BoxStream, ServiceConfig};
use crate::convert::{self, metric_name};
use crate::metrics::Metrics;
use crate::request::{self, CreateRequest, DeleteRequest, MAX_QUERIES};
use crate::request::{SearchByIdRequest, SearchRequest};

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
        &["search_by_id", "VectorSearchByID"],
        "Search with a stored row's vector. Body: {\"dataset\", \"id\", \"k\"} and any \
         search option. Reply: {\"ids\": [...], \"scores\": [...], \"distances\": [...]}, \
         nearest first (the row itself included).",
    ),
    (&["list_namespaces", "ListNamespaces"], "{\"namespaces\": [NAME, ...], \"count\": N}."),
    (
        &["check_readiness"],
        "{\"status\": READY|BUSY|NOT_FOUND}: BUSY while rows are in memory or segments await an index or a merge.",
    ),
    (
        &["wait-for-indexing"],
        "Flush the in-memory rows, then wait until background indexing and merging are done.",
    ),
];

/// Longbow actions for features Quiver does not offer (graph edges, the gossip mesh, cluster
/// membership, hybrid search by action, internal vector ids). Each is `Unimplemented` naming
/// it, and ListActions does not list them.
pub const LONGBOW_ONLY_ACTIONS: &[(&str, &str)] = &[
    ("add-edge", "graph edges"),
    ("traverse-graph", "graph edges"),
    ("GetGraphStats", "graph edges"),
    ("cluster-status", "a cluster mesh"),
    ("MeshIdentity", "a cluster mesh"),
    ("MeshStatus", "a cluster mesh"),
    ("DiscoveryStatus", "a cluster mesh"),
    ("GetTotalNamespaceCount", "namespaces apart from collections"),
    ("GetNamespaceDatasetCount", "namespaces apart from collections"),
    ("HybridSearch", "hybrid (keyword and vector) search"),
    ("delete-vector", "internal vector ids (delete by id instead)"),
];

pub(super) fn canonical_action(name: &str) -> Option<&'static str> {
    ACTIONS.iter().find(|(names, _)| names.contains(&name)).map(|(names, _)| names[0])
}

/// The answer to an action that is not Quiver's: `Unimplemented` for Longbow's actions Quiver
/// does not offer, `InvalidArgument` for anything else.
pub(super) fn unknown_action(name: &str) -> Status {
    match LONGBOW_ONLY_ACTIONS.iter().find(|(n, _)| *n == name) {
        Some((n, feature)) => Status::unimplemented(format!(
            "action {n:?} is Longbow's; Quiver does not provide {feature}"
        )),
        None => invalid(format!("unknown action {name:?}; ListActions names the actions")),
    }
}

/// `VectorSearchByID`: the stored row's vector, then an ordinary search with it; the reply is
/// Longbow's JSON (`ids` and `scores`) with the distances beside them.
pub(super) fn search_by_id(
    db: &Database,
    body: &[u8],
    metrics: Option<&Metrics>,
) -> Result<Value, Status> {
    let req: SearchByIdRequest =
        request::parse_body("VectorSearchByID", body).map_err(|e| invalid(e.to_string()))?;
    let search = &req.search;
    if search.vector.is_some() || search.vectors.is_some() {
        return Err(invalid("VectorSearchByID takes an \"id\", not a \"vector\""));
    }
    let cs = db.schema(&search.dataset).map_err(collection_status)?;
    let ids = ids_array(std::slice::from_ref(&req.id), cs.id_type())?;
    let row = db.get(&search.dataset, ids.as_ref()).map_err(read_status)?;
    if row.num_rows() == 0 {
        return Err(Status::not_found(format!(
            "id {} is not in collection {:?}",
            req.id, search.dataset
        )));
    }
    let query = stored_vector(&row, cs.dim())?;
    let hits = run_search(db, search, &query, metrics)?;
    let column = |name: &str| {
        hits.column_by_name(name)
            .ok_or_else(|| Status::internal(format!("the result has no {name} column")))
    };
    let floats = |name: &str| -> Result<Vec<f32>, Status> {
        Ok(column(name)?.as_primitive::<Float32Type>().values().to_vec())
    };
    Ok(json!({
        "ids": ids_json(column(convert::ID_COLUMN)?.as_ref())?,
        "scores": floats(SCORE_COLUMN)?,
        "distances": floats(RESULT_DISTANCE_COLUMN)?,
    }))
}

/// Row 0's vector (of any stored element type) as the `f32` query a search takes.
fn stored_vector(row: &RecordBatch, dim: usize) -> Result<Vec<f32>, Status> {
    let vectors = row
        .column_by_name(convert::VECTOR_COLUMN)
        .ok_or_else(|| Status::internal("a stored row without its vector"))?;
    let f32_list = DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        dim as i32,
    );
    let cast = arrow_cast::cast(vectors, &f32_list).map_err(|e| Status::internal(e.to_string()))?;
    let values = cast.as_fixed_size_list().values().as_primitive::<Float32Type>().values().clone();
    Ok(values[..dim].to_vec())
}

/// An id column as JSON: numbers for integer ids, strings for string ids.
fn ids_json(ids: &dyn Array) -> Result<Vec<Value>, Status> {
    Ok(match ids.data_type() {
        DataType::UInt64 => {
            ids.as_primitive::<UInt64Type>().values().iter().map(|&v| v.into()).collect()
        }
        DataType::Int64 => {
            ids.as_primitive::<Int64Type>().values().iter().map(|&v| v.into()).collect()
        }
        DataType::Utf8 => ids.as_string::<i32>().iter().map(|v| v.unwrap_or("").into()).collect(),
        other => return Err(Status::internal(format!("an id column of type {other}"))),
    })
}

pub(super) fn parse_vector_type(s: Option<&str>) -> Result<VectorType, Status> {
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

pub(super) fn parse_id_type(s: Option<&str>) -> Result<IdType, Status> {
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

pub(super) fn parse_attribute_type(s: &str) -> Result<DataType, Status> {
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

pub(super) fn create_schema(req: &CreateRequest) -> Result<CollectionSchema, Status> {
    let metric = match &req.metric {
        None => Metric::L2,
        Some(m) => convert::parse_metric(m).map_err(invalid)?,
    };
    let dim = req.dim.ok_or_else(|| {
        invalid(format!(
            "collection {:?} needs a \"dim\" to be created empty; without one, send the first \
             batch with DoPut instead: a put to a collection that does not exist creates it \
             from the batch's schema, its dimension included (Longbow's CreateNamespace without \
             a dimension is not needed)",
            req.name
        ))
    })?;
    let mut cs =
        CollectionSchema::new(dim, parse_vector_type(req.element_type.as_deref())?, metric)
            .with_id_type(parse_id_type(req.id_type.as_deref())?);
    for a in &req.attributes {
        cs =
            cs.with_attribute(Field::new(&a.name, parse_attribute_type(&a.type_name)?, a.nullable));
    }
    for column in &req.label_graphs {
        cs = cs.with_label_graph(column);
    }
    Ok(cs)
}

pub(super) fn stats_json(db: &Database, name: &str) -> Result<Value, Status> {
    let cs = db.schema(name).map_err(collection_status)?;
    let st = db.stats(name).map_err(collection_status)?;
    Ok(json!({
        "name": name,
        "dim": cs.dim(),
        "element_type": convert::element_type_name(cs.vector_type()),
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
        "searches": st.searches,
        "index_walks": st.index_walks,
        "index_reads": st.index_reads,
        "filtered_walks": st.filtered_walks,
        "filtered_label_walks": st.filtered_label_walks,
        "filtered_ranked": st.filtered_ranked,
        "filtered_scans": st.filtered_scans,
        "filter_rows": {
            "remembered": st.filter_rows_remembered,
            "label_index": st.filter_rows_labelled,
            "columns_read": st.filter_rows_read,
        },
        "filter_row_groups_skipped": st.filter_zones_skipped,
        "resident_bytes": {
            "memtable": st.resident.memtable,
            "unindexed_vectors": st.resident.unindexed_vectors,
            "key_map": st.resident.key_map,
            "segment_keys": st.resident.segment_keys,
            "deletion_sets": st.resident.deletion_sets,
            "indexes": st.resident.indexes,
            "total": st.resident.total(),
        },
        "sector_cache": db.sector_cache_stats().map(|c| json!({
            "capacity": c.capacity, "bytes": c.bytes, "entries": c.entries, "hits": c.hits,
            "misses": c.misses, "inserts": c.inserts, "evictions": c.evictions,
        })),
        "memory_budget": db.memory().budget,
        "background_error": db.background_error().map(|e| e.to_string()),
    }))
}

/// Results of a `VectorSearch` action that may wait to be sent: queries are searched
/// [`SEARCH_CHUNK`] at a time, each result encoded and handed to the client, and the next chunk
/// searched once at most this many wait, so a request of 10,000 queries holds a few results in
/// memory, not all of them.
pub(super) const SEARCH_RESULTS_IN_FLIGHT: usize = 2;

/// Queries of a `VectorSearch` action searched together, as one engine batch spread over the
/// search pool's threads.
pub(super) const SEARCH_CHUNK: usize = 16;

/// The parsed queries of a `VectorSearch` body.
pub(super) fn vector_search_queries(body: &[u8]) -> Result<(SearchRequest, Vec<Vec<f32>>), Status> {
    let mut req: SearchRequest =
        request::parse_body("VectorSearch", body).map_err(|e| invalid(e.to_string()))?;
    if let Some(key) = req.unsupported_key() {
        return Err(hybrid_unimplemented(key));
    }
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
        .map(|q| request::query_vector(q).map_err(|e| invalid(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok((req, queries))
}

/// Streams a `VectorSearch`: one Arrow IPC stream per query, in order. Queries are searched
/// [`SEARCH_CHUNK`] at a time (in parallel), a chunk only when at most
/// [`SEARCH_RESULTS_IN_FLIGHT`] results of the one before wait for the transport. A result
/// larger than `max_message_bytes` is an error naming the query (lower k, or leave out the
/// vectors), since it could not be sent as one message anyway. Stops when the client leaves.
pub(super) fn vector_search_stream(
    db: Arc<Database>,
    req: SearchRequest,
    queries: Vec<Vec<f32>>,
    max_message_bytes: usize,
    metrics: Option<Arc<Metrics>>,
) -> BoxStream<arrow_flight::Result> {
    let (tx, rx) = mpsc::channel::<Result<arrow_flight::Result, Status>>(SEARCH_RESULTS_IN_FLIGHT);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        for (c, chunk) in queries.chunks(SEARCH_CHUNK).enumerate() {
            let found = match run_search_batch(&db, &req, chunk, metrics.as_deref()) {
                Ok(found) => found,
                Err(e) => {
                    let _ = tx.blocking_send(Err(bounded_status(e)));
                    return;
                }
            };
            for (j, batch) in found.iter().enumerate() {
                let i = c * SEARCH_CHUNK + j;
                let result = ipc_stream_bytes(batch).and_then(|body| {
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
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

pub(super) fn run_action(
    db: &Database,
    cfg: &ServiceConfig,
    action: &str,
    body: &[u8],
) -> Result<Vec<Bytes>, Status> {
    let json_body = |v: Value| -> Result<Vec<Bytes>, Status> { Ok(vec![v.to_string().into()]) };
    match action {
        "create_collection" => {
            let req: CreateRequest = request::parse_body("create_collection", body)
                .map_err(|e| invalid(e.to_string()))?;
            db.create_collection(&req.name, create_schema(&req)?).map_err(collection_status)?;
            json_body(json!({"status": "created", "name": req.name}))
        }
        "drop_collection" => {
            let name = request::collection_in_body(body).map_err(|e| invalid(e.to_string()))?;
            db.drop_collection(&name).map_err(collection_status)?;
            json_body(json!({"status": "dropped", "name": name}))
        }
        "delete" => {
            let mut req: DeleteRequest =
                request::parse_body("delete", body).map_err(|e| invalid(e.to_string()))?;
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
            let name = request::collection_in_body(body).map_err(|e| invalid(e.to_string()))?;
            json_body(stats_json(db, &name)?)
        }
        "list_collections" => {
            let names: Vec<String> = db.list_collections().into_iter().map(|(n, _)| n).collect();
            json_body(json!({"collections": names}))
        }
        "list_namespaces" => {
            let names: Vec<String> = db.list_collections().into_iter().map(|(n, _)| n).collect();
            json_body(json!({"count": names.len(), "namespaces": names}))
        }
        "search_by_id" => json_body(search_by_id(db, body, cfg.metrics.as_deref())?),
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
            // A timeout says why when background work is failing (and being retried).
            let error = if idle { None } else { db.background_error().map(|e| e.to_string()) };
            json_body(json!({
                "status": if idle { "complete" } else { "timeout" },
                "background_error": error,
            }))
        }
        other => Err(Status::internal(format!("action {other} has no handler"))),
    }
}
