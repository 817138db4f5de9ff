//! DoPut and DoExchange: batches submitted in order, acknowledged once durable.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use quiver_engine::{BatchError, CollectionError, Database, PendingWrite, WriteError};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::ingest_decode::{BodyPool, Decoded, IngestDecoder};
use super::status::{bounded_status, collection_status, decode_status, invalid, write_status};
use super::{BoxStream, blocking};
use crate::convert::{self};
use crate::metrics::Metrics;

/// A stream's batch handed to the engine: acknowledged once `pending` is durable.
pub(super) struct Submitted {
    rows: usize,
    /// Arrow bytes of the batch as received, and when it arrived (for the metrics).
    bytes: usize,
    arrived: std::time::Instant,
    /// The collection's vector element type: what the batch's vectors are stored as.
    element_type: &'static str,
    /// `None` for an empty batch (nothing to log).
    pending: Option<PendingWrite>,
    /// The batch's room in the server's [`IngestGate`], given back once it is acknowledged.
    gate: Option<OwnedSemaphorePermit>,
}

/// Bounds the bytes of ingest batches in flight over every stream of a server: decoded and
/// handed to the WAL, not yet acknowledged. Each batch counts twice its Arrow bytes: its rows,
/// and the WAL's copy of them (a re-encoded record; a record logged from its message shares
/// the body until the flusher copies it into its write, so the count is an upper bound).
/// Without a bound only [`MAX_IN_FLIGHT`] per stream
/// applies: eight 5 MB batches, and their records, were 80 MB in flight on one stream.
#[derive(Clone, Debug)]
pub(super) struct IngestGate {
    /// Kibibytes; `None`: unbounded.
    room: Option<(Arc<Semaphore>, u32)>,
}

impl IngestGate {
    /// A gate of `max_bytes` (at least 1 KiB), or none.
    pub(super) fn new(max_bytes: Option<usize>) -> IngestGate {
        let room = max_bytes.map(|b| {
            let kib = u32::try_from(b.div_ceil(1024)).unwrap_or(u32::MAX >> 4).max(1);
            (Arc::new(Semaphore::new(kib as usize)), kib)
        });
        IngestGate { room }
    }

    /// Waits until `batch` fits beside the batches in flight. A batch larger than the whole
    /// gate waits until it is empty, and then goes alone.
    async fn admit(&self, batch: &RecordBatch) -> Option<OwnedSemaphorePermit> {
        let (room, total) = self.room.as_ref()?;
        let kib = u32::try_from((2 * quiver_engine::value_bytes(batch)).div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, *total);
        // The semaphore is never closed, so acquiring fails only if it were.
        Arc::clone(room).acquire_many_owned(kib).await.ok()
    }
}

/// Submits one batch into `name`, creating the collection from the batch's schema if it does
/// not exist. Returns before the batch is durable: [`acknowledge`] waits for it.
pub(super) fn submit_batch(
    db: &Database,
    name: &str,
    decoded: &Decoded,
) -> Result<Submitted, Status> {
    let batch = &decoded.batch;
    let arrived = std::time::Instant::now();
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
    let bytes = quiver_engine::value_bytes(batch);
    let element_type = convert::element_type_name(cs.vector_type());
    if rows == 0 {
        return Ok(Submitted { rows, bytes, arrived, element_type, pending: None, gate: None });
    }
    let b =
        convert::conform(batch, &cs).map_err(|e| invalid(format!("collection {name:?}: {e}")))?;
    let added = convert::added_columns(&b.schema(), &cs);
    if !added.is_empty() {
        // Additive schema evolution, as Longbow allows: durable before the batch is logged.
        db.add_attributes(name, &added).map_err(collection_status)?;
    }
    let pending = submit(db, name, &b, decoded).map_err(|e| write_status(name, e))?;
    Ok(Submitted { rows, bytes, arrived, element_type, pending: Some(pending), gate: None })
}

/// Submits `conformed`, the collection's shape of `decoded.batch`: logged from the message it
/// came in when conforming changed no column (only names, say) and the engine takes the
/// message as it is, else re-encoded from the batch.
fn submit(
    db: &Database,
    name: &str,
    conformed: &RecordBatch,
    decoded: &Decoded,
) -> Result<PendingWrite, WriteError> {
    let unchanged = conformed.columns().len() == decoded.batch.columns().len()
        && conformed.columns().iter().zip(decoded.batch.columns()).all(|(a, b)| Arc::ptr_eq(a, b));
    if let (true, Some((header, body))) = (unchanged, &decoded.message) {
        match db.submit_insert_message(name, &conformed.schema(), header, body) {
            Err(WriteError::Batch(BatchError::Message(_))) => {}
            submitted => return submitted,
        }
    }
    db.submit_insert(name, conformed)
}

/// Waits until a submitted batch is durable (and visible); returns the acknowledgement JSON.
pub(super) fn acknowledge(
    name: &str,
    s: Submitted,
    metrics: Option<&Metrics>,
) -> Result<Bytes, Status> {
    let lsn = match s.pending {
        Some(p) => Value::from(p.wait().map_err(|e| write_status(name, e))?),
        None => Value::Null,
    };
    if let Some(m) = metrics {
        m.acknowledged(name, s.rows, s.bytes, s.arrived);
    }
    let ack =
        json!({"collection": name, "rows": s.rows, "lsn": lsn, "element_type": s.element_type});
    Ok(ack.to_string().into())
}

/// Batches of one ingest stream in flight at once: submitted to the WAL, not yet acknowledged.
/// While one is written and synced, the next is decoded and checked, and group commit can take
/// several together. Bounds what one stream holds beyond the WAL's own queue limit: one batch
/// being acknowledged, one just submitted waiting for room in the queue between the two tasks,
/// and the rest in that queue.
pub(super) const MAX_IN_FLIGHT: usize = 8;
const _: () = assert!(MAX_IN_FLIGHT > 2, "the queue between the tasks needs room");

/// Reads batches from `input` and submits each, sending `wrap(ack)` for each, in order, once it
/// is durable. Stops at the first failure, which it sends (after the acknowledgements of the
/// batches before it) as the stream's error.
pub(super) fn spawn_ingest<T: Send + 'static>(
    db: Arc<Database>,
    gate: IngestGate,
    name: String,
    mut input: IngestBatches,
    metrics: Option<Arc<Metrics>>,
    method: &'static str,
    wrap: fn(Bytes) -> T,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(4);
    let (sub_tx, mut sub_rx) = mpsc::channel::<Result<Submitted, Status>>(MAX_IN_FLIGHT - 2);
    let ack_name = name.clone();
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        while let Some(next) = input.next().await {
            let submitted = match next {
                Err(e) => Err(decode_status(e)),
                Ok(decoded) => {
                    let room = gate.admit(&decoded.batch).await;
                    let (db, name) = (db.clone(), name.clone());
                    blocking(move || submit_batch(&db, &name, &decoded)).await.map(|mut s| {
                        s.gate = room;
                        s
                    })
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
    }));
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        while let Some(submitted) = sub_rx.recv().await {
            let result = match submitted {
                Ok(s) => {
                    let name = ack_name.clone();
                    let metrics = metrics.clone();
                    blocking(move || acknowledge(&name, s, metrics.as_deref())).await
                }
                Err(e) => Err(e),
            };
            let stop = result.is_err();
            if let (Err(status), Some(m)) = (&result, &metrics) {
                m.failed(method, status.code());
            }
            if tx.send(result.map(wrap).map_err(bounded_status)).await.is_err() || stop {
                break;
            }
        }
        // The client left or a batch failed: batches still in flight are waited for (a dropped
        // PendingWrite waits) off the async workers, so each is applied or failed, not leaked.
        sub_rx.close();
        let _ =
            tokio::task::spawn_blocking(move || while sub_rx.blocking_recv().is_some() {}).await;
    }));
    Box::pin(ReceiverStream::new(rx))
}

/// The record batches of a client stream, decoded.
pub(super) type IngestBatches = futures::stream::BoxStream<'static, Result<Decoded, FlightError>>;

/// The batches of a client stream whose first message (already read) is `first`, their bodies
/// decoded through `pool` ([`IngestDecoder`]). A first message that carries only the
/// descriptor (no IPC message: pyarrow's DoExchange sends the descriptor alone, then the
/// schema) is dropped; decoding it as IPC fails.
pub(super) fn batch_stream(
    first: FlightData,
    rest: Streaming<FlightData>,
    pool: Arc<BodyPool>,
) -> IngestBatches {
    let first = (!first.data_header.is_empty() || !first.data_body.is_empty()).then_some(first);
    let mut decoder = IngestDecoder::new(pool);
    futures::stream::iter(first.map(Ok))
        .chain(rest)
        .map_err(|s| FlightError::Tonic(Box::new(s)))
        .try_filter_map(move |data| futures::future::ready(decoder.decode(data)))
        .boxed()
}

#[cfg(test)]
mod tests {
    //! The ingest gate is what keeps a server's in-flight batches inside its memory budget:
    //! before it, eight decoded batches and their WAL records per stream were held whatever the
    //! budget (80 MB for 5 MB batches, on a 96 MiB budget).

    use std::sync::Arc;

    use arrow_array::{RecordBatch, UInt8Array};
    use arrow_schema::{DataType, Field, Schema};
    use futures::FutureExt;

    use super::IngestGate;

    fn batch_of(bytes: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("b", DataType::UInt8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(UInt8Array::from(vec![7u8; bytes]))]).unwrap()
    }

    #[test]
    fn a_batch_waits_while_the_batches_in_flight_fill_the_gate() {
        let gate = IngestGate::new(Some(1 << 20));
        // 300 KB counts 600 KB (its rows and its WAL record): one fits, two do not.
        let first = gate.admit(&batch_of(300_000)).now_or_never().expect("an empty gate admits");
        assert!(gate.admit(&batch_of(300_000)).now_or_never().is_none(), "the second must wait");
        drop(first);
        let second = gate.admit(&batch_of(300_000)).now_or_never();
        assert!(second.is_some(), "admitted once the first was acknowledged");
    }

    #[test]
    fn a_batch_larger_than_the_gate_goes_alone_rather_than_never() {
        let gate = IngestGate::new(Some(1 << 20));
        let small = gate.admit(&batch_of(1_000)).now_or_never().expect("room");
        assert!(gate.admit(&batch_of(4 << 20)).now_or_never().is_none(), "waits for the gate");
        drop(small);
        let big = gate.admit(&batch_of(4 << 20)).now_or_never().expect("alone, it goes");
        assert!(gate.admit(&batch_of(1_000)).now_or_never().is_none(), "and nothing beside it");
        drop(big);
    }

    #[test]
    fn without_a_bound_nothing_waits() {
        let gate = IngestGate::new(None);
        for _ in 0..4 {
            assert!(gate.admit(&batch_of(1 << 20)).now_or_never().is_some());
        }
    }
}
