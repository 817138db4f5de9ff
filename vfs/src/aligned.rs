//! A buffer for direct writes ([`crate::VfsFile::set_direct_io`]): bytes whose start is aligned
//! to [`DIRECT_IO_ALIGN`], as a direct write's buffer must be. Made of whole blocks, so its
//! memory stays aligned as it grows; its length is tracked apart from them. The WAL's flusher
//! builds its groups in one.

use crate::DIRECT_IO_ALIGN;

/// One block of the buffer: its alignment is what aligns the whole buffer.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(4096))]
struct Block([u8; DIRECT_IO_ALIGN]);

const _: () = assert!(std::mem::align_of::<Block>() == DIRECT_IO_ALIGN);
const _: () = assert!(std::mem::size_of::<Block>() == DIRECT_IO_ALIGN);

/// A growable byte buffer aligned to [`DIRECT_IO_ALIGN`].
#[derive(Default)]
pub struct AlignedBuf {
    blocks: Vec<Block>,
    /// Bytes in use, from the start; the rest of the blocks is scratch.
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish_non_exhaustive()
    }
}

impl AlignedBuf {
    /// Bytes in use.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is in use.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Uses no byte (keeping the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes in use.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice::<Block, u8>(&self.blocks)[..self.len]
    }

    /// Bytes the buffer holds memory for.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.blocks.len() * DIRECT_IO_ALIGN
    }

    /// Makes room for `len` bytes in all, keeping those in use.
    fn reserve_to(&mut self, len: usize) {
        let blocks = len.div_ceil(DIRECT_IO_ALIGN);
        if blocks > self.blocks.len() {
            self.blocks.resize(blocks, Block([0; DIRECT_IO_ALIGN]));
        }
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.reserve_to(end);
        bytemuck::cast_slice_mut::<Block, u8>(&mut self.blocks)[self.len..end]
            .copy_from_slice(bytes);
        self.len = end;
    }

    /// Grows the bytes in use to `len` with zeros (never shrinks).
    pub fn zero_extend(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        self.reserve_to(len);
        bytemuck::cast_slice_mut::<Block, u8>(&mut self.blocks)[self.len..len].fill(0);
        self.len = len;
    }

    /// The bytes in use followed by zeros up to the next multiple of [`DIRECT_IO_ALIGN`]: what
    /// a direct write takes. The bytes in use are unchanged.
    pub fn padded(&mut self) -> &[u8] {
        let end = self.len.next_multiple_of(DIRECT_IO_ALIGN);
        self.reserve_to(end);
        let bytes = bytemuck::cast_slice_mut::<Block, u8>(&mut self.blocks);
        bytes[self.len..end].fill(0);
        &bytes[..end]
    }

    /// Keeps only the bytes in use from `from` on, moved to the start.
    pub fn keep_from(&mut self, from: usize) {
        assert!(from <= self.len, "keep_from past the end: {from} > {}", self.len);
        bytemuck::cast_slice_mut::<Block, u8>(&mut self.blocks).copy_within(from..self.len, 0);
        self.len -= from;
    }

    /// Lets go of the memory if it is over `max` bytes (after a burst of large groups).
    pub fn shrink_to(&mut self, max: usize) {
        let keep = self.len.div_ceil(DIRECT_IO_ALIGN).max(max / DIRECT_IO_ALIGN);
        if self.blocks.len() > keep {
            self.blocks.truncate(keep);
            self.blocks.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct write fails unless its buffer starts on a block: the buffer must stay aligned
    /// through growth, and its padding must be zeros even where stale bytes were.
    #[test]
    fn the_buffer_stays_aligned_and_pads_with_zeros_over_stale_bytes() {
        let mut b = AlignedBuf::default();
        b.extend_from_slice(&[7; 5000]);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
        b.keep_from(4990);
        assert_eq!(b.as_slice(), &[7; 10]);
        b.extend_from_slice(&[1, 2, 3]);
        let padded = b.padded();
        assert_eq!(padded.len(), DIRECT_IO_ALIGN);
        assert_eq!(&padded[..13], &[7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 1, 2, 3]);
        assert!(padded[13..].iter().all(|&x| x == 0), "stale 7s must not leak into padding");
        assert_eq!(b.len(), 13);
        b.extend_from_slice(&vec![9; 3 * DIRECT_IO_ALIGN]);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
        b.zero_extend(b.len() + 3);
        assert_eq!(&b.as_slice()[b.len() - 3..], &[0, 0, 0]);
        b.clear();
        b.shrink_to(DIRECT_IO_ALIGN);
        assert_eq!(b.capacity(), DIRECT_IO_ALIGN);
        assert_eq!(b.len(), 0);
    }
}
