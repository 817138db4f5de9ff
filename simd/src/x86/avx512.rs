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
    _mm256_loadu_si256, _mm256_maskz_loadu_epi8, _mm512_add_epi16, _mm512_add_epi32, _mm512_add_ps,
    _mm512_castsi512_si256, _mm512_cvtepi8_epi16, _mm512_cvtepu8_epi16, _mm512_cvtepu8_epi32,
    _mm512_dpbusd_epi32, _mm512_extracti64x4_epi64, _mm512_fmadd_ps, _mm512_i32gather_epi32,
    _mm512_i32gather_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_madd_epi16,
    _mm512_mask_blend_epi8, _mm512_mask_i32gather_ps, _mm512_maskz_loadu_epi8,
    _mm512_maskz_loadu_ps, _mm512_max_epi8, _mm512_max_epu8, _mm512_max_epu32, _mm512_min_epi8,
    _mm512_min_epu8, _mm512_min_epu32, _mm512_movepi8_mask, _mm512_mullo_epi32,
    _mm512_permutex2var_epi8, _mm512_permutexvar_epi8, _mm512_reduce_add_epi32,
    _mm512_reduce_add_ps, _mm512_reduce_max_epu32, _mm512_reduce_min_epu32, _mm512_set1_epi8,
    _mm512_set1_epi32, _mm512_setr_epi32, _mm512_setzero_ps, _mm512_setzero_si512,
    _mm512_shuffle_i64x2, _mm512_slli_epi32, _mm512_storeu_si512, _mm512_sub_epi8,
    _mm512_sub_epi16, _mm512_sub_epi32, _mm512_sub_ps, _mm512_xor_si512,
};

use super::CodeWalk;
use crate::{PQ_CENTROIDS, PqTable, PqTableU8};

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

/// Blocks of 64 codes whose codes the byte-table scorer fetches ahead of scoring them.
const PREFETCH_BLOCKS: usize = 1;

/// Byte `16b + i` takes byte `4i + b`: a register of 16 codes' 4-byte pieces (a piece per 32-bit
/// lane) becomes four 16-byte runs, run `b` holding byte `b` of every piece.
const PIECES_TO_RUNS: [u8; 64] = {
    let mut index = [0u8; 64];
    let mut at = 0;
    while at < 64 {
        index[at] = (4 * (at % 16) + at / 16) as u8;
        at += 1;
    }
    index
};

/// The byte-table sums of the codes `ids` ([`crate::Kernels::pq_score_ids_u8`]), 64 at a time.
///
/// A block of 64 codes is read four bytes (subspaces) at a time: a 32-bit gather from 16 codes
/// at once, four gathers for the 64; a byte permutation and a 4 × 4 transposition of 128-bit
/// lanes turn them into four registers, one per subspace, each holding that subspace's byte of
/// the 64 codes in code order. A subspace's 256 entries are four registers: two two-register
/// byte lookups (entries below 128, and from 128) and a blend on the index's top bit give the 64
/// entries, widened to 16 bits and added. A block whose reads would pass the end of `codes`, or
/// whose ids lie too far apart for 32-bit offsets, and the last `ids.len() % 64`, take the
/// scalar loop.
///
/// # Safety
/// See the module docs; also the CPU has AVX-512 VBMI, and `out.len() == ids.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
pub(super) unsafe fn pq_score_ids_u8(
    table: PqTableU8<'_>,
    codes: &[u8],
    ids: &[u32],
    out: &mut [u16],
) {
    let m = table.subspaces();
    // Bytes read from the start of a code: whole 4-byte pieces.
    let reach = 4 * m.div_ceil(4);
    let mut blocks = ids.chunks_exact(64);
    let mut outs = out.chunks_exact_mut(64);
    for &id in ids.iter().take(PREFETCH_BLOCKS * 64) {
        super::prefetch_code(codes, id, m);
    }
    for (at, (block, o)) in (&mut blocks).zip(&mut outs).enumerate() {
        // The codes lie anywhere in a large array: fetch those of a later block while this
        // one is scored (a block's first reads waited on memory most of its time without).
        let ahead = (at + PREFETCH_BLOCKS) * 64;
        for &id in ids.get(ahead..ahead + 64).unwrap_or_default() {
            super::prefetch_code(codes, id, m);
        }
        // SAFETY: the block holds 64 ids: four loads of 16 `u32` inside it.
        let lanes: [__m512i; 4] = core::array::from_fn(|k| unsafe {
            _mm512_loadu_si512(block.as_ptr().add(16 * k).cast())
        });
        let both =
            |f: fn(__m512i, __m512i) -> __m512i| f(f(lanes[0], lanes[1]), f(lanes[2], lanes[3]));
        let low = _mm512_reduce_min_epu32(both(|a, b| _mm512_min_epu32(a, b))) as usize;
        let high = _mm512_reduce_max_epu32(both(|a, b| _mm512_max_epu32(a, b))) as usize;
        if high * m + reach > codes.len() || (high - low) * m + reach > i32::MAX as usize {
            crate::scalar::pq_score_ids_u8(table, codes, block, o);
            continue;
        }
        // SAFETY: every id of the block reads `id · m .. id · m + reach`, inside `codes` as
        // `high · m + reach <= codes.len()`; offsets from `low · m` fit 32 bits (both checked).
        unsafe { score_block_u8(table, codes.as_ptr().add(low * m), lanes, low as u32, o) };
    }
    let rest = blocks.remainder();
    crate::scalar::pq_score_ids_u8(table, codes, rest, outs.into_remainder());
}

/// One block of [`pq_score_ids_u8`]: the 64 codes whose ids are `lanes`, read from `base`
/// (the code of id `low`) onwards, into `out[..64]`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VBMI; for every id, `base + (id − low) · m .. + 4 · ⌈m / 4⌉` is
/// readable and below `base + i32::MAX`; `out.len() == 64`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
#[inline]
unsafe fn score_block_u8(
    table: PqTableU8<'_>,
    base: *const u8,
    lanes: [__m512i; 4],
    low: u32,
    out: &mut [u16],
) {
    debug_assert_eq!(out.len(), 64);
    let m = table.subspaces();
    let entries = table.as_slice().as_ptr();
    let (width, first) = (_mm512_set1_epi32(m as i32), _mm512_set1_epi32(low as i32));
    let offsets = lanes.map(|ids| _mm512_mullo_epi32(_mm512_sub_epi32(ids, first), width));
    // SAFETY: 64 bytes of a constant.
    let to_runs = unsafe { _mm512_loadu_si512(PIECES_TO_RUNS.as_ptr().cast()) };
    let mut sums = [_mm512_setzero_si512(); 2];
    for piece in 0..m.div_ceil(4) {
        let at = _mm512_set1_epi32(4 * piece as i32);
        let runs = offsets.map(|o| {
            // SAFETY: each lane reads 4 bytes at `base + (id − low) · m + 4 · piece`, inside
            // the readable range (caller); scale 1 makes the offsets byte offsets.
            let gathered =
                unsafe { _mm512_i32gather_epi32::<1>(_mm512_add_epi32(o, at), base.cast()) };
            _mm512_permutexvar_epi8(to_runs, gathered)
        });
        // 128-bit lane b of `runs[k]` is subspace 4·piece + b of codes 16k..16k + 16: transpose
        // so that register b holds subspace 4·piece + b of all 64 codes, in order.
        let a01 = _mm512_shuffle_i64x2::<0b01_00_01_00>(runs[0], runs[1]);
        let b01 = _mm512_shuffle_i64x2::<0b11_10_11_10>(runs[0], runs[1]);
        let a23 = _mm512_shuffle_i64x2::<0b01_00_01_00>(runs[2], runs[3]);
        let b23 = _mm512_shuffle_i64x2::<0b11_10_11_10>(runs[2], runs[3]);
        let subspaces = [
            _mm512_shuffle_i64x2::<0b10_00_10_00>(a01, a23),
            _mm512_shuffle_i64x2::<0b11_01_11_01>(a01, a23),
            _mm512_shuffle_i64x2::<0b10_00_10_00>(b01, b23),
            _mm512_shuffle_i64x2::<0b11_01_11_01>(b01, b23),
        ];
        for (b, &index) in subspaces.iter().enumerate().take(m - 4 * piece) {
            let row = (4 * piece + b) * PQ_CENTROIDS;
            // SAFETY: row `4·piece + b < m` of the table: 256 bytes at `row`, four loads of 64.
            let quarter: [__m512i; 4] = core::array::from_fn(|q| unsafe {
                _mm512_loadu_si512(entries.add(row + 64 * q).cast())
            });
            let below = _mm512_permutex2var_epi8(quarter[0], index, quarter[1]);
            let above = _mm512_permutex2var_epi8(quarter[2], index, quarter[3]);
            let value = _mm512_mask_blend_epi8(_mm512_movepi8_mask(index), below, above);
            sums[0] =
                _mm512_add_epi16(sums[0], _mm512_cvtepu8_epi16(_mm512_castsi512_si256(value)));
            sums[1] = _mm512_add_epi16(
                sums[1],
                _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(value)),
            );
        }
    }
    // SAFETY: `out` holds 64 `u16`: two stores of 32.
    unsafe {
        _mm512_storeu_si512(out.as_mut_ptr().cast(), sums[0]);
        _mm512_storeu_si512(out.as_mut_ptr().add(32).cast(), sums[1]);
    }
}
