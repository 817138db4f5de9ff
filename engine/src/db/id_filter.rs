//! A split-block Bloom filter over one segment's ids, so that looking up an id the segment does
//! not hold (every new id an insert brings) costs one cache line, not a binary search.
//!
//! Without it, a collection's inserts searched every segment's id order for every new id:
//! 3.9 µs a row over six segments of 250k rows, twenty times the map it replaced, all under
//! the state's write lock. With it, a segment is searched only when its filter says it may hold
//! the id: about 1% of the time for an id it does not hold.
//!
//! The layout is the split-block filter of Parquet's bloom filter spec: 256-bit blocks of eight
//! 32-bit words, one bit set in each word per id, the block picked by the hash's high half and
//! the bits by its low half times eight odd constants. Parquet's own (`parquet::bloom_filter`)
//! rounds its size to a power of two, up to twice the bytes; this one is sized exactly:
//! [`BITS_PER_ID`] bits an id, 1.25 bytes a row, for a false-positive rate near 0.8%.

/// Bits an id: 25.6 ids a block, so each 32-bit word is about 55% full; a false positive needs
/// all eight of an id's bits set, 0.55^8 ≈ 0.8%.
pub(super) const BITS_PER_ID: usize = 10;

/// The spec's salts: odd constants that pick one bit per word from the hash's low half.
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

type Block = [u32; 8];

/// The filter. Never a false negative: an id inserted is always reported as maybe present.
#[derive(Debug)]
pub(super) struct IdFilter {
    blocks: Box<[Block]>,
}

impl IdFilter {
    /// An empty filter sized for `ids` ids.
    pub(super) fn for_ids(ids: usize) -> IdFilter {
        let blocks = (ids * BITS_PER_ID).div_ceil(256).max(1);
        IdFilter { blocks: vec![[0; 8]; blocks].into() }
    }

    fn block(&self, hash: u64) -> usize {
        // The high half, scaled to the block count (no modulo bias, no division).
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    fn masks(hash: u64) -> impl Iterator<Item = u32> {
        SALT.iter().map(move |&salt| 1u32 << ((hash as u32).wrapping_mul(salt) >> 27))
    }

    /// Records the id whose [`id_hash`](super::keys) is `hash`.
    pub(super) fn insert(&mut self, hash: u64) {
        let b = self.block(hash);
        for (word, mask) in self.blocks[b].iter_mut().zip(Self::masks(hash)) {
            *word |= mask;
        }
    }

    /// `false` if the id whose hash is `hash` was never inserted; `true` if it was, or (rarely)
    /// if it was not.
    pub(super) fn may_contain(&self, hash: u64) -> bool {
        let block = &self.blocks[self.block(hash)];
        block.iter().zip(Self::masks(hash)).all(|(word, mask)| word & mask != 0)
    }

    /// Heap bytes.
    pub(super) fn bytes(&self) -> usize {
        self.blocks.len() * size_of::<Block>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::int_hash as mix;
    use super::*;

    #[test]
    fn every_inserted_id_is_found_and_few_others_are() {
        let n = 100_000u64;
        let mut f = IdFilter::for_ids(n as usize);
        assert_eq!(f.bytes(), (n as usize * BITS_PER_ID).div_ceil(256) * 32);
        for i in 0..n {
            f.insert(mix(i));
        }
        assert!((0..n).all(|i| f.may_contain(mix(i))), "a Bloom filter has no false negatives");
        let false_positives = (n..2 * n).filter(|&i| f.may_contain(mix(i))).count();
        let rate = false_positives as f64 / n as f64;
        assert!(rate < 0.02, "false-positive rate {rate}, expected near 0.008");
    }

    #[test]
    fn an_empty_filter_holds_nothing_and_still_has_a_block() {
        let f = IdFilter::for_ids(0);
        assert_eq!(f.bytes(), 32);
        assert!(!(0..1000).any(|i| f.may_contain(mix(i))));
    }
}
