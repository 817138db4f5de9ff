//! Parquet's `BYTE_STREAM_SPLIT` for floats: byte `k` of value `i` goes to stream `k` at `i`.
//!
//! A flush splits every vector value and a scan joins them back, so both run over every vector
//! byte the engine writes or reads. Value by value through four zipped iterators, the compiler
//! kept them scalar: the split was a fifth of a flush's time on 128-d f32 (BENCHMARKS.md, issue
//! 26). Here both work in fixed blocks of [`BLOCK`] values, which the compiler turns into
//! vector shuffles, with a value-by-value tail. The same code is compiled again for AVX2 and
//! for AVX-512 and chosen by what the CPU has ([`Tier`]): built for the baseline x86-64 the
//! shuffles are SSE2's, and on 1 MiB pages the AVX2 build splits 2.5x and joins 1.6x as fast,
//! the AVX-512 one 3.2x and 2x (stop 49).

/// Values per block.
const BLOCK: usize = 64;

/// The instruction sets the split and join are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Tier {
    /// The widest tier this CPU runs (the detection is cached by the standard library).
    pub(crate) fn detected() -> Tier {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                return Tier::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Tier::Avx2;
            }
        }
        Tier::Baseline
    }

    /// Every tier this CPU runs, narrowest first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Tier> {
        let all = [
            Tier::Baseline,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512,
        ];
        let widest = Tier::detected();
        let rank = |t: Tier| all.iter().position(|&x| x == t).expect("listed");
        all.into_iter().filter(|&t| rank(t) <= rank(widest)).collect()
    }
}

/// Splits `values` into the four byte streams `streams[k]` (each `values.len()` long).
pub(crate) fn split(values: &[f32], streams: [&mut [u8]; 4]) {
    split_in(Tier::detected(), values, streams);
}

/// [`split`] compiled for `tier`, which this CPU must run.
pub(crate) fn split_in(tier: Tier, values: &[f32], streams: [&mut [u8]; 4]) {
    match tier {
        Tier::Baseline => split_blocks(values, streams),
        // SAFETY: `tier` is one this CPU runs (`Tier::detected` or below it, as the callers
        // guarantee), so the instructions `split_avx2` is compiled with exist here.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { x86::split_avx2(values, streams) },
        // SAFETY: as above, for AVX-512 F, BW and VL.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => unsafe { x86::split_avx512(values, streams) },
    }
}

/// Joins values `from..from + count` of the byte streams of `bytes` (four streams of
/// `bytes.len() / 4` bytes, one after another) back into floats, appended to `out`.
pub(crate) fn join_range(bytes: &[u8], from: usize, count: usize, out: &mut Vec<f32>) {
    join_range_in(Tier::detected(), bytes, from, count, out);
}

/// [`join_range`] compiled for `tier`, which this CPU must run.
pub(crate) fn join_range_in(
    tier: Tier,
    bytes: &[u8],
    from: usize,
    count: usize,
    out: &mut Vec<f32>,
) {
    match tier {
        Tier::Baseline => join_blocks(bytes, from, count, out),
        // SAFETY: `tier` is one this CPU runs (see `split_in`).
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { x86::join_avx2(bytes, from, count, out) },
        // SAFETY: as above, for AVX-512 F, BW and VL.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => unsafe { x86::join_avx512(bytes, from, count, out) },
    }
}

/// The blocked split and join compiled with wider vectors: each function is the portable code
/// inlined into a body built for its instruction set. They are safe to call from code built
/// for that set; anywhere else the call needs `unsafe` and the CPU's word that it has the set
/// (`split_in`, `join_range_in`).
#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx2")]
    pub(super) fn split_avx2(values: &[f32], streams: [&mut [u8]; 4]) {
        super::split_blocks(values, streams);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn split_avx512(values: &[f32], streams: [&mut [u8]; 4]) {
        super::split_blocks(values, streams);
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn join_avx2(bytes: &[u8], from: usize, count: usize, out: &mut Vec<f32>) {
        super::join_blocks(bytes, from, count, out);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn join_avx512(bytes: &[u8], from: usize, count: usize, out: &mut Vec<f32>) {
        super::join_blocks(bytes, from, count, out);
    }
}

/// The portable split, inlined into each tier's build.
#[inline(always)]
fn split_blocks(values: &[f32], streams: [&mut [u8]; 4]) {
    let n = values.len();
    let [s0, s1, s2, s3] = streams;
    assert!(s0.len() == n && s1.len() == n && s2.len() == n && s3.len() == n);
    let (blocks, tail) = values.as_chunks::<BLOCK>();
    let whole = blocks.len() * BLOCK;
    let outs = s0[..whole]
        .as_chunks_mut::<BLOCK>()
        .0
        .iter_mut()
        .zip(s1[..whole].as_chunks_mut::<BLOCK>().0)
        .zip(s2[..whole].as_chunks_mut::<BLOCK>().0)
        .zip(s3[..whole].as_chunks_mut::<BLOCK>().0);
    for (block, (((o0, o1), o2), o3)) in blocks.iter().zip(outs) {
        for i in 0..BLOCK {
            let [a, b, c, d] = block[i].to_le_bytes();
            o0[i] = a;
            o1[i] = b;
            o2[i] = c;
            o3[i] = d;
        }
    }
    for (i, v) in tail.iter().enumerate() {
        let [a, b, c, d] = v.to_le_bytes();
        (s0[whole + i], s1[whole + i], s2[whole + i], s3[whole + i]) = (a, b, c, d);
    }
}

/// The portable join, inlined into each tier's build.
#[inline(always)]
fn join_blocks(bytes: &[u8], from: usize, count: usize, out: &mut Vec<f32>) {
    assert!(bytes.len().is_multiple_of(4));
    let n = bytes.len() / 4;
    assert!(from <= n && count <= n - from, "values {from}..+{count} of {n}");
    let stream = |k: usize| &bytes[k * n + from..k * n + from + count];
    let (s0, s1, s2, s3) = (stream(0), stream(1), stream(2), stream(3));
    out.reserve(count);
    let whole = count / BLOCK * BLOCK;
    let streams = s0[..whole]
        .as_chunks::<BLOCK>()
        .0
        .iter()
        .zip(s1[..whole].as_chunks::<BLOCK>().0)
        .zip(s2[..whole].as_chunks::<BLOCK>().0)
        .zip(s3[..whole].as_chunks::<BLOCK>().0);
    let mut block = [0f32; BLOCK];
    for (((a, b), c), d) in streams {
        for i in 0..BLOCK {
            block[i] = f32::from_le_bytes([a[i], b[i], c[i], d[i]]);
        }
        out.extend_from_slice(&block);
    }
    out.extend((whole..count).map(|i| f32::from_le_bytes([s0[i], s1[i], s2[i], s3[i]])));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked split and join must agree with the format's definition at every length
    /// (empty, inside one block, at a block's edge, whole blocks and a tail) and every range of
    /// a page, for every bit pattern including NaNs and signed zeros, in every tier this CPU
    /// runs (each is its own compilation of the code).
    #[test]
    fn split_and_join_match_the_definition_at_every_length_and_tier() {
        let tiers = Tier::available();
        if std::env::var_os("CI").is_some() && cfg!(target_arch = "x86_64") {
            // The CI machines have AVX2 at least: a detection that finds none is a bug.
            assert!(tiers.len() >= 2, "tiers {tiers:?}");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for tier in tiers {
            for n in [0, 1, 63, 64, 65, 127, 128, 200, 1000, 4099] {
                check(tier, n, &mut state);
            }
        }
    }

    fn check(tier: Tier, n: usize, state: &mut u64) {
        let values: Vec<f32> = (0..n)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                f32::from_bits(*state as u32)
            })
            .collect();
        let mut bytes = vec![0u8; 4 * n];
        {
            let (s0, rest) = bytes.split_at_mut(n);
            let (s1, rest) = rest.split_at_mut(n);
            let (s2, s3) = rest.split_at_mut(n);
            split_in(tier, &values, [s0, s1, s2, s3]);
        }
        for (i, v) in values.iter().enumerate() {
            for (k, byte) in v.to_le_bytes().iter().enumerate() {
                assert_eq!(bytes[k * n + i], *byte, "{tier:?}: n {n}, value {i}, byte {k}");
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut back = vec![7.0f32];
        join_range_in(tier, &bytes, 0, n, &mut back);
        assert_eq!(back.len(), n + 1, "{tier:?}: appended after what was there");
        assert_eq!(bits(&back[1..]), bits(&values), "{tier:?}: n {n}");
        // Ranges of the values, as a scan takes a page in parts.
        for (from, count) in [
            (n / 3, n / 2),
            (n / 2, n - n / 2),
            (n, 0),
            (1.min(n), n.saturating_sub(2)),
            (n.saturating_sub(70), 70.min(n)),
        ] {
            let mut part = Vec::new();
            join_range_in(tier, &bytes, from, count, &mut part);
            let want = bits(&values[from..from + count]);
            assert_eq!(bits(&part), want, "{tier:?}: n {n}, {from}..+{count}");
        }
    }
}
