//! A growth's memory plan: its peak for a chunk size, and the largest chunk an allowance holds.

use super::link::LINK_SCRATCH;
use super::retrain::SAMPLE_WRITE_BUFFER;
use super::spill::{NODES_BUFFER, RUN_EDGES, run_buffer};
use super::write::patch_batch;
use super::*;
use crate::pq::file_training_bytes;

/// A growth's shape, all its memory plan needs: an old index of `old` nodes with `dropped` of
/// them dropped, `added` rows of `row_bytes` each (`dim` dimensions) added, codes of `m` bytes,
/// degree `r`, and a new codebook trained on `train_rows` sampled rows (0: the old one kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowShape {
    /// Nodes of the old index.
    pub old: u64,
    /// Of them, dropped.
    pub dropped: u64,
    /// Rows added.
    pub added: u64,
    /// Bytes of a stored row.
    pub row_bytes: u64,
    /// Bytes of a PQ code.
    pub m: u64,
    /// The graph's degree `R`.
    pub r: u64,
    /// Dimensions of a stored row.
    pub dim: u64,
    /// Rows a new codebook is trained on ([`Growth::retrain`]); 0: none is trained.
    pub train_rows: u64,
    /// Whether every code is written anew (a codebook trained, or given: [`Growth::recode`]).
    pub new_codes: bool,
}

impl GrowShape {
    /// The shape of growing `base` by `added` rows with `dropped` of its rows dropped.
    #[must_use]
    pub fn of(base: &DiskIndex, dropped: u64, added: u64) -> GrowShape {
        let h = base.header();
        let row_bytes = u64::from(h.dim) * h.elem.size() as u64;
        let (m, r) = (base.pq().bytes() as u64, u64::from(h.max_degree));
        GrowShape {
            old: h.n,
            dropped,
            added,
            row_bytes,
            m,
            r,
            dim: u64::from(h.dim),
            train_rows: 0,
            new_codes: false,
        }
    }

    /// This growth re-encoding every row with a codebook it is given ([`Growth::recode`]).
    #[must_use]
    pub fn recoding(self) -> GrowShape {
        GrowShape { new_codes: true, ..self }
    }

    /// This growth training a new codebook on `rows` sampled rows (0: keeping the old one).
    #[must_use]
    pub fn retraining(self, rows: u64) -> GrowShape {
        GrowShape { train_rows: rows.min(self.rows()), new_codes: rows > 0, ..self }
    }

    /// Rows of the grown index.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.old - self.dropped.min(self.old) + self.added
    }

    /// The most rows, at most `max`, a new codebook may be trained on for this growth's sample
    /// to fit `allowance` beside what the scan holds (the positions and dropped lists), and for
    /// the grown index's codes, all new, to fit it when opened: `None` if fewer than
    /// [`MIN_RETRAIN_ROWS`] (or all the rows, when fewer) would.
    #[must_use]
    pub fn sample_rows(&self, allowance: u64, max: u64) -> Option<u64> {
        let want = max.min(self.rows());
        let least = MIN_RETRAIN_ROWS.min(want);
        let fits = |rows: u64| self.retraining(rows).train_peak() <= allowance;
        if want == 0 || !fits(least) || self.rows() * self.m > allowance {
            return None;
        }
        Some(largest_fitting(least, want, fits))
    }

    /// Bytes held while the new codebook trains: what the scan left (positions, dropped lists)
    /// and the training ([`file_training_bytes`]); 0 when none is trained.
    fn train_peak(&self) -> u64 {
        if self.train_rows == 0 {
            return 0;
        }
        4 * self.old
            + self.dropped * (4 * self.r + 48)
            + file_training_bytes(self.train_rows, self.dim, self.m)
            + SAMPLE_WRITE_BUFFER
    }

    /// Bytes [`grow_index`] holds at its peak linking `chunk` added rows at a time (0: all at
    /// once); the old index itself, open, is the caller's. It is the larger of the growth's
    /// working set and the grown index's codes that its opening loads beside the old index's,
    /// opened sharing them ([`GrowShape::grown_codes_bytes`]).
    ///
    /// The working set: each old node's new position (4 bytes), the dropped nodes' lists, each
    /// added row's code and new position, and one chunk — its rows and codes, with their
    /// in-memory graph beside their packed out-lists while they are linked, then the lists
    /// beside the chunk's edges (those into old nodes a run at a time) while its nodes are
    /// finished and spilled; in the write pass, the last chunk's rows (kept as exact stand-ins),
    /// a batch of old nodes, the file buffers and a buffer per run of spilled edges. (200k SIFT
    /// bytes grown by 30k at once: 24.4 MiB estimated, 36.8 MiB measured for the whole `quiver
    /// grow` process, the old index's 6.2 MiB and the binary's own included.)
    #[must_use]
    pub fn peak_bytes(&self, chunk: u64) -> u64 {
        let GrowShape { old, dropped, added, row_bytes, m, r, .. } = *self;
        let c = if chunk == 0 { added } else { chunk.min(added) };
        let run_edges = (c * r).min(RUN_EDGES as u64);
        let runs =
            if c == 0 { 0 } else { added.div_ceil(c) + (added * r).div_ceil(RUN_EDGES as u64) };
        let positions = 4 * old;
        let dropped_lists = dropped * (4 * r + 48);
        let per_added = added * (m + 4);
        let slack = crate::vamana::VamanaParams::default().slack;
        let graph_build = crate::plan::graph_build_bytes(c, r as usize, slack);
        let rows = c * (row_bytes + m);
        let packed = c * (4 * r + 8);
        let link = rows + graph_build + packed + LINK_SCRATCH;
        // Finishing: the lists, the chunk's edges among itself (grouped) and a run of its edges
        // into old nodes (8 bytes each, sorted), and a batch of finished records.
        let finish = rows + packed + c * (4 * r + 4) + run_edges * 8 + LINK_SCRATCH;
        let batch = patch_batch(row_bytes, r) as u64 * (row_bytes + 12 * r + 64);
        let buffers = (SECTOR * crate::layout::SCAN_SECTORS + crate::layout::WRITE_BUFFER) as u64;
        let write = c * row_bytes + batch + buffers + NODES_BUFFER as u64 + runs * run_buffer(runs);
        // A retraining growth's write pass encodes a batch of rows at a time beside the rest.
        let encode = if self.new_codes {
            patch_batch(row_bytes, r) as u64 * (row_bytes + m) + buffers
        } else {
            0
        };
        let working = positions + dropped_lists + per_added + link.max(finish).max(write + encode);
        working.max(self.grown_codes_bytes()).max(self.train_peak())
    }

    /// Bytes of codes the grown index loads when it is opened sharing its base's codes
    /// ([`crate::search::OpenOptionsIndex::share_codes`]) while the base is open: with no row
    /// dropped, every old code stays at its position and is shared, so the added rows' codes
    /// and at most one merge of two pieces ([`crate::codes::MAX_PIECES`]: the two adjacent
    /// pieces smallest together hold at most an eighth of the codes); with rows dropped, the
    /// positions after the first move, and all of them, conservatively. A retrained codebook's
    /// codes are all new.
    #[must_use]
    pub fn grown_codes_bytes(&self) -> u64 {
        let total = self.rows() * self.m;
        if self.dropped == 0 && !self.new_codes {
            (self.added * self.m + total.div_ceil(crate::codes::MAX_PIECES as u64 / 2)).min(total)
        } else {
            total
        }
    }

    /// The most added rows a chunk may hold for the growth to peak ([`GrowShape::peak_bytes`])
    /// within `allowance`: all of them if they fit at once, else the largest chunk that fits,
    /// or `None` when not even [`MIN_CHUNK_ROWS`] does.
    #[must_use]
    pub fn chunk_rows(&self, allowance: u64) -> Option<u64> {
        let fits = |c: u64| self.peak_bytes(c) <= allowance;
        let added = self.added;
        if added == 0 || fits(added) {
            return fits(added).then_some(added);
        }
        // The peak grows with the chunk.
        fits(MIN_CHUNK_ROWS).then(|| largest_fitting(MIN_CHUNK_ROWS, added, fits))
    }
}

/// The largest `x` in `lo..=hi` for which `fits(x)` holds, `fits` being monotone (true up to
/// some point, false after) and true at `lo`.
fn largest_fitting(mut lo: u64, mut hi: u64, fits: impl Fn(u64) -> bool) -> u64 {
    debug_assert!(fits(lo), "the least value fits");
    if fits(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_picked_to_fit_the_allowance_and_none_below_the_least_chunk() {
        let shape = GrowShape {
            old: 200_000,
            dropped: 0,
            added: 150_000,
            row_bytes: 512,
            m: 32,
            r: 64,
            dim: 128,
            train_rows: 0,
            new_codes: false,
        };
        let whole = shape.peak_bytes(0);
        assert_eq!(shape.chunk_rows(whole), Some(shape.added));
        let allowance = whole / 8;
        let chunk = shape.chunk_rows(allowance).expect("a chunk fits");
        assert!(chunk < shape.added && chunk >= MIN_CHUNK_ROWS, "chunk {chunk}");
        assert!(shape.peak_bytes(chunk) <= allowance);
        assert!(shape.peak_bytes(chunk + 1) > allowance);
        // The grown index's codes alone would not fit: no chunk helps.
        let dropping = GrowShape { dropped: 10, ..shape };
        let codes = dropping.grown_codes_bytes();
        assert_eq!(codes, (200_000 - 10 + 150_000) * 32, "with rows dropped, every code is loaded");
        assert_eq!(dropping.chunk_rows(codes - 1), None);
        // With none dropped, only the added codes and one merge of pieces are loaded.
        let big = GrowShape { old: 1_000_000, added: 30_000, ..shape };
        assert_eq!(big.grown_codes_bytes(), 30_000 * 32 + (1_030_000 * 32u64).div_ceil(8));
        assert!(big.grown_codes_bytes() < GrowShape { dropped: 1, ..big }.grown_codes_bytes() / 4);
    }

    #[test]
    fn a_retraining_growths_sample_is_cut_to_fit_and_its_codes_are_counted_whole() {
        let shape = GrowShape {
            old: 40_000,
            dropped: 0,
            added: 40_000,
            row_bytes: 512,
            m: 32,
            r: 64,
            dim: 128,
            train_rows: 0,
            new_codes: false,
        };
        // Unbounded: every row up to the cap.
        assert_eq!(shape.sample_rows(u64::MAX, 100_000), Some(80_000));
        assert_eq!(shape.sample_rows(u64::MAX, 30_000), Some(30_000));
        // 4 MiB: the sample shrinks to what fits beside the positions.
        let allowance = 4 << 20;
        let rows = shape.sample_rows(allowance, 100_000).expect("a sample fits");
        assert!((MIN_RETRAIN_ROWS..80_000).contains(&rows), "{rows} rows");
        let retraining = shape.retraining(rows);
        assert!(retraining.train_peak() <= allowance);
        assert!(shape.retraining(rows + 1).train_peak() > allowance);
        // The grown index's codes are all new: no sharing with the base's.
        assert_eq!(retraining.grown_codes_bytes(), 80_000 * 32);
        assert!(retraining.peak_bytes(0) >= shape.peak_bytes(0));
        // Too little for the least sample: none.
        let least = shape.retraining(MIN_RETRAIN_ROWS).train_peak();
        assert_eq!(shape.sample_rows(least - 1, 100_000), None);
    }
}
