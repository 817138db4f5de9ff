//! The build planner: from the input's shape and a RAM budget, which strategy builds the index
//! and how much memory each phase of it should take.
//!
//! Every figure here is an estimate of the bytes the build allocates, phase by phase, from
//! counts the code below it actually allocates (see the `*_BYTES` constants and the per-point
//! sums); `BENCHMARKS.md` and the capped-build test compare them with the measured peak
//! (`VmHWM`). The strategies, cheapest first:
//!
//! 1. [`Strategy::InMemory`]: today's build — every stored vector, the graph's adjacency slab,
//!    the codes and the packing arrays resident at once. Chosen whenever it fits.
//! 2. [`Strategy::SingleGraph`]: one Vamana graph over every point, built in RAM over 8-bit
//!    scalar codes of the rows (float rows; byte rows as they are), with the PQ codes; the full
//!    rows stay in the file and are read again, a chunk at a time, only to write the nodes. For
//!    128-d floats that is a quarter of the vectors' bytes beside the graph's lists.
//! 3. [`Strategy::Partitioned`]: the points are split into `P` overlapping partitions by k-means
//!    on a sample (each point in the partitions of its two nearest centroids, each partition
//!    capped); each partition's graph is built in RAM over its rows gathered from the file (float
//!    rows as 8-bit scalar codes), its lists spilled to disk; then every point's two lists are
//!    merged and re-pruned to `R` (over PQ-decoded neighbours), and nodes are written partition
//!    by partition. Resident throughout: the PQ codes (`m` bytes per point, which a search holds
//!    anyway) and a few bytes per point of bookkeeping; the rest of the budget is one partition
//!    at a time.
//!
//! Strategies 2 and 3 are one code path (`partition/`): a single graph is the partitioned
//! build with one partition, whose points each belong to it once, so nothing is merged. A graph
//! over PQ codes (smaller still than 8-bit codes) is not a strategy: at `R = 64` the lists take
//! 336 bytes a point while being built, against 128 for a 128-d 8-bit code, so PQ would save a
//! fifth of a single graph's memory for a graph built over much coarser distances, and below
//! that the partitions take over anyway. Graphs of at most 65,535 points (most partitions under
//! a tight budget) keep 16-bit ids, 168 bytes a point, and the planner sizes partitions for it.

use std::fmt;

use crate::data::ElemType;
use crate::vamana::NARROW_MAX_POINTS;

/// Bytes the build needs whatever its input: thread stacks, the allocator's own state, I/O
/// buffers, the PQ tables of a merge. The program's own resident size comes on top (see
/// `docs/build.md`).
pub const FIXED_BYTES: u64 = 4 << 20;

/// Bookkeeping bytes per point resident during a partitioned build: the home partition (`u16`)
/// and, while nodes are written, the position map (`u32`).
const PARTITIONED_GLOBAL_PER_POINT: u64 = 2 + 4;

/// Partitions hold this much more than their even share, so that a capped assignment always
/// finds room.
pub const PARTITION_SLACK: f64 = 1.15;

/// Fewest rows PQ (256 centroids a subspace) and the partition k-means are trained on.
const MIN_TRAINING_ROWS: u64 = 1_024;

/// Fewest points worth a partition of their own: below this the overlap dominates.
const MIN_PARTITION_POINTS: u64 = 2_000;

/// The shape of a build: what the estimates depend on.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Points.
    pub n: u64,
    /// Dimension of the stored vectors (`dim + 1` for inner product).
    pub stored_dim: usize,
    /// Element type of the stored vectors.
    pub stored_elem: ElemType,
    /// Element type of the input file (inner product reads it, then transforms).
    pub input_elem: ElemType,
    /// Dimension of the input.
    pub dim: usize,
    /// Maximum degree `R`.
    pub max_degree: usize,
    /// The graph build's slack (lists grow to `slack · R`).
    pub slack: f32,
    /// PQ bytes per point.
    pub pq_bytes: usize,
    /// PQ training rows, at most.
    pub pq_samples: usize,
}

impl Shape {
    /// Bytes of one stored row in a [`VectorSet`](crate::data::VectorSet) (rows are padded to
    /// 64 bytes).
    pub fn stored_row(&self) -> u64 {
        ((self.stored_dim * self.stored_elem.size()).div_ceil(64) * 64) as u64
    }

    fn input_row(&self) -> u64 {
        ((self.dim * self.input_elem.size()).div_ceil(64) * 64) as u64
    }

    /// Bytes per point of the adjacency slab of a graph of at most `points` points: 16-bit ids
    /// up to [`NARROW_MAX_POINTS`], else 32-bit.
    fn adjacency_for(&self, points: u64) -> u64 {
        slab_bytes_per_point(points, self.max_degree, self.slack)
    }

    /// Bytes of PQ training over `rows` sampled rows: the sample as f32, and its per-subspace
    /// copies.
    fn pq_training(&self, rows: u64) -> u64 {
        rows * self.stored_dim as u64 * 4 * 2
    }

    /// Peak bytes of the in-memory build of `n` points (every phase's live set; the largest).
    pub fn in_memory(&self, n: u64) -> u64 {
        let vectors = n * self.stored_row();
        // Inner product reads the input, then builds a transformed copy beside it.
        let load = vectors + if self.stored_dim != self.dim { n * self.input_row() } else { 0 };
        let codes = n * self.pq_bytes as u64;
        let pq = vectors + self.pq_training(n.min(self.pq_samples as u64)) + codes;
        let graph = vectors + codes + n * self.adjacency_for(n) + graph_scratch(n, self.max_degree);
        // Writing: the compacted graph (in the slab's allocation, plus offsets), the packing
        // arrays (order, position, score, BFS seeds: u32 each; two flags) and the reordered codes.
        let write = vectors + 2 * codes + n * (self.adjacency_for(n) + 8) + n * 18;
        FIXED_BYTES + load.max(pq).max(graph).max(write)
    }

    /// Bytes resident for the whole of a partitioned build, whatever the partition size.
    fn partitioned_global(&self) -> u64 {
        self.n * (self.pq_bytes as u64 + PARTITIONED_GLOBAL_PER_POINT)
    }

    /// Whether partition graphs are built over 8-bit scalar codes of the stored rows (float rows:
    /// a quarter of the bytes; byte rows are built over as they are).
    pub fn partitions_use_codes(&self) -> bool {
        self.stored_elem == ElemType::F32
    }

    /// Bytes per point of a partition of at most `capacity` points while its graph is built:
    /// its member id, the row the graph is built over (an 8-bit code of a float row, see
    /// [`Shape::partitions_use_codes`]), the adjacency slab (which the finished graph keeps, with
    /// its offsets; 16-bit ids when the capacity allows), the packing arrays and the batch
    /// scratch.
    fn per_partition_point(&self, capacity: u64) -> u64 {
        let row = if self.partitions_use_codes() {
            (self.stored_dim as u64).div_ceil(64) * 64
        } else {
            self.stored_row()
        };
        let scratch = self.max_degree as u64 * GRAPH_SCRATCH_PER_EDGE / BATCH_SHARE;
        4 + row + self.adjacency_for(capacity) + 8 + 18 + scratch
    }

    /// Home members a merge takes at once within what a partition of `capacity` points was
    /// allowed: each holds its stored row, its two lists as read (`8 (R + 1)`), its merged list
    /// (`4 R`) and its result's bookkeeping.
    pub fn merge_rows(&self, capacity: u64) -> u64 {
        let per_member = self.stored_row() + 12 * (self.max_degree as u64 + 1) + 64;
        (self.partition_bytes(capacity) / per_member).max(1)
    }

    /// Bytes of one partition of `capacity` points while its graph is built: what the merge of
    /// a chunk of home members may use too.
    pub fn partition_bytes(&self, capacity: u64) -> u64 {
        capacity * self.per_partition_point(capacity)
    }

    /// Bytes of one partition of `capacity` points, with the fixed part of its scratch and its
    /// buffered scratch streams (the members read, the home lists and guest logs written; the
    /// merge's members and guest logs read).
    fn partition(&self, capacity: u64) -> u64 {
        capacity * self.per_partition_point(capacity) + GRAPH_SCRATCH_FIXED + SCRATCH_STREAMS_BYTES
    }

    /// Bytes of the assign pass (step 2) into `partitions` partitions: a piece of rows read and
    /// its stored copy (transformed for inner product), each row's ranking of the centroids
    /// (within the piece), and a buffered writer per partition's member file, counted twice for
    /// the partitions balancing splits off.
    fn assign(&self, partitions: u64) -> u64 {
        2 * PIECE_BYTES + 2 * partitions * MEMBER_WRITER_BYTES
    }

    /// Bytes of training PQ and the partition centroids on `rows` sampled rows.
    fn training(&self, rows: u64) -> u64 {
        self.pq_training(rows) + rows * self.stored_row()
    }

    /// Peak bytes of a partitioned build into `partitions` partitions of at most `capacity`
    /// points: the phases (training, assigning, building a partition or merging its members)
    /// follow one another.
    pub fn partitioned(&self, capacity: u64, training_rows: u64, partitions: u64) -> u64 {
        FIXED_BYTES
            + self.partitioned_global()
            + self
                .training(training_rows)
                .max(self.assign(partitions))
                .max(self.partition(capacity))
    }

    /// Partitions of at most `capacity` points for the `2n` memberships, with
    /// [`PARTITION_SLACK`] for balance.
    fn partitions_for(&self, capacity: u64) -> u64 {
        let share = capacity.max(1) as f64 / PARTITION_SLACK;
        ((2 * self.n) as f64 / share).ceil().max(2.0) as u64
    }
}

/// Bytes a streaming pass reads at once.
pub const PIECE_BYTES: u64 = 4 << 20;
/// Bytes of the buffer of each scratch stream a partition's build or merge reads or writes.
pub const SCRATCH_STREAM_BYTES: usize = 256 << 10;
/// Scratch streams open at once while a partition is built or merged: three.
const SCRATCH_STREAMS_BYTES: u64 = 3 * SCRATCH_STREAM_BYTES as u64;
/// Bytes of the buffer of each partition's member file while the assign pass writes it.
pub const MEMBER_WRITER_BYTES: u64 = 16 << 10;

/// The graph build inserts at most one point in this many at once (2%, see `vamana.rs`).
const BATCH_SHARE: u64 = 50;
/// Bytes per edge of a batch's transient arrays: the reverse edge (8), the chosen list's id (4)
/// and its candidate while pruning (8).
const GRAPH_SCRATCH_PER_EDGE: u64 = 8 + 4 + 8;
/// The graph build's transient bytes that do not grow with the points: per-thread visited sets
/// and candidate pools.
const GRAPH_SCRATCH_FIXED: u64 = 2 << 20;

/// Peak bytes of an in-memory Vamana graph build over `n` points besides their vectors: the
/// adjacency slab (lists of up to `slack · R`) and the batches' transient arrays.
pub fn graph_build_bytes(n: u64, max_degree: usize, slack: f32) -> u64 {
    n * slab_bytes_per_point(n, max_degree, slack) + graph_scratch(n, max_degree)
}

/// Bytes per point of the adjacency slab of a graph of `n` points: a length and `slack · R` id
/// slots, 16-bit up to [`NARROW_MAX_POINTS`] points, else 32-bit (see `vamana.rs`).
fn slab_bytes_per_point(n: u64, max_degree: usize, slack: f32) -> u64 {
    let cap = ((max_degree as f32 * slack) as usize).max(max_degree);
    let id_bytes = if n <= NARROW_MAX_POINTS as u64 { 2 } else { 4 };
    id_bytes * (cap as u64 + 1)
}

/// The graph build's transient arrays for `n` points: the largest batch's edges.
fn graph_scratch(n: u64, max_degree: usize) -> u64 {
    (n / BATCH_SHARE).max(1) * max_degree as u64 * GRAPH_SCRATCH_PER_EDGE + GRAPH_SCRATCH_FIXED
}

/// How the index is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Everything in RAM at once.
    InMemory,
    /// One graph over 8-bit codes of every point held in RAM, full rows read from the file to
    /// write the nodes.
    SingleGraph {
        /// Rows sampled for PQ training.
        training_rows: usize,
    },
    /// `partitions` overlapping partitions of at most `capacity` points each, built one at a time.
    Partitioned {
        /// Number of partitions.
        partitions: usize,
        /// Most points in one partition.
        capacity: usize,
        /// Rows sampled for PQ and partition training.
        training_rows: usize,
    },
}

impl Strategy {
    /// The same strategy with `partitions` partitions (the build may split crowded ones).
    pub fn with_partitions(self, partitions: usize) -> Strategy {
        match self {
            Strategy::Partitioned { capacity, training_rows, .. } => {
                Strategy::Partitioned { partitions, capacity, training_rows }
            }
            other => other,
        }
    }
}

/// The planner's choice and its estimate.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The strategy.
    pub strategy: Strategy,
    /// Estimated peak bytes of the build's own allocations (plus [`FIXED_BYTES`]).
    pub estimated_peak: u64,
    /// The budget it was planned for, if any.
    pub budget: Option<u64>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.strategy {
            Strategy::InMemory => write!(f, "in-memory build")?,
            Strategy::SingleGraph { training_rows } => write!(
                f,
                "single graph over 8-bit codes of every point, full rows read from the file to \
                 write the nodes; PQ trained on {training_rows} sampled rows"
            )?,
            Strategy::Partitioned { partitions, capacity, training_rows } => write!(
                f,
                "partitioned build: {partitions} partitions of at most {capacity} points, \
                 trained on {training_rows} sampled rows"
            )?,
        }
        write!(f, ", estimated peak {:.1} MiB", self.estimated_peak as f64 / MIB)?;
        if let Some(b) = self.budget {
            write!(f, " of a {:.1} MiB budget", b as f64 / MIB)?;
        }
        Ok(())
    }
}

const MIB: f64 = 1_048_576.0;

/// Why no plan fits the budget.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The budget cannot hold what every strategy keeps resident.
    #[error(
        "a RAM budget of {budget} bytes is too small for {n} points: the PQ codes and per-point \
         bookkeeping alone take {needed} bytes, with partitions of at least {min_partition} \
         points ({minimum} bytes in all)"
    )]
    TooSmall {
        /// The budget.
        budget: u64,
        /// Points.
        n: u64,
        /// What stays resident whatever the partitioning.
        needed: u64,
        /// The smallest partition the planner accepts.
        min_partition: u64,
        /// The smallest budget that would do.
        minimum: u64,
    },
}

/// Chooses how to build `shape` within `budget` bytes (`None`: in memory, as without a budget).
///
/// # Errors
/// [`PlanError::TooSmall`] when even the smallest partitions do not fit.
pub fn plan(shape: &Shape, budget: Option<u64>) -> Result<Plan, PlanError> {
    let in_memory = shape.in_memory(shape.n);
    let Some(budget) = budget else {
        return Ok(Plan { strategy: Strategy::InMemory, estimated_peak: in_memory, budget });
    };
    if in_memory <= budget {
        return Ok(Plan {
            strategy: Strategy::InMemory,
            estimated_peak: in_memory,
            budget: Some(budget),
        });
    }
    let min_partition = MIN_PARTITION_POINTS.min(shape.n);
    let resident = FIXED_BYTES + shape.partitioned_global();
    let available = budget.saturating_sub(resident);
    // Training rows: as many as PQ wants, within half of what the budget leaves.
    let min_training = MIN_TRAINING_ROWS.min(shape.n);
    let training_rows =
        (available / 2 / shape.training(1)).min(shape.pq_samples.max(1) as u64).min(shape.n);
    if training_rows >= min_training {
        let single = shape.partitioned(shape.n, training_rows, 1);
        if single <= budget {
            return Ok(Plan {
                strategy: Strategy::SingleGraph { training_rows: training_rows as usize },
                estimated_peak: single,
                budget: Some(budget),
            });
        }
    }
    // The most points a partition may hold: with 32-bit ids, or with 16-bit ids (about 1.5×
    // as many at R = 64) when that many stays within their limit.
    let room = available.saturating_sub(shape.partition(0));
    let wide = room / shape.per_partition_point(u64::MAX);
    let narrow_limit = NARROW_MAX_POINTS as u64;
    let narrow = (room / shape.per_partition_point(narrow_limit)).min(narrow_limit);
    let capacity = wide.max(narrow);
    let too_small = || PlanError::TooSmall {
        budget,
        n: shape.n,
        needed: resident,
        min_partition,
        minimum: shape.partitioned(
            min_partition,
            min_training,
            shape.partitions_for(min_partition),
        ),
    };
    if capacity < min_partition || training_rows < min_training {
        return Err(too_small());
    }
    // Each point is in two partitions; each holds at most `capacity`, with slack for balance.
    let partitions = shape.partitions_for(capacity) as usize;
    if partitions > u16::MAX as usize || shape.assign(partitions as u64) > available {
        return Err(too_small());
    }
    let capacity = capacity_of(shape, partitions);
    let estimated_peak = shape.partitioned(capacity, training_rows, partitions as u64);
    Ok(Plan {
        strategy: Strategy::Partitioned {
            partitions,
            capacity: capacity as usize,
            training_rows: training_rows as usize,
        },
        estimated_peak,
        budget: Some(budget),
    })
}

/// The most points one of `partitions` partitions may hold: its share of the `2n` memberships
/// (each point is in two), with [`PARTITION_SLACK`] for balance.
fn capacity_of(shape: &Shape, partitions: usize) -> u64 {
    let capacity = ((2 * shape.n) as f64 / partitions as f64 * PARTITION_SLACK).ceil() as u64;
    capacity.min(shape.n)
}

/// The partitioned build with `partitions` partitions, whatever the budget: for tests and tuning.
/// One partition is [`Strategy::SingleGraph`].
pub fn forced_partitions(shape: &Shape, partitions: usize, budget: Option<u64>) -> Plan {
    let partitions = partitions.clamp(1, (shape.n as usize).max(1)).min(u16::MAX as usize);
    let training_rows = (shape.pq_samples as u64).clamp(1, shape.n);
    if partitions == 1 {
        return Plan {
            strategy: Strategy::SingleGraph { training_rows: training_rows as usize },
            estimated_peak: shape.partitioned(shape.n, training_rows, 1),
            budget,
        };
    }
    let capacity = capacity_of(shape, partitions);
    Plan {
        strategy: Strategy::Partitioned {
            partitions,
            capacity: capacity as usize,
            training_rows: training_rows as usize,
        },
        estimated_peak: shape.partitioned(capacity, training_rows, partitions as u64),
        budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sift(n: u64, elem: ElemType) -> Shape {
        Shape {
            n,
            stored_dim: 128,
            stored_elem: elem,
            input_elem: elem,
            dim: 128,
            max_degree: 64,
            slack: 1.3,
            pq_bytes: 32,
            pq_samples: 100_000,
        }
    }

    #[test]
    fn no_budget_or_a_roomy_one_builds_in_memory() {
        let s = sift(100_000, ElemType::F32);
        assert_eq!(plan(&s, None).unwrap().strategy, Strategy::InMemory);
        assert_eq!(plan(&s, Some(8 << 30)).unwrap().strategy, Strategy::InMemory);
    }

    #[test]
    fn a_tight_budget_partitions_within_it() {
        let s = sift(1_000_000, ElemType::F32);
        let budget = 96 << 20;
        let p = plan(&s, Some(budget)).unwrap();
        let Strategy::Partitioned { partitions, capacity, .. } = p.strategy else { panic!("{p}") };
        assert!(p.estimated_peak <= budget, "{p}");
        assert!(partitions * capacity >= 2_000_000, "{p}");
    }

    #[test]
    fn between_the_two_a_single_graph_over_codes() {
        let s = sift(1_000_000, ElemType::F32);
        let single = s.partitioned(s.n, s.pq_samples as u64, 1);
        assert!(single < s.in_memory(s.n) * 2 / 3, "{single}");
        let p = plan(&s, Some(single + (1 << 20))).unwrap();
        assert!(matches!(p.strategy, Strategy::SingleGraph { .. }), "{p}");
        assert!(p.estimated_peak <= single + (1 << 20));
        let p = plan(&s, Some(single - (1 << 20))).unwrap();
        assert!(matches!(p.strategy, Strategy::Partitioned { .. }), "{p}");
    }

    /// A budget whose partitions hold fewer than 65,536 points sizes them for 16-bit ids: more
    /// points a partition than 32-bit ids allow, never more than 16 bits can name, and still
    /// within the budget. Sized for 32-bit ids they would be about two thirds as large.
    #[test]
    fn a_budget_of_small_partitions_sizes_them_for_sixteen_bit_ids() {
        let s = sift(1_000_000, ElemType::F32);
        let budget = 64 << 20;
        let p = plan(&s, Some(budget)).unwrap();
        let Strategy::Partitioned { capacity, .. } = p.strategy else { panic!("{p}") };
        assert!(p.estimated_peak <= budget, "{p}");
        assert!(capacity <= NARROW_MAX_POINTS, "{p}");
        let room = budget - FIXED_BYTES - s.partitioned_global() - s.partition(0);
        let wide = room / s.per_partition_point(u64::MAX);
        assert!(capacity as u64 > wide * 13 / 10, "{p}: 32-bit ids would allow {wide}");
    }

    #[test]
    fn a_budget_below_the_codes_is_refused_with_the_minimum() {
        let s = sift(10_000_000, ElemType::U8);
        let err = plan(&s, Some(64 << 20)).unwrap_err();
        let PlanError::TooSmall { minimum, .. } = err;
        assert!(minimum > 64 << 20);
        assert!(plan(&s, Some(minimum + (1 << 20))).is_ok(), "the stated minimum is enough");
    }
}
