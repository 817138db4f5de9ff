//! The write path: a write is checked, handed to the WAL, and applied to the in-memory model in
//! LSN order once durable; backpressure keeps the memtables within their budget.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{Array, RecordBatch};
use arrow_schema::{ArrowError, Field, Schema, SchemaRef};

use crate::batch::{self, kind};
use crate::error::{FlushError, WriteError};
use crate::schema::{CollectionSchema, ID_COLUMN};
use quiver_wal::Payload;

use super::Database;
use super::flush::flush_once;
use super::inner::{Inner, lock};
use super::model::Op;

impl Database {
    /// Inserts (upserts by id) the rows of `batch`: columns `id`, `vector`, and any of the
    /// collection's attributes (missing nullable ones become null). Returns once the rows are
    /// durable in the WAL; from then on every search, get and scan sees them. May first flush
    /// the in-memory table, or wait for a flush to free it (backpressure on memory, bounded by
    /// [`crate::Options::max_stall`]); never for an index build or a merge.
    ///
    /// # Errors
    /// [`WriteError`]; for a refused batch, nothing was written.
    pub fn insert(&self, collection: &str, batch: &RecordBatch) -> Result<u64, WriteError> {
        self.submit_insert(collection, batch)?.wait()
    }

    /// [`Database::insert`] in two steps, so one caller can keep several writes in flight
    /// (the Flight server pipelines a stream's batches this way): checks `batch`, hands it to
    /// the WAL and returns without waiting for it to become durable. The rows are neither
    /// acknowledged nor visible until [`PendingWrite::wait`] returns. Writes take effect in the
    /// order they were submitted, whoever waits first.
    ///
    /// # Errors
    /// As [`Database::insert`], for everything found before the WAL write; a refused batch
    /// wrote nothing.
    pub fn submit_insert(
        &self,
        collection: &str,
        batch: &RecordBatch,
    ) -> Result<PendingWrite, WriteError> {
        self.submit_checked(collection, batch, |cid, prepared| {
            let mut payload = self.inner.wal.buffer();
            batch::encode_payload_into(&mut payload, cid, &prepared.batch)?;
            Ok(Payload::Owned(payload))
        })
    }

    /// [`Database::submit_insert`] of a record batch given as the Arrow IPC message it came in:
    /// `header`, the message's flatbuffer, and `body`, its body, decoded with `schema` (what a
    /// Flight client sends as a `FlightData`). The batch is decoded from `body` in place, and
    /// the WAL record is written from the same bytes: no re-encoding, and no copy of the body
    /// before the log's own write. The rows are checked exactly as `submit_insert` checks
    /// them, and recovery decodes the record to the same batch.
    ///
    /// # Errors
    /// As [`Database::submit_insert`]; and [`batch::BatchError::Message`] for a message this
    /// does not log as it is (a compressed body, dictionary columns, not a record batch): insert
    /// its decoded batch with `submit_insert` instead.
    pub fn submit_insert_message(
        &self,
        collection: &str,
        schema: &SchemaRef,
        header: &[u8],
        body: &arrow_buffer::Buffer,
    ) -> Result<PendingWrite, WriteError> {
        let decoded = decode_message(schema, header, body)?;
        self.submit_checked(collection, &decoded, |cid, _| {
            let body = bytes::Bytes::from(body.clone());
            Ok(Payload::Parts(batch::message_payload(cid, schema, header, body)?))
        })
    }

    /// What both insert paths share: `batch` checked and prepared, then logged as `payload`
    /// makes its record (from the collection id and the prepared rows), unless no row is left.
    fn submit_checked(
        &self,
        collection: &str,
        batch: &RecordBatch,
        payload: impl FnOnce(u64, &batch::Prepared) -> Result<Payload, ArrowError>,
    ) -> Result<PendingWrite, WriteError> {
        let inner = &self.inner;
        let _span = tracing::debug_span!("insert", collection, rows = batch.num_rows()).entered();
        let (cid, schema) = self.admit(collection, batch.num_rows())?;
        let prepared = batch::prepare(&schema, batch, batch::Admit::New)?;
        if prepared.keys.is_empty() {
            return Ok(PendingWrite::done(inner, inner.wal.durable_lsn()));
        }
        let payload = payload(cid, &prepared).map_err(batch::BatchError::from)?;
        self.submit(Op::Insert { collection: cid, prepared }, kind::INSERT, payload)
    }

    /// Deletes the rows with these ids (an array of the collection's id type); ids not present
    /// are ignored. Durable and visible when it returns.
    ///
    /// # Errors
    /// [`WriteError`]; for refused ids, nothing was written.
    pub fn delete(&self, collection: &str, ids: &dyn Array) -> Result<u64, WriteError> {
        let inner = &self.inner;
        let (cid, schema) = self.admit(collection, ids.len())?;
        let keys = batch::delete_keys(ids, schema.id_type())?;
        if keys.is_empty() {
            return Ok(inner.wal.durable_lsn());
        }
        let array = batch::keys_to_array(&keys, schema.id_type());
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(ID_COLUMN, array.data_type().clone(), false)])),
            vec![array],
        )
        .map_err(batch::BatchError::from)?;
        let payload = batch::encode_payload(cid, &b).map_err(batch::BatchError::from)?;
        self.submit(Op::Delete { collection: cid, keys }, kind::DELETE, Payload::Owned(payload))?
            .wait()
    }

    /// The checks every write passes first: not poisoned, within the row limit, a known
    /// collection (its id and schema).
    pub(super) fn admit(
        &self,
        collection: &str,
        rows: usize,
    ) -> Result<(u64, Arc<CollectionSchema>), WriteError> {
        if let Some(p) = self.inner.poisoned() {
            return Err(WriteError::Poisoned(p));
        }
        let limit = self.inner.opts.max_batch_rows;
        if rows > limit {
            return Err(batch::BatchError::TooManyRows { rows, limit }.into());
        }
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| WriteError::NotFound(collection.to_string()))?;
        Ok((c.id, c.schema.clone()))
    }

    /// Makes room in the memtables before a write of about `incoming` bytes. A table takes a
    /// write while it stays within `memtable_bytes` (an empty table takes any: the server caps
    /// a message below it), so the tables — one filling, one being flushed — hold at most twice
    /// that. A write that does not fit asks the flusher to freeze the table and waits while a
    /// flush writes the frozen one (at most [`Options::max_stall`]); writers never wait for a
    /// flush's I/O otherwise. Without background work, or while the flusher is failing, the
    /// writer flushes itself and reports the error.
    pub(super) fn make_room(&self, incoming: usize) -> Result<(), WriteError> {
        let inner = &*self.inner;
        let limit = inner.opts.memtable_bytes;
        // Whether the table takes the write, and whether a table is frozen.
        let room = || {
            let st = inner.read();
            let mutable = st.mem_bytes - st.frozen_bytes;
            (mutable == 0 || mutable + incoming <= limit, st.frozen_bytes)
        };
        if room().0 {
            return Ok(()); // every write but the few that meet a full table
        }
        let started = Instant::now();
        loop {
            // Read before the tables: a freeze or flush that ends after this bumps it, so the
            // wait below cannot miss it.
            let seen = lock(&inner.flush_ctl).generation;
            let (fits, frozen) = room();
            if fits {
                return Ok(());
            }
            let mut ctl = lock(&inner.flush_ctl);
            if !inner.opts.background || (frozen == 0 && ctl.failing) {
                drop(ctl);
                // No flusher, or it is failing: flush here, reporting its error.
                return flush_once(inner).map_err(|e| match e {
                    FlushError::Poisoned(p) => WriteError::Poisoned(p),
                    e => WriteError::Flush(Box::new(e)),
                });
            }
            if ctl.generation != seen {
                continue; // a freeze or flush ended since the tables were read
            }
            if frozen == 0 {
                ctl.rotate = true;
                ctl.generation += 1;
                inner.flush_cv.notify_all();
            }
            let asked = ctl.generation;
            // The flusher freezes the table, or a flush is writing the frozen rows: wait.
            if let Some(p) = inner.poisoned() {
                return Err(WriteError::Poisoned(p));
            }
            let waited = started.elapsed();
            if waited >= inner.opts.max_stall {
                return Err(WriteError::Stalled(waited));
            }
            // Until the flusher freezes the table, a flush ends or fails, or the database is
            // poisoned: each bumps the generation. No polling: a missed wake-up would show as
            // a put stalled for `max_stall`.
            let left = inner.opts.max_stall - waited;
            drop(
                inner
                    .flush_cv
                    .wait_timeout_while(ctl, left, |c| c.generation == asked)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }

    /// Queues `op` behind its WAL record; [`PendingWrite::wait`] applies it once durable.
    pub(super) fn submit(
        &self,
        op: Op,
        kind: u8,
        payload: Payload,
    ) -> Result<PendingWrite, WriteError> {
        let inner = &self.inner;
        self.make_room(payload.len())?;
        let pending = {
            let mut order = lock(&inner.order);
            let pending = inner.wal.submit_payload(kind, payload).inspect_err(|e| {
                inner.poison(format!("WAL append failed: {e}"));
            })?;
            order.queue.push_back((pending.lsn(), op));
            pending
        };
        Ok(PendingWrite { inner: Arc::clone(inner), lsn: pending.lsn(), wal: Some(pending) })
    }
}

/// The batch of the record batch message (`header`, `body`) of `schema`, decoded in place,
/// if it is one that [`Database::submit_insert_message`] logs as it is.
fn decode_message(
    schema: &SchemaRef,
    header: &[u8],
    body: &arrow_buffer::Buffer,
) -> Result<RecordBatch, batch::BatchError> {
    use batch::{BatchError, MessageRefusal};
    let message = arrow_ipc::root_as_message(header)
        .map_err(|e| BatchError::from(ArrowError::IpcError(e.to_string())))?;
    let record = message
        .header_as_record_batch()
        .ok_or(BatchError::Message(MessageRefusal::NotRecordBatch))?;
    if record.compression().is_some() {
        return Err(BatchError::Message(MessageRefusal::Compressed));
    }
    if schema.fields().iter().any(|f| crate::batch::has_dictionary(f.data_type())) {
        return Err(BatchError::Message(MessageRefusal::Dictionaries));
    }
    if usize::try_from(message.bodyLength()).ok() != Some(body.len()) {
        return Err(BatchError::Message(MessageRefusal::BodyLength));
    }
    let version = message.version();
    let no_dictionaries = std::collections::HashMap::new();
    let decoded = arrow_ipc::reader::RecordBatchDecoder::try_new(
        body,
        record,
        Arc::clone(schema),
        &no_dictionaries,
        &version,
    )?
    .read_record_batch()?;
    Ok(decoded)
}

/// A write handed to the WAL but not yet acknowledged, from [`Database::submit_insert`].
///
/// [`PendingWrite::wait`] blocks until the write is durable, makes it (and every write
/// submitted before it) visible, and returns its LSN. Dropping it unwaited waits the same way,
/// so no durable write stays invisible; only a leaked one (`mem::forget`) stays invisible until
/// a later write is waited on or a flush.
#[must_use = "a write is acknowledged and visible only once waited on"]
pub struct PendingWrite {
    inner: Arc<Inner>,
    lsn: u64,
    /// `None` once waited on, or for a write that needed no record.
    wal: Option<quiver_wal::Pending>,
}

impl fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingWrite").field("lsn", &self.lsn).finish_non_exhaustive()
    }
}

impl PendingWrite {
    /// A write with nothing to log (no rows): acknowledged at once with `lsn`.
    pub(super) fn done(inner: &Arc<Inner>, lsn: u64) -> PendingWrite {
        PendingWrite { inner: Arc::clone(inner), lsn, wal: None }
    }

    /// The write's LSN (assigned at submission).
    #[must_use]
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Blocks until the write is durable, applies it, and returns its LSN.
    ///
    /// # Errors
    /// [`WriteError`] if the WAL failed first (the database is then poisoned).
    pub fn wait(mut self) -> Result<u64, WriteError> {
        let _span = tracing::debug_span!("wal_wait", lsn = self.lsn).entered();
        match self.wal.take() {
            Some(p) => finish_write(&self.inner, p),
            None => Ok(self.lsn),
        }
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(p) = self.wal.take() {
            // The error, if any, has poisoned the database; later writes report it.
            let _ = finish_write(&self.inner, p);
        }
    }
}

/// Waits for `pending`'s record, then applies, in LSN order, every queued write up to it (all
/// are durable); on failure, poisons the database.
pub(super) fn finish_write(inner: &Inner, pending: quiver_wal::Pending) -> Result<u64, WriteError> {
    let lsn = pending.lsn();
    match pending.wait() {
        Ok(_) => {
            let mut order = lock(&inner.order);
            if order.queue.front().is_some_and(|(l, _)| *l <= lsn) {
                let mut st = inner.write();
                while order.queue.front().is_some_and(|(l, _)| *l <= lsn) {
                    let (_, op) = order.queue.pop_front().expect("checked");
                    st.apply(op);
                }
            }
            drop(order);
            *lock(&inner.last_write) = Instant::now();
            Ok(lsn)
        }
        Err(e) => {
            lock(&inner.order).queue.retain(|(l, _)| *l != lsn);
            inner.poison(format!("WAL write failed: {e}"));
            Err(e.into())
        }
    }
}
