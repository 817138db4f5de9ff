//! [`Options`]: how a database is opened, with documented defaults.

use std::sync::Arc;
use std::time::Duration;

use quiver_wal::vfs::{OsVfs, Vfs};
use quiver_wal::{Compression, SyncPolicy};

use quiver_diskgraph::index::BuildParams;
use quiver_diskgraph::search::OpenOptionsIndex;

/// Options for [`crate::Database::open`]. `Options::default()` gives the documented defaults;
/// each setter documents its own.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) memtable_bytes: usize,
    pub(crate) row_group_rows: usize,
    pub(crate) row_group_bytes: usize,
    pub(crate) memory_budget: Option<usize>,
    /// Whether the sector cache is sized from the memory budget (set by `memory_budget`,
    /// cleared by an explicit `sector_cache_bytes`).
    pub(crate) cache_from_budget: bool,
    pub(crate) parquet_zstd_level: i32,
    pub(crate) wal_sync: SyncPolicy,
    pub(crate) wal_segment_bytes: u64,
    pub(crate) wal_compression: Compression,
    pub(crate) wal_direct_io: bool,
    pub(crate) build_indexes: bool,
    pub(crate) min_index_rows: usize,
    pub(crate) label_graph_min_rows: usize,
    pub(crate) index_params: BuildParams,
    pub(crate) index_open: OpenOptionsIndex,
    pub(crate) sector_cache_bytes: usize,
    pub(crate) background_nice: i32,
    pub(crate) background_idle: bool,
    pub(crate) background_threads: usize,
    pub(crate) merge_min_segments: usize,
    pub(crate) merge_max_rows: u64,
    pub(crate) max_growth_share: f64,
    pub(crate) max_unindexed_segments: usize,
    pub(crate) max_stall: Duration,
    pub(crate) max_batch_rows: usize,
    pub(crate) background: bool,
    pub(crate) cut_truncated_wal: bool,
    pub(crate) idle_flush: Option<Duration>,
    pub(crate) node_read_cost: Option<Duration>,
}

/// [`Options::max_growth_share`]'s default: a merge grows an index by at most an eighth of its
/// rows. On 2 cores (BENCHMARKS.md, "A growth costs more than a rebuild past about a tenth
/// added: merges now rebuild past an eighth") a growth costs about 1.1 ms per added row and a
/// build 0.12 ms per row of the whole: they break even near a tenth.
pub const DEFAULT_MAX_GROWTH_SHARE: f64 = 0.125;

/// [`Options::sector_cache_bytes`]'s default: 128 MiB.
pub const DEFAULT_SECTOR_CACHE_BYTES: usize = 128 << 20;

/// [`Options::row_group_bytes`]'s default: 64 MiB.
pub const DEFAULT_ROW_GROUP_BYTES: usize = 64 << 20;

/// The smallest [`Options::memory_budget`] taken: 16 MiB (a smaller one is raised to it).
pub const MIN_MEMORY_BUDGET: usize = 16 << 20;

/// How a [`Options::memory_budget`] is shared out, in 32nds of the budget.
///
/// | share | what | 32nds |
/// |---|---|---|
/// | in-memory tables | `memtable_bytes` = 1/16, and the second table writers fill during a flush | 4 |
/// | unindexed segments | `max_unindexed_segments` = 2 flushed tables' search vectors (and `min_index_rows` = 256, so every flushed table gets an index) | 4 |
/// | ingest | the WAL's pooled record buffers (1/32), one client message being received (1/16, what `quiver serve` accepts) and the batches in flight, decoded and logged but not yet acknowledged (1/16, `quiver serve`'s ingest gate: a batch counts twice, for its WAL record) | 5 |
/// | a row group being encoded | `row_group_bytes` = 1/32 | 1 |
/// | an index build or merge | at least 1/8, more when the structures below leave room (the cache gives it up while the build runs) | 4 |
/// | per-row structures and the sector cache | the rest: the cache gets what the key maps, segment keys, deletion sets and indexes' codes do not use | 14 |
pub mod budget_shares {
    /// `memtable_bytes` = budget / this.
    pub const MEMTABLE: usize = 16;
    /// The least an index build gets: budget / this.
    pub const BUILD: usize = 8;
    /// `row_group_bytes` = budget / this.
    pub const ROW_GROUP: usize = 32;
    /// The WAL's pooled record buffers: budget / this in all.
    pub const WAL_POOL: usize = 32;
    /// The largest client message a server under this budget accepts: budget / this.
    pub const MESSAGE: usize = 16;
    /// The ingest batches a server under this budget holds in flight (decoded and logged, not
    /// yet acknowledged, each counted twice for its WAL record): budget / this.
    pub const IN_FLIGHT: usize = 16;
    /// `wal_segment_bytes` = budget / this (1 MiB to 64 MiB): opening reads a segment whole.
    pub const WAL_SEGMENT: usize = 16;
    /// Unindexed segments whose vectors stay in RAM (each up to one table); later ones are cold.
    pub const UNINDEXED_SEGMENTS: usize = 2;
    /// Segments of fewer rows stay unindexed (searched exactly) until merged.
    pub const MIN_INDEX_ROWS: usize = 256;
    /// 32nds of the budget held for everything but a build and the rest: the tables, the
    /// unindexed segments, ingest and a row group.
    pub const NOT_BUILD_32NDS: usize = 14;
    /// 32nds of the budget the transient shares reserve (the above and a build's least); the
    /// rest is for per-row structures and the cache.
    pub const RESERVED_32NDS: usize = NOT_BUILD_32NDS + 32 / BUILD;
}

impl Default for Options {
    fn default() -> Self {
        Options {
            vfs: Arc::new(OsVfs),
            memtable_bytes: 64 << 20,
            row_group_rows: 64 * 1024,
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            memory_budget: None,
            cache_from_budget: false,
            parquet_zstd_level: 1,
            wal_sync: SyncPolicy::EveryGroup,
            wal_segment_bytes: 64 << 20,
            wal_compression: Compression::None,
            wal_direct_io: true,
            build_indexes: true,
            min_index_rows: 4096,
            label_graph_min_rows: 16_384,
            index_params: BuildParams::default(),
            index_open: OpenOptionsIndex::default(),
            sector_cache_bytes: DEFAULT_SECTOR_CACHE_BYTES,
            node_read_cost: None,
            background_nice: 10,
            background_idle: true,
            background_threads: 0,
            merge_min_segments: 4,
            merge_max_rows: 4 << 20,
            max_growth_share: DEFAULT_MAX_GROWTH_SHARE,
            max_unindexed_segments: 4,
            max_stall: Duration::from_secs(600),
            max_batch_rows: 1 << 20,
            background: true,
            cut_truncated_wal: false,
            idle_flush: Some(Duration::from_secs(5)),
        }
    }
}

impl Options {
    /// The defaults (same as `Options::default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The file system (default: the real one, [`OsVfs`]). Tests pass a
    /// [`quiver_wal::vfs::sim::SimVfs`] to inject faults and crashes. Disk indexes need a real
    /// file system: on a simulated one, segments stay unindexed and are searched exactly.
    #[must_use]
    pub fn vfs(mut self, vfs: Arc<dyn Vfs>) -> Self {
        self.vfs = vfs;
        self
    }

    /// Memory the in-memory table of recent rows may use (all collections together) before it is
    /// written out as Parquet segments. Default 64 MiB. A write that would take the table past
    /// it starts a new table (an empty table takes any write). The flush runs beside the
    /// writers, who fill the new table meanwhile, so the tables hold at most twice this.
    #[must_use]
    pub fn memtable_bytes(mut self, bytes: usize) -> Self {
        self.memtable_bytes = bytes.max(1);
        self
    }

    /// Rows per Parquet row group. Default 65,536.
    #[must_use]
    pub fn row_group_rows(mut self, rows: usize) -> Self {
        self.row_group_rows = rows.max(1);
        self
    }

    /// The most bytes of rows a segment's row group holds (estimated from the schema's row
    /// size), besides [`Options::row_group_rows`]: writing a segment buffers a row group, and a
    /// merge reads its inputs in batches of at most this many bytes. Default 64 MiB.
    #[must_use]
    pub fn row_group_bytes(mut self, bytes: usize) -> Self {
        self.row_group_bytes = bytes.max(1);
        self
    }

    /// Bounds the database's resident memory to about `bytes` (at least [`MIN_MEMORY_BUDGET`]),
    /// shared out as [`budget_shares`] says: sets [`Options::memtable_bytes`],
    /// [`Options::max_unindexed_segments`], [`Options::min_index_rows`], the WAL's buffer pool
    /// and [`Options::wal_segment_bytes`],
    /// the index build's `ram_budget`
    /// ([`Options::index_params`]) and [`Options::row_group_bytes`], and sizes the sector cache
    /// to what the structures that grow with the data (key maps, segment keys, deletion sets,
    /// index codes; [`crate::ResidentBytes`]) leave of the budget, re-sized as they grow. A
    /// setter called after this one overrides its pick, except the build's `ram_budget`: under
    /// a budget every index build gets what the budget leaves it (at least 1/8). Not counted:
    /// the process's fixed
    /// memory (code, thread stacks, I/O rings), which `docs/memory.md` states. Default: no
    /// budget.
    #[must_use]
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        use budget_shares::*;
        let b = bytes.max(MIN_MEMORY_BUDGET);
        self.memory_budget = Some(b);
        self.memtable_bytes = b / MEMTABLE;
        self.max_unindexed_segments = UNINDEXED_SEGMENTS;
        self.min_index_rows = MIN_INDEX_ROWS;
        self.index_params.ram_budget = Some((b / BUILD) as u64);
        self.row_group_bytes = b / ROW_GROUP;
        // Opening reads a WAL segment whole to scan it: a 64 MiB segment was a 64 MiB peak.
        self.wal_segment_bytes = (b / WAL_SEGMENT).clamp(1 << 20, 64 << 20) as u64;
        self.cache_from_budget = true; // sized at open, and after every change, from the rest
        self
    }

    /// zstd level of Parquet segments. Default 1.
    #[must_use]
    pub fn parquet_zstd_level(mut self, level: i32) -> Self {
        self.parquet_zstd_level = level;
        self
    }

    /// When the WAL syncs. Default [`SyncPolicy::EveryGroup`]: a write returns only once durable.
    /// The other policies lose acknowledged writes on power loss (see `docs/durability.md`).
    #[must_use]
    pub fn wal_sync(mut self, policy: SyncPolicy) -> Self {
        self.wal_sync = policy;
        self
    }

    /// WAL segment size. Default 64 MiB.
    #[must_use]
    pub fn wal_segment_bytes(mut self, bytes: u64) -> Self {
        self.wal_segment_bytes = bytes;
        self
    }

    /// WAL record compression. Default none (vectors compress poorly).
    #[must_use]
    pub fn wal_compression(mut self, compression: Compression) -> Self {
        self.wal_compression = compression;
        self
    }

    /// Whether the WAL is written with direct I/O where the file system has it (see
    /// [`quiver_wal::WalOptions::direct_io`]): it skips the page cache's copy of every record.
    /// Default true.
    #[must_use]
    pub fn wal_direct_io(mut self, direct: bool) -> Self {
        self.wal_direct_io = direct;
        self
    }

    /// Whether background work builds a disk index for each segment of at least
    /// [`Options::min_index_rows`] rows. Default true.
    #[must_use]
    pub fn build_indexes(mut self, on: bool) -> Self {
        self.build_indexes = on;
        self
    }

    /// Segments smaller than this stay unindexed (searched exactly, vectors in RAM) until merged.
    /// Default 4,096.
    #[must_use]
    pub fn min_index_rows(mut self, rows: usize) -> Self {
        self.min_index_rows = rows.max(1);
        self
    }

    /// The fewest rows a value of a label column
    /// ([`CollectionSchema::with_label_graph`](crate::CollectionSchema::with_label_graph)) must
    /// hold in an indexed segment to get a graph of its own there. Fewer rows are ranked by
    /// their PQ codes, which costs about 10 ns a row: below some thousands that is cheaper than
    /// a walk. Default 16,384.
    #[must_use]
    pub fn label_graph_min_rows(mut self, rows: usize) -> Self {
        self.label_graph_min_rows = rows.max(1);
        self
    }

    /// Disk index build parameters. Default [`BuildParams::default`].
    #[must_use]
    pub fn index_params(mut self, params: BuildParams) -> Self {
        self.index_params = params;
        self
    }

    /// The disk index build parameters in effect (after [`Options::memory_budget`], say).
    #[must_use]
    pub fn index_build_params(&self) -> &BuildParams {
        &self.index_params
    }

    /// How disk indexes are opened (I/O backend, `O_DIRECT`, node cache). Default
    /// [`OpenOptionsIndex::default`]. A `sector_cache` set here is used as given (it may be
    /// shared with other databases) and [`Options::sector_cache_bytes`] is ignored.
    #[must_use]
    pub fn index_open(mut self, opts: OpenOptionsIndex) -> Self {
        self.index_open = opts;
        self
    }

    /// How far below searches and writes the background worker's threads (index builds,
    /// merges) are scheduled: a nice increment, 0..=19. At 10, a runnable search thread gets
    /// about ten times a build thread's share of a contended core; an idle core still goes to
    /// the builds. Higher favours search latency over indexing speed under load. Default 10.
    #[must_use]
    pub fn background_nice(mut self, increment: i32) -> Self {
        self.background_nice = increment.clamp(0, 19);
        self
    }

    /// Whether the background worker's build threads (index builds, merges) run in Linux's idle
    /// scheduling class (`SCHED_IDLE`), so that a search or write thread waking on a core they
    /// hold takes it at once: on 2 cores, search p99 while 30k rows were indexed beside 200k
    /// was 1.7–1.8× idle this way against 2.5–2.9× at nice 10, and the indexing took 1.5× as
    /// long. Paced: whenever the build threads get less than a quarter of a core over half a
    /// second (the cores saturated by searches), the next half second runs at
    /// [`Options::background_nice`] in the normal class, so background work is never starved.
    /// Used only where the process may leave the idle class again (`CAP_SYS_NICE`, or an
    /// `RLIMIT_NICE` that allows the nice value); elsewhere the threads run at their nice
    /// value. Default true; false runs them at their nice value always.
    #[must_use]
    pub fn background_idle(mut self, idle: bool) -> Self {
        self.background_idle = idle;
        self
    }

    /// Threads of the background worker's index builds and merges; 0 (the default) means one
    /// per core (at most 64). Fewer leave cores to searches while indexing runs longer: on a
    /// small machine under search load, the background work's threads otherwise take turns with
    /// the search threads on every core, and search tail latency pays.
    #[must_use]
    pub fn background_threads(mut self, threads: usize) -> Self {
        self.background_threads = threads;
        self
    }

    /// Bytes of RAM for verified index sectors, shared by every disk index of the database
    /// (CLOCK eviction; see `quiver_diskgraph::cache`): a collection whose hot sectors fit
    /// searches from memory. 0 turns the cache off. Default 128 MiB; with a
    /// [`Options::memory_budget`], what the budget leaves (unless this is called after it).
    #[must_use]
    pub fn sector_cache_bytes(mut self, bytes: usize) -> Self {
        self.sector_cache_bytes = bytes;
        self.cache_from_budget = false;
        self
    }

    /// What the filtered-search planner takes a node read of a disk index to cost (as
    /// PostgreSQL's `random_page_cost`): it ranks a segment's passing rows by PQ (`L` reads)
    /// or walks its graph with failing rows as waypoints (about `0.7 · L / share` reads), whichever
    /// costs less. Default `None`: estimated from the sector cache's recent hit rate, between
    /// about 2 µs a read from the cache and 25 µs from the disk (and the disk's, without a
    /// cache). Fix it for predictable plans, or for a device much slower or faster than NVMe.
    #[must_use]
    pub fn node_read_cost(mut self, cost: Option<Duration>) -> Self {
        self.node_read_cost = cost;
        self
    }

    /// Merging starts once a collection has this many segments: the others are absorbed into
    /// its largest index (once they hold 1/64 of its rows, or 15 of them wait; with half as
    /// many segments once they hold more rows than it), by growing it while they add at most
    /// [`Options::max_growth_share`] of its rows, else by rebuilding one index of them all;
    /// without an index to grow, size tiers of this many segments of at most
    /// [`Options::merge_max_rows`] rows are merged and rebuilt. So a search walks fewer graphs than this once background
    /// work has caught up. Default 4; 0 disables merging.
    #[must_use]
    pub fn merge_min_segments(mut self, n: usize) -> Self {
        self.merge_min_segments = n;
        self
    }

    /// Segments above this many rows are not merged further by the size tiers (the index a
    /// collection grows has no cap). Default 4 Mi rows.
    #[must_use]
    pub fn merge_max_rows(mut self, rows: u64) -> Self {
        self.merge_max_rows = rows;
        self
    }

    /// A merge grows the collection's largest index (links the other segments' rows into it)
    /// while they add at most this share of its live rows; past it, the merge rebuilds one
    /// index of them all, which then costs less. Default [`DEFAULT_MAX_GROWTH_SHARE`]; taken
    /// within 0..=1 (1: grow while the index holds half the merged rows; 0: always rebuild).
    /// Under a memory budget, a rebuild that does not fit gives way to the growth while the
    /// others hold no more rows than the index (its peak is bounded by linking a chunk at a
    /// time); a merge neither fits is cut down to the segments that fit.
    #[must_use]
    pub fn max_growth_share(mut self, share: f64) -> Self {
        self.max_growth_share =
            if share.is_nan() { DEFAULT_MAX_GROWTH_SHARE } else { share.clamp(0.0, 1.0) };
        self
    }

    /// How many unindexed segments may hold their search vectors in RAM (indexing on). A flush
    /// past that installs its segment cold: searched from its file until indexed, its vectors
    /// read back by the index build. Flushes, and the inserts behind them, never wait for
    /// index builds. Default 4.
    #[must_use]
    pub fn max_unindexed_segments(mut self, n: usize) -> Self {
        self.max_unindexed_segments = n.max(1);
        self
    }

    /// The longest a write waits for memory (a flush to free the memtables) before failing
    /// with [`crate::WriteError::Stalled`]. Default 600 s.
    #[must_use]
    pub fn max_stall(mut self, d: Duration) -> Self {
        self.max_stall = d;
        self
    }

    /// The most rows one insert or delete call may carry. Default 1 Mi.
    #[must_use]
    pub fn max_batch_rows(mut self, rows: usize) -> Self {
        self.max_batch_rows = rows.max(1);
        self
    }

    /// Whether background threads flush full memtables (a flusher) and build indexes and merge
    /// segments (a worker). Default true. With false, a writer that finds the memtables full
    /// flushes on its own thread, and [`crate::Database::run_background`] does the index and
    /// merge work on the caller's thread (tests).
    #[must_use]
    pub fn background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// Whether opening may cut a *truncated* WAL (its last segment shorter than the space
    /// reserved for it and ending inside a record, which no crash leaves: see
    /// [`crate::OpenError::Wal`] with `quiver_wal::OpenError::Truncated`) at its last whole
    /// record, losing the records after it, some of which may have been acknowledged. Default
    /// false: opening refuses and changes nothing, so the file can be restored first.
    #[must_use]
    pub fn cut_truncated_wal(mut self, cut: bool) -> Self {
        self.cut_truncated_wal = cut;
        self
    }

    /// Flush the in-memory table once no write has arrived for this long, so rows reach a
    /// Parquet segment (and, above `min_index_rows`, a disk index) without waiting for the
    /// table to fill: a collection that stops growing becomes fully indexed. Default 5 s;
    /// `None` flushes only when the table is full (or on [`crate::Database::flush`]). Needs the
    /// background threads.
    #[must_use]
    pub fn idle_flush(mut self, after: Option<Duration>) -> Self {
        self.idle_flush = after;
        self
    }
}
