//! The in-memory model of the database: collections, their sealed segments, and the ids that
//! say where every live row is (each segment's ids in id order, and a map of the in-memory
//! table's). Guarded by `Inner::state`; changed only by applying writes
//! and by installs (flush, merge, index), each under the write lock and without I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow_schema::SchemaRef;

use quiver_wal::Lsn;

use crate::batch::{Key, Prepared, Vectors};
use crate::error::ReadError;
use crate::rowset::RowSet;
use crate::schema::CollectionSchema;
use crate::segment::SegmentFile;
use quiver_diskgraph::pq::PqCodebook;
use quiver_diskgraph::search::DiskIndex;

use super::body::{BODY_FORMAT, Body, CollectionMeta, SegmentMeta};
pub(super) use super::keys::{KeyMap, SegmentKeys};
use super::memtable::Memtable;

/// Where a live row is, in the eight bytes a key map slot holds beside an integer id: the
/// high half is the segment's slot in its collection ([`Collection::slots`]), or
/// [`Loc::MEM_SLOT`] for the in-memory table; the low half is the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Loc(u64);

/// A [`Loc`] unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// Row of the in-memory table.
    Mem(u32),
    /// Row `row` of the segment in slot `slot`.
    Seg { slot: u32, row: u32 },
}

impl Loc {
    /// The slot value that means the in-memory table.
    const MEM_SLOT: u32 = u32::MAX;

    /// Row `row` of the in-memory table.
    pub(super) fn mem(row: u32) -> Loc {
        Loc((u64::from(Self::MEM_SLOT) << 32) | u64::from(row))
    }

    /// Row `row` of the segment in slot `slot`.
    pub(super) fn seg(slot: u32, row: u32) -> Loc {
        assert_ne!(slot, Self::MEM_SLOT, "slot {slot} is the in-memory table's");
        Loc((u64::from(slot) << 32) | u64::from(row))
    }

    pub(super) fn place(self) -> Place {
        let (slot, row) = ((self.0 >> 32) as u32, self.0 as u32);
        if slot == Self::MEM_SLOT { Place::Mem(row) } else { Place::Seg { slot, row } }
    }
}

/// A slot no segment holds.
const FREE_SLOT: u64 = u64::MAX;

/// A sealed segment.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) meta: SegmentMeta,
    pub(super) file: SegmentFile,
    /// The key of every row (deleted ones too); shared so merges take them without a copy.
    pub(super) keys: SegmentKeys,
    /// Copy on write: reads keep the bitmap they started with (an `Arc` clone) while a delete
    /// changes a copy.
    pub(super) deleted: Arc<RowSet>,
    pub(super) deleted_count: u64,
    /// Deletions not yet in a deletion file (they are in the WAL).
    pub(super) dirty: bool,
    /// Search vectors, held until the segment has a disk index: chunks, one after another
    /// (those of flushed batches share the batches' buffers).
    pub(super) vectors: Option<Arc<[Vectors]>>,
    pub(super) index: Option<Arc<DiskIndex>>,
    /// Its label graphs (`label_graphs.rs`), once the background worker has made them for its
    /// index; `None` before, and again when the index changes.
    pub(super) label_graphs: Option<Arc<super::label_graphs::LabelGraphs>>,
    /// Its slot in its collection ([`Collection::slots`]), given when it is installed.
    pub(super) slot: u32,
}

impl Segment {
    pub(super) fn kill(&mut self, row: u32) {
        let r = row as usize;
        let fresh = Arc::make_mut(&mut self.deleted).insert(r);
        assert!(fresh, "segment {} row {row} deleted twice", self.meta.id);
        self.deleted_count += 1;
        self.dirty = true;
    }

    pub(super) fn live_rows(&self) -> Vec<u32> {
        (0..self.keys.len() as u32).filter(|&r| !self.deleted.contains(r as usize)).collect()
    }

    pub(super) fn deleted_rows(&self) -> Vec<u32> {
        (0..self.keys.len() as u32).filter(|&r| self.deleted.contains(r as usize)).collect()
    }
}

#[derive(Debug)]
pub(super) struct Collection {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) schema: Arc<CollectionSchema>,
    pub(super) arrow: SchemaRef,
    pub(super) mem: Memtable,
    /// Ascending id (older first).
    pub(super) segments: Vec<Segment>,
    /// The in-memory table's live rows by id; a segment's are found in its
    /// [`SegmentKeys`].
    pub(super) keys: KeyMap,
    /// The segment id in each slot ([`FREE_SLOT`] when free): [`Loc`]s name a segment by its
    /// slot, 32 bits, where its id takes 64. Slots are reused once free, which is safe because
    /// no key points into a segment once it is removed (its live rows were repointed first).
    pub(super) slots: Vec<u64>,
    /// What reads of this collection did since open.
    pub(super) counters: Arc<ReadCounters>,
    /// The PQ codebook the collection's new indexes are built with and share in RAM, and the
    /// rows of the index that trained it ([`Collection::adopt_codebook`]). `None` until an index
    /// of [`MIN_SHARED_CODEBOOK_ROWS`] rows: each index trains and holds its own.
    pub(super) codebook: Option<(Arc<PqCodebook>, u64)>,
}

/// An index of fewer rows keeps its codebook to itself: k-means of 256 centroids a subspace
/// needs at least as many rows.
pub(super) const MIN_SHARED_CODEBOOK_ROWS: u64 = 256;

/// A build of this many times the rows the shared codebook was trained on trains its own (a
/// larger sample), and its codebook becomes the collection's: a collection whose first index
/// was small does not keep that index's codebook for good. Indexes built with an older one
/// keep it, shared among them.
pub(super) const CODEBOOK_RETRAIN_FACTOR: u64 = 4;

/// A codebook trained on at least this many rows is kept however large an index grown with it
/// becomes: PQ training samples at most this many (`PqParams::default().max_samples`).
pub(super) const CODEBOOK_ENOUGH_ROWS: u64 = 100_000;

/// What a growth does with its base's PQ codebook ([`Collection::growth_codebook`]).
#[derive(Clone, Debug)]
pub(super) enum GrowCodebook {
    /// Keeps it (and shares the base's codes).
    Keep,
    /// Re-encodes every code with the collection's codebook.
    Use(Arc<PqCodebook>),
    /// Trains a new one on a sample of the grown index's rows.
    Train,
}

/// Counters of a collection's reads since the database opened: statistics only (relaxed
/// atomics, read together without a common instant).
#[derive(Debug, Default)]
pub(super) struct ReadCounters {
    /// Index searches that failed (each fell back to an exact search of its segment's Parquet
    /// file, and the index was queued for a rebuild if damaged).
    pub(super) index_failures: AtomicU64,
    /// Searches (`Database::search` calls that passed validation).
    pub(super) searches: AtomicU64,
    /// Walks of a disk index (one per indexed segment per search, more when a filter widened).
    pub(super) index_walks: AtomicU64,
    /// Sector reads those walks issued.
    pub(super) index_reads: AtomicU64,
    /// Filtered searches of an indexed segment that walked its index, rows failing the
    /// filter as waypoints.
    pub(super) filtered_walks: AtomicU64,
    pub(super) filtered_label_walks: AtomicU64,
    /// Filtered searches of an indexed segment that ranked the rows that pass by PQ and read
    /// the nearest (a small share passed).
    pub(super) filtered_ranked: AtomicU64,
    /// Filtered searches of an indexed segment whose widened walk would have listed most of
    /// it: every passing row's vector read from the segment's file.
    pub(super) filtered_scans: AtomicU64,
    /// How filtered searches of an indexed segment found its passing rows: the segment's
    /// remembered result, its label index, or a read of the filter's columns.
    pub(super) filter_rows_remembered: AtomicU64,
    pub(super) filter_rows_labelled: AtomicU64,
    pub(super) filter_rows_read: AtomicU64,
    /// Row groups a read of the filter's columns skipped: their statistics ruled every row
    /// out (`SegmentFile::zones_may_pass`).
    pub(super) filter_zones_skipped: AtomicU64,
}

impl Collection {
    pub(super) fn segment_mut(&mut self, id: u64) -> &mut Segment {
        let at = self.segments.binary_search_by_key(&id, |s| s.meta.id).expect("segment exists");
        &mut self.segments[at]
    }

    pub(super) fn segment(&self, id: u64) -> Option<&Segment> {
        self.segments.binary_search_by_key(&id, |s| s.meta.id).ok().map(|at| &self.segments[at])
    }

    /// Takes `index`'s codebook as the collection's: if it has none yet and `index` holds at
    /// least [`MIN_SHARED_CODEBOOK_ROWS`] rows, or if `index` trained its own on
    /// [`CODEBOOK_RETRAIN_FACTOR`] times the rows of the current one's. Later indexes are built
    /// with it and hold it once between them (an index's pivots are 256 × dim × 4 bytes, 128 KiB
    /// at 128-d, however few its rows).
    pub(super) fn adopt_codebook(&mut self, index: &DiskIndex) {
        let rows = index.header().n;
        let better = match &self.codebook {
            None => rows >= MIN_SHARED_CODEBOOK_ROWS,
            Some((pq, trained)) => {
                !Arc::ptr_eq(pq, index.shared_pq()) && rows >= CODEBOOK_RETRAIN_FACTOR * trained
            }
        };
        if better {
            self.codebook = Some((Arc::clone(index.shared_pq()), rows));
        }
    }

    /// What an index grown from `index` to `rows` rows does with its codebook. The
    /// collection's codebook, trained on at least [`CODEBOOK_ENOUGH_ROWS`] rows or on more than
    /// 1/[`CODEBOOK_RETRAIN_FACTOR`] of `rows`, is good for it: kept if `index` has it, else
    /// used to re-encode every code (an index with an older codebook, from before a larger
    /// build replaced it, takes the collection's). Otherwise the growth trains a new codebook
    /// on a sample of the grown index's rows ([`quiver_diskgraph::grow::Growth::retrain`]),
    /// which the collection then adopts. Growing the 1024-d rows of the 4× budget test into
    /// one index with the codebook of its first 400 rows gave recall@10 0.947 at L 100,
    /// against 0.994 for the same growth with a codebook of 8,192 rows; and an index of theirs
    /// that kept an older codebook than the collection's grew into the final one with it, at
    /// 0.947 again, before older codebooks were replaced.
    pub(super) fn growth_codebook(&self, index: &DiskIndex, rows: u64) -> GrowCodebook {
        let Some((pq, trained)) = &self.codebook else { return GrowCodebook::Keep };
        let good = *trained >= CODEBOOK_ENOUGH_ROWS || rows < CODEBOOK_RETRAIN_FACTOR * trained;
        match (good, Arc::ptr_eq(pq, index.shared_pq())) {
            (true, true) => GrowCodebook::Keep,
            (true, false) => GrowCodebook::Use(Arc::clone(pq)),
            (false, _) => GrowCodebook::Train,
        }
    }

    /// The codebook a build of `rows` rows uses: the collection's, unless the build is large
    /// enough to train a better one ([`CODEBOOK_RETRAIN_FACTOR`]).
    pub(super) fn codebook_for(&self, rows: u64) -> Option<Arc<PqCodebook>> {
        let (pq, trained) = self.codebook.as_ref()?;
        (rows < CODEBOOK_RETRAIN_FACTOR * trained).then(|| Arc::clone(pq))
    }

    /// Where `k`'s live row is: the table's map, else the one segment holding it undeleted.
    pub(super) fn live_loc(&self, k: &Key) -> Option<Loc> {
        if let Some(loc) = self.keys.get(k) {
            return Some(loc);
        }
        let hash = super::keys::id_hash(k);
        self.segments.iter().rev().find_map(|s| {
            let row = s.keys.find_hashed(k, hash)?;
            (!s.deleted.contains(row as usize)).then(|| Loc::seg(s.slot, row))
        })
    }

    /// Whether the row at `loc` is live (not deleted, not replaced by a later write).
    pub(super) fn is_live(&self, loc: Loc) -> bool {
        match loc.place() {
            Place::Mem(r) => self.mem.live[r as usize],
            Place::Seg { slot, row } => self
                .segment(self.slot_segment(slot))
                .is_some_and(|s| !s.deleted.contains(row as usize)),
        }
    }

    /// Live rows: the table's and every segment's.
    pub(super) fn live_count(&self) -> u64 {
        let segments: u64 = self.segments.iter().map(|s| s.meta.rows - s.deleted_count).sum();
        self.mem.live_count as u64 + segments
    }

    /// Maps the table's live rows by id again (after a flush drops its frozen prefix and the
    /// rows after it move down).
    pub(super) fn remap_table(&mut self) {
        self.keys.clear();
        for (r, k) in self.mem.keys.iter().enumerate() {
            if self.mem.live[r] {
                let old = self.keys.insert(k, Loc::mem(r as u32));
                assert!(old.is_none(), "id {k:?} is live twice in the table");
            }
        }
    }

    pub(super) fn kill(&mut self, loc: Loc) {
        match loc.place() {
            Place::Mem(r) => self.mem.kill(r),
            Place::Seg { slot, row } => {
                let id = self.slot_segment(slot);
                self.segment_mut(id).kill(row);
            }
        }
    }

    /// The id of the segment in `slot`.
    pub(super) fn slot_segment(&self, slot: u32) -> u64 {
        let id = self.slots[slot as usize];
        assert_ne!(id, FREE_SLOT, "a location points at free slot {slot}");
        id
    }

    /// A slot for segment `id`: the first free one, or a new one.
    pub(super) fn take_slot(&mut self, id: u64) -> u32 {
        let slot = match self.slots.iter().position(|&s| s == FREE_SLOT) {
            Some(free) => free,
            None => {
                self.slots.push(FREE_SLOT);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = id;
        u32::try_from(slot).expect("fewer than 2^32 segments")
    }

    /// Frees segment `id`'s `slot`.
    pub(super) fn free_slot(&mut self, slot: u32, id: u64) {
        assert_eq!(self.slots[slot as usize], id, "slot {slot} held segment {id:016x}");
        self.slots[slot as usize] = FREE_SLOT;
    }

    /// Takes `schema`, which adds nullable columns to the collection's: every segment file is
    /// read under it (nulls in the added columns) and the in-memory batches gain null columns.
    /// Returns the bytes the in-memory table grew by, and the part of them in its frozen prefix.
    pub(super) fn add_columns(&mut self, schema: Arc<CollectionSchema>) -> (usize, usize) {
        let arrow = schema.arrow_schema();
        for s in &mut self.segments {
            s.file = s.file.with_schema(&arrow);
        }
        let grown = self.mem.widen(&arrow);
        self.schema = schema;
        self.arrow = arrow;
        grown
    }

    pub(super) fn insert(&mut self, mut p: Prepared) -> usize {
        if p.batch.schema() != self.arrow {
            // Prepared before columns were added (the WAL holds it as it was): nulls in them.
            p.batch = crate::batch::widen(&p.batch, &self.arrow);
        }
        let first = self.mem.keys.len() as u32;
        for (i, k) in p.keys.iter().enumerate() {
            if let Some(old) = self.live_loc(k) {
                self.kill(old);
            }
            self.keys.insert(k, Loc::mem(first + i as u32));
        }
        let before = self.mem.bytes;
        self.mem.append(p);
        self.mem.bytes - before
    }

    pub(super) fn delete(&mut self, keys: &[Key]) {
        for k in keys {
            if let Some(old) = self.live_loc(k) {
                self.kill(old);
                self.keys.remove(k);
            }
        }
    }

    pub(super) fn column_index(&self, name: &str) -> Result<usize, ReadError> {
        self.arrow.index_of(name).map_err(|_| ReadError::UnknownColumn(name.to_string()))
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) collections: BTreeMap<String, Collection>,
    pub(super) checkpoint: Lsn,
    /// Bytes of every memtable.
    pub(super) mem_bytes: usize,
    /// Bytes of the memtables' frozen prefixes (a flush is writing them).
    pub(super) frozen_bytes: usize,
}

impl State {
    pub(super) fn by_id_mut(&mut self, id: u64) -> Option<&mut Collection> {
        self.collections.values_mut().find(|c| c.id == id)
    }

    pub(super) fn apply(&mut self, op: Op) {
        match op {
            Op::Insert { collection, prepared } => {
                if let Some(c) = self.by_id_mut(collection) {
                    let added = c.insert(prepared);
                    self.mem_bytes += added;
                }
            }
            Op::Delete { collection, keys } => {
                if let Some(c) = self.by_id_mut(collection) {
                    c.delete(&keys);
                }
            }
        }
    }

    pub(super) fn body(&self, next_id: u64) -> Body {
        Body {
            format: BODY_FORMAT,
            next_id,
            wal_checkpoint: self.checkpoint,
            collections: self
                .collections
                .values()
                .map(|c| CollectionMeta {
                    id: c.id,
                    name: c.name.clone(),
                    schema: (*c.schema).clone(),
                    segments: c.segments.iter().map(|s| s.meta.clone()).collect(),
                })
                .collect(),
        }
    }
}

#[derive(Debug)]
pub(super) enum Op {
    Insert { collection: u64, prepared: Prepared },
    Delete { collection: u64, keys: Vec<Key> },
}
