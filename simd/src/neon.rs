//! NEON (Advanced SIMD) kernels for aarch64. Reached only through the [`Neon`] token.
//!
//! Every kernel below is `unsafe` with the same preconditions, stated once: the CPU has NEON (the
//! token proves it) and paired slices have equal lengths, integer slices at most `MAX_DIM` elements
//! (the token's methods check it). Every raw load reads `[i, i + lanes)` of a slice where the loop
//! condition has just established `i + lanes <= len`; remainders use safe indexing.
//!
//! NEON has no gather, so the PQ scorer is the portable four-codes-at-a-time loop.

use core::arch::aarch64::{
    float32x4_t, vabdq_s8, vabdq_u8, vaddq_f32, vaddvq_f32, vaddvq_s32, vaddvq_u32, vdupq_n_f32,
    vdupq_n_s32, vdupq_n_u32, vfmaq_f32, vget_low_s8, vget_low_u8, vld1q_f32, vld1q_s8, vld1q_u8,
    vmull_high_s8, vmull_high_u8, vmull_s8, vmull_u8, vpadalq_s16, vpadalq_u16,
    vreinterpretq_u8_s8, vsubq_f32,
};

use crate::scalar::pq_score_unrolled;
use crate::{
    Kernels, PqTable, Tier, check_int_pair, check_pair, check_pq, check_pq_ids, cosine_from_sums,
};

/// Proof that the CPU has NEON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neon {
    _proof: (),
}

impl Neon {
    /// The token, if this CPU has NEON.
    pub fn new() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Self { _proof: () })
    }
}

/// Loads 4 floats from `s[i..i + 4]`.
///
/// # Safety
/// `i + 4 <= s.len()` and the CPU has NEON.
#[inline(always)]
unsafe fn load4(s: &[f32], i: usize) -> float32x4_t {
    debug_assert!(i + 4 <= s.len());
    // SAFETY: the caller guarantees 4 readable floats at `i`; `vld1q` has no alignment requirement.
    unsafe { vld1q_f32(s.as_ptr().add(i)) }
}

macro_rules! f32_kernel {
    ($a:ident, $b:ident, |$acc:ident, $va:ident, $vb:ident| $step:expr, |$x:ident, $y:ident| $tail:expr) => {{
        let n = $a.len();
        let mut accs = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, $acc) in accs.iter_mut().enumerate() {
                // SAFETY: `i + 4k + 4 <= i + 16 <= n` for both slices.
                let ($va, $vb) = unsafe { (load4($a, i + 4 * k), load4($b, i + 4 * k)) };
                *$acc = $step;
            }
            i += 16;
        }
        while i + 4 <= n {
            let $acc = &mut accs[0];
            // SAFETY: `i + 4 <= n` for both slices.
            let ($va, $vb) = unsafe { (load4($a, i), load4($b, i)) };
            *$acc = $step;
            i += 4;
        }
        let mut sum =
            vaddvq_f32(vaddq_f32(vaddq_f32(accs[0], accs[1]), vaddq_f32(accs[2], accs[3])));
        for ($x, $y) in $a[i..].iter().zip(&$b[i..]) {
            sum += $tail;
        }
        sum
    }};
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn l2_sq_f32(a: &[f32], b: &[f32]) -> f32 {
    f32_kernel!(
        a,
        b,
        |acc, va, vb| {
            let d = vsubq_f32(va, vb);
            vfmaq_f32(*acc, d, d)
        },
        |x, y| (x - y) * (x - y)
    )
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    f32_kernel!(a, b, |acc, va, vb| vfmaq_f32(*acc, va, vb), |x, y| x * y)
}

/// Returns `(a·b, ‖a‖², ‖b‖²)`.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn cosine_sums_f32(a: &[f32], b: &[f32]) -> (f32, f32, f32) {
    let n = a.len();
    let z = vdupq_n_f32(0.0);
    let (mut dot, mut na, mut nb) = ([z; 2], [z; 2], [z; 2]);
    let mut i = 0;
    while i + 8 <= n {
        for k in 0..2 {
            // SAFETY: `i + 4k + 4 <= i + 8 <= n` for both slices.
            let (va, vb) = unsafe { (load4(a, i + 4 * k), load4(b, i + 4 * k)) };
            dot[k] = vfmaq_f32(dot[k], va, vb);
            na[k] = vfmaq_f32(na[k], va, va);
            nb[k] = vfmaq_f32(nb[k], vb, vb);
        }
        i += 8;
    }
    let mut d = vaddvq_f32(vaddq_f32(dot[0], dot[1]));
    let mut x = vaddvq_f32(vaddq_f32(na[0], na[1]));
    let mut y = vaddvq_f32(vaddq_f32(nb[0], nb[1]));
    for (p, q) in a[i..].iter().zip(&b[i..]) {
        d += p * q;
        x += p * p;
        y += q * q;
    }
    (d, x, y)
}

/// Integer kernels over 16-byte chunks: `vmull` widens products to 16 bits, `vpadal` adds pairs of them
/// into 32-bit lanes. Each lane gains at most 4 × 255² = 260 100 per chunk, so after the 4 096 chunks of
/// `MAX_DIM` elements it holds at most ≈ 1.07·10⁹: nothing overflows.
macro_rules! int_kernel {
    ($a:ident, $b:ident, $load:ident, $zero:expr, |$va:ident, $vb:ident, $acc:ident| $step:expr, $reduce:ident, |$x:ident, $y:ident| $tail:expr) => {{
        let n = $a.len();
        let mut $acc = $zero;
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: `i + 16 <= n` elements of both slices.
            let ($va, $vb) = unsafe { ($load($a.as_ptr().add(i)), $load($b.as_ptr().add(i))) };
            $acc = $step;
            i += 16;
        }
        let mut sum = $reduce($acc);
        for (&$x, &$y) in $a[i..].iter().zip(&$b[i..]) {
            sum = sum.wrapping_add($tail);
        }
        sum
    }};
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn l2_sq_u8(a: &[u8], b: &[u8]) -> u32 {
    int_kernel!(
        a,
        b,
        vld1q_u8,
        vdupq_n_u32(0),
        |va, vb, acc| {
            let d = vabdq_u8(va, vb);
            let acc = vpadalq_u16(acc, vmull_u8(vget_low_u8(d), vget_low_u8(d)));
            vpadalq_u16(acc, vmull_high_u8(d, d))
        },
        vaddvq_u32,
        |x, y| u32::from(x.abs_diff(y)).pow(2)
    )
}

/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    int_kernel!(
        a,
        b,
        vld1q_u8,
        vdupq_n_u32(0),
        |va, vb, acc| {
            let acc = vpadalq_u16(acc, vmull_u8(vget_low_u8(va), vget_low_u8(vb)));
            vpadalq_u16(acc, vmull_high_u8(va, vb))
        },
        vaddvq_u32,
        |x, y| u32::from(x) * u32::from(y)
    )
}

/// `|a − b|` of `i8` lanes is at most 255: exact when read as an unsigned byte.
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn l2_sq_i8(a: &[i8], b: &[i8]) -> u32 {
    int_kernel!(
        a,
        b,
        vld1q_s8,
        vdupq_n_u32(0),
        |va, vb, acc| {
            let d = vreinterpretq_u8_s8(vabdq_s8(va, vb));
            let acc = vpadalq_u16(acc, vmull_u8(vget_low_u8(d), vget_low_u8(d)));
            vpadalq_u16(acc, vmull_high_u8(d, d))
        },
        vaddvq_u32,
        |x, y| u32::from(x.abs_diff(y)).pow(2)
    )
}

/// Products of `i8` fit `i16` (at most 128² = 16 384).
///
/// # Safety
/// See the module docs.
#[target_feature(enable = "neon")]
unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    int_kernel!(
        a,
        b,
        vld1q_s8,
        vdupq_n_s32(0),
        |va, vb, acc| {
            let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(va), vget_low_s8(vb)));
            vpadalq_s16(acc, vmull_high_s8(va, vb))
        },
        vaddvq_s32,
        |x, y| i32::from(x) * i32::from(y)
    )
}

impl Kernels for Neon {
    fn tier(self) -> Tier {
        Tier::Neon
    }

    #[inline]
    fn l2_sq_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` exists only if NEON was detected (`Neon::new`); lengths are equal.
        unsafe { l2_sq_f32(a, b) }
    }

    #[inline]
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` proves NEON; lengths are equal.
        unsafe { dot_f32(a, b) }
    }

    #[inline]
    fn cosine_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        // SAFETY: `self` proves NEON; lengths are equal.
        let (dot, na, nb) = unsafe { cosine_sums_f32(a, b) };
        cosine_from_sums(dot, na, nb)
    }

    #[inline]
    fn l2_sq_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves NEON; lengths equal, at most MAX_DIM.
        unsafe { l2_sq_u8(a, b) }
    }

    #[inline]
    fn dot_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves NEON; lengths equal, at most MAX_DIM.
        unsafe { dot_u8(a, b) }
    }

    #[inline]
    fn l2_sq_i8(self, a: &[i8], b: &[i8]) -> u32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves NEON; lengths equal, at most MAX_DIM.
        unsafe { l2_sq_i8(a, b) }
    }

    #[inline]
    fn dot_i8(self, a: &[i8], b: &[i8]) -> i32 {
        check_int_pair(a.len(), b.len());
        // SAFETY: `self` proves NEON; lengths equal, at most MAX_DIM.
        unsafe { dot_i8(a, b) }
    }

    fn pq_score(self, table: PqTable<'_>, codes: &[u8], out: &mut [f32]) {
        check_pq(&table, codes.len(), out.len());
        let m = table.subspaces();
        pq_score_unrolled(table, |n| &codes[n * m..(n + 1) * m], out);
    }

    fn pq_score_ids(self, table: PqTable<'_>, codes: &[u8], ids: &[u32], out: &mut [f32]) {
        check_pq_ids(&table, codes.len(), ids, out.len());
        let m = table.subspaces();
        pq_score_unrolled(
            table,
            |n| {
                let at = ids[n] as usize * m;
                &codes[at..at + m]
            },
            out,
        );
    }
}
