//! AVX2 + FMA kernels. Reached only through the [`super::Avx2`] token.
//!
//! Every function here is `unsafe` with the same two preconditions, stated once:
//! 1. the CPU has AVX2 and FMA (the token proves it);
//! 2. paired slices have equal lengths, integer slices at most `MAX_DIM` elements (the token's
//!    methods check it), and PQ code ids are in range (checked by `check_pq_ids`).
//!
//! Inside, every raw load reads `[i, i + lanes)` of a slice where the loop condition has just
//! established `i + lanes <= len`; remainders are handled with safe indexing.

use core::arch::x86_64::{
    __m256, __m256i, _mm_add_epi32, _mm_add_ps, _mm_add_ss, _mm_cvtsi128_si32, _mm_cvtss_f32,
    _mm_loadl_epi64, _mm_loadu_si128, _mm_movehl_ps, _mm_shuffle_epi32, _mm_shuffle_ps,
    _mm256_add_epi32, _mm256_add_ps, _mm256_castps256_ps128, _mm256_castsi256_si128,
    _mm256_cvtepi8_epi16, _mm256_cvtepu8_epi16, _mm256_cvtepu8_epi32, _mm256_extractf128_ps,
    _mm256_extracti128_si256, _mm256_fmadd_ps, _mm256_i32gather_ps, _mm256_loadu_ps,
    _mm256_madd_epi16, _mm256_set1_epi32, _mm256_setr_epi32, _mm256_setzero_ps,
    _mm256_setzero_si256, _mm256_sub_epi16, _mm256_sub_ps,
};

use super::CodeWalk;
use crate::{PQ_CENTROIDS, PqTable};

/// Horizontal sum of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Horizontal wrapping sum of 8 `i32` lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Loads 8 floats from `s[i..i + 8]`.
///
/// # Safety
/// `i + 8 <= s.len()` and the CPU has AVX.
#[inline(always)]
unsafe fn load8(s: &[f32], i: usize) -> __m256 {
    debug_assert!(i + 8 <= s.len());
    // SAFETY: the caller guarantees `i + 8 <= s.len()`; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr().add(i)) }
}

/// Loads 16 bytes from `s[i..i + 16]` widened to 16 `i16` (zero- or sign-extended).
///
/// # Safety
/// `i + 16 <= len` of the slice behind `p` and the CPU has AVX2.
#[inline(always)]
unsafe fn load16_widen<const SIGNED: bool>(p: *const u8, i: usize) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p + i`; `loadu` is unaligned.
    let v = unsafe { _mm_loadu_si128(p.add(i).cast()) };
    // SAFETY: the caller guarantees AVX2.
    unsafe { if SIGNED { _mm256_cvtepi8_epi16(v) } else { _mm256_cvtepu8_epi16(v) } }
}

/// Shared loop of the float kernels: `step(acc, a_chunk, b_chunk)` over 8-lane chunks with four
/// accumulators, then the scalar tail `tail(x, y)`.
macro_rules! f32_kernel {
    ($a:ident, $b:ident, |$acc:ident, $va:ident, $vb:ident| $step:expr, |$x:ident, $y:ident| $tail:expr) => {{
        let n = $a.len();
        let mut accs = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, $acc) in accs.iter_mut().enumerate() {
                // SAFETY: `i + 8k + 8 <= i + 32 <= n` for both slices (equal lengths).
                let ($va, $vb) = unsafe { (load8($a, i + 8 * k), load8($b, i + 8 * k)) };
                *$acc = $step;
            }
            i += 32;
        }
        while i + 8 <= n {
            let $acc = &mut accs[0];
            // SAFETY: `i + 8 <= n` for both slices.
            let ($va, $vb) = unsafe { (load8($a, i), load8($b, i)) };
            *$acc = $step;
            i += 8;
        }
        let mut sum = hsum_ps(_mm256_add_ps(
            _mm256_add_ps(accs[0], accs[1]),
            _mm256_add_ps(accs[2], accs[3]),
        ));
        for ($x, $y) in $a[i..].iter().zip(&$b[i..]) {
            sum += $tail;
        }
        sum
    }};
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn l2_sq_f32(a: &[f32], b: &[f32]) -> f32 {
    f32_kernel!(
        a,
        b,
        |acc, va, vb| {
            let d = _mm256_sub_ps(va, vb);
            _mm256_fmadd_ps(d, d, *acc)
        },
        |x, y| (x - y) * (x - y)
    )
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    f32_kernel!(a, b, |acc, va, vb| _mm256_fmadd_ps(va, vb, *acc), |x, y| x * y)
}

/// Returns `(a·b, ‖a‖², ‖b‖²)`.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn cosine_sums_f32(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    let n = a.len();
    let (mut dot, mut na, mut nb) =
        ([_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2]);
    let mut i = 0;
    while i + 16 <= n {
        for k in 0..2 {
            // SAFETY: `i + 8k + 8 <= i + 16 <= n` for both slices.
            let (va, vb) = unsafe { (load8(a, i + 8 * k), load8(b, i + 8 * k)) };
            dot[k] = _mm256_fmadd_ps(va, vb, dot[k]);
            na[k] = _mm256_fmadd_ps(va, va, na[k]);
            nb[k] = _mm256_fmadd_ps(vb, vb, nb[k]);
        }
        i += 16;
    }
    if i + 8 <= n {
        // SAFETY: `i + 8 <= n` for both slices.
        let (va, vb) = unsafe { (load8(a, i), load8(b, i)) };
        dot[0] = _mm256_fmadd_ps(va, vb, dot[0]);
        na[0] = _mm256_fmadd_ps(va, va, na[0]);
        nb[0] = _mm256_fmadd_ps(vb, vb, nb[0]);
        i += 8;
    }
    let mut d = hsum_ps(_mm256_add_ps(dot[0], dot[1]));
    let mut x = hsum_ps(_mm256_add_ps(na[0], na[1]));
    let mut y = hsum_ps(_mm256_add_ps(nb[0], nb[1]));
    for (p, q) in a[i..].iter().zip(&b[i..]) {
        d += p * q;
        x += p * p;
        y += q * q;
    }
    (d, x, y)
}

/// Shared loop of the integer kernels: 16 elements widened to `i16`, `madd` into `i32` lanes, two
/// accumulators. Per-lane sums stay below 2³¹ for `MAX_DIM` elements (4 096 steps × 2 × 255² per
/// lane); the wrapping horizontal sum then equals the exact result modulo 2³².
macro_rules! int_kernel {
    ($a:ident, $b:ident, $signed:literal, |$wa:ident, $wb:ident| $pair:expr, |$x:ident, $y:ident| $tail:expr) => {{
        let n = $a.len();
        let (pa, pb) = ($a.as_ptr().cast::<u8>(), $b.as_ptr().cast::<u8>());
        let mut acc = [_mm256_setzero_si256(); 2];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `i + 16k + 16 <= i + 32 <= n` bytes for both slices; AVX2 is proven.
                let ($wa, $wb) = unsafe {
                    (
                        load16_widen::<$signed>(pa, i + 16 * k),
                        load16_widen::<$signed>(pb, i + 16 * k),
                    )
                };
                *acc = _mm256_add_epi32(*acc, $pair);
            }
            i += 32;
        }
        if i + 16 <= n {
            let ($wa, $wb) =
                // SAFETY: `i + 16 <= n` bytes for both slices; AVX2 is proven.
                unsafe { (load16_widen::<$signed>(pa, i), load16_widen::<$signed>(pb, i)) };
            acc[0] = _mm256_add_epi32(acc[0], $pair);
            i += 16;
        }
        let mut sum = hsum_epi32(_mm256_add_epi32(acc[0], acc[1]));
        for (&$x, &$y) in $a[i..].iter().zip(&$b[i..]) {
            sum = sum.wrapping_add($tail);
        }
        sum
    }};
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn l2_sq_u8(a: &[u8], b: &[u8]) -> u32 {
    int_kernel!(
        a,
        b,
        false,
        |wa, wb| {
            let d = _mm256_sub_epi16(wa, wb);
            _mm256_madd_epi16(d, d)
        },
        |x, y| i32::from(x.abs_diff(y)).pow(2)
    ) as u32
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    int_kernel!(a, b, false, |wa, wb| _mm256_madd_epi16(wa, wb), |x, y| i32::from(x) * i32::from(y))
        as u32
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn l2_sq_i8(a: &[i8], b: &[i8]) -> u32 {
    int_kernel!(
        a,
        b,
        true,
        |wa, wb| {
            let d = _mm256_sub_epi16(wa, wb);
            _mm256_madd_epi16(d, d)
        },
        |x, y| i32::from(x.abs_diff(y)).pow(2)
    ) as u32
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    int_kernel!(a, b, true, |wa, wb| _mm256_madd_epi16(wa, wb), |x, y| i32::from(x) * i32::from(y))
}

/// Scores codes: contiguous (`ids == None`, `out.len()` codes) or picked by `ids`.
///
/// # Safety
/// See the module docs: AVX2, and every id below `codes.len() / m`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pq_score(
    table: PqTable<'_>,
    codes: &[u8],
    ids: Option<&[u32]>,
    out: &mut [f32],
) {
    let m = table.subspaces();
    let t = table.as_slice();
    // Lane l of step j gathers from row j + l: offsets (j + l) · 256.
    let lane_rows = _mm256_setr_epi32(0, 256, 512, 768, 1024, 1280, 1536, 1792);
    let walk = CodeWalk::new(codes, ids, m);
    for (n, o) in out.iter_mut().enumerate() {
        let code = walk.code(n);
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= m {
            // SAFETY: `j + 8 <= m = code.len()`: 8 readable bytes.
            let bytes = unsafe { _mm_loadl_epi64(code.as_ptr().add(j).cast()) };
            let idx = _mm256_add_epi32(
                _mm256_cvtepu8_epi32(bytes),
                _mm256_add_epi32(lane_rows, _mm256_set1_epi32((j * PQ_CENTROIDS) as i32)),
            );
            // SAFETY: lane l reads t[(j + l)·256 + byte] with j + l < m and byte < 256, so every index
            // is below m·256 = t.len(); the scale 4 matches f32.
            let g = unsafe { _mm256_i32gather_ps::<4>(t.as_ptr(), idx) };
            acc = _mm256_add_ps(acc, g);
            j += 8;
        }
        let mut sum = hsum_ps(acc);
        for (jj, &c) in code.iter().enumerate().skip(j) {
            sum += t[jj * PQ_CENTROIDS + usize::from(c)];
        }
        *o = sum;
    }
}
