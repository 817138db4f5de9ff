//! AVX-512 kernels. Reached only through the [`super::Avx512`] token.
//!
//! Every function here is `unsafe` with the same preconditions, stated once:
//! 1. the CPU has AVX-512 F, BW and VL (the token proves it), and for the `*_vnni` kernels also
//!    AVX-512 VNNI (the token's `vnni` flag is set only when it was detected);
//! 2. paired slices have equal lengths, integer slices at most `MAX_DIM` elements (the token's
//!    methods check it), and PQ code ids are in range (checked by `check_pq_ids`).
//!
//! Tails are handled with masked loads: a lane outside the mask is neither read nor faulted on, and
//! reads as zero, which is neutral for every sum below (see each kernel for why).

use core::arch::x86_64::{
    __m512, __m512i, __mmask16, __mmask32, __mmask64, _mm_loadu_si128, _mm_maskz_loadu_epi8,
    _mm256_loadu_si256, _mm256_maskz_loadu_epi8, _mm512_add_epi32, _mm512_add_ps,
    _mm512_cvtepi8_epi16, _mm512_cvtepu8_epi16, _mm512_cvtepu8_epi32, _mm512_dpbusd_epi32,
    _mm512_fmadd_ps, _mm512_i32gather_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_madd_epi16,
    _mm512_mask_i32gather_ps, _mm512_maskz_loadu_epi8, _mm512_maskz_loadu_ps, _mm512_max_epi8,
    _mm512_max_epu8, _mm512_min_epi8, _mm512_min_epu8, _mm512_reduce_add_epi32,
    _mm512_reduce_add_ps, _mm512_set1_epi8, _mm512_set1_epi32, _mm512_setr_epi32,
    _mm512_setzero_ps, _mm512_setzero_si512, _mm512_slli_epi32, _mm512_sub_epi8, _mm512_sub_epi16,
    _mm512_sub_epi32, _mm512_sub_ps, _mm512_xor_si512,
};

use super::CodeWalk;
use crate::{PQ_CENTROIDS, PqTable};

/// Mask of the low `r` lanes, `r < 16`.
#[inline(always)]
fn mask16(r: usize) -> __mmask16 {
    debug_assert!(r < 16);
    ((1u32 << r) - 1) as __mmask16
}

/// Mask of the low `r` lanes, `r < 32`.
#[inline(always)]
fn mask32(r: usize) -> __mmask32 {
    debug_assert!(r < 32);
    (1u32 << r) - 1
}

/// Mask of the low `r` lanes, `r < 64`.
#[inline(always)]
fn mask64(r: usize) -> __mmask64 {
    debug_assert!(r < 64);
    (1u64 << r) - 1
}

/// Loads 16 floats from `s[i..i + 16]`, or fewer under `mask` (the rest read as zero).
///
/// # Safety
/// The CPU has AVX-512F, and every lane set in `mask` is inside `s` (lane `l` is `s[i + l]`).
#[inline(always)]
unsafe fn load16(s: &[f32], i: usize, mask: __mmask16) -> __m512 {
    let p = s.as_ptr().wrapping_add(i);
    if mask == u16::MAX {
        debug_assert!(i + 16 <= s.len());
        // SAFETY: full mask: the caller guarantees all 16 lanes are inside `s`.
        unsafe { _mm512_loadu_ps(p) }
    } else {
        // SAFETY: masked lanes are not accessed; the set lanes are inside `s` (caller).
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
}

/// Shared loop of the float kernels: four 16-lane accumulators over 64-element chunks, then 16-element
/// chunks, then one masked tail. Zero lanes add nothing to a sum of products.
macro_rules! f32_kernel {
    ($a:ident, $b:ident, |$acc:ident, $va:ident, $vb:ident| $step:expr) => {{
        let n = $a.len();
        let mut accs = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, $acc) in accs.iter_mut().enumerate() {
                let ($va, $vb) =
                    // SAFETY: `i + 16k + 16 <= i + 64 <= n` for both slices.
                    unsafe { (load16($a, i + 16 * k, !0), load16($b, i + 16 * k, !0)) };
                *$acc = $step;
            }
            i += 64;
        }
        while i + 16 <= n {
            let $acc = &mut accs[0];
            // SAFETY: `i + 16 <= n` for both slices.
            let ($va, $vb) = unsafe { (load16($a, i, !0), load16($b, i, !0)) };
            *$acc = $step;
            i += 16;
        }
        if i < n {
            let mask = mask16(n - i);
            let $acc = &mut accs[1];
            // SAFETY: the mask covers lanes `i..n`, inside both slices.
            let ($va, $vb) = unsafe { (load16($a, i, mask), load16($b, i, mask)) };
            *$acc = $step;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(
            _mm512_add_ps(accs[0], accs[1]),
            _mm512_add_ps(accs[2], accs[3]),
        ))
    }};
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn l2_sq_f32(a: &[f32], b: &[f32]) -> f32 {
    f32_kernel!(a, b, |acc, va, vb| {
        let d = _mm512_sub_ps(va, vb);
        _mm512_fmadd_ps(d, d, *acc)
    })
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    f32_kernel!(a, b, |acc, va, vb| _mm512_fmadd_ps(va, vb, *acc))
}

/// Returns `(a·b, ‖a‖², ‖b‖²)`.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn cosine_sums_f32(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    let n = a.len();
    let z = _mm512_setzero_ps();
    let (mut dot, mut na, mut nb) = ([z; 2], [z; 2], [z; 2]);
    let mut i = 0;
    let mut step = |k: usize, va: __m512, vb: __m512| {
        dot[k] = _mm512_fmadd_ps(va, vb, dot[k]);
        na[k] = _mm512_fmadd_ps(va, va, na[k]);
        nb[k] = _mm512_fmadd_ps(vb, vb, nb[k]);
    };
    while i + 32 <= n {
        for k in 0..2 {
            // SAFETY: `i + 16k + 16 <= i + 32 <= n` for both slices.
            let (va, vb) = unsafe { (load16(a, i + 16 * k, !0), load16(b, i + 16 * k, !0)) };
            step(k, va, vb);
        }
        i += 32;
    }
    while i < n {
        let mask = if i + 16 <= n { !0 } else { mask16(n - i) };
        // SAFETY: the mask covers lanes `i..min(i + 16, n)`, inside both slices.
        let (va, vb) = unsafe { (load16(a, i, mask), load16(b, i, mask)) };
        step(1, va, vb);
        i += 16;
    }
    (
        _mm512_reduce_add_ps(_mm512_add_ps(dot[0], dot[1])),
        _mm512_reduce_add_ps(_mm512_add_ps(na[0], na[1])),
        _mm512_reduce_add_ps(_mm512_add_ps(nb[0], nb[1])),
    )
}

/// Widening integer kernels (AVX-512BW, no VNNI): 32 elements widened to `i16`, `madd` into 16 `i32`
/// lanes. Per lane at most 2 048 steps × 2 × 255² < 2³¹ for `MAX_DIM` elements; the wrapping
/// reduction then equals the exact result modulo 2³². The tail is a masked 32-byte load: zero bytes
/// widen to zero and add nothing.
macro_rules! widen_kernel {
    ($a:ident, $b:ident, $widen:ident, |$wa:ident, $wb:ident| $pair:expr) => {{
        let n = $a.len();
        let (pa, pb) = ($a.as_ptr().cast::<u8>(), $b.as_ptr().cast::<u8>());
        let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let mut i = 0;
        while i + 64 <= n {
            let (ra, rb, sa, sb) =
                // SAFETY: `i + 64 <= n` bytes are readable behind both pointers.
                unsafe {
                    (
                        _mm256_loadu_si256(pa.add(i).cast()),
                        _mm256_loadu_si256(pb.add(i).cast()),
                        _mm256_loadu_si256(pa.add(i + 32).cast()),
                        _mm256_loadu_si256(pb.add(i + 32).cast()),
                    )
                };
            let ($wa, $wb) = ($widen(ra), $widen(rb));
            acc0 = _mm512_add_epi32(acc0, $pair);
            let ($wa, $wb) = ($widen(sa), $widen(sb));
            acc1 = _mm512_add_epi32(acc1, $pair);
            i += 64;
        }
        while i < n {
            let k = if i + 32 <= n { !0 } else { mask32(n - i) };
            let (ra, rb) =
                // SAFETY: the mask covers bytes `i..min(i + 32, n)`, inside both buffers.
                unsafe { (_mm256_maskz_loadu_epi8(k, pa.add(i).cast()), _mm256_maskz_loadu_epi8(k, pb.add(i).cast())) };
            let ($wa, $wb) = ($widen(ra), $widen(rb));
            acc0 = _mm512_add_epi32(acc0, $pair);
            i += 32;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1))
    }};
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn l2_sq_u8(a: &[u8], b: &[u8]) -> u32 {
    widen_kernel!(a, b, _mm512_cvtepu8_epi16, |wa, wb| {
        let d = _mm512_sub_epi16(wa, wb);
        _mm512_madd_epi16(d, d)
    }) as u32
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    widen_kernel!(a, b, _mm512_cvtepu8_epi16, |wa, wb| _mm512_madd_epi16(wa, wb)) as u32
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn l2_sq_i8(a: &[i8], b: &[i8]) -> u32 {
    widen_kernel!(a, b, _mm512_cvtepi8_epi16, |wa, wb| {
        let d = _mm512_sub_epi16(wa, wb);
        _mm512_madd_epi16(d, d)
    }) as u32
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    widen_kernel!(a, b, _mm512_cvtepi8_epi16, |wa, wb| _mm512_madd_epi16(wa, wb))
}

/// Loads 64 bytes of both operands at `i` (masked past `n`; masked bytes read as zero).
///
/// # Safety
/// AVX-512BW, and `pa`, `pb` point to `n` readable bytes.
#[inline(always)]
unsafe fn load64_pair(pa: *const u8, pb: *const u8, i: usize, n: usize) -> (__m512i, __m512i) {
    if i + 64 <= n {
        // SAFETY: `i + 64 <= n` bytes readable behind both pointers.
        unsafe { (_mm512_loadu_si512(pa.add(i).cast()), _mm512_loadu_si512(pb.add(i).cast())) }
    } else {
        let k = mask64(n - i);
        // SAFETY: only lanes `i..n` are accessed, inside both buffers.
        unsafe {
            (
                _mm512_maskz_loadu_epi8(k, pa.add(i).cast()),
                _mm512_maskz_loadu_epi8(k, pb.add(i).cast()),
            )
        }
    }
}

/// The VNNI loop shared by the integer kernels: `step(va, vb) -> (main, aux)` yields two vectors to
/// accumulate per 64-byte chunk; the result is `Σ main + 128 · Σ aux` over all lanes, in wrapping
/// 32-bit arithmetic. Two independent accumulator pairs hide `vpdpbusd` latency, and `aux` is folded
/// into `main` (shifted left by 7) before the single horizontal reduction. Masked-off bytes read as
/// zero; each kernel says why zero bytes contribute nothing.
macro_rules! vnni_loop {
    ($a:ident, $b:ident, |$acc:ident, $aux:ident, $va:ident, $vb:ident| $step:block) => {{
        let n = $a.len();
        let (pa, pb) = ($a.as_ptr().cast::<u8>(), $b.as_ptr().cast::<u8>());
        let z = _mm512_setzero_si512();
        let (mut main, mut aux) = ([z; 2], [z; 2]);
        let mut i = 0;
        while i + 128 <= n {
            for k in 0..2 {
                // SAFETY: `i + 64k + 64 <= n` bytes behind both pointers; AVX-512BW is proven.
                let ($va, $vb) = unsafe { load64_pair(pa, pb, i + 64 * k, n) };
                let ($acc, $aux) = (&mut main[k], &mut aux[k]);
                $step
            }
            i += 128;
        }
        while i < n {
            // SAFETY: both buffers hold `n` bytes; the load masks past `n`.
            let ($va, $vb) = unsafe { load64_pair(pa, pb, i, n) };
            let ($acc, $aux) = (&mut main[0], &mut aux[0]);
            $step
            i += 64;
        }
        let main = _mm512_add_epi32(main[0], main[1]);
        let aux = _mm512_add_epi32(aux[0], aux[1]);
        _mm512_reduce_add_epi32(_mm512_add_epi32(main, _mm512_slli_epi32::<7>(aux)))
    }};
}

/// `Σ d²` for the bytes `d = diff(a, b)` (each in 0..=255), with VNNI.
///
/// `vpdpbusd` multiplies *unsigned* bytes by *signed* bytes, so `d²` is formed as `d·(d − 128) + 128·d`:
/// `d − 128` is `d ^ 0x80` read as `i8`, and `Σ d` is a second `vpdpbusd` against ones. A masked-off
/// byte is `d = 0`, contributing `0·(−128) + 0 = 0`. Per lane at most 512 steps × 4 × 255·127 < 2³¹;
/// the wrapping total is exact because the true value is below 2³².
macro_rules! vnni_l2 {
    ($a:ident, $b:ident, $diff:expr) => {{
        let flip = _mm512_set1_epi8(-128);
        let ones = _mm512_set1_epi8(1);
        vnni_loop!($a, $b, |acc, aux, va, vb| {
            let d = $diff(va, vb);
            *acc = _mm512_dpbusd_epi32(*acc, d, _mm512_xor_si512(d, flip));
            *aux = _mm512_dpbusd_epi32(*aux, d, ones);
        }) as u32
    }};
}

/// # Safety
/// See the module docs (VNNI required).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn l2_sq_u8_vnni(a: &[u8], b: &[u8]) -> u32 {
    vnni_l2!(a, b, |x, y| _mm512_sub_epi8(_mm512_max_epu8(x, y), _mm512_min_epu8(x, y)))
}

/// `|a − b|` of `i8` lanes is `max − min`, at most 255: exact as an unsigned byte after wrapping.
///
/// # Safety
/// See the module docs (VNNI required).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn l2_sq_i8_vnni(a: &[i8], b: &[i8]) -> u32 {
    vnni_l2!(a, b, |x, y| _mm512_sub_epi8(_mm512_max_epi8(x, y), _mm512_min_epi8(x, y)))
}

/// `a·b` for `u8` as `a·(b − 128) + 128·Σa`: `vpdpbusd` on `(a, b ^ 0x80)` and on `(a, 1)`.
/// Masked-off bytes are `a = 0`: both terms add nothing.
///
/// # Safety
/// See the module docs (VNNI required).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn dot_u8_vnni(a: &[u8], b: &[u8]) -> u32 {
    let flip = _mm512_set1_epi8(-128);
    let ones = _mm512_set1_epi8(1);
    vnni_loop!(a, b, |acc, aux, va, vb| {
        *acc = _mm512_dpbusd_epi32(*acc, va, _mm512_xor_si512(vb, flip));
        *aux = _mm512_dpbusd_epi32(*aux, va, ones);
    }) as u32
}

/// `a·b` for `i8` as `(a + 128)·b − 128·Σb`: `vpdpbusd` on `(a ^ 0x80, b)`; `aux` accumulates `−Σb`
/// (the lane sums of `vpdpbusd` on `(1, b)`, subtracted), so the shared `+ 128 · aux` subtracts.
/// Masked-off bytes are `b = 0`: both terms add nothing.
///
/// # Safety
/// See the module docs (VNNI required).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(super) unsafe fn dot_i8_vnni(a: &[i8], b: &[i8]) -> i32 {
    let flip = _mm512_set1_epi8(-128);
    let ones = _mm512_set1_epi8(1);
    let z = _mm512_setzero_si512();
    vnni_loop!(a, b, |acc, aux, va, vb| {
        *acc = _mm512_dpbusd_epi32(*acc, _mm512_xor_si512(va, flip), vb);
        *aux = _mm512_sub_epi32(*aux, _mm512_dpbusd_epi32(z, ones, vb));
    })
}

/// Scores codes: contiguous (`ids == None`, `out.len()` codes) or picked by `ids`. Each step gathers 16
/// table entries, one per subspace; the last step is masked.
///
/// # Safety
/// See the module docs: AVX-512 F/BW/VL, and every id below `codes.len() / m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn pq_score(
    table: PqTable<'_>,
    codes: &[u8],
    ids: Option<&[u32]>,
    out: &mut [f32],
) {
    let m = table.subspaces();
    let t = table.as_slice().as_ptr();
    // Lane l of step j gathers from row j + l: offsets (j + l) · 256.
    let lane_rows = _mm512_setr_epi32(
        0, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840,
    );
    let walk = CodeWalk::new(codes, ids, m);
    for (n, o) in out.iter_mut().enumerate() {
        let code = walk.code(n);
        let mut acc = _mm512_setzero_ps();
        let mut j = 0;
        while j < m {
            let rows = _mm512_add_epi32(lane_rows, _mm512_set1_epi32((j * PQ_CENTROIDS) as i32));
            let g = if j + 16 <= m {
                // SAFETY: `j + 16 <= m = code.len()`: 16 readable bytes.
                let bytes = unsafe { _mm_loadu_si128(code.as_ptr().add(j).cast()) };
                let idx = _mm512_add_epi32(_mm512_cvtepu8_epi32(bytes), rows);
                // SAFETY: lane l reads t[(j + l)·256 + byte] with j + l < m and byte < 256: below
                // m·256, the table's length; scale 4 matches f32.
                unsafe { _mm512_i32gather_ps::<4>(idx, t) }
            } else {
                let k = mask16(m - j);
                // SAFETY: only bytes `j..m` of `code` are accessed.
                let bytes = unsafe { _mm_maskz_loadu_epi8(k, code.as_ptr().add(j).cast()) };
                let idx = _mm512_add_epi32(_mm512_cvtepu8_epi32(bytes), rows);
                // SAFETY: only lanes l < m − j are gathered, each from row j + l < m as above;
                // masked-off lanes keep the zero source and touch no memory.
                unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), k, idx, t) }
            };
            acc = _mm512_add_ps(acc, g);
            j += 16;
        }
        *o = _mm512_reduce_add_ps(acc);
    }
}
