//! x86-64 tiers. The tokens [`Avx2`] and [`Avx512`] are the only way to reach the `#[target_feature]`
//! kernels in `avx2.rs` and `avx512.rs`: their fields are private and their constructors check the CPU,
//! so holding a token is proof that its instructions exist. Every `unsafe` call below rests on that.

mod avx2;
mod avx512;

use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

use crate::{
    Kernels, PqTable, PqTableU8, Tier, check_int_pair, check_pair, check_pq, check_pq_ids,
    check_pq_ids_m, cosine_from_sums,
};

/// How many codes ahead the PQ scorers prefetch when codes are picked by id. Neighbour lists point
/// at random codes of an array far larger than cache; 16 misses in flight keep the memory system
/// busy where one at a time would leave it idle.
const PREFETCH_AHEAD: usize = 16;

/// Prefetches code `id` (its first and last byte: a code may straddle two cache lines).
#[inline(always)]
fn prefetch_code(codes: &[u8], id: u32, m: usize) {
    let p = codes.as_ptr().wrapping_add(id as usize * m);
    // SAFETY: SSE is part of the x86-64 baseline, so `prefetcht0` exists on every x86-64 CPU; a
    // prefetch is a hint that never faults and never dereferences in the language sense, so any
    // address is sound (and ids are checked before a scorer runs anyway).
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(m - 1).cast());
    }
}

/// Prefetches the cache lines of the `len` bytes at `start`, at most `max_lines` of them (see
/// [`crate::prefetch`] and [`crate::prefetch_slice`]).
#[inline(always)]
pub(crate) fn prefetch_range(start: *const u8, len: usize, max_lines: usize) {
    let first = start as usize & !63;
    let lines = (start as usize + len).saturating_sub(first).div_ceil(64).min(max_lines);
    for line in 0..lines {
        // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 CPU has (this module is compiled
        // for x86-64 only). `prefetcht0` is a hint: it never faults and reads nothing the program
        // observes, so no address can make it unsound; the pointer is only computed
        // (`wrapping_add`), never dereferenced.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * 64).cast()) };
    }
}

/// The codes a PQ scorer visits: contiguous (`ids == None`) or picked by id, with prefetching.
#[derive(Clone, Copy)]
struct CodeWalk<'a> {
    codes: &'a [u8],
    ids: Option<&'a [u32]>,
    m: usize,
}

impl<'a> CodeWalk<'a> {
    /// Starts a walk, prefetching the first codes of an id list.
    #[inline(always)]
    fn new(codes: &'a [u8], ids: Option<&'a [u32]>, m: usize) -> Self {
        for &id in ids.unwrap_or_default().iter().take(PREFETCH_AHEAD) {
            prefetch_code(codes, id, m);
        }
        Self { codes, ids, m }
    }

    /// The `n`-th code, prefetching the one `PREFETCH_AHEAD` later. Bounds-checked slicing: a bad id
    /// panics here rather than reading outside `codes`.
    #[inline(always)]
    fn code(self, n: usize) -> &'a [u8] {
        let at = match self.ids {
            Some(ids) => {
                if let Some(&ahead) = ids.get(n + PREFETCH_AHEAD) {
                    prefetch_code(self.codes, ahead, self.m);
                }
                ids[n] as usize * self.m
            }
            None => n * self.m,
        };
        &self.codes[at..at + self.m]
    }
}

/// Proof that the CPU has AVX2 and FMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Avx2 {
    _proof: (),
}

impl Avx2 {
    /// The token, if this CPU has AVX2 and FMA.
    pub fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
            .then_some(Self { _proof: () })
    }
}

/// Proof that the CPU has AVX-512 F, BW and VL (and AVX2/FMA, which every such CPU has), plus whether
/// the integer kernels may use AVX-512 VNNI and the byte-table PQ scorer AVX-512 VBMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Avx512 {
    vnni: bool,
    vbmi: bool,
}

impl Avx512 {
    /// The token, if this CPU has AVX-512 F/BW/VL. VNNI and VBMI are used when detected.
    pub fn new() -> Option<Self> {
        let base = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma");
        base.then(|| Self {
            vnni: is_x86_feature_detected!("avx512vnni"),
            vbmi: is_x86_feature_detected!("avx512vbmi"),
        })
    }

    /// The same tier with the VNNI integer kernels switched off (the widening AVX-512BW kernels run
    /// instead); lets tests and benchmarks check both paths on a VNNI machine.
    #[must_use]
    pub fn without_vnni(self) -> Self {
        Self { vnni: false, ..self }
    }

    /// The same tier without the VBMI byte-table PQ scorer (the scalar loop runs instead).
    #[must_use]
    pub fn without_vbmi(self) -> Self {
        Self { vbmi: false, ..self }
    }

    /// Whether the byte-table PQ scorer uses VBMI.
    pub fn has_vbmi(self) -> bool {
        self.vbmi
    }

    /// Whether the integer kernels use VNNI.
    pub fn has_vnni(self) -> bool {
        self.vnni
    }
}

impl Kernels for Avx2 {
    fn tier(self) -> Tier {
        Tier::Avx2
    }

    #[inline]
    fn l2_sq_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` exists only if AVX2 and FMA were detected (`Avx2::new`); lengths are equal.
        unsafe { avx2::l2_sq_f32(a, b) }
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX2 + FMA; lengths are equal.
        unsafe { avx2::dot_f32(a, b) }
    }

    #[inline]
    fn cosine_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX2 + FMA; lengths are equal.
        let (dot, na, nb) = unsafe { avx2::cosine_sums_f32(a, b) };
        cosine_from_sums(dot, na, nb)
    }

    #[inline]
    fn l2_sq_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX2; lengths are equal and at most MAX_DIM.
        unsafe { avx2::l2_sq_u8(a, b) }
    }

    #[inline]
    fn dot_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX2; lengths are equal and at most MAX_DIM.
        unsafe { avx2::dot_u8(a, b) }
    }

    #[inline]
    fn l2_sq_i8(self, a: &[i8], b: &[i8]) -> u32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX2; lengths are equal and at most MAX_DIM.
        unsafe { avx2::l2_sq_i8(a, b) }
    }

    #[inline]
    fn dot_i8(self, a: &[i8], b: &[i8]) -> i32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX2; lengths are equal and at most MAX_DIM.
        unsafe { avx2::dot_i8(a, b) }
    }

    fn pq_score(self, table: PqTable<'_>, codes: &[u8], out: &mut [f32]) {
        check_pq(&table, codes.len(), out.len());
        // SAFETY: `self` proves AVX2; `codes` holds exactly `out.len()` codes of `m` bytes.
        unsafe { avx2::pq_score(table, codes, None, out) }
    }

    fn pq_score_ids(self, table: PqTable<'_>, codes: &[u8], ids: &[u32], out: &mut [f32]) {
        check_pq_ids(&table, codes.len(), ids, out.len());
        // SAFETY: `self` proves AVX2; every id names a whole code inside `codes` (checked above).
        unsafe { avx2::pq_score(table, codes, Some(ids), out) }
    }
}

impl Kernels for Avx512 {
    fn tier(self) -> Tier {
        Tier::Avx512
    }

    #[inline]
    fn l2_sq_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` exists only if AVX-512 F/BW/VL were detected (`Avx512::new`); lengths are equal.
        unsafe { avx512::l2_sq_f32(a, b) }
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX-512 F/BW/VL; lengths are equal.
        unsafe { avx512::dot_f32(a, b) }
    }

    #[inline]
    fn cosine_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` proves AVX-512 F/BW/VL; lengths are equal.
        let (dot, na, nb) = unsafe { avx512::cosine_sums_f32(a, b) };
        cosine_from_sums(dot, na, nb)
    }

    #[inline]
    fn l2_sq_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        if self.vnni {
            // SAFETY: `self.vnni` is true only if AVX-512 VNNI was detected too; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::l2_sq_u8_vnni(a, b) }
        } else {
            // SAFETY: `self` proves AVX-512 F/BW/VL; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::l2_sq_u8(a, b) }
        }
    }

    #[inline]
    fn dot_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        if self.vnni {
            // SAFETY: `self.vnni` proves AVX-512 VNNI; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::dot_u8_vnni(a, b) }
        } else {
            // SAFETY: `self` proves AVX-512 F/BW/VL; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::dot_u8(a, b) }
        }
    }

    #[inline]
    fn l2_sq_i8(self, a: &[i8], b: &[i8]) -> u32 {
        check_int_pair(a.len(), b.len());
        if self.vnni {
            // SAFETY: `self.vnni` proves AVX-512 VNNI; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::l2_sq_i8_vnni(a, b) }
        } else {
            // SAFETY: `self` proves AVX-512 F/BW/VL; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::l2_sq_i8(a, b) }
        }
    }

    #[inline]
    fn dot_i8(self, a: &[i8], b: &[i8]) -> i32 {
        check_int_pair(a.len(), b.len());
        if self.vnni {
            // SAFETY: `self.vnni` proves AVX-512 VNNI; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::dot_i8_vnni(a, b) }
        } else {
            // SAFETY: `self` proves AVX-512 F/BW/VL; lengths equal, ≤ MAX_DIM.
            unsafe { avx512::dot_i8(a, b) }
        }
    }

    fn pq_score(self, table: PqTable<'_>, codes: &[u8], out: &mut [f32]) {
        check_pq(&table, codes.len(), out.len());
        // SAFETY: `self` proves AVX-512 F/BW/VL; `codes` holds exactly `out.len()` codes of `m` bytes.
        unsafe { avx512::pq_score(table, codes, None, out) }
    }

    fn pq_score_ids(self, table: PqTable<'_>, codes: &[u8], ids: &[u32], out: &mut [f32]) {
        check_pq_ids(&table, codes.len(), ids, out.len());
        // SAFETY: `self` proves AVX-512 F/BW/VL; every id names a whole code inside `codes` (checked).
        unsafe { avx512::pq_score(table, codes, Some(ids), out) }
    }

    fn pq_score_ids_u8(self, table: PqTableU8<'_>, codes: &[u8], ids: &[u32], out: &mut [u16]) {
        check_pq_ids_m(table.subspaces(), codes.len(), ids, out.len());
        if self.vbmi {
            // SAFETY: `self.vbmi` is true only if AVX-512 VBMI was detected besides F/BW/VL;
            // every id names a whole code inside `codes` and `out` has one slot per id (checked).
            unsafe { avx512::pq_score_ids_u8(table, codes, ids, out) }
        } else {
            crate::scalar::pq_score_ids_u8(table, codes, ids, out);
        }
    }
}
