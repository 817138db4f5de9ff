//! `submit_insert_message` logs a batch from the IPC message it arrived in instead of
//! re-encoding it. Pins down a record that recovers to something other than what was
//! acknowledged (rows, upserts within the batch, attributes), a message checked less strictly
//! than `submit_insert` checks a batch (a NaN let through), and messages it cannot log as they
//! are (dictionaries, a body shorter than its header says) being accepted anyway.

mod common;

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, DictionaryArray, RecordBatch, types::Int32Type};
use arrow_buffer::Buffer;
use arrow_schema::{DataType, Field, Schema};
use common::*;
use quiver_engine::{BatchError, Database, MessageRefusal, Metric, Options, WriteError};

const DIM: usize = 4;

/// The record batch message of `batch`: its flatbuffer header and its body.
fn message_of(batch: &RecordBatch) -> (Vec<u8>, Buffer) {
    let mut tracker = arrow_ipc::writer::DictionaryTracker::new(false);
    let (_, encoded) = arrow_ipc::writer::IpcDataGenerator::default()
        .encode(
            batch,
            &mut tracker,
            &arrow_ipc::writer::IpcWriteOptions::default(),
            &mut Default::default(),
        )
        .unwrap();
    (encoded.ipc_message, Buffer::from_vec(encoded.arrow_data))
}

fn open(dir: &std::path::Path) -> Database {
    Database::open(dir, Options::default().background(false)).unwrap()
}

#[test]
fn a_batch_logged_from_its_message_recovers_to_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    // Id 3 twice: the later row wins, in the live table and after recovery.
    let ids = [1u64, 2, 3, 3, 9];
    let rows: Vec<Vec<f32>> = (0..ids.len() as u64).map(|i| vector(7, i, DIM)).collect();
    let sent = batch(&ids, &rows);
    let (header, body) = message_of(&sent);
    let lsn = db.submit_insert_message("c", &sent.schema(), &header, &body).unwrap().wait();
    assert!(lsn.unwrap() > 0);
    let live = scan_all(&db, "c");
    assert_eq!(live.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3, 9]);
    assert_eq!(live[2].1, rows[3], "the later row of id 3");
    assert_eq!(live[3].2.as_deref(), Some("t9"));
    drop(db);
    // Nothing was flushed: the rows come back from the WAL record alone.
    let db = open(dir.path());
    assert_eq!(scan_all(&db, "c"), live);
}

#[test]
fn a_message_is_checked_as_strictly_as_a_batch_and_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let mut rows: Vec<Vec<f32>> = (0..3).map(|i| vector(1, i, DIM)).collect();
    rows[1][2] = f32::NAN;
    let sent = batch(&[1, 2, 3], &rows);
    let (header, body) = message_of(&sent);
    let err = db.submit_insert_message("c", &sent.schema(), &header, &body).unwrap_err();
    let plain = db.insert("c", &sent).unwrap_err();
    assert_eq!(err.to_string(), plain.to_string(), "the same refusal as submit_insert");
    assert!(scan_all(&db, "c").is_empty());
}

#[test]
fn messages_that_cannot_be_logged_as_they_are_are_refused_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.create_collection("c", schema(DIM as u32, Metric::L2)).unwrap();
    let rows: Vec<Vec<f32>> = (0..2).map(|i| vector(2, i, DIM)).collect();
    let sent = batch(&[1, 2], &rows);
    let (header, body) = message_of(&sent);
    let short = body.slice_with_length(0, body.len() - 8);
    let refusal = |r: Result<_, WriteError>| match r {
        Err(WriteError::Batch(BatchError::Message(m))) => m,
        other => panic!("expected a refused message, got {other:?}"),
    };
    assert_eq!(
        refusal(db.submit_insert_message("c", &sent.schema(), &header, &short)),
        MessageRefusal::BodyLength
    );
    let tags: DictionaryArray<Int32Type> = ["a", "b"].into_iter().collect();
    let with_dictionary = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            sent.schema().field(1).clone(),
            Field::new("tag", tags.data_type().clone(), true),
        ])),
        vec![sent.column(0).clone(), sent.column(1).clone(), Arc::new(tags) as ArrayRef],
    )
    .unwrap();
    // The schema alone decides: dictionary values travel in messages of their own.
    assert_eq!(
        refusal(db.submit_insert_message("c", &with_dictionary.schema(), &header, &body)),
        MessageRefusal::Dictionaries
    );
    let (schema_only, _) = {
        let mut tracker = arrow_ipc::writer::DictionaryTracker::new(false);
        let encoded = arrow_ipc::writer::IpcDataGenerator::default()
            .schema_to_bytes_with_dictionary_tracker(
                &sent.schema(),
                &mut tracker,
                &arrow_ipc::writer::IpcWriteOptions::default(),
            );
        (encoded.ipc_message, ())
    };
    assert_eq!(
        refusal(db.submit_insert_message(
            "c",
            &sent.schema(),
            &schema_only,
            &Buffer::from_vec(Vec::<u8>::new())
        )),
        MessageRefusal::NotRecordBatch
    );
    assert!(scan_all(&db, "c").is_empty());
}
