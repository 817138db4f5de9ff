//! Decoding a client's ingest stream with one copy of each message body, into memory used
//! before.
//!
//! arrow-flight's decoder copies every record batch body that does not start on 64 bytes into a
//! freshly allocated buffer, and a body's place in a gRPC frame is arbitrary, so nearly every
//! body was copied. The batch then lives in the memtable until a flush writes it, so each copy
//! faulted in fresh pages: on 128-d f32 puts, that copy and its page faults were about a third
//! of the gRPC workers' time (BENCHMARKS.md, issue 26). Here a body that starts on 8 bytes (all
//! Arrow's fixed-width types need) is used in place; any other is copied once into a buffer from
//! a [`BodyPool`], 8-byte aligned, so the IPC decoder copies nothing more. The buffer goes back
//! to the pool when the last array that views it is dropped (after the flush that wrote it), and
//! the next batch reuses its pages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_flight::FlightData;
use arrow_flight::error::FlightError;
use arrow_ipc::MessageHeader;
use arrow_schema::SchemaRef;

/// Buffers for message bodies, reused once the batches that view them are dropped. Holds at
/// most `max_bytes` of free buffers; more are freed.
#[derive(Debug)]
pub(crate) struct BodyPool {
    free: Mutex<Free>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u64>>,
    bytes: usize,
}

/// A body copied into a pooled buffer; returns the buffer to the pool when dropped.
struct PooledBody {
    words: Vec<u64>,
    len: usize,
    pool: Arc<BodyPool>,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.words));
    }
}

impl BodyPool {
    /// A pool keeping at most `max_bytes` of free buffers (0: none kept, every body is copied
    /// into fresh memory, as under a memory budget, where freed memory must go back at once).
    pub(crate) fn new(max_bytes: usize) -> Arc<BodyPool> {
        Arc::new(BodyPool { free: Mutex::new(Free::default()), max_bytes })
    }

    /// `body` as an Arrow buffer: itself if it starts on 8 bytes, else a copy in a pooled
    /// buffer.
    pub(crate) fn buffer(self: &Arc<Self>, body: bytes::Bytes) -> Buffer {
        if (body.as_ptr() as usize).is_multiple_of(8) {
            return Buffer::from(body);
        }
        let words = body.len().div_ceil(8);
        let mut buffer = self.take(words);
        buffer.clear();
        buffer.reserve_exact(words);
        // Copied word by word rather than zero-filled first: a fresh buffer's pages are then
        // touched once, by the copy.
        let (whole, rest) = body.as_chunks::<8>();
        buffer.extend(whole.iter().map(|w| u64::from_ne_bytes(*w)));
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            buffer.push(u64::from_ne_bytes(last));
        }
        let owner = PooledBody { words: buffer, len: body.len(), pool: Arc::clone(self) };
        Buffer::from(bytes::Bytes::from_owner(owner))
    }

    /// A free buffer with room for at least `words` words (the smallest such), or a new empty
    /// one.
    fn take(&self, words: usize) -> Vec<u64> {
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let best = (0..free.buffers.len())
            .filter(|&i| free.buffers[i].capacity() >= words)
            .min_by_key(|&i| free.buffers[i].capacity());
        match best {
            Some(i) => {
                let buffer = free.buffers.swap_remove(i);
                free.bytes -= buffer.capacity() * 8;
                buffer
            }
            None => Vec::new(),
        }
    }

    fn give(&self, buffer: Vec<u64>) {
        let bytes = buffer.capacity() * 8;
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if bytes > 0 && free.bytes + bytes <= self.max_bytes {
            free.bytes += bytes;
            free.buffers.push(buffer);
        }
    }

    /// Bytes of free buffers held.
    #[cfg(test)]
    fn free_bytes(&self) -> usize {
        self.free.lock().unwrap().bytes
    }
}

/// A decoded batch, and the message it came in when the WAL can log that message as it is.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) batch: RecordBatch,
    /// The message's flatbuffer header and body (which `batch` views): present unless the
    /// body is compressed or the stream uses dictionaries.
    pub(crate) message: Option<(bytes::Bytes, Buffer)>,
}

/// The decoding state of one client stream: its schema and dictionaries so far.
pub(crate) struct IngestDecoder {
    pool: Arc<BodyPool>,
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
}

impl IngestDecoder {
    pub(crate) fn new(pool: Arc<BodyPool>) -> IngestDecoder {
        IngestDecoder { pool, schema: None, dictionaries: HashMap::new() }
    }

    /// Decodes one message: a record batch, or `None` for a schema, a dictionary or a message
    /// with no IPC content (application metadata alone).
    pub(crate) fn decode(&mut self, data: FlightData) -> Result<Option<Decoded>, FlightError> {
        let FlightData { data_header, data_body, .. } = data;
        let message = arrow_ipc::root_as_message(&data_header[..])
            .map_err(|e| FlightError::DecodeError(format!("Error decoding root message: {e}")))?;
        match message.header_type() {
            MessageHeader::NONE => Ok(None),
            MessageHeader::Schema => {
                let schema = arrow_ipc::convert::try_schema_from_flatbuffer_bytes(&data_header)
                    .map_err(|e| FlightError::DecodeError(format!("Error decoding schema: {e}")))?;
                self.schema = Some(Arc::new(schema));
                self.dictionaries.clear();
                Ok(None)
            }
            MessageHeader::DictionaryBatch => {
                let schema = self.schema.as_ref().ok_or_else(|| {
                    FlightError::protocol("Received DictionaryBatch prior to Schema")
                })?;
                let batch = message.header_as_dictionary_batch().ok_or_else(|| {
                    FlightError::protocol("Could not get dictionary batch from DictionaryBatch")
                })?;
                let body = self.pool.buffer(data_body);
                arrow_ipc::reader::read_dictionary(
                    &body,
                    batch,
                    schema,
                    &mut self.dictionaries,
                    &message.version(),
                )
                .map_err(|e| FlightError::DecodeError(format!("Error decoding dictionary: {e}")))?;
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .schema
                    .as_ref()
                    .ok_or_else(|| FlightError::protocol("Received RecordBatch prior to Schema"))?;
                let batch = message.header_as_record_batch().ok_or_else(|| {
                    FlightError::DecodeError("Unable to read a record batch header".to_string())
                })?;
                let body = self.pool.buffer(data_body);
                let loggable = batch.compression().is_none() && self.dictionaries.is_empty();
                let version = message.version();
                let decoded = arrow_ipc::reader::RecordBatchDecoder::try_new(
                    &body,
                    batch,
                    Arc::clone(schema),
                    &self.dictionaries,
                    &version,
                )
                .and_then(arrow_ipc::reader::RecordBatchDecoder::read_record_batch)
                .map_err(|e| {
                    FlightError::DecodeError(format!("Error decoding ipc RecordBatch: {e}"))
                })?;
                let message = loggable.then_some((data_header, body));
                Ok(Some(Decoded { batch: decoded, message }))
            }
            other => {
                let name = other.variant_name().unwrap_or("UNKNOWN");
                Err(FlightError::protocol(format!("Unexpected message: {name}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The decoder replaces arrow-flight's for ingest: it must decode what arrow-flight's
    //! encoder sends (dictionaries included) to the same batches, wherever the body sits in
    //! memory, and reuse a pooled buffer only after every array viewing it is gone.

    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, DictionaryArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
        UInt64Array, types::Int32Type,
    };
    use arrow_flight::FlightData;
    use arrow_schema::{DataType, Field};
    use futures::TryStreamExt;

    use super::{BodyPool, IngestDecoder};

    fn sample_batch(rows: usize) -> RecordBatch {
        let ids: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..rows as u64));
        let values = Float32Array::from_iter_values((0..rows * 4).map(|v| v as f32 * 0.5));
        let field = Arc::new(Field::new("item", DataType::Float32, false));
        let vectors: ArrayRef = Arc::new(FixedSizeListArray::new(field, 4, Arc::new(values), None));
        let tags: DictionaryArray<Int32Type> =
            (0..rows).map(|i| ["red", "green", "blue"][i % 3]).collect();
        let names: ArrayRef =
            Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("n{i}"))));
        RecordBatch::try_from_iter([
            ("id", ids),
            ("vector", vectors),
            ("tag", Arc::new(tags) as ArrayRef),
            ("name", names),
        ])
        .unwrap()
    }

    /// Every message of `batches` as arrow-flight's encoder sends them.
    fn encoded(batches: Vec<RecordBatch>) -> Vec<FlightData> {
        // Dictionaries sent as dictionary messages, as pyarrow sends them, not hydrated.
        let stream = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_dictionary_handling(arrow_flight::encode::DictionaryHandling::Resend)
            .build(futures::stream::iter(batches.into_iter().map(Ok)));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(stream.try_collect()).unwrap()
    }

    /// `data` with its body moved to an address `shift` bytes past an 8-byte boundary.
    fn shifted(mut data: FlightData, shift: usize) -> FlightData {
        let len = data.data_body.len();
        let mut room: Vec<u8> = Vec::with_capacity(len + 16);
        let start = (shift + 8 - room.as_ptr() as usize % 8) % 8;
        room.resize(start, 0);
        room.extend_from_slice(&data.data_body);
        let body = bytes::Bytes::from(room).slice(start..);
        assert_eq!(body.as_ptr() as usize % 8, shift, "the body sits where asked");
        data.data_body = body;
        data
    }

    #[test]
    fn batches_decode_alike_at_any_body_alignment_and_dictionaries_carry_over() {
        let sent = vec![sample_batch(100), sample_batch(37)];
        let messages = encoded(sent.clone());
        for shift in 0..8 {
            let pool = BodyPool::new(1 << 20);
            let mut decoder = IngestDecoder::new(Arc::clone(&pool));
            let mut got = Vec::new();
            for m in &messages {
                if let Some(d) = decoder.decode(shifted(m.clone(), shift)).unwrap() {
                    assert!(
                        d.message.is_none(),
                        "a stream with dictionaries is not logged as sent"
                    );
                    got.push(d.batch);
                }
            }
            assert_eq!(got, sent, "body shifted by {shift}");
        }
    }

    #[test]
    fn a_pooled_buffer_is_reused_only_after_the_batch_viewing_it_is_dropped() {
        let messages = encoded(vec![sample_batch(500)]);
        let pool = BodyPool::new(1 << 20);
        let mut decoder = IngestDecoder::new(Arc::clone(&pool));
        let body_message = messages.last().unwrap().clone();
        for m in &messages[..messages.len() - 1] {
            assert!(decoder.decode(m.clone()).unwrap().is_none());
        }
        let first = decoder.decode(shifted(body_message.clone(), 3)).unwrap().unwrap().batch;
        assert_eq!(pool.free_bytes(), 0, "the batch still views its buffer");
        let column = first.column(1).clone();
        drop(first);
        assert_eq!(pool.free_bytes(), 0, "a column still views the buffer");
        drop(column);
        let held = pool.free_bytes();
        assert!(held >= body_message.data_body.len(), "back in the pool: {held}");
        let second = decoder.decode(shifted(body_message, 5)).unwrap().unwrap().batch;
        assert_eq!(pool.free_bytes(), 0, "the second batch took the buffer");
        assert_eq!(second, sample_batch(500));
    }

    #[test]
    fn a_pool_of_no_bytes_keeps_nothing_and_a_record_batch_before_its_schema_is_refused() {
        let messages = encoded(vec![sample_batch(10)]);
        let pool = BodyPool::new(0);
        let mut decoder = IngestDecoder::new(Arc::clone(&pool));
        let err = decoder.decode(messages.last().unwrap().clone()).unwrap_err();
        assert!(err.to_string().contains("prior to Schema"), "{err}");
        let batches: Vec<RecordBatch> = messages
            .into_iter()
            .filter_map(|m| decoder.decode(shifted(m, 1)).unwrap().map(|d| d.batch))
            .collect();
        assert_eq!(batches, vec![sample_batch(10)]);
        drop(batches);
        assert_eq!(pool.free_bytes(), 0);
    }
}
