//! Building an index directory: the graph file plus the PQ pivots and codes.
//!
//! The builder stores vectors in the space the graph is searched in. For L2 that is the data as
//! given, for cosine the normalised vectors, and for inner product the MIPS → L2 transform. It then
//! trains PQ on the stored vectors, encodes them, builds the Vamana graph, packs graph neighbours
//! into shared sectors ([`crate::pack`]), and streams the graph file and the PQ codes in that order,
//! each node labelled with its input row. Every file is fsynced, and then the directory is too.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::{DataError, ElemType, Metric, VectorSet, mips_max_norm_sq, mips_transform};
use crate::layout::{Header, IndexWriter, LayoutError};
use crate::pack;
use crate::partition;
use crate::plan::{self, Plan, PlanError, Shape, Strategy};
use crate::pq::{
    CODES_FILE, PIVOTS_FILE, PqCodebook, PqError, PqFileError, PqParams, default_pq_bytes,
    write_codes,
};
use crate::source::VectorFile;
use crate::vamana::{self, BuildError, VamanaParams};

/// Name of the graph file inside an index directory.
pub const GRAPH_FILE: &str = "graph.qvr";

/// Parameters of an index build. `Default` gives the documented defaults of each part.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildParams {
    /// Graph parameters.
    pub graph: VamanaParams,
    /// PQ parameters.
    pub pq: PqParams,
    /// Most bytes the build may allocate ([`crate::plan`] chooses a strategy that fits), or
    /// `None` to build in memory whatever the size. Honoured by [`build_index_from_file`];
    /// [`build_index`] is handed its vectors in RAM already.
    pub ram_budget: Option<u64>,
    /// Forces the partitioned build with this many partitions, whatever the budget (for tests
    /// and tuning; [`build_index_from_file`] only); 1 forces the single graph over 8-bit codes.
    /// `None` lets the planner choose.
    pub partitions: Option<usize>,
}

/// What a build did and how long each stage took.
#[derive(Clone, Debug)]
pub struct BuildSummary {
    /// Points indexed.
    pub n: usize,
    /// Dimension of the input vectors.
    pub dim: usize,
    /// Dimension of the stored vectors (`dim + 1` for inner product).
    pub stored_dim: usize,
    /// Bytes per PQ code.
    pub pq_bytes: usize,
    /// Mean out-degree of the graph.
    pub mean_degree: f64,
    /// Seconds spent training PQ and encoding.
    pub pq_seconds: f64,
    /// Seconds spent building the graph.
    pub graph_seconds: f64,
    /// Seconds spent writing files.
    pub write_seconds: f64,
    /// Size of the graph file.
    pub graph_file_bytes: u64,
    /// How the index was built, and the planner's estimate of its peak memory.
    pub plan: Plan,
}

/// Why an index could not be built or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The vectors are unusable for this metric.
    #[error(transparent)]
    Data(#[from] DataError),
    /// PQ training failed.
    #[error(transparent)]
    Pq(#[from] PqError),
    /// A PQ file is unreadable or damaged.
    #[error(transparent)]
    PqFile(#[from] PqFileError),
    /// The graph build failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The graph file is unreadable or damaged.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No build strategy fits the RAM budget.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The index files disagree with each other.
    #[error("{0}")]
    Mismatch(String),
    /// The index cannot be grown as asked ([`crate::grow`]); a rebuild can.
    #[error("cannot grow the index: {0}")]
    CannotGrow(&'static str),
}

/// Puts `data` in the space the index searches: `(stored vectors, stored metric, M²)`.
///
/// # Errors
/// Cosine on integer vectors.
pub fn to_stored(data: VectorSet, metric: Metric) -> Result<(VectorSet, Metric, f32), DataError> {
    let max_norm_sq = if metric == Metric::InnerProduct { mips_max_norm_sq(&data) } else { 0.0 };
    Ok((store_piece(data, metric, max_norm_sq)?, stored_metric(metric), max_norm_sq as f32))
}

/// The metric the graph of a `metric` index is built and searched with: L2 for inner product
/// (through the MIPS → L2 reduction), the metric itself otherwise.
pub fn stored_metric(metric: Metric) -> Metric {
    if metric == Metric::InnerProduct { Metric::L2 } else { metric }
}

/// [`to_stored`] for one piece of a larger input whose inner-product `M²` (`max_norm_sq`, see
/// [`crate::data::mips_max_norm_sq`]) was taken over all of it.
///
/// # Errors
/// Cosine on integer vectors.
pub fn store_piece(
    mut raw: VectorSet,
    metric: Metric,
    max_norm_sq: f64,
) -> Result<VectorSet, DataError> {
    match metric {
        Metric::L2 => Ok(raw),
        Metric::Cosine => {
            raw.normalize()?;
            Ok(raw)
        }
        Metric::InnerProduct => mips_transform(&raw, max_norm_sq),
    }
}

/// Builds an index of `data` under `metric` into `dir` (created if missing; existing index files
/// in it are replaced). `progress(done, total)` reports graph insertions.
///
/// # Errors
/// [`IndexError`] for unusable data, bad parameters or I/O failure.
pub fn build_index(
    data: VectorSet,
    metric: Metric,
    params: &BuildParams,
    dir: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BuildSummary, IndexError> {
    build_index_with(data, metric, params, None, dir, progress)
}

/// [`build_index`] with the PQ codebook given (`Some`) instead of trained on `data`: indexes
/// built with one codebook can share its pivots in RAM ([`OpenOptionsIndex::pq`]), and a build
/// skips the training.
///
/// [`OpenOptionsIndex::pq`]: crate::search::OpenOptionsIndex::pq
///
/// # Errors
/// As [`build_index`]; [`IndexError::Mismatch`] for a codebook of another dimension or metric
/// than the stored vectors'.
pub fn build_index_with(
    data: VectorSet,
    metric: Metric,
    params: &BuildParams,
    codebook: Option<&PqCodebook>,
    dir: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BuildSummary, IndexError> {
    if data.is_empty() {
        return Err(DataError::Invalid("cannot build an index of zero vectors".into()).into());
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e| IndexError::Io { path, source: e }
    };
    let (n, dim) = (data.len(), data.dim());
    let shape = shape_of(n, dim, data.elem(), metric, params);
    let plan = Plan {
        strategy: Strategy::InMemory,
        estimated_peak: shape.in_memory(n as u64),
        budget: None,
    };
    // Before anything touches the disk: refuses cosine on integer vectors.
    let (stored, stored_metric, m2) = to_stored(data, metric)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;

    let t = Instant::now();
    let pq = match codebook {
        Some(c) => fits(c, stored.dim(), stored_metric)?.clone(),
        None => PqCodebook::train(&stored, stored_metric, &params.pq)?,
    };
    let codes = pq.encode_all(&stored);
    let pq_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let total = params.graph.passes * n;
    let graph = vamana::build(&stored, stored_metric, &params.graph, &|d| progress(d, total))?;
    let graph_seconds = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut header = Header {
        version: crate::layout::VERSION,
        elem: stored.elem(),
        metric: stored_metric,
        user_metric: metric,
        dim: stored.dim() as u32,
        n: n as u64,
        max_degree: params.graph.max_degree as u32,
        entry: 0,
        mips_max_norm_sq: m2,
    };
    let mean_degree = graph.mean_degree();
    let order = pack::sector_order(&graph, header.nodes_per_sector());
    let position = pack::inverse(&order);
    header.entry = position[graph.entry as usize];
    let graph_path = dir.join(GRAPH_FILE);
    let mut w = IndexWriter::create(&graph_path, header)?;
    let mut list = Vec::with_capacity(params.graph.max_degree);
    for &v in &order {
        list.clear();
        list.extend(graph.neighbours(v as usize).map(|u| position[u as usize]));
        w.push(stored.row_bytes(v as usize), &list, v)?;
    }
    w.finish()?;
    drop(graph);
    pq.write_to(&dir.join(PIVOTS_FILE))?;
    let m = pq.bytes();
    let packed_codes: Vec<u8> =
        order.iter().flat_map(|&v| &codes[v as usize * m..(v as usize + 1) * m]).copied().collect();
    drop(codes);
    write_codes(&dir.join(CODES_FILE), m, &packed_codes)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    let write_seconds = t.elapsed().as_secs_f64();
    let graph_file_bytes = std::fs::metadata(&graph_path).map_err(io(&graph_path))?.len();

    Ok(BuildSummary {
        n,
        dim,
        stored_dim: stored.dim(),
        pq_bytes: pq.bytes(),
        mean_degree,
        pq_seconds,
        graph_seconds,
        write_seconds,
        graph_file_bytes,
        plan,
    })
}

/// `codebook`, if it quantises vectors of `dim` values under `metric` (the stored space).
pub(crate) fn fits(
    codebook: &PqCodebook,
    dim: usize,
    metric: Metric,
) -> Result<&PqCodebook, IndexError> {
    if codebook.dim() == dim && codebook.metric() == metric {
        Ok(codebook)
    } else {
        Err(IndexError::Mismatch(format!(
            "a codebook of dimension {} ({}) for vectors of dimension {dim} ({metric})",
            codebook.dim(),
            codebook.metric()
        )))
    }
}

/// The build's shape, for the planner.
fn shape_of(n: usize, dim: usize, elem: ElemType, metric: Metric, params: &BuildParams) -> Shape {
    let inner_product = metric == Metric::InnerProduct;
    let stored_dim = if inner_product { dim + 1 } else { dim };
    Shape {
        n: n as u64,
        stored_dim,
        stored_elem: if inner_product { ElemType::F32 } else { elem },
        input_elem: elem,
        dim,
        max_degree: params.graph.max_degree,
        slack: params.graph.slack,
        pq_bytes: params.pq.bytes.unwrap_or_else(|| default_pq_bytes(stored_dim)),
        pq_samples: params.pq.max_samples,
    }
}

fn plan_of(shape: &Shape, params: &BuildParams) -> Result<Plan, PlanError> {
    Ok(match params.partitions {
        Some(p) => plan::forced_partitions(shape, p, params.ram_budget),
        None => plan::plan(shape, params.ram_budget)?,
    })
}

/// The plan [`build_index_from_file`] would follow for `n` rows of `dim` values of `elem`:
/// lets a caller check that a budget fits (and learn the estimated peak) before it writes the
/// input file.
///
/// # Errors
/// [`PlanError::TooSmall`] when no strategy fits `params.ram_budget`.
pub fn plan_build(
    n: usize,
    dim: usize,
    elem: ElemType,
    metric: Metric,
    params: &BuildParams,
) -> Result<Plan, PlanError> {
    plan_of(&shape_of(n, dim, elem, metric, params), params)
}

/// What a build from a file reports as it goes: the phase, and how far it is.
pub type Progress<'a> = &'a (dyn Fn(&'static str, usize, usize) + Sync);

/// Builds an index of the vector file at `input` into `dir`, within `params.ram_budget`: the
/// planner ([`crate::plan::plan`]) picks the in-memory build when it fits, then one graph over
/// 8-bit codes of every point, and the partitioned build (`partition/`) otherwise, which
/// never holds more than one partition's vectors.
/// `progress(phase, done, total)` reports each phase.
///
/// # Errors
/// [`IndexError`] for an unreadable file, unusable data, a budget no strategy fits, bad
/// parameters or I/O failure.
pub fn build_index_from_file(
    input: &Path,
    metric: Metric,
    params: &BuildParams,
    dir: &Path,
    progress: Progress<'_>,
) -> Result<BuildSummary, IndexError> {
    build_index_from_file_with(input, metric, params, None, dir, progress)
}

/// [`build_index_from_file`] with the PQ codebook given (`Some`) instead of trained on a
/// sample of the file (see [`build_index_with`]).
///
/// # Errors
/// As [`build_index_from_file`] and [`build_index_with`].
pub fn build_index_from_file_with(
    input: &Path,
    metric: Metric,
    params: &BuildParams,
    codebook: Option<&PqCodebook>,
    dir: &Path,
    progress: Progress<'_>,
) -> Result<BuildSummary, IndexError> {
    let file = VectorFile::open(input)?;
    if file.is_empty() {
        return Err(DataError::Invalid("cannot build an index of zero vectors".into()).into());
    }
    let shape = shape_of(file.len(), file.dim(), file.elem(), metric, params);
    let plan = plan_of(&shape, params)?;
    // The single graph is the partitioned build with one partition that holds every point.
    let (partitions, capacity, training_rows) = match plan.strategy {
        Strategy::InMemory => {
            let data = file.read_range(0, file.len())?;
            progress("read", file.len(), file.len());
            let graph = |d, t| progress("graph", d, t);
            let summary = build_index_with(data, metric, params, codebook, dir, &graph)?;
            return Ok(BuildSummary { plan, ..summary });
        }
        Strategy::SingleGraph { training_rows } => (1, file.len(), training_rows),
        Strategy::Partitioned { partitions, capacity, training_rows } => {
            (partitions, capacity, training_rows)
        }
    };
    let job = partition::Job {
        file: &file,
        metric,
        params,
        dir,
        partitions,
        capacity,
        training_rows,
        codebook,
        merge_rows: shape.merge_rows(capacity as u64) as usize,
        shape,
        plan,
    };
    partition::build(&job, progress)
}
