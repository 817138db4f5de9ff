//! [`RowSet`]: a segment's deleted rows, one bit per row.
//!
//! Searches test it for every node their graph walk expands, so it must stay small: a bit per
//! row keeps a 1M-row segment's set at 125 KiB (in L2), where a `Vec<bool>` took 1 MiB.

/// A set of row numbers below a fixed length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowSet {
    words: Vec<u64>,
    len: usize,
}

impl RowSet {
    /// The empty set of rows `0..len`.
    pub(crate) fn new(len: usize) -> RowSet {
        RowSet { words: vec![0; len.div_ceil(64)], len }
    }

    /// Whether `row` is in the set. Panics if `row` is not below the length.
    pub(crate) fn contains(&self, row: usize) -> bool {
        assert!(row < self.len, "row {row} of a set of {} rows", self.len);
        self.words[row / 64] >> (row % 64) & 1 == 1
    }

    /// Bytes the set holds in RAM (its words).
    pub(crate) fn bytes(&self) -> usize {
        self.words.capacity() * 8
    }

    /// How many rows are in the set.
    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Adds `row`; returns whether it was absent. Panics if `row` is not below the length.
    pub(crate) fn insert(&mut self, row: usize) -> bool {
        assert!(row < self.len, "row {row} of a set of {} rows", self.len);
        let (w, bit) = (row / 64, 1u64 << (row % 64));
        let absent = self.words[w] & bit == 0;
        self.words[w] |= bit;
        absent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a `Vec<bool>` model, across word boundaries and lengths that are not multiples
    /// of 64.
    #[test]
    fn a_row_set_agrees_with_a_vector_of_flags() {
        for len in [0usize, 1, 63, 64, 65, 1000] {
            let mut set = RowSet::new(len);
            let mut model = vec![false; len];
            let mut x = 12345u64;
            for _ in 0..len * 2 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = (x >> 33) as usize % len.max(1);
                if len == 0 {
                    break;
                }
                assert_eq!(set.insert(r), !model[r], "len {len} row {r}");
                model[r] = true;
            }
            for (r, &m) in model.iter().enumerate() {
                assert_eq!(set.contains(r), m, "len {len} row {r}");
            }
            assert_eq!(set.count(), model.iter().filter(|&&m| m).count(), "len {len}");
        }
    }

    #[test]
    #[should_panic(expected = "row 10 of a set of 10 rows")]
    fn a_row_past_the_end_is_a_bug_not_a_wrong_answer() {
        RowSet::new(10).contains(10);
    }
}
