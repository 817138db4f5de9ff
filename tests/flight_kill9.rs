//! kill -9 of a real `quiver serve` while several clients DoPut and one deletes: after a
//! restart, every batch whose `PutResult` arrived must be there with its exact vectors, and every
//! acknowledged delete must have taken. Three rounds on one data directory, with a small
//! in-memory table so flushes (and background work) run while the server dies. Pins down an
//! acknowledgement sent before durability, and recovery that drops or resurrects rows.

mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::types::Float32Type;
use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, UInt64Array};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{Action, FlightClient, FlightDescriptor, Ticket};
use arrow_schema::{DataType, Field, Schema};
use futures::{StreamExt, TryStreamExt};
use serve::Served;
use tonic::transport::Channel;

const DIM: usize = 32;
const WRITERS: u64 = 4;
const BATCH: u64 = 100;
const NAME: &str = "k9";

fn vector_of(id: u64) -> Vec<f32> {
    (0..DIM as u64).map(|j| ((id * 31 + j * 7) % 1000) as f32 / 10.0 - (j as f32)).collect()
}

fn batch(ids: &[u64]) -> RecordBatch {
    let v = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        ids.iter().map(|&i| Some(vector_of(i).into_iter().map(Some).collect::<Vec<_>>())),
        DIM as i32,
    );
    let schema = Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("vector", v.data_type().clone(), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(UInt64Array::from(ids.to_vec())), Arc::new(v)],
    )
    .unwrap()
}

async fn connect(addr: &str) -> FlightClient {
    let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    FlightClient::new(ch)
}

#[derive(Default)]
struct Acked {
    rows: BTreeSet<u64>,
    deleted: BTreeSet<u64>,
    /// Deletes sent but not acknowledged: either outcome is allowed.
    unsure: BTreeSet<u64>,
}

/// One writer: streams of 5 batches; the i-th ack acknowledges the i-th batch.
async fn writer(addr: String, w: u64, round: u64, acked: Arc<Mutex<Acked>>) {
    let Ok(ch) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await else {
        return;
    };
    let mut c = FlightClient::new(ch);
    let mut next = 0u64;
    loop {
        let batches: Vec<Vec<u64>> = (0..5)
            .map(|_| {
                let base = ((round * WRITERS + w) << 32) | next;
                next += BATCH;
                (base..base + BATCH).collect()
            })
            .collect();
        let stream = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![NAME.into()])))
            .build(futures::stream::iter(
                batches.iter().map(|ids| Ok(batch(ids))).collect::<Vec<_>>(),
            ));
        let Ok(mut acks) = c.do_put(stream).await else { return };
        let mut i = 0;
        while let Some(a) = acks.next().await {
            let Ok(a) = a else { return };
            let v: serde_json::Value = serde_json::from_slice(&a.app_metadata).unwrap();
            assert_eq!(v["rows"], BATCH);
            acked.lock().unwrap().rows.extend(&batches[i]);
            i += 1;
        }
    }
}

/// Deletes every 7th acknowledged id, one call at a time.
async fn deleter(addr: String, acked: Arc<Mutex<Acked>>) {
    let mut c = connect(&addr).await;
    loop {
        let pick: Vec<u64> = {
            let a = acked.lock().unwrap();
            a.rows
                .iter()
                .filter(|i| *i % 7 == 0 && !a.deleted.contains(i) && !a.unsure.contains(i))
                .take(20)
                .copied()
                .collect()
        };
        if pick.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        acked.lock().unwrap().unsure.extend(&pick);
        let body = serde_json::json!({"dataset": NAME, "ids": pick}).to_string();
        let ok = match c.do_action(Action::new("delete", body)).await {
            Ok(s) => s.try_collect::<Vec<_>>().await.is_ok(),
            Err(_) => false,
        };
        if !ok {
            return;
        }
        let mut a = acked.lock().unwrap();
        for p in &pick {
            a.unsure.remove(p);
            a.deleted.insert(*p);
        }
    }
}

async fn scan(addr: &str) -> BTreeMap<u64, Vec<f32>> {
    let mut c = connect(addr).await;
    let batches: Vec<RecordBatch> = match c.do_get(Ticket::new(NAME)).await {
        Ok(s) => s.try_collect().await.unwrap(),
        Err(_) => return BTreeMap::new(), // not created yet
    };
    let mut out = BTreeMap::new();
    for b in &batches {
        let ids = b.column(0).as_any().downcast_ref::<UInt64Array>().unwrap();
        let v = b.column(1).as_any().downcast_ref::<FixedSizeListArray>().unwrap();
        for r in 0..b.num_rows() {
            let x = v.value(r);
            let x = x.as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec();
            assert!(out.insert(ids.value(r), x).is_none(), "id {} twice in a scan", ids.value(r));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_put_and_delete_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let args = ["--memtable-mb", "1"];
    for round in 0..3u64 {
        let server = Served::start(&data, &args);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            tasks.push(tokio::spawn(writer(server.addr.clone(), w, round, acked.clone())));
        }
        tasks.push(tokio::spawn(deleter(server.addr.clone(), acked.clone())));
        // Let acknowledgements accumulate (timed from the first one: a loaded machine is slow
        // to start), then kill mid-stream.
        let before = acked.lock().unwrap().rows.len();
        let mut waited = 0;
        while acked.lock().unwrap().rows.len() == before && waited < 600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }

        let server = Served::start(&data, &args);
        let got = scan(&server.addr).await;
        let a = acked.lock().unwrap();
        assert!(a.rows.len() > before, "round {round}: nothing was acknowledged");
        for id in &a.rows {
            if a.unsure.contains(id) {
                continue;
            }
            if a.deleted.contains(id) {
                assert!(!got.contains_key(id), "round {round}: deleted id {id} came back");
            } else {
                let v = got.get(id).unwrap_or_else(|| panic!("round {round}: acked id {id} lost"));
                assert_eq!(v, &vector_of(*id), "round {round}: id {id} has the wrong vector");
            }
        }
        eprintln!(
            "round {round}: {} rows acked, {} deletes acked, {} rows present",
            a.rows.len(),
            a.deleted.len(),
            got.len()
        );
        drop(a);
        server.kill9();
    }
}
