//! Building a segment's disk index: in memory from resident vectors, or from a vector file
//! written beside the index (a budgeted build, or a merge that streams its rows), then bound to
//! its segment and renamed into place.
//!
//! Every build goes to `indexes/{id}.tmp` and is renamed to `indexes/{id}` only once complete
//! and bound ([`crate::index_source`]); the input file lives in `indexes/{id}.input/`. Both are
//! removed when a build fails, and by the orphan sweep after a crash, since the manifest names
//! neither.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::Vectors;
use crate::error::BackgroundError;
use crate::index_source;
use crate::schema::CollectionSchema;
use quiver_diskgraph::codes::Codes;
use quiver_diskgraph::data::VectorSet;
use quiver_diskgraph::grow::{AddedRows, Growth, grow_index};
use quiver_diskgraph::index::IndexError;
use quiver_diskgraph::pq::{PqCodebook, PqParams};
use quiver_diskgraph::search::{DiskIndex, OpenOptionsIndex};
use quiver_diskgraph::source::{BinWriter, VectorFile};

use super::background::io_error;
use super::body::{SegmentMeta, index_name};
use super::budget::build_params;
use super::inner::Inner;
use super::model::GrowCodebook;
use super::open::source_of;

/// The index a merged segment's grows from ([`IndexInput::grow`]).
#[derive(Clone, Copy)]
pub(super) struct GrowFrom<'a> {
    /// The input's index.
    pub(super) base: &'a DiskIndex,
    /// The merged segment's row of each of its rows kept (`None`: dropped).
    pub(super) relabel: &'a (dyn Fn(u32) -> Option<u32> + Sync),
    /// The merged segment's row of each row of the input file.
    pub(super) labels: &'a [u32],
    /// Rows of the input file linked at a time (0: all at once).
    pub(super) chunk_rows: usize,
    /// What becomes of the base's codebook.
    pub(super) codebook: &'a GrowCodebook,
    /// Rows a new codebook is trained on, if [`GrowCodebook::Train`].
    pub(super) train_rows: usize,
}

/// A build's input: a headered vector file in `indexes/{id}.input/` (or another directory of
/// its own), written a chunk at a time (the buffers are native byte order and the file
/// little-endian: one on every target Quiver builds for). The directory is removed when this
/// is dropped, built from or not.
pub(super) struct IndexInput {
    dir: PathBuf,
    file: PathBuf,
    writer: Option<BinWriter>,
}

const _: () = assert!(cfg!(target_endian = "little"), "vector files are little-endian");

/// The write buffer of a segment's index input.
const INPUT_BUFFER: usize = 1 << 20;

impl IndexInput {
    /// Creates the input of segment `sid`'s index for `rows` rows of `schema`'s search vectors.
    pub(super) fn create(
        idir: &Path,
        sid: u64,
        schema: &CollectionSchema,
        rows: usize,
    ) -> Result<IndexInput, BackgroundError> {
        let dir = idir.join(format!("{}.input", index_name(sid)));
        IndexInput::create_in(dir, schema, rows, INPUT_BUFFER)
    }

    /// Creates an input for `rows` rows of `schema`'s search vectors in directory `dir`
    /// (replaced if it exists), written through a buffer of `buffer` bytes.
    pub(super) fn create_in(
        dir: PathBuf,
        schema: &CollectionSchema,
        rows: usize,
        buffer: usize,
    ) -> Result<IndexInput, BackgroundError> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let elem = schema.vector_type().search_elem();
        let file = dir.join(format!("vectors.{}", elem.bin_extension()));
        let mut input = IndexInput { dir, file, writer: None };
        input.writer = Some(
            BinWriter::with_buffer(&input.file, elem, schema.dim(), rows, buffer)
                .map_err(io_error(&input.file))?,
        );
        Ok(input)
    }

    /// Appends `v`'s rows, straight from their buffer.
    pub(super) fn push(&mut self, v: &Vectors) -> Result<(), BackgroundError> {
        self.push_bytes(v.value_bytes())
    }

    /// Appends whole rows of search vectors, as bytes.
    pub(super) fn push_bytes(&mut self, rows: &[u8]) -> Result<(), BackgroundError> {
        let w = self.writer.as_mut().expect("pushed before finish");
        w.push(rows).map_err(io_error(&self.file))
    }

    /// Completes the file: every declared row written, synced. Once.
    fn finish(&mut self) -> Result<(), BackgroundError> {
        let w = self.writer.take().expect("finished once");
        w.finish().map_err(io_error(&self.file))
    }

    /// Completes the file (every declared row written) and builds the index of segment `meta`
    /// from it into `idir` within the RAM the memory budget allows
    /// ([`super::budget::build_params`]), or `BuildParams::ram_budget` without one.
    pub(super) fn build(
        self,
        inner: &Inner,
        idir: &Path,
        meta: &SegmentMeta,
        schema: &CollectionSchema,
        codebook: Option<&Arc<PqCodebook>>,
    ) -> Result<DiskIndex, BackgroundError> {
        let places = index_places(idir, meta.id);
        self.build_at(inner, (&places.0, &places.1), meta, schema, codebook, meta.rows as usize)
    }

    /// [`IndexInput::build`] into `fin` through `tmp` (a label graph's places, say), its
    /// budget planned for `rows` rows: completes the file, builds it, binds what it built to
    /// segment `meta`, renames it into place and opens it ([`place_at`]).
    pub(super) fn build_at(
        mut self,
        inner: &Inner,
        (tmp, fin): (&Path, &Path),
        meta: &SegmentMeta,
        schema: &CollectionSchema,
        codebook: Option<&Arc<PqCodebook>>,
        rows: usize,
    ) -> Result<DiskIndex, BackgroundError> {
        self.finish()?;
        let sid = meta.id;
        let params = &build_params(inner, schema, rows);
        place_at(inner, (tmp, fin), meta, (codebook.cloned(), None), |tmp| {
            quiver_diskgraph::index::build_index_from_file_with(
                &self.file,
                schema.metric(),
                params,
                codebook.map(Arc::as_ref),
                tmp,
                &|_, _, _| {},
            )
            .map(drop)
            .map_err(|source| BackgroundError::Index { segment: sid, source })
        })
    }

    /// Completes the file (it holds the added rows) and writes segment `meta`'s index as
    /// `base` grown ([`quiver_diskgraph::grow`]): the base's rows that `relabel` keeps, under
    /// their new labels, and the file's rows under `labels`, read and linked `chunk_rows` at
    /// a time. No graph is rebuilt.
    pub(super) fn grow(
        mut self,
        inner: &Inner,
        idir: &Path,
        meta: &SegmentMeta,
        schema: &CollectionSchema,
        from: GrowFrom<'_>,
    ) -> Result<DiskIndex, BackgroundError> {
        let GrowFrom { base, relabel, labels, chunk_rows, codebook, train_rows } = from;
        self.finish()?;
        let sid = meta.id;
        let index_error = |source| BackgroundError::Index { segment: sid, source };
        let added = match labels.len() {
            0 => VectorSet::zeroed(schema.vector_type().search_elem(), schema.dim(), 0)
                .map(AddedRows::Memory),
            _ => VectorFile::open(&self.file).map(AddedRows::File),
        }
        .map_err(|e| index_error(IndexError::Data(e)))?;
        if added.len() != labels.len() {
            let found =
                format!("{} rows in {}, {} labels", added.len(), self.file.display(), labels.len());
            return Err(index_error(IndexError::Mismatch(found)));
        }
        let params = &inner.opts.index_params;
        // A grown index that keeps its base's codebook shares the base's copy, and the base's
        // codes where it repeats them (all of them when no row was dropped); one re-encoded
        // with the collection's codebook shares that; a retrained one shares nothing.
        let (retrain, recode, share) = match codebook {
            GrowCodebook::Keep => {
                (None, None, (Some(Arc::clone(base.shared_pq())), Some(base.codes().clone())))
            }
            GrowCodebook::Use(pq) => (None, Some(&**pq), (Some(Arc::clone(pq)), None)),
            GrowCodebook::Train => {
                let params = PqParams { max_samples: train_rows, ..inner.opts.index_params.pq };
                (Some(params), None, (None, None))
            }
        };
        place_index(inner, idir, meta, share, |tmp| {
            let added_labels = labels;
            let growth =
                Growth { base, relabel, added, added_labels, params, chunk_rows, retrain, recode };
            let summary = grow_index(growth, tmp, &|_, _, _| {}).map_err(index_error)?;
            tracing::info!(
                "segment {sid:016x}: index grown from {}: {} rows kept, {} dropped, {} added \
                 in {} chunks, {} lists patched, codebook trained on {} rows (0: kept); scan \
                 {:.1} s, train {:.1} s, graph {:.1} s, link {:.1} s, write {:.1} s",
                base.path().display(),
                summary.kept,
                summary.dropped,
                summary.added,
                summary.chunks,
                summary.patched,
                summary.trained_rows,
                summary.scan_seconds,
                summary.train_seconds,
                summary.graph_seconds,
                summary.link_seconds,
                summary.write_seconds
            );
            Ok(())
        })
    }
}

impl Drop for IndexInput {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Builds the index of segment `meta` from its resident `vectors` into `idir`: through a
/// vector file when the build has a RAM budget (the file is what the budgeted build reads), in
/// memory otherwise.
pub(super) fn build_index_dir(
    inner: &Inner,
    idir: &Path,
    meta: &SegmentMeta,
    schema: &CollectionSchema,
    vectors: Arc<[Vectors]>,
    codebook: Option<&Arc<PqCodebook>>,
) -> Result<DiskIndex, BackgroundError> {
    if inner.opts.index_params.ram_budget.is_some() || inner.opts.memory_budget.is_some() {
        let mut input = IndexInput::create(idir, meta.id, schema, meta.rows as usize)?;
        for v in vectors.iter() {
            input.push(v)?;
        }
        drop(vectors);
        return input.build(inner, idir, meta, schema, codebook);
    }
    let sid = meta.id;
    let index_error = |source| BackgroundError::Index { segment: sid, source };
    let params = &inner.opts.index_params;
    let set = Vectors::concat(&vectors)
        .to_vector_set(schema.dim())
        .map_err(|e| index_error(IndexError::Data(e)))?;
    drop(vectors);
    place_index(inner, idir, meta, (codebook.cloned(), None), |tmp| {
        let codebook = codebook.map(Arc::as_ref);
        quiver_diskgraph::index::build_index_with(
            set,
            schema.metric(),
            params,
            codebook,
            tmp,
            &|_, _| {},
        )
        .map(drop)
        .map_err(index_error)
    })
}

/// Where segment `sid`'s index is built (`idir/{id}.tmp`) and then lives (`idir/{id}`).
fn index_places(idir: &Path, sid: u64) -> (PathBuf, PathBuf) {
    (idir.join(format!("{}.tmp", index_name(sid))), idir.join(index_name(sid)))
}

/// Runs `build` into `idir/{id}.tmp` and places it at `idir/{id}` ([`place_at`]).
fn place_index(
    inner: &Inner,
    idir: &Path,
    meta: &SegmentMeta,
    share: (Option<Arc<PqCodebook>>, Option<Codes>),
    build: impl FnOnce(&Path) -> Result<(), BackgroundError>,
) -> Result<DiskIndex, BackgroundError> {
    let (tmp, fin) = index_places(idir, meta.id);
    place_at(inner, (&tmp, &fin), meta, share, build)
}

/// Runs `build` into `tmp`, binds what it built to segment `meta` (the SOURCE record), renames
/// it to `fin`, syncs `fin`'s directory and opens the index, sharing `codebook` if it was built
/// with it and the pieces of `share_codes` its codes repeat. A failed build leaves nothing
/// behind.
fn place_at(
    inner: &Inner,
    (tmp, fin): (&Path, &Path),
    meta: &SegmentMeta,
    (codebook, share_codes): (Option<Arc<PqCodebook>>, Option<Codes>),
    build: impl FnOnce(&Path) -> Result<(), BackgroundError>,
) -> Result<DiskIndex, BackgroundError> {
    let sid = meta.id;
    let dir = fin.parent().expect("an index lives in a directory");
    let _ = std::fs::remove_dir_all(tmp);
    let built =
        build(tmp).and_then(|()| index_source::write(tmp, source_of(meta)).map_err(io_error(tmp)));
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(tmp); // ENOSPC, say
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(fin);
    std::fs::rename(tmp, fin).map_err(io_error(fin))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    let opts = OpenOptionsIndex { pq: codebook, share_codes, ..inner.opts.index_open.clone() };
    DiskIndex::open(fin, opts).map_err(|source| BackgroundError::Index { segment: sid, source })
}
