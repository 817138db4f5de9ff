//! Get and scan, and the views every read works on: taken under a brief read lock, used with
//! no lock held, so no read holds a lock across I/O.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;

use crate::batch::{self, Vectors};
use crate::error::ReadError;
use crate::rowset::RowSet;
use crate::schema::CollectionSchema;
use crate::segment::{self, SegmentFile};
use quiver_diskgraph::search::DiskIndex;

use super::keys::SegmentKeys;
use super::model::{Collection, Loc, Place, ReadCounters, Segment};
use super::{Database, MAX_SCAN_BATCH_ROWS, SCAN_BATCH_ROWS};

/// A row a read returns, resolved while the state lock was held: a flush renumbers in-memory
/// rows, so they are named by their batch instead, whose `RecordBatch` the read keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hit {
    /// Row `1` of in-memory batch `0`.
    Mem(u32, u32),
    /// Row `1` of segment `0`.
    Seg(u64, u32),
}

/// What a read needs of a segment, taken under the state lock and used after it is released
/// (no lock is held across a read's I/O). The segment's file stays readable through its open
/// handle even if a merge removes it meanwhile.
#[derive(Clone)]
pub(super) struct SegmentView {
    pub(super) id: u64,
    pub(super) file: SegmentFile,
    pub(super) keys: SegmentKeys,
    pub(super) deleted: Arc<RowSet>,
    pub(super) vectors: Option<Arc<[Vectors]>>,
    pub(super) index: Option<Arc<DiskIndex>>,
    pub(super) label_graphs: Option<Arc<super::label_graphs::LabelGraphs>>,
}

impl Segment {
    pub(super) fn view(&self) -> SegmentView {
        SegmentView {
            id: self.meta.id,
            file: self.file.clone(),
            keys: self.keys.clone(),
            deleted: Arc::clone(&self.deleted),
            vectors: self.vectors.clone(),
            index: self.index.clone(),
            label_graphs: self.label_graphs.clone(),
        }
    }
}

/// What a read needs of a collection, taken under the state lock.
pub(super) struct CollectionView {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) schema: Arc<CollectionSchema>,
    pub(super) arrow: SchemaRef,
    pub(super) counters: Arc<ReadCounters>,
}

impl Collection {
    pub(super) fn view(&self) -> CollectionView {
        CollectionView {
            id: self.id,
            name: self.name.clone(),
            schema: Arc::clone(&self.schema),
            arrow: Arc::clone(&self.arrow),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Where the rows at `locs` are, for a read that releases the lock: in-memory rows by batch
    /// (with those batches), segment rows by segment (with views of those segments).
    pub(super) fn resolve(&self, locs: &[Loc]) -> (Vec<Hit>, ReadSources) {
        let hits: Vec<Hit> = locs
            .iter()
            .map(|l| match l.place() {
                Place::Mem(r) => {
                    let (b, i) = self.mem.locs[r as usize];
                    Hit::Mem(b, i)
                }
                Place::Seg { slot, row } => Hit::Seg(self.slot_segment(slot), row),
            })
            .collect();
        let sources = self.sources_of(&hits);
        (hits, sources)
    }

    /// The in-memory batches and segment files `hits` name.
    pub(super) fn sources_of(&self, hits: &[Hit]) -> ReadSources {
        let mut sources = ReadSources::default();
        for h in hits {
            match *h {
                Hit::Mem(b, _) => {
                    sources
                        .batches
                        .entry(b)
                        .or_insert_with(|| self.mem.batches[b as usize].clone());
                }
                Hit::Seg(sid, _) => {
                    sources.files.entry(sid).or_insert_with(|| {
                        self.segment(sid).expect("a live row's segment exists").file.clone()
                    });
                }
            }
        }
        sources
    }
}

/// The in-memory batches and segment files a read takes rows from, kept past the lock.
#[derive(Default)]
pub(super) struct ReadSources {
    pub(super) batches: HashMap<u32, RecordBatch>,
    pub(super) files: HashMap<u64, SegmentFile>,
}

impl Database {
    /// The live rows with these ids (an array of the collection's id type), all columns, in the
    /// order asked; ids not present are skipped, and an id asked twice is returned once.
    ///
    /// # Errors
    /// [`ReadError`]: unknown collection, ids of the wrong type or with nulls, or an I/O failure.
    pub fn get(&self, collection: &str, ids: &dyn Array) -> Result<RecordBatch, ReadError> {
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::NotFound(collection.to_string()))?;
        let keys = batch::delete_keys(ids, c.schema.id_type())?;
        let locs: Vec<Loc> = keys.iter().filter_map(|k| c.live_loc(k)).collect();
        let (hits, sources) = c.resolve(&locs);
        let arrow = c.arrow.clone();
        drop(st); // the segment reads happen without the state lock
        let all: Vec<usize> = (0..arrow.fields().len()).collect();
        Ok(RecordBatch::try_new(arrow.clone(), gather(&arrow, &sources, &hits, &all)?)?)
    }

    /// Every live row, columns `columns` (all if `None`), as a stream of batches: from segments
    /// [`SCAN_BATCH_ROWS`] rows at a time (see [`Scan::set_batch_rows`]), then the in-memory
    /// rows in the batches they were inserted in. The scan sees the collection as it was when
    /// called.
    ///
    /// # Errors
    /// [`ReadError`]: unknown collection or column. Read failures come from the iterator.
    pub fn scan(&self, collection: &str, columns: Option<&[&str]>) -> Result<Scan, ReadError> {
        let st = self.inner.read();
        let c = st
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::NotFound(collection.to_string()))?;
        let projection: Vec<usize> = match columns {
            Some(cols) => cols.iter().map(|n| c.column_index(n)).collect::<Result<_, _>>()?,
            None => (0..c.arrow.fields().len()).collect(),
        };
        let schema = Arc::new(c.arrow.project(&projection)?);
        let segments: VecDeque<(SegmentFile, Vec<u32>)> =
            c.segments.iter().map(|s| (s.file.clone(), s.live_rows())).collect();
        let memtable = c
            .mem
            .live_batches(c.mem.batches.len())?
            .into_iter()
            .map(|b| b.project(&projection))
            .collect::<Result<VecDeque<_>, _>>()?;
        Ok(Scan {
            schema,
            projection,
            segments,
            current: None,
            leftover: None,
            memtable,
            batch_rows: SCAN_BATCH_ROWS,
        })
    }
}

/// Columns `columns` (of `arrow`) of the rows `hits`, in that order, from `sources`. Reads
/// segment files: called with no lock held.
pub(super) fn gather(
    arrow: &SchemaRef,
    sources: &ReadSources,
    hits: &[Hit],
    columns: &[usize],
) -> Result<Vec<ArrayRef>, ReadError> {
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    if hits.is_empty() {
        // No row to take (absent ids, or none asked): interleave needs at least one source.
        return Ok(columns
            .iter()
            .map(|&i| arrow_array::new_empty_array(arrow.field(i).data_type()))
            .collect());
    }
    // Sources: the in-memory batches named, then one batch per segment touched.
    let mut inputs: Vec<RecordBatch> = Vec::new();
    let mut batch_input: HashMap<u32, usize> = HashMap::new();
    for (b, rb) in &sources.batches {
        batch_input.insert(*b, inputs.len());
        inputs.push(rb.project(columns)?);
    }
    let mut by_seg: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for h in hits {
        if let Hit::Seg(s, r) = h {
            by_seg.entry(*s).or_default().push(*r);
        }
    }
    let schema = Arc::new(arrow.project(columns)?);
    let mut seg_input: HashMap<u64, (usize, Vec<u32>)> = HashMap::new();
    for (sid, mut rows) in by_seg {
        rows.sort_unstable();
        rows.dedup();
        let file = sources.files.get(&sid).expect("a read keeps the files of its rows");
        let batches = file.read(columns, Some(&rows), rows.len())?;
        let b = arrow_select::concat::concat_batches(&schema, &batches)?;
        if b.num_rows() != rows.len() {
            return Err(ReadError::Segment(segment::SegmentError::Corrupt {
                path: file.path().to_path_buf(),
                reason: format!("read {} rows, asked for {}", b.num_rows(), rows.len()),
            }));
        }
        seg_input.insert(sid, (inputs.len(), rows));
        inputs.push(b);
    }
    let indices: Vec<(usize, usize)> = hits
        .iter()
        .map(|h| match *h {
            Hit::Mem(b, i) => (batch_input[&b], i as usize),
            Hit::Seg(s, r) => {
                let (input, rows) = &seg_input[&s];
                (*input, rows.binary_search(&r).expect("row was read"))
            }
        })
        .collect();
    let mut out = Vec::with_capacity(columns.len());
    for i in 0..columns.len() {
        let arrays: Vec<&dyn Array> = inputs.iter().map(|b| b.column(i).as_ref()).collect();
        out.push(arrow_select::interleave::interleave(&arrays, &indices)?);
    }
    Ok(out)
}

/// A stream of a collection's live rows (see [`Database::scan`]).
#[derive(Debug)]
pub struct Scan {
    schema: SchemaRef,
    projection: Vec<usize>,
    segments: VecDeque<(SegmentFile, Vec<u32>)>,
    /// The segment being read: one pass over its live rows, in batches of about 1 MiB.
    current: Option<segment::SegmentBatches>,
    /// Rows read from `current` but not returned yet.
    leftover: Option<RecordBatch>,
    memtable: VecDeque<RecordBatch>,
    batch_rows: usize,
}

impl Scan {
    /// The schema of the batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Read at most `rows` rows (at least 1, at most [`MAX_SCAN_BATCH_ROWS`]) from a segment per
    /// batch from now on; the default is [`SCAN_BATCH_ROWS`]. A caller that wants its first batch
    /// quickly starts small and grows. In-memory rows come in the batches they were inserted in.
    pub fn set_batch_rows(&mut self, rows: usize) {
        self.batch_rows = rows.clamp(1, MAX_SCAN_BATCH_ROWS);
    }
}

impl Iterator for Scan {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Gather `batch_rows` rows from the segments' single-pass readers (a reader per call
        // would decode each row group again from its start for every batch).
        let want = self.batch_rows;
        let Scan { projection, segments, current, leftover, .. } = self;
        let parts = segment::gather_rows(leftover, want, |need| {
            loop {
                if current.is_none() {
                    let Some((file, live)) = segments.pop_front() else { return Ok(None) };
                    let all = live.len() as u64 == file.rows();
                    let selection = if all { None } else { Some(live.as_slice()) };
                    *current = Some(file.batches(projection, selection, MAX_SCAN_BATCH_ROWS)?);
                }
                let r = current.as_mut().expect("opened above");
                // A read that can cut batches to size does (no concatenation below).
                r.set_batch_rows(need);
                match r.next() {
                    Some(Ok(b)) => return Ok(Some(b)),
                    Some(Err(e)) => {
                        *current = None;
                        return Err(e);
                    }
                    None => *current = None,
                }
            }
        });
        let mut parts = match parts {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e.into())),
        };
        match parts.len() {
            0 => self.memtable.pop_front().map(Ok),
            1 => parts.pop().map(Ok),
            _ => Some(
                arrow_select::concat::concat_batches(&self.schema, &parts).map_err(ReadError::from),
            ),
        }
    }
}
