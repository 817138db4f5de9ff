//! Every Flight call of `quiver serve`, driven by the `arrow-flight` client over loopback: the
//! answers must match the data (nearest ids against brute force, scans row for row), and each
//! kind of bad input must come back with its gRPC code and a message naming the problem. These
//! pin down the contract Longbow's clients rely on.

mod common;

use std::time::Duration;

use arrow_array::types::Float64Type;
use arrow_array::{Array, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use futures::{StreamExt, TryStreamExt};
use quiver_flight::ServerConfig;
use quiver_flight::engine::Options;
use serde_json::{Value, json};
use std::sync::Arc;
use tonic::Code;

const DIM: usize = 8;

fn ids(r: std::ops::Range<u64>) -> Vec<u64> {
    r.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_acks_each_batch_then_search_scan_and_get_see_every_row() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    let batches =
        vec![batch(&ids(0..100), DIM), batch(&ids(100..250), DIM), batch(&ids(250..300), DIM)];
    let acks = put(&mut c, "docs", batches).await.unwrap();
    assert_eq!(acks.len(), 3);
    assert_eq!(
        acks.iter().map(|a| a["rows"].as_u64().unwrap()).collect::<Vec<_>>(),
        [100, 150, 50]
    );
    let lsns: Vec<u64> = acks.iter().map(|a| a["lsn"].as_u64().unwrap()).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");

    // Search: nearest ids equal brute force, with score and distance columns.
    let all = ids(0..300);
    for probe in [3u64, 150, 299] {
        let q: Vec<f32> = vector_of(probe, DIM).iter().map(|x| x + 0.01).collect();
        let t = json!({"search": {"dataset": "docs", "vector": q, "k": 5, "columns": ["tag"]}});
        let r = get(&mut c, &t.to_string()).await.unwrap();
        let hits = all_u64s(&r, "id");
        assert_eq!(hits, brute_force(&all, DIM, &q, 5));
        let b = &r[0];
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id", "score", "distance", "tag"]);
        let score = b.column(1).as_any().downcast_ref::<Float32Array>().unwrap();
        let dist = b.column(2).as_any().downcast_ref::<Float32Array>().unwrap();
        for i in 0..b.num_rows() {
            assert!((score.value(i) - 1.0 / (1.0 + dist.value(i))).abs() < 1e-6);
        }
        assert!(dist.values().windows(2).all(|w| w[0] <= w[1]));
    }

    // Scan (all three spellings) returns every row once, with the vectors sent.
    for t in ["docs", "\"docs\"", "{\"name\": \"docs\"}"] {
        let r = get(&mut c, t).await.unwrap();
        assert_eq!(sorted_ids(&r), all);
        for b in &r {
            let v = b.column_by_name("vector").unwrap();
            let v = v.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
            for (row, id) in u64s(b, "id").into_iter().enumerate() {
                let x = v.value(row);
                let x = x.as_any().downcast_ref::<Float32Array>().unwrap();
                assert_eq!(x.values().to_vec(), vector_of(id, DIM), "vector of id {id}");
            }
        }
    }

    // Get by ids, absent ids skipped, columns projected.
    let t = json!({"get": {"dataset": "docs", "ids": [5, 999, 250], "columns": ["id", "n"]}});
    let r = get(&mut c, &t.to_string()).await.unwrap();
    assert_eq!(all_u64s(&r, "id"), [5, 250]);
    assert_eq!(r[0].num_columns(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_apply_to_search_and_scan_and_limit_caps_a_scan() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    put(&mut c, "f", vec![batch(&ids(0..600), DIM)]).await.unwrap();
    let q = vector_of(10, DIM);
    let t = json!({"search": {"dataset": "f", "vector": q, "k": 7,
        "filters": [{"field": "tag", "op": "=", "value": "t1"}, {"field": "n", "op": ">=", "value": 100}]}});
    let r = get(&mut c, &t.to_string()).await.unwrap();
    let pass: Vec<u64> = (0..600).filter(|i| i % 3 == 1 && *i >= 100).collect();
    assert_eq!(all_u64s(&r, "id"), brute_force(&pass, DIM, &q, 7));

    let t = json!({"name": "f", "filters": [{"field": "n", "op": "<", "value": 50}], "columns": ["id"]});
    let r = get(&mut c, &t.to_string()).await.unwrap();
    assert_eq!(sorted_ids(&r), ids(0..50));
    assert_eq!(r[0].num_columns(), 1);

    let r = get(&mut c, &json!({"name": "f", "limit": 77}).to_string()).await.unwrap();
    assert_eq!(r.iter().map(RecordBatch::num_rows).sum::<usize>(), 77);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_batches_start_small_and_grow_to_the_maximum() {
    let mut cfg = ServerConfig::default();
    cfg.service.scan_chunk_start = 16;
    cfg.service.scan_chunk_max = 512;
    let server = TestServer::start_with(cfg, Options::default().build_indexes(false)).await;
    let mut c = server.client().await;
    // Half in segments, half in the in-memory table, in batches of 50.
    let chunks: Vec<RecordBatch> =
        (0..40u64).map(|i| batch(&ids(i * 50..i * 50 + 50), DIM)).collect();
    put(&mut c, "s", chunks[..20].to_vec()).await.unwrap();
    action(&mut c, "flush", "").await.unwrap();
    put(&mut c, "s", chunks[20..].to_vec()).await.unwrap();
    let r = get(&mut c, "s").await.unwrap();
    let sizes: Vec<usize> = r.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(&sizes[..6], &[16, 32, 64, 128, 256, 512], "{sizes:?}");
    assert!(sizes[6..sizes.len() - 1].iter().all(|&s| s == 512), "{sizes:?}");
    assert_eq!(sorted_ids(&r), ids(0..2000));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_says_what_was_wrong() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    put(&mut c, "docs", vec![batch(&ids(0..10), DIM)]).await.unwrap();

    // Unknown collection: NotFound from every call that names one.
    let s = |t: Value| t.to_string();
    let zero = vec![0.0f32; DIM];
    assert_eq!(
        code(get(&mut c, &s(json!({"search": {"dataset": "nope", "vector": zero}}))).await),
        Code::NotFound
    );
    assert_eq!(code(get(&mut c, "nope").await), Code::NotFound);
    assert_eq!(
        code(get(&mut c, &s(json!({"get": {"dataset": "nope", "ids": [1]}}))).await),
        Code::NotFound
    );
    assert_eq!(code(action(&mut c, "stats", "{\"name\": \"nope\"}").await), Code::NotFound);
    assert_eq!(
        code(action(&mut c, "delete", "{\"dataset\": \"nope\", \"ids\": [1]}").await),
        Code::NotFound
    );
    assert_eq!(
        code(action(&mut c, "drop_collection", "{\"name\": \"nope\"}").await),
        Code::NotFound
    );
    let d = FlightDescriptor::new_path(vec!["nope".into()]);
    assert_eq!(code(c.get_flight_info(d.clone()).await), Code::NotFound);
    assert_eq!(code(c.get_schema(d).await), Code::NotFound);

    // Wrong dimension, k < 1, malformed JSON, non-numbers in the vector, unknown filter column.
    let m = message(
        get(&mut c, &s(json!({"search": {"dataset": "docs", "vector": [1.0, 2.0]}}))).await,
    );
    assert!(m.contains("2 elements") && m.contains("dimension 8"), "{m}");
    let m = message(
        get(&mut c, &s(json!({"search": {"dataset": "docs", "vector": zero, "k": 0}}))).await,
    );
    assert!(m.contains("k = 0"), "{m}");
    assert_eq!(
        code(get(&mut c, "{\"search\": {\"dataset\": \"docs\", ").await),
        Code::InvalidArgument
    );
    let m = message(get(&mut c, "{\"search\": {\"dataset\": \"docs\", \"vector\": [NaN]}}").await);
    assert!(m.contains("malformed"), "{m}");
    let m =
        message(get(&mut c, &s(json!({"search": {"dataset": "docs", "vector": [1, "x"]}}))).await);
    assert!(m.contains("element 1"), "{m}");
    let m = message(
        get(
            &mut c,
            &s(json!({"name": "docs", "filters": [{"field": "zz", "op": "=", "value": 1}]})),
        )
        .await,
    );
    assert!(m.contains("unknown column \"zz\""), "{m}");
    let m = message(
        get(&mut c, &s(json!({"search": {"dataset": "docs", "vector": zero, "columns": ["zz"]}})))
            .await,
    );
    assert!(m.contains("no column named \"zz\""), "{m}");
    assert_eq!(code(action(&mut c, "no-such-action", "").await), Code::InvalidArgument);
    assert_eq!(
        code(action(&mut c, "delete", "{\"dataset\": \"docs\", \"ids\": [\"x\"]}").await),
        Code::InvalidArgument
    );

    // Puts: NaN, wrong dimension, missing id, hostile names, a conflicting metric. Nothing lands.
    let mut nan = batch(&[100], DIM);
    let v = FixedSizeListArray::from_iter_primitive::<arrow_array::types::Float32Type, _, _>(
        vec![Some(vec![Some(f32::NAN); DIM])],
        DIM as i32,
    );
    nan = RecordBatch::try_new(
        nan.schema(),
        vec![nan.column(0).clone(), Arc::new(v), nan.column(2).clone(), nan.column(3).clone()],
    )
    .unwrap();
    let m = message(put(&mut c, "docs", vec![nan]).await);
    assert!(m.contains("non-finite"), "{m}");
    let m = message(put(&mut c, "docs", vec![batch(&[101], DIM + 1)]).await);
    assert!(m.contains("vector"), "{m}");
    let no_id = batch(&[102], DIM).project(&[1, 2, 3]).unwrap();
    let m = message(put(&mut c, "fresh", vec![no_id]).await);
    assert!(m.contains("no \"id\" column"), "{m}");
    for name in ["../escape", "a/b", "nul\0", &"x".repeat(300), ".", ".."] {
        let r = put(&mut c, name, vec![batch(&[103], DIM)]).await;
        assert_eq!(code(r), Code::InvalidArgument, "name {name:?}");
    }
    let b = batch(&[104], DIM);
    let md: std::collections::HashMap<String, String> =
        [("quiver.metric".to_string(), "cosine".to_string())].into_iter().collect();
    let cos = RecordBatch::try_new(
        Arc::new(b.schema().as_ref().clone().with_metadata(md)),
        b.columns().to_vec(),
    )
    .unwrap();
    let m = message(put(&mut c, "docs", vec![cos]).await);
    assert!(m.contains("cosine") && m.contains("euclidean"), "{m}");
    let r = get(&mut c, "docs").await.unwrap();
    assert_eq!(r.iter().map(RecordBatch::num_rows).sum::<usize>(), 10, "a refused put wrote rows");
    let names: Vec<String> = server.db.list_collections().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["docs"]);
    assert!(!server.dir.path().join("escape").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured_and_accepted_in_each_header() {
    let cfg = ServerConfig { auth_token: Some("s3cret".into()), ..ServerConfig::default() };
    let server = TestServer::start(cfg).await;
    let mut anon = server.client().await;
    assert_eq!(code(action(&mut anon, "list_collections", "").await), Code::Unauthenticated);
    assert_eq!(code(put(&mut anon, "a", vec![batch(&[1], DIM)]).await), Code::Unauthenticated);
    let mut wrong = server.client().await;
    wrong.add_header("authorization", "Bearer nope").unwrap();
    assert_eq!(code(get(&mut wrong, "a").await), Code::Unauthenticated);
    let mut bearer = server.client().await;
    bearer.add_header("authorization", "Bearer s3cret").unwrap();
    put(&mut bearer, "a", vec![batch(&[1], DIM)]).await.unwrap();
    let mut key = server.client().await;
    key.add_header("x-api-key", "s3cret").unwrap();
    assert_eq!(get(&mut key, "a").await.unwrap()[0].num_rows(), 1);
    // pyarrow's authenticate_basic_token: a Handshake with basic auth whose password is the token.
    let mut basic = server.client().await;
    basic.add_header("authorization", "Basic dXNlcjpzM2NyZXQ=").unwrap(); // user:s3cret
    assert_eq!(basic.handshake("hello").await.unwrap(), "hello");
    let mut bad_basic = server.client().await;
    bad_basic.add_header("authorization", "Basic dXNlcjpub3Bl").unwrap(); // user:nope
    assert_eq!(code(bad_basic.handshake("hello").await), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_create_delete_flush_stats_multi_search_and_drop() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    let body = json!({"name": "made", "dim": DIM, "metric": "euclidean", "id_type": "uint64",
        "attributes": [{"name": "tag", "type": "utf8"}, {"name": "n", "type": "int64"}]});
    action(&mut c, "create_collection", &body.to_string()).await.unwrap();
    assert_eq!(
        code(action(&mut c, "create_collection", &body.to_string()).await),
        Code::AlreadyExists
    );
    put(&mut c, "made", vec![batch(&ids(0..50), DIM)]).await.unwrap();

    // Longbow's single-id delete (the id as a string) and Quiver's list form.
    action(&mut c, "delete", &json!({"dataset": "made", "id": "7"}).to_string()).await.unwrap();
    let r = action(&mut c, "delete", &json!({"dataset": "made", "ids": [8, 9]}).to_string())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r[0]).unwrap();
    assert_eq!(v["ids"], 2);
    action(&mut c, "ForceSnapshot", "").await.unwrap();
    let r = action(&mut c, "stats", "{\"name\": \"made\"}").await.unwrap();
    let st: Value = serde_json::from_slice(&r[0]).unwrap();
    assert_eq!(st["rows"], 47);
    assert_eq!(st["dim"], DIM);
    assert_eq!(st["segments"], 1);
    let r = action(&mut c, "list_collections", "").await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&r[0]).unwrap()["collections"], json!(["made"]));

    // VectorSearch: one IPC stream per query; deleted ids never come back.
    let qs: Vec<Vec<f32>> = [7u64, 20, 33].iter().map(|&i| vector_of(i, DIM)).collect();
    let r = action(
        &mut c,
        "VectorSearch",
        &json!({"dataset": "made", "vectors": qs, "k": 3}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.len(), 3);
    let live: Vec<u64> = (0..50).filter(|i| ![7, 8, 9].contains(i)).collect();
    for (q, body) in qs.iter().zip(&r) {
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None)
                .unwrap();
        let bs: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(all_u64s(&bs, "id"), brute_force(&live, DIM, q, 3));
    }
    let r = action(&mut c, "check_readiness", "{\"dataset\": \"made\"}").await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&r[0]).unwrap()["status"], "READY");
    let r = action(&mut c, "check_readiness", "{\"dataset\": \"gone\"}").await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&r[0]).unwrap()["status"], "NOT_FOUND");

    let types: Vec<String> =
        c.list_actions().await.unwrap().map_ok(|a| a.r#type).try_collect().await.unwrap();
    for t in [
        "create_collection",
        "delete",
        "delete-dataset",
        "check_readiness",
        "VectorSearch",
        "ForceSnapshot",
    ] {
        assert!(types.iter().any(|x| x == t), "ListActions lacks {t}");
    }
    action(&mut c, "delete-dataset", "{\"name\": \"made\"}").await.unwrap();
    assert_eq!(code(get(&mut c, "made").await), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_flights_info_and_schema_describe_each_collection() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    put(&mut c, "a", vec![batch(&ids(0..30), DIM)]).await.unwrap();
    put(&mut c, "b", vec![batch(&ids(0..5), DIM)]).await.unwrap();
    let infos: Vec<_> = c.list_flights("").await.unwrap().try_collect().await.unwrap();
    let mut seen: Vec<(String, i64)> = infos
        .iter()
        .map(|i| (i.flight_descriptor.as_ref().unwrap().path[0].clone(), i.total_records))
        .collect();
    seen.sort();
    assert_eq!(seen, [("a".to_string(), 30), ("b".to_string(), 5)]);
    let d = FlightDescriptor::new_path(vec!["a".into()]);
    let info = c.get_flight_info(d.clone()).await.unwrap();
    let schema = c.get_schema(d).await.unwrap();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "vector", "tag", "n"]);
    assert_eq!(info.clone().try_decode_schema().unwrap(), schema);
    // The endpoint's ticket scans the collection.
    let t = info.endpoint[0].ticket.clone().unwrap();
    let r: Vec<RecordBatch> = c.do_get(t).await.unwrap().try_collect().await.unwrap();
    assert_eq!(r.iter().map(RecordBatch::num_rows).sum::<usize>(), 30);
    server.stop().await;
}

/// Batch `k` of the pipelining test: ids 0..40 (the same every time) with `n` = k.
fn generation(k: i64) -> RecordBatch {
    let b = batch(&ids(0..40), DIM);
    let mut cols = b.columns().to_vec();
    cols[3] = Arc::new(arrow_array::Int64Array::from(vec![k; 40]));
    RecordBatch::try_new(b.schema(), cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_batches_ack_in_order_keep_upsert_order_and_stop_at_a_bad_one() {
    // The server keeps several batches of a stream in flight (submitted to the WAL, not yet
    // durable). That must not reorder them: every batch rewrites the same 40 ids, so the
    // survivor of each id says which batch was applied last. A bad batch in the middle must
    // come back as an error only after the acknowledgements of every batch before it, and
    // nothing after it may be applied.
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    let mut batches: Vec<RecordBatch> = (0..12).map(generation).collect();
    let bad = generation(12);
    let mut cols = bad.columns().to_vec();
    let nan = FixedSizeListArray::from_iter_primitive::<arrow_array::types::Float32Type, _, _>(
        (0..40).map(|i| Some(vec![Some(if i == 7 { f32::NAN } else { 0.5 }); DIM])),
        DIM as i32,
    );
    cols[1] = Arc::new(nan);
    batches.push(RecordBatch::try_new(bad.schema(), cols).unwrap());
    batches.extend((13..16).map(generation));
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["gen".into()])))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let out = drain(c.do_put(stream).await.unwrap()).await;
    let (acks, rest) = out.split_at(out.iter().position(Result::is_err).expect("an error"));
    assert_eq!(acks.len(), 12, "every batch before the bad one is acknowledged");
    let lsns: Vec<u64> = acks
        .iter()
        .map(|a| {
            let a = a.as_ref().unwrap();
            serde_json::from_slice::<Value>(&a.app_metadata).unwrap()["lsn"].as_u64().unwrap()
        })
        .collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "acks out of order: {lsns:?}");
    assert_eq!(rest.len(), 1, "the stream ends at the error");
    let err = rest[0].as_ref().unwrap_err();
    assert!(
        matches!(err, arrow_flight::error::FlightError::Tonic(s)
        if s.code() == Code::InvalidArgument && s.message().contains("NaN")),
        "{err:?}"
    );
    let t = json!({"get": {"dataset": "gen", "ids": ids(0..40), "columns": ["id", "n"]}});
    let r = get(&mut c, &t.to_string()).await.unwrap();
    let n: Vec<i64> = r
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("n").unwrap();
            a.as_any().downcast_ref::<arrow_array::Int64Array>().unwrap().values().to_vec()
        })
        .collect();
    assert_eq!(n, vec![11; 40], "the last good batch wins every id; none after the bad one");
    assert_eq!(server.db.stats("gen").unwrap().rows, 40);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_ingest_acks_each_batch_and_refuses_other_paths() {
    let server = TestServer::start(ServerConfig::default()).await;
    let c = server.client().await;
    let mut raw = c.into_inner();
    let stream = |path: Vec<String>, bs: Vec<RecordBatch>| {
        FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(path)))
            .build(futures::stream::iter(bs.into_iter().map(Ok)))
            .map(Result::unwrap)
    };
    let bs = vec![batch(&ids(0..10), DIM), batch(&ids(10..30), DIM)];
    let out = raw.do_exchange(stream(vec!["ingest".into(), "x".into()], bs)).await.unwrap();
    let acks: Vec<FlightData> = out.into_inner().try_collect().await.unwrap();
    let rows: Vec<u64> = acks
        .iter()
        .map(|a| {
            serde_json::from_slice::<Value>(&a.app_metadata).unwrap()["rows"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(rows, [10, 20]);
    assert_eq!(server.db.stats("x").unwrap().rows, 30);
    let r =
        raw.do_exchange(stream(vec!["upload".into(), "x".into()], vec![batch(&[1], DIM)])).await;
    let code = match r {
        Err(s) => s.code(),
        Ok(resp) => resp.into_inner().try_collect::<Vec<_>>().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float64_embedding_with_string_ids_and_cosine_metadata_is_stored_as_f32() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    let v = FixedSizeListArray::from_iter_primitive::<Float64Type, _, _>(
        vec![
            Some(vec![Some(1.0), Some(0.0), Some(0.0)]),
            Some(vec![Some(0.0), Some(1.0), Some(0.0)]),
            Some(vec![Some(1.0), Some(1.0), Some(0.0)]),
        ],
        3,
    );
    let md: std::collections::HashMap<String, String> =
        [("longbow.metric".to_string(), "cosine".to_string())].into_iter().collect();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("embedding", v.data_type().clone(), false),
    ])
    .with_metadata(md);
    let b = RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(vec!["x", "y", "xy"])), Arc::new(v)],
    )
    .unwrap();
    put(&mut c, "cos", vec![b]).await.unwrap();
    let st = action(&mut c, "stats", "cos").await.unwrap();
    let st: Value = serde_json::from_slice(&st[0]).unwrap();
    assert_eq!(
        (st["metric"].as_str(), st["element_type"].as_str(), st["id_type"].as_str()),
        (Some("cosine"), Some("float32"), Some("utf8"))
    );
    let t = json!({"search": {"dataset": "cos", "vector": [2.0, 2.1, 0.0], "k": 3, "include_vectors": true}});
    let r = get(&mut c, &t.to_string()).await.unwrap();
    let ids = r[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(ids.value(0), "xy");
    assert!(r[0].column_by_name("vector").is_some());
    let d = r[0].column_by_name("distance").unwrap();
    let d = d.as_any().downcast_ref::<Float32Array>().unwrap();
    assert!(d.value(0) < 0.01 && d.value(2) > 0.2, "{d:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_that_gives_up_is_resource_exhausted() {
    // Every put fills the in-memory table, so the next put must wait for a flush to free it
    // (memory backpressure, the one wait a put has; it never waits for an index build); with
    // no patience at all, it gives up at once.
    let opts = Options::default()
        .memtable_bytes(1)
        .min_index_rows(1)
        .max_unindexed_segments(1)
        .max_stall(Duration::ZERO);
    let server = TestServer::start_with(ServerConfig::default(), opts).await;
    let mut c = server.client().await;
    let mut last = None;
    for i in 0..8u64 {
        if let Err(e) = put(&mut c, "bp", vec![batch(&ids(i * 3000..i * 3000 + 3000), DIM)]).await {
            last = Some(e);
            break;
        }
    }
    let e = last.expect("backpressure never gave up");
    assert_eq!(code::<()>(Err(e)), Code::ResourceExhausted);
    server.stop().await;
}

/// The queries of a `VectorSearch` action are searched in chunks, and those of a DoExchange in
/// runs of equal `k` and list size, each as one batch spread over the engine's threads: every
/// answer must still be its own query's, in the order sent, across chunk and run boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_searches_answer_each_query_in_order_across_chunks_and_runs() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    put(&mut c, "b", vec![batch(&ids(0..300), DIM)]).await.unwrap();
    let all = ids(0..300);
    // Queries near distinct rows, not on them, so no two share an answer.
    let qs: Vec<Vec<f32>> =
        (0..37u64).map(|i| vector_of(i * 7 + 1, DIM).iter().map(|x| x + 0.01).collect()).collect();

    let r =
        action(&mut c, "VectorSearch", &json!({"dataset": "b", "vectors": qs, "k": 3}).to_string())
            .await
            .unwrap();
    assert_eq!(r.len(), qs.len(), "one result per query");
    for (i, (q, body)) in qs.iter().zip(&r).enumerate() {
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None)
                .unwrap();
        let bs: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(all_u64s(&bs, "id"), brute_force(&all, DIM, q, 3), "VectorSearch query {i}");
    }

    // DoExchange: k 3 for the first 20 rows, 5 for the next 10, 3 again for the rest.
    let k_of = |i: usize| if (20..30).contains(&i) { 5 } else { 3 };
    let flat: Vec<f32> = qs.iter().flatten().copied().collect();
    let field = Arc::new(Field::new("item", DataType::Float32, true));
    let qv = FixedSizeListArray::new(field, DIM as i32, Arc::new(Float32Array::from(flat)), None);
    let ks =
        arrow_array::Int32Array::from((0..qs.len()).map(|i| k_of(i) as i32).collect::<Vec<_>>());
    let schema = Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("query_vector", qv.data_type().clone(), false),
        Field::new("k", DataType::Int32, false),
    ]);
    let rows = RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(vec!["b"; qs.len()])), Arc::new(qv), Arc::new(ks)],
    )
    .unwrap();
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd("VectorSearch")))
        .build(futures::stream::iter([Ok(rows)]))
        .map(Result::unwrap);
    let mut raw = c.into_inner();
    let out = raw.do_exchange(stream).await.unwrap().into_inner();
    let data: Vec<FlightData> = out.try_collect().await.unwrap();
    let batches = arrow_flight::utils::flight_data_to_batches(&data).unwrap();
    let got = all_u64s(&batches, "id");
    let mut at = 0;
    for (i, q) in qs.iter().enumerate() {
        let k = k_of(i);
        assert_eq!(got[at..at + k], brute_force(&all, DIM, q, k)[..], "DoExchange query {i}");
        at += k;
    }
    assert_eq!(at, got.len(), "no extra rows");
    server.stop().await;
}

/// A collection created over Flight with a label column gets its label graphs, and a filter
/// to one label is answered by walking that label's graph with the right rows; a label column
/// that cannot have labels is refused at creation, naming the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_column_declared_at_creation_is_walked_by_a_filter_to_one_label() {
    let opts = Options::default().min_index_rows(100).label_graph_min_rows(200);
    let server = TestServer::start_with(ServerConfig::default(), opts).await;
    let mut c = server.client().await;
    let attributes = json!([{"name": "tag", "type": "utf8"}, {"name": "n", "type": "int64"},
        {"name": "w", "type": "float32"}]);
    let bad = json!({"name": "bad", "dim": DIM, "attributes": attributes, "label_graphs": ["w"]});
    let refused = action(&mut c, "create_collection", &bad.to_string()).await;
    let said = format!("{refused:?}");
    assert!(said.contains("label graph column") && said.contains("only integer"), "{said}");
    assert_eq!(code(refused), Code::InvalidArgument);

    let body = json!({"name": "lg", "dim": DIM, "label_graphs": ["tag"],
        "attributes": [{"name": "tag", "type": "utf8"}, {"name": "n", "type": "int64"}]});
    action(&mut c, "create_collection", &body.to_string()).await.unwrap();
    put(&mut c, "lg", vec![batch(&ids(0..1_500), DIM)]).await.unwrap();
    action(&mut c, "wait-for-indexing", &json!({"dataset": "lg"}).to_string()).await.unwrap();
    let tagged: Vec<u64> = (0..1_500).filter(|i| i % 3 == 1).collect();
    let (mut found, mut wanted) = (0, 0);
    for q in 0..10u64 {
        let query: Vec<f32> = vector_of(q * 31, DIM).iter().map(|x| x + 0.01).collect();
        let t = json!({"search": {"dataset": "lg", "vector": query, "k": 5,
            "filters": [{"field": "tag", "op": "=", "value": "t1"}]}});
        let got = all_u64s(&get(&mut c, &t.to_string()).await.unwrap(), "id");
        assert!(got.iter().all(|i| i % 3 == 1), "rows of another tag: {got:?}");
        let truth = brute_force(&tagged, DIM, &query, 5);
        found += got.iter().filter(|i| truth.contains(i)).count();
        wanted += truth.len();
    }
    assert!(found * 10 >= wanted * 9, "recall {found} of {wanted}");
    let r = action(&mut c, "stats", "{\"name\": \"lg\"}").await.unwrap();
    let st: Value = serde_json::from_slice(&r[0]).unwrap();
    assert_eq!(st["filtered_label_walks"], 10, "{st}");
    server.stop().await;
}
