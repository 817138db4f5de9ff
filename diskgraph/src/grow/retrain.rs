//! A growth that trains a new PQ codebook ([`Growth::retrain`]): a sample of the grown index's
//! rows, old and added in proportion, gathered in the scan and from the added rows, trained on
//! before the link; the write pass then encodes every node it writes with the new codebook.
//!
//! An index grown from a small one would otherwise keep a codebook trained on a few of its
//! rows for good: the 4× budget test's 1024-d rows, grown into one index with the codebook of
//! its first 400 rows, gave recall@10 0.947 at L 100, against 0.998 built fresh.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::pq::{PqError, PqParams};
use crate::source::{BinWriter, VectorFile};

use super::*;

/// The rows a retraining growth samples: positions of the old index (sorted) and rows of the
/// added ones (sorted), in proportion to their counts.
pub(super) struct SamplePlan {
    pub(super) old: Vec<u32>,
    pub(super) added: Vec<usize>,
}

impl SamplePlan {
    /// At most `max` rows of `old_n` old nodes and `added` rows, drawn without replacement with
    /// `seed`. Old positions whose node turns out dropped are skipped, so the sample may be a
    /// little smaller than planned.
    pub(super) fn new(old_n: usize, added: usize, max: usize, seed: u64) -> SamplePlan {
        let total = old_n + added;
        let take = max.min(total);
        let from_old = (take as u128 * old_n as u128).checked_div(total as u128).unwrap_or(0);
        let from_old = (from_old as usize).min(old_n);
        let from_added = (take - from_old).min(added);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut old: Vec<u32> = rand::seq::index::sample(&mut rng, old_n, from_old)
            .into_iter()
            .map(|p| p as u32)
            .collect();
        old.sort_unstable();
        let mut added_rows = rand::seq::index::sample(&mut rng, added, from_added).into_vec();
        added_rows.sort_unstable();
        SamplePlan { old, added: added_rows }
    }
}

/// The sample as it is gathered: the stored rows, written in order to a file beside the new
/// index (so that no more than a few subspaces' columns of it are ever in RAM), removed once
/// trained on.
pub(super) struct Sample {
    path: PathBuf,
    out: BinWriter,
    pub(super) filled: usize,
    /// The next planned old position to take.
    next_old: usize,
}

impl Sample {
    pub(super) fn new(h: &Header, dir: &Path) -> Result<Sample, IndexError> {
        let path = dir.join(format!("{SAMPLE_SPILL}.{}", h.elem.bin_extension()));
        let buffer = SAMPLE_WRITE_BUFFER as usize;
        let out = BinWriter::create_counting(&path, h.elem, h.dim as usize, buffer)
            .map_err(|e| IndexError::Io { path: path.clone(), source: e })?;
        Ok(Sample { path, out, filled: 0, next_old: 0 })
    }

    fn write(&mut self, row: &[u8]) -> Result<(), IndexError> {
        self.out.push(row).map_err(|e| IndexError::Io { path: self.path.clone(), source: e })
    }

    /// Called for every old node in position order in the scan: takes its stored vector if
    /// it is planned and `kept`.
    pub(super) fn offer_old(
        &mut self,
        plan: &SamplePlan,
        p: u32,
        kept: bool,
        vector: &[u8],
    ) -> Result<(), IndexError> {
        if plan.old.get(self.next_old) != Some(&p) {
            return Ok(());
        }
        self.next_old += 1;
        if kept {
            self.write(vector)?;
            self.filled += 1;
        }
        Ok(())
    }

    /// Reads the planned added rows (stored as the index stores them).
    pub(super) fn take_added(
        &mut self,
        plan: &SamplePlan,
        added: &AddedRows,
        metric: Metric,
    ) -> Result<(), IndexError> {
        for &i in &plan.added {
            let row = store_piece(added.copy(i, 1)?, metric, 0.0)?;
            self.write(row.row_bytes(0))?;
            self.filled += 1;
        }
        Ok(())
    }

    /// Trains the new codebook: `m` bytes a code, as the base's, on the rows gathered, read
    /// back from their file a few subspaces at a time ([`PqCodebook::train_from_file`]); the
    /// file is removed.
    pub(super) fn train(
        self,
        stored_metric: Metric,
        m: usize,
        params: &PqParams,
    ) -> Result<PqCodebook, IndexError> {
        if self.filled == 0 {
            return Err(IndexError::Pq(PqError::Empty));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| IndexError::Io { path, source: e }
        };
        self.out.finish().map_err(io(&self.path))?;
        let file = VectorFile::open(&self.path)?;
        debug_assert_eq!(file.len(), self.filled);
        let params = PqParams { bytes: Some(m), max_samples: file.len(), ..*params };
        let trained = PqCodebook::train_from_file(&file, stored_metric, &params);
        drop(file);
        std::fs::remove_file(&self.path).map_err(io(&self.path))?;
        Ok(trained?)
    }
}

/// The sample a retraining growth spills beside the new index (with the stored rows' file
/// extension), removed once trained on.
pub(super) const SAMPLE_SPILL: &str = "grow-sample.tmp";
/// Bytes the sample is written through.
pub(super) const SAMPLE_WRITE_BUFFER: u64 = 64 << 10;
