//! The in-memory tables are the first share of the memory budget, and they were overrun two
//! ways without any test noticing. A batch decoded from one Arrow IPC message (every Flight
//! put) holds that message's body once, but its size was taken as the sum of its columns'
//! buffer capacities, each the whole body: a 5.2 MB batch of 10,000 float rows counted 15.6 MB.
//! And a table took a write whenever it was still under its budget, so it ended up to one
//! batch over it. These tests pin both down: a decoded batch is counted once, and a table never
//! holds more than `memtable_bytes`.

mod common;

use std::sync::Arc;

use arrow_array::RecordBatch;
use common::*;
use quiver_engine::{Database, Metric, Options, held_bytes, value_bytes};

const DIM: usize = 64;

fn rows(from: u64, n: u64) -> RecordBatch {
    let ids: Vec<u64> = (from..from + n).collect();
    let vectors: Vec<Vec<f32>> = ids.iter().map(|&i| vector(3, i, DIM)).collect();
    batch(&ids, &vectors)
}

/// `batch` written as an Arrow IPC stream and read back: its columns slice one message body.
fn through_ipc(batch: &RecordBatch) -> RecordBatch {
    let mut bytes = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
    drop(w);
    bytes.shrink_to_fit(); // one exact allocation, as a received message is
    let mut buffer = arrow_buffer::Buffer::from(bytes);
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut out = Vec::new();
    while !buffer.is_empty() {
        if let Some(b) = decoder.decode(&mut buffer).unwrap() {
            out.push(b);
        }
    }
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

#[test]
fn a_batch_decoded_from_one_message_is_counted_once_not_once_per_column() {
    let decoded = through_ipc(&rows(0, 2_000));
    let values = value_bytes(&decoded);
    let held = held_bytes(&decoded);
    assert!(held >= values, "{held} bytes held for {values} bytes of values");
    assert!(held < values + values / 8, "one body, counted once: {held} for {values} of values");
    assert!(
        decoded.get_array_memory_size() > held + values / 2,
        "the columns share one body, which a per-column sum counts again"
    );
}

#[test]
fn a_table_never_holds_more_than_its_budget() {
    let one = held_bytes(&through_ipc(&rows(0, 1_000)));
    // Room for one batch and its keys, not two.
    let limit = one + one / 2;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background(false).memtable_bytes(limit);
    let db = Arc::new(Database::open(dir.path(), opts).unwrap());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut most = 0;
    for i in 0..12 {
        db.insert("c", &through_ipc(&rows(i * 1_000, 1_000))).unwrap();
        let st = db.stats("c").unwrap();
        most = most.max(st.resident.memtable);
        assert!(
            st.resident.memtable <= limit as u64,
            "after batch {i}: the table holds {} bytes, over its {limit}",
            st.resident.memtable
        );
    }
    assert!(most as usize > one, "the table held a batch: {most}");
    assert_eq!(db.stats("c").unwrap().rows, 12_000);
}
