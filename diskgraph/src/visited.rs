//! The visited set shared by the disk search and the graph build.

/// The ids a graph walk has seen: a small open-addressing hash set, cleared in O(entries) per walk.
///
/// A walk (a query, or a build's insertion) touches a few thousand ids out of millions. A dense
/// bitmap or stamp array of `n` entries would cost a cache miss per lookup at 1M points; this table
/// (16 K slots to start, 64 KiB, grown at half load) stays in L2. `u32::MAX` marks an empty slot;
/// it is never a node id (`n < u32::MAX - 1`).
#[derive(Debug)]
pub(crate) struct VisitedSet {
    slots: Vec<u32>,
    used: Vec<u32>,
    bits: u32,
}

impl VisitedSet {
    const EMPTY: u32 = u32::MAX;

    pub(crate) fn new() -> Self {
        Self { slots: vec![Self::EMPTY; 1 << 14], used: Vec::new(), bits: 14 }
    }

    pub(crate) fn clear(&mut self) {
        for &i in &self.used {
            self.slots[i as usize] = Self::EMPTY;
        }
        self.used.clear();
    }

    /// The slot holding `id`, or the empty slot where it would go: `(slot, present)`.
    #[inline]
    fn probe(&self, id: u32) -> (usize, bool) {
        let mask = self.slots.len() - 1;
        // Fibonacci hashing: the top `bits` bits of id · 2⁶⁴/φ.
        let mut i =
            (u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize;
        loop {
            match self.slots[i] {
                s if s == id => return (i, true),
                Self::EMPTY => return (i, false),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        self.probe(id).1
    }

    /// Inserts `id`; returns whether it was absent.
    #[inline]
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        debug_assert_ne!(id, Self::EMPTY);
        if 2 * self.used.len() >= self.slots.len() {
            self.grow();
        }
        let (i, present) = self.probe(id);
        if !present {
            self.slots[i] = id;
            self.used.push(i as u32);
        }
        !present
    }

    fn grow(&mut self) {
        let ids: Vec<u32> = self.used.iter().map(|&i| self.slots[i as usize]).collect();
        self.bits += 1;
        self.slots = vec![Self::EMPTY; 1 << self.bits];
        self.used.clear();
        for id in ids {
            self.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VisitedSet;

    /// The set against a `HashSet` model across clears and growth, with ids dense and sparse: a
    /// lost id would make a search expand a node twice, a phantom one skip a node.
    #[test]
    fn the_visited_set_agrees_with_a_hash_set_across_clears_and_growth() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut set = VisitedSet::new();
        for round in 0..20 {
            let mut model = std::collections::HashSet::new();
            let span = if round % 2 == 0 { 1_000 } else { 5_000_000 };
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
        }
    }
}
