//! Shared scaffolding for the Flight tests: an in-process server on a loopback port with its own
//! database directory, a connected `FlightClient`, and deterministic batches.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use arrow_array::types::Float32Type;
use arrow_array::{Array, FixedSizeListArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor, PutResult, Ticket};
use arrow_schema::{DataType, Field, Schema};
use futures::{StreamExt, TryStreamExt};
use quiver_flight::ServerConfig;
use quiver_flight::engine::{Database, Options};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub db: Arc<Database>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(cfg: ServerConfig) -> TestServer {
        Self::start_with(cfg, Options::default().build_indexes(false)).await
    }

    pub async fn start_with(cfg: ServerConfig, opts: Options) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::open(dir.path().join("db"), opts).unwrap());
        let listener = quiver_flight::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let db2 = db.clone();
        let task = tokio::spawn(async move {
            quiver_flight::serve(db2, listener, &cfg, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer { addr, dir, db, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> FlightClient {
        let ch =
            Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap();
        FlightClient::new(ch)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// The vector of row `id` in the synthetic sets: deterministic, distinct.
pub fn vector_of(id: u64, dim: usize) -> Vec<f32> {
    quiver_testkit::vector(1, id, dim)
}

pub fn vectors(ids: &[u64], dim: usize) -> FixedSizeListArray {
    FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        ids.iter().map(|&i| Some(vector_of(i, dim).into_iter().map(Some).collect::<Vec<_>>())),
        dim as i32,
    )
}

/// `id` (uint64), `vector`, `tag` (utf8: "t{id % 3}"), `n` (int64: id).
pub fn batch(ids: &[u64], dim: usize) -> RecordBatch {
    let v = vectors(ids, dim);
    let schema = Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("vector", v.data_type().clone(), false),
        Field::new("tag", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(UInt64Array::from(ids.to_vec())),
            Arc::new(v),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("t{}", i % 3)).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ids.iter().map(|&i| i as i64).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// Puts `batches` into `collection`; returns the acknowledgements' JSON, or the error.
pub async fn put(
    client: &mut FlightClient,
    collection: &str,
    batches: Vec<RecordBatch>,
) -> Result<Vec<serde_json::Value>, FlightError> {
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![collection.to_string()])))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let acks: Vec<PutResult> = client.do_put(stream).await?.try_collect().await?;
    Ok(acks.iter().map(|a| serde_json::from_slice(&a.app_metadata).unwrap()).collect())
}

pub async fn get(client: &mut FlightClient, ticket: &str) -> Result<Vec<RecordBatch>, FlightError> {
    client.do_get(Ticket::new(ticket.to_string())).await?.try_collect().await
}

pub async fn action(
    client: &mut FlightClient,
    name: &str,
    body: &str,
) -> Result<Vec<bytes::Bytes>, FlightError> {
    let a = arrow_flight::Action::new(name, body.to_string());
    client.do_action(a).await?.try_collect().await
}

/// The gRPC code of a failed call.
pub fn code<T: std::fmt::Debug>(r: Result<T, FlightError>) -> tonic::Code {
    match r {
        Err(FlightError::Tonic(s)) => s.code(),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// The message of a failed call.
pub fn message<T: std::fmt::Debug>(r: Result<T, FlightError>) -> String {
    match r {
        Err(FlightError::Tonic(s)) => s.message().to_string(),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

pub fn u64s(b: &RecordBatch, col: &str) -> Vec<u64> {
    let a = b.column_by_name(col).unwrap();
    a.as_any().downcast_ref::<UInt64Array>().unwrap().values().to_vec()
}

pub fn all_u64s(bs: &[RecordBatch], col: &str) -> Vec<u64> {
    bs.iter().flat_map(|b| u64s(b, col)).collect()
}

/// The ids of every batch, sorted: what a scan returned, whatever its order and batching.
pub fn sorted_ids(bs: &[RecordBatch]) -> Vec<u64> {
    let mut ids = all_u64s(bs, "id");
    ids.sort_unstable();
    ids
}

/// The `k` ids nearest `q` among `ids` by squared L2 (ties by id).
pub fn brute_force(ids: &[u64], dim: usize, q: &[f32], k: usize) -> Vec<u64> {
    let mut d: Vec<(f32, u64)> = ids
        .iter()
        .map(|&i| (vector_of(i, dim).iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), i))
        .collect();
    d.sort_by(|a, b| a.partial_cmp(b).unwrap());
    d.into_iter().take(k).map(|(_, i)| i).collect()
}

pub async fn drain<S: futures::Stream + Unpin>(mut s: S) -> Vec<S::Item> {
    let mut out = Vec::new();
    while let Some(x) = s.next().await {
        out.push(x);
    }
    out
}
