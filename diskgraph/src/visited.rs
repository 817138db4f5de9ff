//! The visited set shared by the disk search and the graph build.

/// The ids a graph walk has seen, cleared between walks, in one of two forms:
///
/// - **Hashed** ([`VisitedSet::new`]): a small open-addressing hash set. A disk search touches a
///   few thousand ids out of millions; a dense bitmap or stamp array of `n` entries would cost a
///   cache miss per lookup at 100M points, while this table (16 K slots to start, 64 KiB, grown at
///   half load) stays in L2. `u32::MAX` marks an empty slot; it is never a node id
///   (`n < u32::MAX - 1`). Cleared in O(entries).
/// - **Dense** ([`VisitedSet::for_points`]): one bit per point, for walks over a graph of at most
///   [`DENSE_MAX_POINTS`] points (a graph build in RAM). A build's insertion sees ~10,000 ids; the
///   hash table grows to 128 KiB for them and probes it, while the bitmap of a 100,000-point
///   partition is 12.5 KiB (it fits in L1) and of 1M points 125 KiB: never larger, one load a
///   lookup, and no branch on whether the id was there ([`VisitedSet::insert`] is branch-free,
///   which matters: about half the ids a walk meets were seen before, at random, so a branch
///   on it mispredicts half the time). Clearing zeroes the whole bitmap, a memset of at most
///   256 KiB against the thousands of distances of the walk it follows.
/// - **Tracked** ([`VisitedSet::clear_for`]): the dense bitmap plus the words a walk set bits
///   in, for disk searches over graphs of at most [`DENSE_MAX_POINTS`]: a lookup is one load of
///   a bitmap that stays in L2 (the hashed table's probes were 9% of a filtered walk's time on
///   1M SIFT rows), and a clear zeroes only the words touched. A search state keeps one bitmap,
///   grown to the largest graph it has walked; beyond the limit it falls back to hashing.
#[derive(Debug)]
pub(crate) struct VisitedSet {
    form: Form,
}

#[derive(Debug)]
enum Form {
    Hashed {
        slots: Vec<u32>,
        used: Vec<u32>,
        bits: u32,
    },
    /// A bit per point.
    Dense {
        words: Vec<u64>,
    },
    /// A bit per point, and the words a walk set bits in, so that a clear zeroes those alone:
    /// for a disk search, whose walk sees a few thousand ids of a graph of up to
    /// [`DENSE_MAX_POINTS`], where zeroing the whole bitmap would cost as much as the walk's
    /// probes save.
    Tracked {
        words: Vec<u64>,
        touched: Vec<u32>,
    },
}

/// The most points a dense visited set is made for: its bitmap is then 256 KiB, about the size the
/// hashed table reaches for a walk of 30,000 ids.
pub(crate) const DENSE_MAX_POINTS: usize = 1 << 21;

const EMPTY: u32 = u32::MAX;

impl VisitedSet {
    /// A hashed set, for walks over graphs of any size.
    pub(crate) fn new() -> Self {
        Self { form: Form::Hashed { slots: vec![EMPTY; 1 << 14], used: Vec::new(), bits: 14 } }
    }

    /// The best set for walks over a graph of `n` points: dense up to [`DENSE_MAX_POINTS`],
    /// hashed beyond.
    pub(crate) fn for_points(n: usize) -> Self {
        if n > DENSE_MAX_POINTS {
            return Self::new();
        }
        Self { form: Form::Dense { words: vec![0; n.div_ceil(64)] } }
    }

    /// Clears the set for a walk over a graph of `n` points, taking the form that suits it: a
    /// tracked bitmap up to [`DENSE_MAX_POINTS`] (grown to the largest graph met so far, so a
    /// search state that moves between indexes keeps one), hashed beyond. What a disk search
    /// does before each walk.
    pub(crate) fn clear_for(&mut self, n: usize) {
        if n > DENSE_MAX_POINTS {
            if !matches!(self.form, Form::Hashed { .. }) {
                *self = Self::new();
            }
            return self.clear();
        }
        if !matches!(self.form, Form::Tracked { .. }) {
            self.form = Form::Tracked { words: Vec::new(), touched: Vec::new() };
        }
        self.clear();
        let Form::Tracked { words, .. } = &mut self.form else { unreachable!("made above") };
        if words.len() < n.div_ceil(64) {
            words.resize(n.div_ceil(64), 0);
        }
    }

    pub(crate) fn clear(&mut self) {
        match &mut self.form {
            Form::Tracked { words, touched } => {
                for &w in touched.iter() {
                    words[w as usize] = 0;
                }
                touched.clear();
            }
            Form::Hashed { slots, used, .. } => {
                for &i in used.iter() {
                    slots[i as usize] = EMPTY;
                }
                used.clear();
            }
            Form::Dense { words } => words.fill(0),
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        match &self.form {
            Form::Hashed { slots, bits, .. } => probe(slots, *bits, id).1,
            Form::Dense { words } | Form::Tracked { words, .. } => {
                words.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
            }
        }
    }

    /// Inserts `id`; returns whether it was absent.
    ///
    /// # Panics
    /// If the set is dense and `id` is not below the number of points it was made for.
    #[inline]
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        debug_assert_ne!(id, EMPTY);
        match &mut self.form {
            Form::Hashed { slots, used, bits } => {
                if 2 * used.len() >= slots.len() {
                    self.grow();
                    return self.insert(id);
                }
                let (i, present) = probe(slots, *bits, id);
                if !present {
                    slots[i] = id;
                    used.push(i as u32);
                }
                !present
            }
            Form::Dense { words } => {
                let word = &mut words[id as usize / 64];
                let bit = 1u64 << (id % 64);
                let fresh = *word & bit == 0;
                *word |= bit;
                fresh
            }
            Form::Tracked { words, touched } => {
                let at = id as usize / 64;
                let word = &mut words[at];
                let bit = 1u64 << (id % 64);
                let before = *word;
                *word |= bit;
                if before == 0 {
                    touched.push(at as u32);
                }
                before & bit == 0
            }
        }
    }

    /// Doubles a hashed table, re-inserting its ids.
    fn grow(&mut self) {
        let Form::Hashed { slots, used, bits } = &mut self.form else {
            unreachable!("only a hashed set grows")
        };
        let ids: Vec<u32> = used.iter().map(|&i| slots[i as usize]).collect();
        *bits += 1;
        *slots = vec![EMPTY; 1 << *bits];
        used.clear();
        for id in ids {
            let (i, _) = probe(slots, *bits, id);
            slots[i] = id;
            used.push(i as u32);
        }
    }
}

/// The slot of a hashed table holding `id`, or the empty slot where it would go:
/// `(slot, present)`.
#[inline]
fn probe(slots: &[u32], bits: u32, id: u32) -> (usize, bool) {
    let mask = slots.len() - 1;
    // Fibonacci hashing: the top `bits` bits of id · 2⁶⁴/φ.
    let mut i = (u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize;
    loop {
        match slots[i] {
            s if s == id => return (i, true),
            EMPTY => return (i, false),
            _ => i = (i + 1) & mask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VisitedSet;

    /// Both forms against a `HashSet` model across clears (and, hashed, growth), with ids dense
    /// and sparse: a lost id would make a search expand a node twice, a phantom one skip a node.
    #[test]
    fn the_visited_set_agrees_with_a_hash_set_across_clears_and_growth() {
        let points = super::DENSE_MAX_POINTS;
        let mut tracked = VisitedSet::new();
        tracked.clear_for(points);
        for mut set in [VisitedSet::new(), VisitedSet::for_points(points), tracked] {
            let mut s = 0x2545_F491_4F6C_DD1Du64;
            for round in 0..20 {
                let mut model = std::collections::HashSet::new();
                let span = if round % 2 == 0 { 1_000 } else { points as u64 };
                for _ in 0..20_000 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    let id = (s % span) as u32;
                    let fresh = !model.contains(&id);
                    assert_eq!(set.contains(id), !fresh, "contains {id}");
                    assert_eq!(set.insert(id), fresh, "insert {id}");
                    model.insert(id);
                }
                set.clear();
                assert!(model.iter().all(|&id| !set.contains(id)), "an id survived the clear");
            }
        }
    }

    /// A graph too large for a bitmap gets the hashed form, whose memory follows the walk.
    #[test]
    fn a_graph_over_the_dense_limit_gets_a_hashed_set() {
        let big = VisitedSet::for_points(super::DENSE_MAX_POINTS + 1);
        assert!(matches!(big.form, super::Form::Hashed { .. }));
        let small = VisitedSet::for_points(10);
        assert!(matches!(small.form, super::Form::Dense { .. }));
    }

    /// A search state walks indexes of many sizes in turn: each walk must start empty and take
    /// every id of its own graph, whatever the walk before it left or took.
    #[test]
    fn a_set_cleared_for_graphs_of_other_sizes_starts_empty_and_takes_every_id() {
        let mut set = VisitedSet::new();
        let sizes = [100usize, 5_000, 64, super::DENSE_MAX_POINTS + 10, 3_000, 70_000, 1];
        for (round, &n) in sizes.iter().enumerate() {
            set.clear_for(n);
            let hashed = n > super::DENSE_MAX_POINTS;
            assert_eq!(matches!(set.form, super::Form::Hashed { .. }), hashed, "n {n}");
            let ids: Vec<u32> = (0..n as u32).step_by(1 + round).chain([n as u32 - 1]).collect();
            assert!(ids.iter().all(|&id| !set.contains(id)), "n {n}: an id from before");
            for &id in &ids {
                set.insert(id);
            }
            assert!(ids.iter().all(|&id| set.contains(id)), "n {n}: an id lost");
        }
    }
}
