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

    /// Whether `id` is in the set.
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i =
            (u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize;
        loop {
            match self.slots[i] {
                s if s == id => return true,
                Self::EMPTY => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Inserts `id`; returns whether it was absent.
    #[inline]
    pub(crate) fn insert(&mut self, id: u32) -> bool {
        debug_assert_ne!(id, Self::EMPTY);
        if 2 * self.used.len() >= self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        // Fibonacci hashing: the top `bits` bits of id · 2⁶⁴/φ.
        let mut i =
            (u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize;
        loop {
            match self.slots[i] {
                s if s == id => return false,
                Self::EMPTY => {
                    self.slots[i] = id;
                    self.used.push(i as u32);
                    return true;
                }
                _ => i = (i + 1) & mask,
            }
        }
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
