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

    /// The rows whose `mask` value is true (not false, not null).
    pub(crate) fn of_mask(mask: &arrow_array::BooleanArray) -> RowSet {
        use arrow_array::Array;
        let mut words: Vec<u64> = mask.values().bit_chunks().iter_padded().collect();
        if let Some(nulls) = mask.nulls() {
            for (w, valid) in words.iter_mut().zip(nulls.inner().bit_chunks().iter_padded()) {
                *w &= valid;
            }
        }
        RowSet { words, len: mask.len() }
    }

    /// The rows of `other` that are not in `self`.
    ///
    /// # Panics
    /// If the two sets are not of the same length.
    pub(crate) fn outside(&self, other: &RowSet) -> RowSet {
        assert_eq!(other.len, self.len, "sets of {} and {} rows", other.len, self.len);
        let words = other.words.iter().zip(&self.words).map(|(o, s)| o & !s).collect();
        RowSet { words, len: self.len }
    }

    /// The rows in both sets (of the same length).
    pub(crate) fn intersection(&self, other: &RowSet) -> RowSet {
        assert_eq!(other.len, self.len, "sets of {} and {} rows", other.len, self.len);
        let words = other.words.iter().zip(&self.words).map(|(o, s)| o & s).collect();
        RowSet { words, len: self.len }
    }

    /// The rows in the set, ascending.
    pub(crate) fn rows(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    (i * 64) as u32 + bit
                })
            })
        })
    }

    /// Adds `row`; returns whether it was absent. Panics if `row` is not below the length.
    pub(crate) fn insert(&mut self, row: usize) -> bool {
        assert!(row < self.len, "row {row} of a set of {} rows", self.len);
        let (w, bit) = (row / 64, 1u64 << (row % 64));
        let absent = self.words[w] & bit == 0;
        self.words[w] |= bit;
        absent
    }

    /// Takes `row` out of the set. Panics if `row` is not below the length.
    pub(crate) fn remove(&mut self, row: usize) {
        assert!(row < self.len, "row {row} of a set of {} rows", self.len);
        self.words[row / 64] &= !(1u64 << (row % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `of_mask` keeps the rows a mask holds true (not null), `outside` takes the set's away,
    /// and `rows` lists them: against a per-row model, with a mask that is a slice (its bits start mid-byte).
    #[test]
    fn the_rows_passing_a_mask_are_its_true_rows_outside_the_set() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            let mut deleted = RowSet::new(len);
            (0..len).filter(|r| r % 7 == 3).for_each(|r| _ = deleted.insert(r));
            let wide: arrow_array::BooleanArray = (0..len + 5)
                .map(|r| match r % 5 {
                    0 => None,
                    1 | 2 => Some(true),
                    _ => Some(false),
                })
                .collect();
            let mask = wide.slice(5, len);
            let passing = deleted.outside(&RowSet::of_mask(&mask));
            let want: Vec<u32> = (0..len)
                .filter(|&r| (r + 5) % 5 == 1 || (r + 5) % 5 == 2)
                .filter(|&r| !deleted.contains(r))
                .map(|r| r as u32)
                .collect();
            assert_eq!(passing.rows().collect::<Vec<_>>(), want, "len {len}");
            assert_eq!(passing.count(), want.len());
            for r in 0..len {
                assert_eq!(passing.contains(r), want.contains(&(r as u32)), "row {r}");
            }
        }
    }

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
