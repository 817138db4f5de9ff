//! An open index's PQ codes, held in pieces that a grown index shares with the index it grew
//! from.
//!
//! A growth that drops no rows keeps every old node at its position, so the grown index's
//! codes begin with the old index's, byte for byte. Opened with the old index's codes to share
//! ([`crate::search::OpenOptionsIndex::share_codes`]), the new index holds the old pieces that
//! its file repeats (checked against the file as it is read, with its checksum) and loads
//! only the rest: a collection's index grown by a batch costs the batch's codes, not a second
//! copy of every code, while both are open. Each growth adds a piece; past [`MAX_PIECES`]
//! the two adjacent pieces smallest together are merged (a copy of those two only).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use quiver_simd::{Isa, Kernels, PqTable, PqTableU8};

use crate::pq::{PqFileError, read_codes_prefix};

/// Most pieces an index's codes are held in.
pub const MAX_PIECES: usize = 16;
/// Bytes read from a codes file at a time while it is checked against shared pieces.
const READ_BLOCK: usize = 1 << 20;

/// One piece: the codes of positions `first..first + bytes.len() / m`.
#[derive(Clone, Debug)]
struct Piece {
    first: u32,
    /// A `Vec` behind the `Arc`: made from a loaded buffer without a copy.
    bytes: Arc<Vec<u8>>,
}

/// Every node's PQ code, `m` bytes each, in position order.
#[derive(Clone, Debug)]
pub struct Codes {
    m: usize,
    rows: usize,
    pieces: Vec<Piece>,
}

/// Scratch of [`Codes::score_ids`] over several pieces.
#[derive(Default)]
struct Scratch {
    /// (piece, slot) of each id.
    slots: Vec<(u32, u32)>,
    /// The ids of one piece, from its first.
    local: Vec<u32>,
    /// Their distances.
    scored: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Codes {
    /// Codes of `bytes.len() / m` nodes in one piece.
    ///
    /// # Panics
    /// If `m` is 0 or does not divide `bytes.len()`.
    #[must_use]
    pub fn whole(m: usize, bytes: Vec<u8>) -> Codes {
        assert!(m > 0 && bytes.len().is_multiple_of(m), "whole codes of {m} bytes");
        let rows = bytes.len() / m;
        let pieces = if bytes.is_empty() {
            Vec::new()
        } else {
            vec![Piece { first: 0, bytes: Arc::new(bytes) }]
        };
        Codes { m, rows, pieces }
    }

    /// Bytes per code.
    #[must_use]
    pub fn m(&self) -> usize {
        self.m
    }

    /// Codes held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Pieces the codes are held in.
    #[must_use]
    pub fn pieces(&self) -> usize {
        self.pieces.len()
    }

    /// Bytes of codes held (shared pieces included).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.rows * self.m
    }

    /// Bytes of pieces this holds that `other` holds too (the same allocation).
    #[must_use]
    pub fn shared_with(&self, other: &Codes) -> usize {
        let held = |p: &Piece| other.pieces.iter().any(|q| Arc::ptr_eq(&p.bytes, &q.bytes));
        self.pieces.iter().filter(|p| held(p)).map(|p| p.bytes.len()).sum()
    }

    fn piece_of(&self, id: u32) -> usize {
        self.pieces.partition_point(|p| p.first <= id) - 1
    }

    /// The code of position `id`.
    ///
    /// # Panics
    /// If `id` is not below [`Codes::len`].
    #[must_use]
    pub fn code(&self, id: u32) -> &[u8] {
        assert!((id as usize) < self.rows, "code {id} of {}", self.rows);
        let p = &self.pieces[self.piece_of(id)];
        let at = (id - p.first) as usize * self.m;
        &p.bytes[at..at + self.m]
    }

    /// Every code in position order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.pieces.iter().flat_map(|p| p.bytes.chunks_exact(self.m))
    }

    /// The PQ distances of positions `ids` through `table`, into `out` (as
    /// [`Kernels::pq_score_ids`] over one contiguous array).
    pub fn score_ids(&self, kernels: Isa, table: PqTable<'_>, ids: &[u32], out: &mut [f32]) {
        if let [one] = self.pieces.as_slice() {
            kernels.pq_score_ids(table, &one.bytes, ids, out);
            return;
        }
        if ids.is_sorted() {
            self.for_each_run(ids, |bytes, local, run| {
                kernels.pq_score_ids(table, bytes, local, &mut out[run]);
            });
            return;
        }
        SCRATCH.with(|scratch| {
            let Scratch { slots, local, scored } = &mut *scratch.borrow_mut();
            slots.clear();
            slots.extend(
                ids.iter().enumerate().map(|(j, &id)| (self.piece_of(id) as u32, j as u32)),
            );
            slots.sort_unstable();
            for run in slots.chunk_by(|a, b| a.0 == b.0) {
                let piece = &self.pieces[run[0].0 as usize];
                local.clear();
                local.extend(run.iter().map(|&(_, j)| ids[j as usize] - piece.first));
                scored.resize(local.len(), 0.0);
                kernels.pq_score_ids(table, &piece.bytes, local, scored);
                for (&(_, j), &d) in run.iter().zip(scored.iter()) {
                    out[j as usize] = d;
                }
            }
        });
    }

    /// The byte-table sums of ascending positions `ids` through `table`, into `out` (as
    /// [`Kernels::pq_score_ids_u8`] over one contiguous array).
    ///
    /// # Panics
    /// If `ids` are not ascending, or as the kernel.
    pub fn score_ids_u8(&self, kernels: Isa, table: PqTableU8<'_>, ids: &[u32], out: &mut [u16]) {
        assert_eq!(ids.len(), out.len(), "{} ids, {} sums", ids.len(), out.len());
        if let [one] = self.pieces.as_slice() {
            kernels.pq_score_ids_u8(table, &one.bytes, ids, out);
            return;
        }
        assert!(ids.is_sorted(), "byte-table scoring takes ascending positions");
        self.for_each_run(ids, |bytes, local, run| {
            kernels.pq_score_ids_u8(table, bytes, local, &mut out[run]);
        });
    }

    /// Splits ascending `ids` into a run per piece (found by bisection, so the codes are read
    /// front to back) and calls `each` with the piece's codes, the run's ids counted from the
    /// piece's first, and where the run lies in `ids`.
    fn for_each_run(
        &self,
        ids: &[u32],
        mut each: impl FnMut(&[u8], &[u32], std::ops::Range<usize>),
    ) {
        let mut start = 0;
        for piece in &self.pieces {
            let end = piece.first as usize + piece.bytes.len() / self.m;
            let here = start + ids[start..].partition_point(|&id| (id as usize) < end);
            if here > start {
                SCRATCH.with(|scratch| {
                    let local = &mut scratch.borrow_mut().local;
                    local.clear();
                    local.extend(ids[start..here].iter().map(|&id| id - piece.first));
                    each(&piece.bytes, local, start..here);
                });
            }
            start = here;
        }
        assert!(start == ids.len(), "code {} of {}", ids[start], self.rows);
    }

    /// Reads a `pq_codes.bin` (checksum verified), holding the pieces of `share` that the file
    /// repeats at the same positions instead of copies, and loading the rest; then merges
    /// pieces down to [`MAX_PIECES`]. Returns `m` and the codes.
    ///
    /// # Errors
    /// [`PqFileError`] for a missing, damaged or truncated file.
    pub fn read_sharing(path: &Path, share: Option<&Codes>) -> Result<(usize, Codes), PqFileError> {
        let io = |e| PqFileError::Io { path: path.to_owned(), source: e };
        let (mut file, prefix, m, n) = read_codes_prefix(path)?;
        let mut crc = crc32c::crc32c(&prefix);
        let share = share.filter(|s| s.m == m).map_or(&[][..], |s| s.pieces.as_slice());
        let mut kept: Vec<Piece> = Vec::new();
        let mut own: Vec<u8> = Vec::new();
        // The shared piece being matched, and how many of its bytes matched so far.
        let (mut k, mut matched) = (0usize, 0usize);
        let mut sharing = !share.is_empty();
        let total = n as usize * m;
        let mut left = total;
        if !sharing {
            own.reserve_exact(total);
        }
        let mut block = vec![0u8; READ_BLOCK.min(left)];
        while left > 0 {
            let len = block.len().min(left);
            file.read_exact(&mut block[..len]).map_err(io)?;
            crc = crc32c::crc32c_append(crc, &block[..len]);
            left -= len;
            let mut rest = &block[..len];
            while sharing && !rest.is_empty() {
                let piece = &share[k];
                let take = (piece.bytes.len() - matched).min(rest.len());
                if piece.bytes[matched..matched + take] != rest[..take] {
                    sharing = false;
                    let kept_bytes: usize = kept.iter().map(|p| p.bytes.len()).sum();
                    own.reserve_exact(total - kept_bytes);
                    own.extend_from_slice(&piece.bytes[..matched]);
                    break;
                }
                (matched, rest) = (matched + take, &rest[take..]);
                if matched == piece.bytes.len() {
                    kept.push(piece.clone());
                    (k, matched) = (k + 1, 0);
                    sharing = k < share.len();
                    if !sharing {
                        own.reserve_exact(total - (total - left - rest.len()));
                    }
                }
            }
            if !sharing {
                own.extend_from_slice(rest);
            }
        }
        if sharing && matched > 0 {
            own.extend_from_slice(&share[k].bytes[..matched]);
        }
        let mut stored = [0u8; 4];
        file.read_exact(&mut stored).map_err(io)?;
        let stored = u32::from_le_bytes(stored);
        if stored != crc {
            return Err(PqFileError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "checksum {crc:#010x}, stored {stored:#010x} (damaged or truncated)"
                ),
            });
        }
        let first = kept.iter().map(|p| p.bytes.len() / m).sum::<usize>() as u32;
        if !own.is_empty() {
            kept.push(Piece { first, bytes: Arc::new(own) });
        }
        let mut codes = Codes { m, rows: n as usize, pieces: kept };
        codes.merge_down();
        Ok((m, codes))
    }

    /// Merges the two adjacent pieces smallest together until at most [`MAX_PIECES`] remain.
    fn merge_down(&mut self) {
        while self.pieces.len() > MAX_PIECES {
            let pair = |i: &usize| self.pieces[*i].bytes.len() + self.pieces[i + 1].bytes.len();
            let i = (0..self.pieces.len() - 1).min_by_key(pair).expect("two pieces or more");
            let second = self.pieces.remove(i + 1);
            let merged: Vec<u8> =
                self.pieces[i].bytes.iter().chain(second.bytes.iter()).copied().collect();
            self.pieces[i].bytes = Arc::new(merged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of `sizes` rows of `m`-byte codes whose bytes name their row.
    fn pieces(m: usize, sizes: &[usize]) -> Codes {
        let mut first = 0u32;
        let mut out = Vec::new();
        for &rows in sizes {
            let bytes: Vec<u8> =
                (first..first + rows as u32).flat_map(|r| vec![(r % 251) as u8; m]).collect();
            out.push(Piece { first, bytes: Arc::new(bytes) });
            first += rows as u32;
        }
        Codes { m, rows: first as usize, pieces: out }
    }

    #[test]
    fn a_code_is_found_in_whichever_piece_holds_it() {
        let codes = pieces(4, &[3, 1, 5]);
        let whole: Vec<&[u8]> = codes.iter().collect();
        assert_eq!(whole.len(), 9);
        for id in 0..9u32 {
            assert_eq!(codes.code(id), &[(id % 251) as u8; 4], "code {id}");
            assert_eq!(codes.code(id), whole[id as usize]);
        }
    }

    #[test]
    fn scores_over_pieces_match_one_piece_for_ascending_and_shuffled_ids() {
        // Ascending ids are split into runs by bisection, others sorted by piece: both must
        // give each id its own code's distance, in the caller's order.
        let m = 4;
        let split = pieces(m, &[3, 1, 5, 7]);
        let whole = Codes::whole(m, split.iter().flatten().copied().collect());
        let table: Vec<f32> = (0..m * 256).map(|i| (i % 97) as f32 * 0.5).collect();
        let table = PqTable::new(&table, m);
        let kernels = Isa::active();
        for ids in [vec![0u32, 2, 3, 4, 8, 9, 15], vec![15u32, 3, 0, 9, 4], vec![5, 6, 7]] {
            let (mut got, mut want) = (vec![0.0; ids.len()], vec![0.0; ids.len()]);
            split.score_ids(kernels, table, &ids, &mut got);
            whole.score_ids(kernels, table, &ids, &mut want);
            assert_eq!(got, want, "ids {ids:?}");
        }
    }

    #[test]
    fn byte_sums_over_pieces_match_one_piece() {
        // Runs long enough for the 64-code blocks of the SIMD scorer inside each piece.
        let m = 12;
        let split = pieces(m, &[70, 3, 130, 1, 200]);
        let whole = Codes::whole(m, split.iter().flatten().copied().collect());
        let table: Vec<u8> = (0..m * 256).map(|i| (i * 31 % 256) as u8).collect();
        let table = PqTableU8::new(&table, m);
        let kernels = Isa::active();
        let ids: Vec<u32> = (0..404u32).filter(|i| i % 7 != 3).collect();
        let (mut got, mut want) = (vec![0; ids.len()], vec![0; ids.len()]);
        split.score_ids_u8(kernels, table, &ids, &mut got);
        whole.score_ids_u8(kernels, table, &ids, &mut want);
        assert_eq!(got, want);
        let one = |id: u32| -> u16 {
            let code = whole.code(id);
            code.iter()
                .enumerate()
                .map(|(j, &c)| u16::from(table.as_slice()[j * 256 + c as usize]))
                .sum()
        };
        assert!(ids.iter().zip(&got).all(|(&id, &sum)| sum == one(id)));
    }

    #[test]
    fn merging_down_keeps_every_code_in_order() {
        let sizes: Vec<usize> = (0..MAX_PIECES + 5).map(|i| 1 + i % 4).collect();
        let mut codes = pieces(2, &sizes);
        let before: Vec<Vec<u8>> = codes.iter().map(<[u8]>::to_vec).collect();
        codes.merge_down();
        assert_eq!(codes.pieces(), MAX_PIECES);
        let after: Vec<Vec<u8>> = codes.iter().map(<[u8]>::to_vec).collect();
        assert_eq!(before, after);
        let mut first = 0;
        for p in &codes.pieces {
            assert_eq!(p.first, first, "pieces are contiguous");
            first += (p.bytes.len() / 2) as u32;
        }
    }
}
