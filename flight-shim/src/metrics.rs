//! Prometheus metrics of `quiver serve`, served on their own HTTP listener (`GET /metrics`,
//! OpenMetrics text) when `--metrics-listen` is given; off otherwise, and then nothing on the
//! request paths counts anything.
//!
//! Two kinds:
//! - **Read at scrape time** from the engine (`EngineCollector`): rows, segments, resident
//!   bytes by structure, searches and index sector reads, filtered-search plans and where
//!   they found their passing rows, the sector
//!   cache, the WAL (groups, records, bytes, queued bytes, `fdatasync` latency), background work,
//!   the memory budget and the process's resident memory. They cost the request paths nothing:
//!   the engine keeps these counters anyway.
//! - **Counted on the request paths** ([`Metrics`]): rows and bytes acknowledged per collection,
//!   the latency of a put's acknowledgement, search latency per collection, errors by method and
//!   gRPC code.
//!
//! Cardinality is bounded: the first [`MAX_LABELLED_COLLECTIONS`] collections (in the order
//! they are first seen) get their own `collection` label, the rest share `_other`; no label
//! carries an id, a query or a user string other than a collection name.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use quiver_engine::{Database, WAL_SYNC_BUCKETS};
use tokio::net::TcpListener;

/// Collections that get a `collection` label of their own; the rest are counted as `_other`.
pub const MAX_LABELLED_COLLECTIONS: usize = 64;
/// The `collection` label of the collections past [`MAX_LABELLED_COLLECTIONS`].
pub const OTHER_COLLECTIONS: &str = "_other";
/// The content type of the exposition (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Which collections have labels of their own: the first [`MAX_LABELLED_COLLECTIONS`] seen.
#[derive(Debug, Default)]
struct CollectionLabels {
    named: Mutex<HashSet<String>>,
}

impl CollectionLabels {
    fn label(&self, collection: &str) -> String {
        let mut named = self.named.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if named.contains(collection) {
            return collection.to_string();
        }
        if named.len() < MAX_LABELLED_COLLECTIONS {
            named.insert(collection.to_string());
            return collection.to_string();
        }
        OTHER_COLLECTIONS.to_string()
    }
}

/// The metrics registry and the request-path metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The database, for the health endpoints (weak: never keeps it open).
    db: std::sync::Weak<Database>,
    labels: Arc<CollectionLabels>,
    ingest_rows: Family<Labels, Counter>,
    ingest_bytes: Family<Labels, Counter>,
    put_ack: Histogram,
    search: Family<Labels, Histogram>,
    errors: Family<Labels, Counter>,
}

/// Latency buckets: 50 µs to about 27 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 20)
}

impl Metrics {
    /// The registry for `db`: the request-path metrics and the engine's, read at each scrape.
    pub fn new(db: &Arc<Database>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let labels = Arc::new(CollectionLabels::default());
        let ingest_rows = Family::<Labels, Counter>::default();
        registry.register(
            "quiver_ingest_rows",
            "Rows acknowledged durable by DoPut and DoExchange ingest",
            ingest_rows.clone(),
        );
        let ingest_bytes = Family::<Labels, Counter>::default();
        registry.register_with_unit(
            "quiver_ingest",
            "Arrow bytes of the acknowledged batches",
            Unit::Bytes,
            ingest_bytes.clone(),
        );
        let put_ack = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "quiver_put_ack",
            "Time from a batch's arrival to its acknowledgement (WAL group commit included)",
            Unit::Seconds,
            put_ack.clone(),
        );
        let search =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register_with_unit(
            "quiver_search",
            "Search latency in the server (validation, engine search, result shaping)",
            Unit::Seconds,
            search.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "quiver_errors",
            "Calls that ended in an error, by method and gRPC code",
            errors.clone(),
        );
        registry.register_collector(Box::new(EngineCollector {
            db: Arc::downgrade(db),
            labels: Arc::clone(&labels),
            pending_since: Mutex::new(None),
        }));
        let db = Arc::downgrade(db);
        Arc::new(Metrics {
            registry,
            db,
            labels,
            ingest_rows,
            ingest_bytes,
            put_ack,
            search,
            errors,
        })
    }

    fn collection(&self, name: &str) -> Labels {
        vec![("collection", self.labels.label(name))]
    }

    /// A batch of `rows` rows, `bytes` Arrow bytes, arrived at `arrived` and is acknowledged.
    pub fn acknowledged(&self, collection: &str, rows: usize, bytes: usize, arrived: Instant) {
        let labels = self.collection(collection);
        self.ingest_rows.get_or_create(&labels).inc_by(rows as u64);
        self.ingest_bytes.get_or_create(&labels).inc_by(bytes as u64);
        self.put_ack.observe(arrived.elapsed().as_secs_f64());
    }

    /// A search of `collection` took `took`.
    pub fn searched(&self, collection: &str, took: Duration) {
        self.search.get_or_create(&self.collection(collection)).observe(took.as_secs_f64());
    }

    /// A call of `method` ended with gRPC code `code`.
    pub fn failed(&self, method: &'static str, code: tonic::Code) {
        let labels = vec![("method", method.to_string()), ("code", format!("{code:?}"))];
        self.errors.get_or_create(&labels).inc();
    }

    /// The exposition: every metric in OpenMetrics text.
    ///
    /// # Errors
    /// Formatting failed (a bug).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Serves, on `listener`, until the task is dropped:
/// - `GET /metrics`: the exposition;
/// - `GET /live`: 200 while the database is healthy, 503 once an I/O failure poisoned it (it
///   refuses writes until restarted: a liveness probe restarts it, and recovery runs);
/// - `GET /ready`: 200 while the database is healthy and open, 503 otherwise. Rows waiting to be
///   indexed do not make it unready: they are served exactly meanwhile (the Flight action
///   `check_readiness` reports indexing progress).
///
/// # Errors
/// The listener failed.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    let health = {
        let db = metrics.db.clone();
        move || {
            let db = db.clone();
            async move {
                match db.upgrade() {
                    None => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string()),
                    Some(db) => match db.poisoned() {
                        Some(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("poisoned, restart to recover: {why}\n"),
                        ),
                        None => (StatusCode::OK, "ok\n".to_string()),
                    },
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/live", axum::routing::get(health.clone()))
        .route("/ready", axum::routing::get(health))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    match metrics.encode() {
                        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "encoding the metrics failed".to_string(),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

/// The engine's own counters and sizes, read at each scrape.
#[derive(Debug)]
struct EngineCollector {
    /// Weak: the metrics must not keep the database open past the server's shutdown.
    db: std::sync::Weak<Database>,
    labels: Arc<CollectionLabels>,
    /// Since when background work has been pending, as scrapes saw it.
    pending_since: Mutex<Option<Instant>>,
}

/// One metric family being written: its name, help, unit and type, and its series.
struct Series {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    points: Vec<(Labels, f64)>,
}

impl Series {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, kind: MetricType) -> Self {
        Series { name, help, unit, kind, points: Vec::new() }
    }

    /// Adds `value` to the series labelled `labels` (series of collections past the label cap
    /// share one, so values add up).
    fn add(&mut self, labels: Labels, value: f64) {
        match self.points.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, v)) => *v += value,
            None => self.points.push((labels, value)),
        }
    }

    fn encode(self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if self.points.is_empty() {
            return Ok(());
        }
        let mut family =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), self.kind)?;
        if let [(labels, value)] = &self.points[..]
            && labels.is_empty()
        {
            return encode_value(self.kind, *value, family);
        }
        for (labels, value) in &self.points {
            encode_value(self.kind, *value, family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// A family of one unlabelled series holding `value`.
fn single(
    mut series: Series,
    value: f64,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    series.add(Vec::new(), value);
    series.encode(encoder)
}

/// One value of a counter or gauge.
fn encode_value(
    kind: MetricType,
    value: f64,
    series: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(series),
        _ => ConstGauge::new(value).encode(series),
    }
}

fn counter(name: &'static str, help: &'static str, unit: Option<Unit>) -> Series {
    Series::new(name, help, unit, MetricType::Counter)
}

fn gauge(name: &'static str, help: &'static str, unit: Option<Unit>) -> Series {
    Series::new(name, help, unit, MetricType::Gauge)
}

/// A line of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`), if the kernel has it.
fn proc_status_bytes(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(db) = self.db.upgrade() else { return Ok(()) }; // shutting down
        self.encode_collections(&db, &mut encoder)?;
        self.encode_database(&db, &mut encoder)?;
        encode_wal(&db, &mut encoder)
    }
}

impl EngineCollector {
    fn encode_collections(
        &self,
        db: &Database,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let mut rows = gauge("quiver_collection_rows", "Live rows", None);
        let mut memtable = gauge("quiver_memtable_rows", "Live rows in the in-memory table", None);
        let mut segments = gauge("quiver_segments", "Sealed segments", None);
        let mut indexed = gauge("quiver_indexed_segments", "Segments with a disk index", None);
        let mut segment_bytes =
            gauge("quiver_segment", "Bytes of the segment files", Some(Unit::Bytes));
        let mut searches = counter("quiver_searches", "Searches since the server started", None);
        let mut walks = counter("quiver_index_walks", "Walks of a disk index", None);
        let mut reads = counter(
            "quiver_index_sector_reads",
            "Sector reads of index walks (per query: rate of this over rate of searches)",
            None,
        );
        let mut filtered = counter(
            "quiver_filtered_searches",
            "Filtered searches of an indexed segment, by plan (walk, ranked, scan)",
            None,
        );
        let mut filter_rows = counter(
            "quiver_filter_rows",
            "How filtered searches of an indexed segment found its passing rows, by source \
             (remembered, label_index, columns_read)",
            None,
        );
        let mut zones_skipped = counter(
            "quiver_filter_row_groups_skipped",
            "Zones (data pages, else row groups) that reads of filter columns skipped, their statistics ruling out every row",
            None,
        );
        let mut failures =
            counter("quiver_index_failures", "Index searches that failed and fell back", None);
        let mut resident = gauge(
            "quiver_resident",
            "Resident bytes of the per-row structures, by structure",
            Some(Unit::Bytes),
        );
        let mut names: Vec<String> =
            db.list_collections().into_iter().map(|(name, _)| name).collect();
        names.sort();
        for name in names {
            let Ok(st) = db.stats(&name) else { continue }; // dropped meanwhile
            let label = self.labels.label(&name);
            let l = || vec![("collection", label.clone())];
            rows.add(l(), st.rows as f64);
            memtable.add(l(), st.memtable_rows as f64);
            segments.add(l(), st.segments as f64);
            indexed.add(l(), st.indexed_segments as f64);
            segment_bytes.add(l(), st.segment_bytes as f64);
            searches.add(l(), st.searches as f64);
            walks.add(l(), st.index_walks as f64);
            reads.add(l(), st.index_reads as f64);
            failures.add(l(), st.index_failures as f64);
            for (plan, n) in [
                ("walk", st.filtered_walks),
                ("label_walk", st.filtered_label_walks),
                ("ranked", st.filtered_ranked),
                ("scan", st.filtered_scans),
            ] {
                filtered.add(vec![("collection", label.clone()), ("plan", plan.into())], n as f64);
            }
            for (source, n) in [
                ("remembered", st.filter_rows_remembered),
                ("label_index", st.filter_rows_labelled),
                ("columns_read", st.filter_rows_read),
            ] {
                let labels = vec![("collection", label.clone()), ("source", source.into())];
                filter_rows.add(labels, n as f64);
            }
            zones_skipped.add(l(), st.filter_zones_skipped as f64);
            let r = &st.resident;
            for (structure, bytes) in [
                ("memtable", r.memtable),
                ("unindexed_vectors", r.unindexed_vectors),
                ("key_map", r.key_map),
                ("segment_keys", r.segment_keys),
                ("deletion_sets", r.deletion_sets),
                ("indexes", r.indexes),
            ] {
                let labels = vec![("collection", label.clone()), ("structure", structure.into())];
                resident.add(labels, bytes as f64);
            }
        }
        for s in [
            rows,
            memtable,
            segments,
            indexed,
            segment_bytes,
            searches,
            walks,
            reads,
            filtered,
            filter_rows,
            zones_skipped,
            failures,
            resident,
        ] {
            s.encode(encoder)?;
        }
        Ok(())
    }

    fn encode_database(
        &self,
        db: &Database,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        if let Some(c) = db.sector_cache_stats() {
            let help = "Sector cache lookups that found the sector";
            single(counter("quiver_sector_cache_hits", help, None), c.hits as f64, encoder)?;
            let help = "Sector cache lookups that missed";
            single(counter("quiver_sector_cache_misses", help, None), c.misses as f64, encoder)?;
            let help = "Sectors evicted from the cache";
            single(
                counter("quiver_sector_cache_evictions", help, None),
                c.evictions as f64,
                encoder,
            )?;
            let help = "Bytes of sectors cached";
            single(gauge("quiver_sector_cache", help, Some(Unit::Bytes)), c.bytes as f64, encoder)?;
            let help = "The sector cache's capacity";
            let s = gauge("quiver_sector_cache_capacity", help, Some(Unit::Bytes));
            single(s, c.capacity as f64, encoder)?;
        }
        let memory = db.memory();
        if let Some(budget) = memory.budget {
            let help = "The engine's memory budget (--memory-budget)";
            single(gauge("quiver_memory_budget", help, Some(Unit::Bytes)), budget as f64, encoder)?;
        }
        let help = "Bytes the engine's bounded structures hold (not the sector cache)";
        let s = gauge("quiver_engine_structures", help, Some(Unit::Bytes));
        single(s, memory.structures as f64, encoder)?;
        let help = "Index builds that ran over the memory budget";
        let s = counter("quiver_over_budget_builds", help, None);
        single(s, memory.over_budget_builds as f64, encoder)?;
        if let Some(rss) = proc_status_bytes("VmRSS:") {
            let help = "The server process's resident memory (VmRSS)";
            single(gauge("quiver_process_resident_memory", help, Some(Unit::Bytes)), rss, encoder)?;
        }
        let background = db.background_stats();
        let help = "Merges committed by the background worker";
        single(counter("quiver_merges", help, None), background.merges as f64, encoder)?;
        let help = "Half-second periods the index builds ran in the normal scheduling class \
                    because the idle class got them less than a quarter of a core";
        let raises = background.paced_raises as f64;
        single(counter("quiver_background_paced_raises", help, None), raises, encoder)?;
        let pending = db.indexing_pending();
        let age = {
            let mut since =
                self.pending_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match (pending, *since) {
                (false, _) => {
                    *since = None;
                    0.0
                }
                (true, None) => {
                    *since = Some(Instant::now());
                    0.0
                }
                (true, Some(at)) => at.elapsed().as_secs_f64(),
            }
        };
        let help = "1 while rows wait in memory or segments await an index or a merge";
        single(
            gauge("quiver_background_pending", help, None),
            f64::from(u8::from(pending)),
            encoder,
        )?;
        let help = "How long background work has been pending without a break, as scrapes saw it";
        let s = gauge("quiver_background_pending_age", help, Some(Unit::Seconds));
        single(s, age, encoder)?;
        let help = "1 while the background worker's last unit of work failed (it retries)";
        let failing = f64::from(u8::from(db.background_error().is_some()));
        single(gauge("quiver_background_failing", help, None), failing, encoder)
    }
}

/// The WAL's counters and its sync-latency histogram.
fn encode_wal(db: &Database, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    {
        let w = db.wal_stats();
        let help = "WAL groups written (each one write and one fdatasync)";
        single(counter("quiver_wal_groups", help, None), w.groups as f64, encoder)?;
        let help = "WAL records written (group size: rate of this over rate of groups)";
        single(counter("quiver_wal_records", help, None), w.records as f64, encoder)?;
        let help = "WAL payload bytes written, before compression";
        single(counter("quiver_wal_payload", help, Some(Unit::Bytes)), w.bytes as f64, encoder)?;
        let help = "Bytes queued for the WAL's flusher";
        single(
            gauge("quiver_wal_queued", help, Some(Unit::Bytes)),
            w.queued_bytes as f64,
            encoder,
        )?;
        let buckets: Vec<(f64, u64)> = WAL_SYNC_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(w.sync_buckets.iter().copied())
            .collect();
        let help = "Time each WAL fdatasync took";
        let mut family = encoder.encode_descriptor(
            "quiver_wal_sync",
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        family.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            w.sync_seconds,
            w.syncs,
            &buckets,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_past_the_cap_share_one_label_so_cardinality_stays_bounded() {
        let labels = CollectionLabels::default();
        for i in 0..MAX_LABELLED_COLLECTIONS {
            assert_eq!(labels.label(&format!("c{i}")), format!("c{i}"));
        }
        assert_eq!(labels.label("late"), OTHER_COLLECTIONS);
        assert_eq!(labels.label("later"), OTHER_COLLECTIONS);
        assert_eq!(labels.label("c3"), "c3", "a labelled collection keeps its label");
    }
}
