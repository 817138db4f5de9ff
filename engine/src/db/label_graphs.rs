//! Label graphs: for a label column a collection declares
//! ([`CollectionSchema::with_label_graph`]), each indexed segment gets a disk index of its own
//! for every value of the column holding at least [`Options::label_graph_min_rows`] of its
//! rows. A search filtered to that value (or to one of up to four: `IN`) walks among its rows
//! alone, from their own entry point (the graph's medoid), instead of ranking every passing
//! row by PQ or walking the segment's graph with the others as waypoints.
//!
//! This is Filtered-DiskANN's StitchedVamana without the stitching: a graph per label over its
//! members. Stitched into the segment's graph, with one label a row, the labels' graphs would
//! stay apart (no edge joins two labels' rows) and cut up the graph an unfiltered search
//! walks; kept apart, the segment's graph is untouched and each label's is searched alone.
//!
//! Layout: `indexes/{segment}/labels/{column}.{entry}/`, a disk index like the segment's
//! (built with its codebook, so both share it in RAM) whose node labels are positions in the
//! value's posting in the column's label index (`segment/labels.rs`): its rows, ascending.
//! Each is bound to its segment (`SOURCE`, [`crate::index_source`]), built under
//! `{column}.{entry}.tmp` and renamed into place, its input under `{column}.{entry}.input/`.
//! They are derived data: removed with the segment's index directory, reopened at the next
//! open (and built again where missing or failing their checks), and a graph found damaged by
//! a search is removed, the search answered the other way, and the graph built again.
//!
//! RAM: a graph holds its PQ codes (the codebook is the segment's) and the segment row of each
//! of its nodes, 4 bytes; both counted in [`Database::memory`](super::Database::memory). A
//! build holds 4 bytes a segment row (which graph each row feeds) and a 64 KiB buffer a graph
//! while it writes the inputs, then builds each graph within the build's memory allowance
//! (`budget::build_params`), as a segment's index is built.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use quiver_diskgraph::search::{DiskIndex, OpenOptionsIndex};

use crate::error::{BackgroundError, ReadError};
use crate::filter::Filter;
use crate::index_source;
use crate::schema::CollectionSchema;
use crate::segment::{SegmentError, SegmentFile};

use super::background::{Progress, io_error};
use super::body::{SegmentMeta, index_name};
use super::index_build::IndexInput;
use super::inner::Inner;
use super::open::{for_each_vectors, source_of};
use super::read::{CollectionView, Hit, SegmentView};
use super::search::{Cand, PreparedQuery, SearchParams, walk_index};

/// The directory of a segment's label graphs, inside its index directory.
const LABELS_DIR: &str = "labels";
/// Rows read from the segment at a time while the graphs' inputs are written.
const INPUT_BATCH_ROWS: usize = 65_536;
/// Each input file's write buffer: one a graph, all open at once.
const INPUT_BUFFER: usize = 64 << 10;

/// One value's graph in one segment.
#[derive(Debug)]
pub(super) struct LabelGraph {
    /// The column (its index in the collection's Arrow schema).
    pub(super) column: usize,
    /// The value's entry in the column's label index.
    pub(super) entry: usize,
    pub(super) index: DiskIndex,
    /// The segment row of each node label: the value's rows, ascending.
    pub(super) rows: Vec<u32>,
}

/// A segment's label graphs.
#[derive(Debug, Default)]
pub(super) struct LabelGraphs {
    /// The label columns they were made for: a segment is looked at again when its collection
    /// declares other columns.
    pub(super) columns: Vec<usize>,
    pub(super) graphs: Vec<Arc<LabelGraph>>,
}

impl LabelGraphs {
    /// The graph of entry `entry` of column `column`, if the segment has one.
    pub(super) fn get(&self, column: usize, entry: usize) -> Option<&LabelGraph> {
        self.graphs.iter().find(|g| g.column == column && g.entry == entry).map(|g| &**g)
    }

    /// Bytes of RAM they hold beyond the codebook they share with the segment's index.
    pub(super) fn ram_bytes(&self) -> usize {
        let each =
            |g: &Arc<LabelGraph>| g.index.ram_bytes() - g.index.pq_ram_bytes() + 4 * g.rows.len();
        self.graphs.iter().map(each).sum()
    }
}

/// The declared label columns of `schema`, as indices in its Arrow schema.
pub(super) fn declared_columns(schema: &CollectionSchema) -> Vec<usize> {
    if schema.label_graphs().is_empty() {
        return Vec::new(); // the common case, asked by every readiness check
    }
    let arrow = schema.arrow_schema();
    schema.label_graphs().iter().filter_map(|name| arrow.index_of(name).ok()).collect()
}

/// Whether an indexed segment whose label graphs are `made` lacks those of some of `columns`
/// (or has them for other columns).
fn wants_graphs(made: Option<&LabelGraphs>, columns: &[usize]) -> bool {
    !columns.is_empty() && made.is_none_or(|m| m.columns != columns)
}

/// A segment whose label graphs are due, as the work needs it.
struct Job {
    collection: u64,
    meta: SegmentMeta,
    schema: Arc<CollectionSchema>,
    file: SegmentFile,
    index: Arc<DiskIndex>,
    columns: Vec<usize>,
    /// The graphs it has, made for some of the columns.
    made: Option<Arc<LabelGraphs>>,
}

/// Whether some indexed segment awaits its label graphs.
pub(super) fn graphs_pending(inner: &Inner) -> bool {
    find_job(inner).is_some()
}

fn find_job(inner: &Inner) -> Option<Job> {
    inner.index_dir.as_ref()?;
    let st = inner.read();
    st.collections.values().find_map(|c| {
        let columns = declared_columns(&c.schema);
        c.segments.iter().find_map(|s| {
            let index = s.index.as_ref()?;
            wants_graphs(s.label_graphs.as_deref(), &columns).then(|| Job {
                collection: c.id,
                meta: s.meta.clone(),
                schema: Arc::clone(&c.schema),
                file: s.file.clone(),
                index: Arc::clone(index),
                columns: columns.clone(),
                made: s.label_graphs.clone(),
            })
        })
    })
}

/// Gives one indexed segment the label graphs of one more column its collection declares:
/// those on disk reopened, the others built from one pass over its vectors, with no lock
/// held; then installed beside the graphs it has if the segment still has the index they
/// were made beside. A column at a time, so that a flush's index build waits for one column's
/// graphs at most. A graph that cannot be made is reported and left out (derived data: the
/// segment is searched the other ways), so a failure never holds up other work.
pub(super) fn label_graphs_one(inner: &Inner) -> Result<Progress, BackgroundError> {
    let Some(idir) = inner.index_dir.clone() else { return Ok(Progress::Idle) };
    let Some(job) = find_job(inner) else { return Ok(Progress::Idle) };
    let declared = |c: &usize| job.columns.contains(c);
    let (mut columns, mut graphs): (Vec<usize>, Vec<Arc<LabelGraph>>) = match &job.made {
        Some(m) => (
            m.columns.iter().copied().filter(declared).collect(),
            m.graphs.iter().filter(|g| declared(&g.column)).cloned().collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    if let Some(&column) = job.columns.iter().find(|c| !columns.contains(c)) {
        let dir = idir.join(index_name(job.meta.id)).join(LABELS_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        remove_leftovers(&dir);
        match column_graphs(inner, &dir, &job, column) {
            Ok(made) => graphs.extend(made.into_iter().map(Arc::new)),
            Err(e) => {
                inner.label_graph_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "segment {:016x}: label graphs of column {column} not made: {e}",
                    job.meta.id
                );
            }
        }
        columns.push(column);
    }
    // In the declared order: complete when equal to the declared columns.
    columns.sort_by_key(|c| job.columns.iter().position(|d| d == c));
    let made = LabelGraphs { columns, graphs };
    let mut st = inner.write();
    let segment = st.by_id_mut(job.collection).and_then(|c| {
        c.segments.iter_mut().find(|s| {
            s.meta.id == job.meta.id && s.index.as_ref().is_some_and(|i| Arc::ptr_eq(i, &job.index))
        })
    });
    if let Some(s) = segment {
        s.label_graphs = Some(Arc::new(made));
    }
    Ok(Progress::Worked)
}

/// Removes what builds cut short left in `dir`: temporary graphs and inputs.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".tmp") || name.ends_with(".input"))
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!("could not remove {}: {err}", e.path().display());
        }
    }
}

fn graph_name(column: usize, entry: usize) -> String {
    format!("{column}.{entry}")
}

/// Column `column`'s graphs in the job's segment: one for each value with at least
/// `label_graph_min_rows` rows, opened where on disk and sound, built where not.
fn column_graphs(
    inner: &Inner,
    dir: &Path,
    job: &Job,
    column: usize,
) -> Result<Vec<LabelGraph>, BackgroundError> {
    let Some(labels) = job.file.label_index(inner.vfs.as_ref(), column)? else {
        return Ok(Vec::new()); // too many values (or a column added after the file was written)
    };
    let values = labels.entries() - 1; // the last entry is the nulls'
    let min_rows = inner.opts.label_graph_min_rows;
    let mut graphs = Vec::new();
    let mut missing = Vec::new();
    for entry in (0..values).filter(|&e| labels.count(e) >= min_rows) {
        let rows = labels.entry_rows(entry)?;
        let path = dir.join(graph_name(column, entry));
        match open_graph(inner, &path, job, rows.len()) {
            Ok(index) => graphs.push(LabelGraph { column, entry, index, rows }),
            Err(e) => {
                if path.exists() {
                    tracing::warn!("{}: {e}; building it again", path.display());
                }
                missing.push((entry, rows));
            }
        }
    }
    build_graphs(inner, dir, job, column, missing, &mut graphs)?;
    Ok(graphs)
}

/// Why a label graph on disk is not used.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("{0}")]
    Index(#[from] quiver_diskgraph::index::IndexError),
    #[error("{0}")]
    Source(#[from] index_source::SourceError),
    #[error("{found} nodes for a value of {expected} rows")]
    Nodes { found: u64, expected: usize },
}

/// Opens the graph at `path`, sharing the segment index's codebook, if it is bound to the
/// job's segment and has a node for each of the value's `rows` rows.
fn open_graph(inner: &Inner, path: &Path, job: &Job, rows: usize) -> Result<DiskIndex, OpenError> {
    let pq = Some(Arc::clone(job.index.shared_pq()));
    let index = DiskIndex::open(path, OpenOptionsIndex { pq, ..inner.opts.index_open.clone() })?;
    if index.header().n != rows as u64 {
        return Err(OpenError::Nodes { found: index.header().n, expected: rows });
    }
    index_source::check(path, source_of(&job.meta))?;
    Ok(index)
}

/// Builds the graphs of `missing` (entries of column `column`, with their rows): their inputs
/// written in one pass over the segment's vectors, then each built with the segment index's
/// codebook, bound, renamed into place and opened, as a segment's index is
/// ([`IndexInput::build_at`]).
fn build_graphs(
    inner: &Inner,
    dir: &Path,
    job: &Job,
    column: usize,
    missing: Vec<(usize, Vec<u32>)>,
    graphs: &mut Vec<LabelGraph>,
) -> Result<(), BackgroundError> {
    if missing.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let inputs = write_inputs(dir, job, column, &missing)?;
    let codebook = Some(job.index.shared_pq());
    for ((entry, rows), input) in missing.into_iter().zip(inputs) {
        let name = graph_name(column, entry);
        let (tmp, fin) = (dir.join(format!("{name}.tmp")), dir.join(&name));
        let (meta, schema) = (&job.meta, &job.schema);
        let index = input.build_at(inner, (&tmp, &fin), meta, schema, codebook, rows.len())?;
        if index.header().n != rows.len() as u64 {
            let e = OpenError::Nodes { found: index.header().n, expected: rows.len() };
            let source = std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
            return Err(BackgroundError::Io { path: fin, source });
        }
        inner.label_graphs_built.fetch_add(1, Ordering::Relaxed);
        graphs.push(LabelGraph { column, entry, index, rows });
    }
    tracing::info!(
        "segment {:016x}: label graphs of column {column} built in {:.1} s",
        job.meta.id,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes the input of each of `missing`'s graphs: one pass over the segment's vectors, each
/// row copied to the input of the value it holds (4 bytes a segment row to say which).
fn write_inputs(
    dir: &Path,
    job: &Job,
    column: usize,
    missing: &[(usize, Vec<u32>)],
) -> Result<Vec<IndexInput>, BackgroundError> {
    let rows = job.meta.rows as usize;
    let mut slot = vec![u32::MAX; rows];
    for (at, (_, value_rows)) in missing.iter().enumerate() {
        for &r in value_rows {
            slot[r as usize] = at as u32;
        }
    }
    let dim = job.schema.dim();
    let mut inputs = Vec::with_capacity(missing.len());
    for (entry, value_rows) in missing {
        let input_dir = dir.join(format!("{}.input", graph_name(column, *entry)));
        inputs.push(IndexInput::create_in(input_dir, &job.schema, value_rows.len(), INPUT_BUFFER)?);
    }
    let mut base = 0usize;
    for_each_vectors(&job.file, &job.schema, INPUT_BATCH_ROWS, |v| {
        let n = v.values() / dim;
        let bytes = v.value_bytes();
        let row_bytes = bytes.len() / n.max(1);
        for i in 0..n {
            let Some(&at) = slot.get(base + i) else { break };
            if at != u32::MAX {
                inputs[at as usize].push_bytes(&bytes[i * row_bytes..(i + 1) * row_bytes])?;
            }
        }
        base += n;
        Ok::<(), BackgroundError>(())
    })?;
    if base != rows {
        let reason = format!("{base} vectors read for {rows} rows");
        let path = job.file.path().to_path_buf();
        return Err(SegmentError::Corrupt { path, reason }.into());
    }
    Ok(inputs)
}

/// Most values of a label column a filter may ask for (`IN`) and still be searched through
/// their graphs, one walk each.
const MAX_LABEL_WALKS: usize = 4;

/// The label graphs of segment `s` for the values `filter` requires one of (one value, or an
/// `IN` of at most [`MAX_LABEL_WALKS`]), and whether the filter is those values alone (every
/// live row of the graphs passes) or has other parts; `None` unless the segment has a graph
/// for each of them (none for the nulls).
///
/// # Errors
/// As [`SegmentFile::label_index`](crate::segment::SegmentFile::label_index).
pub(super) fn label_graph_for<'a>(
    inner: &Inner,
    s: &'a SegmentView,
    filter: &Filter,
) -> Result<Option<(Vec<&'a LabelGraph>, bool)>, ReadError> {
    let Some(graphs) = s.label_graphs.as_deref().filter(|g| !g.graphs.is_empty()) else {
        return Ok(None);
    };
    let vfs = inner.vfs.as_ref();
    let found = s.file.label_values(vfs, filter, &graphs.columns, MAX_LABEL_WALKS)?;
    let Some((column, entries)) = found else { return Ok(None) };
    let alone = filter.conjuncts().is_empty() && filter.columns() == [column];
    let each: Option<Vec<&LabelGraph>> = entries.iter().map(|&e| graphs.get(column, e)).collect();
    Ok(each.map(|g| (g, alone)))
}

/// Searches segment `s` through the label graphs of the values `filter` requires one of, if
/// it has them and the walks cost less than ranking the passing rows (always when the filter
/// is those values alone: a walk of `L` among each value's rows): [`label_walk`] in each, the
/// nearest `k` of them all kept. `None` when the segment is to be searched the other ways.
pub(super) fn label_search(
    inner: &Inner,
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    params: &SearchParams,
    filter: &Filter,
    read_ns: f64,
) -> Result<Option<Vec<Cand>>, ReadError> {
    let Some((graphs, alone)) = label_graph_for(inner, s, filter)? else { return Ok(None) };
    let mut top = super::search::TopK::new(params.k);
    if alone {
        // Every row of the graphs passes but the deleted: no passing rows to find.
        let list = params.list_size.max(params.k);
        for graph in graphs {
            let live = |label: u32| {
                let row = graph.rows.get(label as usize);
                row.is_some_and(|&row| !s.deleted.contains(row as usize))
            };
            let Some(found) = label_walk(inner, c, s, q, params, graph, list, &live)? else {
                return Ok(None);
            };
            found.into_iter().for_each(|cand| top.push(cand));
        }
    } else {
        let passing = super::search::passing_rows(inner, c, s, filter)?;
        let matching = passing.count();
        let rows: usize = graphs.iter().map(|g| g.rows.len()).sum();
        let list = super::search::walk_list(matching, rows, params);
        let (walk, rank) = super::search::plan_costs(matching, list, params, read_ns);
        if matching == 0 || rank <= walk * graphs.len() as f64 {
            return Ok(None);
        }
        for graph in graphs {
            let passes = |label: u32| {
                let row = graph.rows.get(label as usize);
                row.is_some_and(|&row| passing.contains(row as usize))
            };
            let Some(found) = label_walk(inner, c, s, q, params, graph, list, &passes)? else {
                return Ok(None);
            };
            found.into_iter().for_each(|cand| top.push(cand));
        }
    }
    c.counters.filtered_label_walks.fetch_add(1, Ordering::Relaxed);
    tracing::Span::current().record("plan", "label_walk");
    Ok(Some(top.into_sorted_vec()))
}

/// Searches segment `s` for the rows `accept` takes (by node label) through `graph`, a graph
/// of exactly the rows of one value the filter requires: a walk among them from their own
/// entry point, the others (failing the rest of the filter, or deleted) walked through, never
/// returned. Widened 4× while fewer than `k` come back. `None` when it gives up (the list
/// would cover the graph) or the graph is damaged (then removed and built again): the caller
/// searches the segment the other ways.
#[allow(clippy::too_many_arguments)]
fn label_walk(
    inner: &Inner,
    c: &CollectionView,
    s: &SegmentView,
    q: &PreparedQuery,
    params: &SearchParams,
    graph: &LabelGraph,
    mut list: usize,
    accept: &dyn Fn(u32) -> bool,
) -> Result<Option<Vec<Cand>>, ReadError> {
    loop {
        let found = match walk_index(inner, c, s.id, &graph.index, q, params, list, accept)? {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    "segment {:016x}: label graph {} damaged ({e}); removing it",
                    s.id,
                    graph.index.path().display()
                );
                let dir = graph.index.path().parent().unwrap_or(graph.index.path());
                inner.label_graph_failed(c.id, s.id, dir);
                return Ok(None);
            }
        };
        if found.len() >= params.k {
            let cand = |n: &quiver_diskgraph::search::Neighbour| {
                let row = graph.rows[n.id as usize];
                let key = s.keys.key(row as usize)?;
                Ok(Cand { d: n.distance, key, loc: Hit::Seg(s.id, row) })
            };
            return Ok(Some(found.iter().map(cand).collect::<Result<_, SegmentError>>()?));
        }
        // Fewer than k passing rows near the query: widen, or leave it to the other paths once
        // the list would cover the graph.
        list = list.saturating_mul(4);
        if list >= super::MAX_LIST_SIZE || list >= graph.rows.len() {
            return Ok(None);
        }
    }
}

impl Inner {
    /// A search found the label graph in directory `path` of segment `sid` (collection `cid`) damaged: the
    /// segment's graphs are forgotten, so the background worker reopens the sound ones and
    /// builds this one again, and its directory is removed.
    pub(super) fn label_graph_failed(&self, cid: u64, sid: u64, path: &Path) {
        {
            let mut st = self.write();
            if let Some(s) =
                st.by_id_mut(cid).and_then(|c| c.segments.iter_mut().find(|s| s.meta.id == sid))
            {
                s.label_graphs = None;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
        self.notify_work();
    }
}
