//! Collections: create, drop, list, describe. Each create or drop is a manifest commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use quiver_diskgraph::cache::CacheStats;

use crate::batch::{Key, Vectors};
use crate::error::CollectionError;
use crate::names::validate_collection_name;
use crate::schema::{CollectionSchema, SchemaError};

use super::body::{CollectionMeta, delete_name};
use super::budget::fit_cache_to_budget;
use super::inner::lock;
use super::keys::key_heap_bytes;
use super::memtable::Memtable;
use super::model::{Collection, KeyMap};
use super::{DELETES_DIR, Database};

/// Counters of one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectionStats {
    /// Live rows.
    pub rows: u64,
    /// Live rows in the in-memory table.
    pub memtable_rows: u64,
    /// Sealed segments.
    pub segments: usize,
    /// Segments with a disk index.
    pub indexed_segments: usize,
    /// Rows in segments, live or deleted.
    pub segment_rows: u64,
    /// Rows of segments that are deleted or replaced (dropped at the next merge).
    pub deleted_segment_rows: u64,
    /// Bytes of segment files.
    pub segment_bytes: u64,
    /// Bytes of vectors held in RAM (in-memory table and unindexed segments).
    pub resident_vector_bytes: u64,
    /// Index searches that failed since the database was opened. Each was answered by an exact
    /// search of the segment's Parquet file; a damaged index is then dropped and rebuilt (the
    /// segment counts as unindexed until it is).
    pub index_failures: u64,
    /// Searches since the database was opened.
    pub searches: u64,
    /// Disk index walks those searches made: one per indexed segment searched, more when a
    /// filter widened a walk.
    pub index_walks: u64,
    /// 4 KiB sector reads those walks issued; `index_reads / searches` is the mean I/O count
    /// per query.
    pub index_reads: u64,
    /// Filtered searches of an indexed segment that walked its index with the rows failing
    /// the filter as waypoints (one per segment per search).
    pub filtered_walks: u64,
    /// Filtered searches of an indexed segment that walked the label graphs of the values the
    /// filter requires one of ([`CollectionSchema::with_label_graph`](crate::CollectionSchema::with_label_graph)):
    /// among those values' rows alone.
    pub filtered_label_walks: u64,
    /// Filtered searches of an indexed segment that ranked the rows that pass by their PQ
    /// codes and read the nearest `L` (a small share passed).
    pub filtered_ranked: u64,
    /// Filtered searches of an indexed segment that read every passing row from its file
    /// (a walk would have had to list most of the segment).
    pub filtered_scans: u64,
    /// Filtered searches of an indexed segment whose passing rows were the segment's
    /// remembered result for the same filter.
    pub filter_rows_remembered: u64,
    /// ... whose passing rows came from the segment's label index (a filter on one
    /// low-cardinality column, or an AND of such).
    pub filter_rows_labelled: u64,
    /// ... whose passing rows were found by reading the filter's columns over the segment.
    pub filter_rows_read: u64,
    /// Zones that reads of filter columns skipped, their column statistics (min, max, nulls)
    /// ruling out every row: data pages (at most 4,096 rows) for a filter on one column where
    /// the segment has a page index, else row groups. A filter on a column that follows the
    /// rows' order (a timestamp) reads only the zones that may hold a match.
    pub filter_zones_skipped: u64,
    /// RAM the collection's structures hold, by structure.
    pub resident: ResidentBytes,
}

/// RAM a collection's structures hold, in bytes, by structure: what grows with the collection.
/// Container capacities are counted, not lengths; allocator overhead is not. The database-wide
/// sector cache is reported apart ([`Database::sector_cache_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResidentBytes {
    /// The in-memory table: its Arrow batches, search vectors, keys and row places.
    pub memtable: u64,
    /// Search vectors of flushed segments still waiting for their disk index.
    pub unindexed_vectors: u64,
    /// The id → row map over every live row: `capacity × (slot + 1)`, a slot being an id and
    /// its 8-byte place (16 bytes for integer ids, 24 for string ids), plus the bytes of string
    /// ids.
    pub key_map: u64,
    /// Each segment's row → id array (deleted rows too: 8 bytes a row for integer ids, 16 for
    /// string ids), plus the bytes of string ids.
    pub segment_keys: u64,
    /// Row bitsets: the deleted rows, one bit per segment row, and the rows that passed the
    /// last filters each segment file remembers (at most 4 bits a row).
    pub deletion_sets: u64,
    /// Disk indexes' RAM: PQ codes (`pq_bytes` per row), pivots, start candidates' codes and
    /// the BFS node cache.
    pub indexes: u64,
}

impl ResidentBytes {
    /// The sum of every structure.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.memtable
            + self.unindexed_vectors
            + self.key_map
            + self.segment_keys
            + self.deletion_sets
            + self.indexes
    }
}

/// What collection `c`'s structures hold in RAM.
pub(super) fn resident_bytes(c: &Collection) -> ResidentBytes {
    let mem = &c.mem;
    let memtable = mem.batches.iter().map(crate::batch::held_bytes).sum::<usize>()
        + mem.vector_bytes()
        + mem.keys.capacity() * size_of::<Key>()
        + key_heap_bytes(&mem.keys)
        + mem.locs.capacity() * size_of::<(u32, u32)>()
        + mem.live.capacity();
    let unindexed: usize = c
        .segments
        .iter()
        .filter_map(|s| s.vectors.as_ref())
        .flat_map(|v| v.iter())
        .map(Vectors::bytes)
        .sum();
    let key_map = c.keys.resident_bytes();
    let segment_keys: usize = c.segments.iter().map(|s| s.keys.resident_bytes()).sum();
    let deletion_sets: usize =
        c.segments.iter().map(|s| s.deleted.bytes() + s.file.remembered_bytes()).sum();
    // A codebook shared by several indexes (`Collection::codebook`) is counted once.
    let mut codebooks = std::collections::HashSet::new();
    let indexes: usize = c
        .segments
        .iter()
        .filter_map(|s| s.index.as_ref())
        .map(|i| {
            let first = codebooks.insert(Arc::as_ptr(i.shared_pq()));
            i.ram_bytes() - if first { 0 } else { i.pq_ram_bytes() }
        })
        .sum::<usize>()
        + c.segments
            .iter()
            .filter_map(|s| s.label_graphs.as_ref())
            .map(|g| g.ram_bytes())
            .sum::<usize>();
    ResidentBytes {
        memtable: memtable as u64,
        unindexed_vectors: unindexed as u64,
        key_map: key_map as u64,
        segment_keys: segment_keys as u64,
        deletion_sets: deletion_sets as u64,
        indexes: indexes as u64,
    }
}

/// The database's memory against its budget ([`Database::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryUse {
    /// [`Options::memory_budget`](crate::Options::memory_budget), if set.
    pub budget: Option<u64>,
    /// Every collection's structures ([`ResidentBytes::total`]), summed.
    pub structures: u64,
    /// Bytes the sector cache holds.
    pub sector_cache: u64,
    /// The sector cache's capacity now.
    pub sector_cache_capacity: u64,
    /// Index builds since open that ran over the budget: no plan fitted what the budget left
    /// them (the growing structures had taken it), so they ran in memory rather than leave a
    /// segment unindexed. Non-zero means the budget is too small for the data.
    pub over_budget_builds: u64,
}

impl Database {
    /// What the database holds in RAM, by kind, and its budget. Collections are counted one
    /// after another, not at one instant.
    #[must_use]
    pub fn memory(&self) -> MemoryUse {
        let structures = {
            let st = self.inner.read();
            st.collections.values().map(|c| resident_bytes(c).total()).sum()
        };
        let cache = self.sector_cache_stats().unwrap_or_default();
        MemoryUse {
            budget: self.inner.opts.memory_budget.map(|b| b as u64),
            structures,
            sector_cache: cache.bytes as u64,
            sector_cache_capacity: cache.capacity as u64,
            over_budget_builds: self.inner.over_budget_builds.load(Ordering::Relaxed),
        }
    }

    /// Why the database refuses writes until it is reopened (an I/O failure whose outcome is
    /// unknown: a failed `fdatasync`, a manifest commit that may or may not have happened), or
    /// `None` while it is healthy. Reads go on; a restart recovers.
    #[must_use]
    pub fn poisoned(&self) -> Option<String> {
        self.inner.poisoned()
    }

    /// What the write-ahead log has done since open (groups, records, bytes, sync latencies)
    /// and the bytes queued for it now.
    #[must_use]
    pub fn wal_stats(&self) -> crate::WalStats {
        self.inner.wal.stats()
    }

    /// What the sector cache shared by the database's disk indexes holds and has done; `None`
    /// when it is off ([`Options::sector_cache_bytes`](crate::Options::sector_cache_bytes) 0).
    #[must_use]
    pub fn sector_cache_stats(&self) -> Option<CacheStats> {
        self.inner.opts.index_open.sector_cache.as_ref().map(|c| c.stats())
    }

    /// Reads every disk index's node sectors (then the label graphs') into the sector cache, verified, until each is
    /// in or the cache is full (as PostgreSQL's `pg_prewarm`): after a restart, searches
    /// answer from memory at once, and the filtered planner prices reads as cached ones
    /// ([`Options::node_read_cost`](crate::Options::node_read_cost)). Returns the node reads
    /// admitted; 0 without a cache. The indexes are taken under the state lock and read after
    /// it is released.
    ///
    /// # Errors
    /// [`crate::ReadError::Search`] if an index file cannot be read or fails its checksums.
    pub fn warm_sector_cache(&self) -> Result<usize, crate::ReadError> {
        use quiver_diskgraph::search::{DiskIndex, SearchError};
        type Of<T> = Vec<(u64, Arc<T>)>;
        // Every segment's own index first, then the label graphs.
        let (indexes, graphs): (Of<DiskIndex>, Of<super::label_graphs::LabelGraph>) = {
            let st = self.inner.read();
            let segments = || st.collections.values().flat_map(|c| c.segments.iter());
            let indexes = segments()
                .filter_map(|s| s.index.as_ref().map(|ix| (s.meta.id, Arc::clone(ix))))
                .collect();
            let graphs = segments()
                .filter_map(|s| s.label_graphs.as_ref().map(|g| (s.meta.id, g)))
                .flat_map(|(id, g)| g.graphs.iter().map(move |g| (id, Arc::clone(g))))
                .collect();
            (indexes, graphs)
        };
        let warm = |segment: u64, index: &DiskIndex| {
            index
                .warm_shared_cache()
                .map_err(|e| crate::ReadError::Search { segment, source: SearchError::Layout(e) })
        };
        let mut admitted = 0;
        for (segment, index) in &indexes {
            admitted += warm(*segment, index)?;
        }
        for (segment, graph) in &graphs {
            admitted += warm(*segment, &graph.index)?;
        }
        Ok(admitted)
    }

    /// Creates collection `name` with `schema`; durable when it returns.
    ///
    /// # Errors
    /// [`CollectionError`]: a bad name or schema, a name in use, or a failed commit.
    pub fn create_collection(
        &self,
        name: &str,
        schema: CollectionSchema,
    ) -> Result<(), CollectionError> {
        validate_collection_name(name)?;
        schema.validate()?;
        let inner = &self.inner;
        if let Some(p) = inner.poisoned() {
            return Err(CollectionError::Poisoned(p));
        }
        let mut store = lock(&inner.manifest);
        if inner.read().collections.contains_key(name) {
            return Err(CollectionError::AlreadyExists(name.to_string()));
        }
        let id = inner.alloc_id();
        let schema = Arc::new(schema);
        let id_type = schema.id_type();
        let arrow = schema.arrow_schema();
        let meta = CollectionMeta {
            id,
            name: name.to_string(),
            schema: (*schema).clone(),
            segments: Vec::new(),
        };
        inner.commit(&mut store, |b| b.collections.push(meta))?;
        inner.write().collections.insert(
            name.to_string(),
            Collection {
                id,
                name: name.to_string(),
                schema,
                arrow,
                mem: Memtable::default(),
                segments: Vec::new(),
                keys: KeyMap::for_ids(id_type),
                slots: Vec::new(),
                counters: Arc::default(),
                codebook: None,
            },
        );
        Ok(())
    }

    /// Adds attribute columns to collection `name` (additive schema evolution), durable when it
    /// returns. Each is added at the end, nullable whatever `fields` say: the rows written
    /// before read null in it. A field that exists with the same type is skipped; one with
    /// another type is refused, as is a name [`CollectionSchema::validate`] refuses. Returns
    /// how many columns were added.
    ///
    /// Segment files are not rewritten: a file holds the columns its collection had when it
    /// was written, and reads of the others return nulls (merges rewrite them in full).
    ///
    /// # Errors
    /// [`CollectionError`]: no such collection, a refused field, or a failed commit.
    pub fn add_attributes(
        &self,
        name: &str,
        fields: &[arrow_schema::Field],
    ) -> Result<usize, CollectionError> {
        let evolve = |old: &CollectionSchema| {
            let mut schema = old.clone();
            let mut added = 0;
            for f in fields {
                match old.attributes().iter().find(|a| a.name() == f.name()) {
                    Some(a) if a.data_type() == f.data_type() => {}
                    Some(a) => {
                        return Err(CollectionError::Schema(SchemaError::AttributeExists {
                            name: f.name().clone(),
                            existing: a.data_type().clone(),
                            asked: f.data_type().clone(),
                        }));
                    }
                    None => {
                        schema = schema.with_attribute(f.clone().with_nullable(true));
                        added += 1;
                    }
                }
            }
            Ok((schema, added))
        };
        self.evolve_schema(name, evolve, |st, schema| {
            let (grown, grown_frozen) = st
                .collections
                .get_mut(name)
                .expect("collections change only under the manifest lock")
                .add_columns(schema);
            st.mem_bytes += grown;
            st.frozen_bytes += grown_frozen;
        })
    }

    /// Declares attribute columns of collection `name` label columns
    /// ([`CollectionSchema::with_label_graph`]), durable when it returns: the background worker
    /// then gives every indexed segment its graphs for them. Columns already declared are
    /// skipped. Returns how many were added.
    ///
    /// # Errors
    /// [`CollectionError`]: no such collection, a column [`CollectionSchema::validate`] refuses
    /// (not an attribute, or of a type without labels), or a failed commit.
    pub fn add_label_graphs(&self, name: &str, columns: &[&str]) -> Result<usize, CollectionError> {
        let evolve = |old: &CollectionSchema| {
            let mut schema = old.clone();
            let mut added = 0;
            for column in columns {
                if !schema.label_graphs().iter().any(|c| c == column) {
                    schema = schema.with_label_graph(column);
                    added += 1;
                }
            }
            Ok((schema, added))
        };
        let added = self.evolve_schema(name, evolve, |st, schema| {
            let c = st.collections.get_mut(name);
            c.expect("collections change only under the manifest lock").schema = schema;
        })?;
        if added > 0 {
            self.inner.notify_work();
        }
        Ok(added)
    }

    /// Changes collection `name`'s schema, durable when it returns: `evolve` makes the new one
    /// from the current one and says how many things it added (0: nothing to do); it is
    /// validated and committed, then `install`ed in the state. The manifest lock is held from
    /// reading the current schema to installing the new one, so no other commit can write the
    /// old one back. Returns what `evolve` counted.
    fn evolve_schema(
        &self,
        name: &str,
        evolve: impl FnOnce(&CollectionSchema) -> Result<(CollectionSchema, usize), CollectionError>,
        install: impl FnOnce(&mut super::model::State, Arc<CollectionSchema>),
    ) -> Result<usize, CollectionError> {
        let inner = &self.inner;
        if let Some(p) = inner.poisoned() {
            return Err(CollectionError::Poisoned(p));
        }
        let mut store = lock(&inner.manifest);
        let (id, old) = {
            let st = inner.read();
            let c =
                st.collections.get(name).ok_or_else(|| CollectionError::NotFound(name.into()))?;
            (c.id, Arc::clone(&c.schema))
        };
        let (schema, added) = evolve(&old)?;
        if added == 0 {
            return Ok(0);
        }
        schema.validate()?;
        let schema = Arc::new(schema);
        inner.commit(&mut store, |b| {
            for c in b.collections.iter_mut().filter(|c| c.id == id) {
                c.schema = (*schema).clone();
            }
        })?;
        install(&mut inner.write(), schema);
        Ok(added)
    }

    /// Drops collection `name` and deletes its files; durable when it returns.
    ///
    /// # Errors
    /// [`CollectionError::NotFound`], or a failed commit.
    pub fn drop_collection(&self, name: &str) -> Result<(), CollectionError> {
        let inner = &self.inner;
        if let Some(p) = inner.poisoned() {
            return Err(CollectionError::Poisoned(p));
        }
        let mut store = lock(&inner.manifest);
        if !inner.read().collections.contains_key(name) {
            return Err(CollectionError::NotFound(name.to_string()));
        }
        inner.commit(&mut store, |b| b.collections.retain(|c| c.name != name))?;
        let c = {
            let mut st = inner.write();
            let c = st.collections.remove(name).expect("checked above");
            st.mem_bytes -= c.mem.bytes;
            st.frozen_bytes -= c.mem.frozen.bytes;
            c
        };
        drop(store);
        for s in &c.segments {
            inner.remove_segment_files(s.meta.id);
            if let Some(d) = s.meta.deletes {
                inner.remove_quietly(&inner.path(DELETES_DIR, &delete_name(d.file)));
            }
            inner.remove_index_dir(s.meta.id);
        }
        fit_cache_to_budget(inner);
        Ok(())
    }

    /// The collections and their schemas, by name.
    pub fn list_collections(&self) -> Vec<(String, CollectionSchema)> {
        self.inner
            .read()
            .collections
            .values()
            .map(|c| (c.name.clone(), (*c.schema).clone()))
            .collect()
    }

    /// The schema of collection `name`.
    ///
    /// # Errors
    /// [`CollectionError::NotFound`].
    pub fn schema(&self, name: &str) -> Result<CollectionSchema, CollectionError> {
        self.inner
            .read()
            .collections
            .get(name)
            .map(|c| (*c.schema).clone())
            .ok_or_else(|| CollectionError::NotFound(name.to_string()))
    }

    /// Counters of collection `name`.
    ///
    /// # Errors
    /// [`CollectionError::NotFound`].
    pub fn stats(&self, name: &str) -> Result<CollectionStats, CollectionError> {
        let st = self.inner.read();
        let c =
            st.collections.get(name).ok_or_else(|| CollectionError::NotFound(name.to_string()))?;
        let resident = resident_bytes(c);
        Ok(CollectionStats {
            rows: c.live_count(),
            memtable_rows: c.mem.live_count as u64,
            segments: c.segments.len(),
            indexed_segments: c.segments.iter().filter(|s| s.index.is_some()).count(),
            segment_rows: c.segments.iter().map(|s| s.meta.rows).sum(),
            deleted_segment_rows: c.segments.iter().map(|s| s.deleted_count).sum(),
            segment_bytes: c.segments.iter().map(|s| s.meta.bytes).sum(),
            resident_vector_bytes: c.mem.vector_bytes() as u64 + resident.unindexed_vectors,
            index_failures: c.counters.index_failures.load(Ordering::Relaxed),
            searches: c.counters.searches.load(Ordering::Relaxed),
            index_walks: c.counters.index_walks.load(Ordering::Relaxed),
            filtered_walks: c.counters.filtered_walks.load(Ordering::Relaxed),
            filtered_label_walks: c.counters.filtered_label_walks.load(Ordering::Relaxed),
            filtered_ranked: c.counters.filtered_ranked.load(Ordering::Relaxed),
            filtered_scans: c.counters.filtered_scans.load(Ordering::Relaxed),
            filter_rows_remembered: c.counters.filter_rows_remembered.load(Ordering::Relaxed),
            filter_rows_labelled: c.counters.filter_rows_labelled.load(Ordering::Relaxed),
            filter_rows_read: c.counters.filter_rows_read.load(Ordering::Relaxed),
            filter_zones_skipped: c.counters.filter_zones_skipped.load(Ordering::Relaxed),
            index_reads: c.counters.index_reads.load(Ordering::Relaxed),
            resident,
        })
    }
}
