//! The in-memory table of a collection's recent rows, searched exactly, and the frozen prefix
//! a flush is writing.

use arrow_array::RecordBatch;

use crate::batch::{Key, Prepared, Vectors};

/// Recent rows, in memory, searched exactly.
///
/// A flush freezes a prefix (`frozen`): those rows are being written to a segment while new rows
/// append after them. They stay readable (and killable) here until the flush installs its
/// segment and drops the prefix ([`Memtable::drain_frozen`]).
#[derive(Debug, Default)]
pub(super) struct Memtable {
    pub(super) batches: Vec<RecordBatch>,
    /// Row → (batch, row in batch).
    pub(super) locs: Vec<(u32, u32)>,
    pub(super) keys: Vec<Key>,
    /// Search vectors, one entry per batch (sharing the batch's buffer where no conversion was
    /// needed).
    pub(super) vectors: Vec<Vectors>,
    /// Per batch, the bytes its search vectors hold beside the batch (all of them when they
    /// were converted; a cosine row's inverse length when they share the batch's buffer).
    pub(super) vectors_own: Vec<usize>,
    pub(super) live: Vec<bool>,
    pub(super) live_count: usize,
    pub(super) bytes: usize,
    pub(super) frozen: Frozen,
}

/// The frozen prefix of a memtable: its first `rows` rows, `batches` batches and `bytes` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Frozen {
    pub(super) rows: usize,
    pub(super) batches: usize,
    pub(super) bytes: usize,
}

impl Memtable {
    pub(super) fn append(&mut self, p: Prepared) -> u32 {
        let first = self.keys.len() as u32;
        let b = self.batches.len() as u32;
        // Vectors sharing the batch's buffer are counted once (in the batch), with what they
        // hold beside it (a cosine row's inverse length).
        let vector_bytes =
            if p.vectors_shared { p.vectors.extra_bytes() } else { p.vectors.bytes() };
        self.bytes += Self::batch_bytes(&p.batch, vector_bytes, p.keys.len());
        self.vectors_own.push(vector_bytes);
        for i in 0..p.keys.len() {
            self.locs.push((b, i as u32));
        }
        self.live.extend(std::iter::repeat_n(true, p.keys.len()));
        self.live_count += p.keys.len();
        self.keys.extend(p.keys);
        self.vectors.push(p.vectors);
        self.batches.push(p.batch);
        first
    }

    /// What a batch of `rows` rows costs a table: the allocations it holds
    /// ([`held_bytes`](crate::batch::held_bytes)), its vectors' own bytes, and 48 bytes a row
    /// for its key, place and live flag.
    fn batch_bytes(batch: &RecordBatch, vector_bytes: usize, rows: usize) -> usize {
        crate::batch::held_bytes(batch) + vector_bytes + 48 * rows
    }

    pub(super) fn kill(&mut self, row: u32) {
        let r = row as usize;
        assert!(self.live[r], "memtable row {row} killed twice");
        self.live[r] = false;
        self.live_count -= 1;
    }

    /// Gives every batch the columns `schema` adds (nulls). Returns the bytes the table grew
    /// by, and the part of them in the frozen prefix (whose flush writes the batches it took
    /// before, under the schema it took them with).
    pub(super) fn widen(&mut self, schema: &arrow_schema::SchemaRef) -> (usize, usize) {
        let (mut grown, mut grown_frozen) = (0, 0);
        for (i, b) in self.batches.iter_mut().enumerate() {
            let wide = crate::batch::widen(b, schema);
            let more = crate::batch::held_bytes(&wide).saturating_sub(crate::batch::held_bytes(b));
            *b = wide;
            grown += more;
            if i < self.frozen.batches {
                grown_frozen += more;
            }
        }
        self.bytes += grown;
        self.frozen.bytes += grown_frozen;
        (grown, grown_frozen)
    }

    /// Marks every row so far as frozen (a flush is writing them).
    pub(super) fn freeze(&mut self) -> Frozen {
        assert_eq!(self.frozen, Frozen::default(), "a memtable frozen twice");
        self.frozen =
            Frozen { rows: self.keys.len(), batches: self.batches.len(), bytes: self.bytes };
        self.frozen
    }

    /// The live rows of the frozen prefix.
    pub(super) fn frozen_live_rows(&self) -> Vec<u32> {
        (0..self.frozen.rows as u32).filter(|&r| self.live[r as usize]).collect()
    }

    /// The live rows of the first `batches` batches, as batches (one per batch that has any), in
    /// row order.
    pub(super) fn live_batches(
        &self,
        batches: usize,
    ) -> Result<Vec<RecordBatch>, arrow_schema::ArrowError> {
        let mut out = Vec::new();
        let mut row = 0usize;
        for b in &self.batches[..batches] {
            let n = b.num_rows();
            let mask: arrow_array::BooleanArray =
                self.live[row..row + n].iter().map(|&l| Some(l)).collect();
            row += n;
            if mask.true_count() == 0 {
                continue;
            }
            out.push(if mask.true_count() == n {
                b.clone()
            } else {
                arrow_select::filter::filter_record_batch(b, &mask)?
            });
        }
        Ok(out)
    }

    /// Drops the frozen prefix (its flush installed a segment); rows after it move down by its
    /// length, so the caller re-points their keys. Returns the bytes freed.
    pub(super) fn drain_frozen(&mut self) -> usize {
        let f = std::mem::take(&mut self.frozen);
        let still_live = self.live[..f.rows].iter().filter(|&&l| l).count();
        self.live_count -= still_live;
        self.live.drain(..f.rows);
        self.keys.drain(..f.rows);
        self.locs.drain(..f.rows);
        for l in &mut self.locs {
            l.0 -= f.batches as u32;
        }
        self.batches.drain(..f.batches);
        self.vectors.drain(..f.batches);
        self.vectors_own.drain(..f.batches);
        // The per-row arrays held a whole table's rows; keep room for what is left only, so an
        // idle table costs nothing per row of the collection.
        self.live.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.locs.shrink_to_fit();
        self.bytes -= f.bytes;
        f.bytes
    }

    /// The vectors of `rows` (ascending), a chunk per batch: a batch whose rows are all taken
    /// is shared, not copied, unless its buffer holds much more than them ([`Vectors::compact`]).
    pub(super) fn select_vectors(&self, rows: &[u32], dim: usize) -> Vec<Vectors> {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let b = self.locs[rows[i] as usize].0 as usize;
            let mut in_batch = Vec::new();
            while i < rows.len() && self.locs[rows[i] as usize].0 as usize == b {
                in_batch.push(self.locs[rows[i] as usize].1);
                i += 1;
            }
            parts.push(if in_batch.len() == self.batches[b].num_rows() {
                self.vectors[b].compact()
            } else {
                self.vectors[b].select(&in_batch, dim)
            });
        }
        parts
    }

    /// Bytes of search vectors held beside the batches (vectors sharing a batch's buffer are
    /// counted with the batch).
    pub(super) fn vector_bytes(&self) -> usize {
        self.vectors_own.iter().sum()
    }
}
