//! Parquet's `BYTE_STREAM_SPLIT` for floats: byte `k` of value `i` goes to stream `k` at `i`.
//!
//! A flush splits every vector value and a scan joins them back, so both run over every vector
//! byte the engine writes or reads. Value by value through four zipped iterators, the compiler
//! kept them scalar: the split was a fifth of a flush's time on 128-d f32 (BENCHMARKS.md, issue
//! 26). Here both work in fixed blocks of [`BLOCK`] values, which the compiler turns into
//! vector shuffles at any SIMD tier, with a value-by-value tail.

/// Values per block.
const BLOCK: usize = 64;

/// Splits `values` into the four byte streams `streams[k]` (each `values.len()` long).
pub(crate) fn split(values: &[f32], streams: [&mut [u8]; 4]) {
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

/// Joins the byte streams of `bytes` (four streams of `bytes.len() / 4` bytes, one after
/// another) back into floats, appended to `out`.
#[cfg(test)]
pub(crate) fn join(bytes: &[u8], out: &mut Vec<f32>) {
    join_range(bytes, 0, bytes.len() / 4, out);
}

/// Joins values `from..from + count` of the byte streams of `bytes` (four streams of
/// `bytes.len() / 4` bytes, one after another) back into floats, appended to `out`.
pub(crate) fn join_range(bytes: &[u8], from: usize, count: usize, out: &mut Vec<f32>) {
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
    /// (empty, inside one block, at a block's edge, whole blocks and a tail), for every bit
    /// pattern including NaNs and signed zeros.
    #[test]
    fn split_and_join_match_the_definition_at_every_length_around_the_blocks() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for n in [0, 1, 63, 64, 65, 127, 128, 200, 1000] {
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    f32::from_bits(state as u32)
                })
                .collect();
            let mut bytes = vec![0u8; 4 * n];
            {
                let (s0, rest) = bytes.split_at_mut(n);
                let (s1, rest) = rest.split_at_mut(n);
                let (s2, s3) = rest.split_at_mut(n);
                split(&values, [s0, s1, s2, s3]);
            }
            for (i, v) in values.iter().enumerate() {
                for (k, byte) in v.to_le_bytes().iter().enumerate() {
                    assert_eq!(bytes[k * n + i], *byte, "n {n}, value {i}, byte {k}");
                }
            }
            let mut back = vec![7.0f32];
            join(&bytes, &mut back);
            assert_eq!(back.len(), n + 1, "appended after what was there");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back[1..]), bits(&values), "n {n}");
            // Any range of the values, as a scan takes a page in parts.
            for (from, count) in [
                (0, n),
                (n / 3, n / 2),
                (n / 2, n - n / 2),
                (n, 0),
                (1.min(n), n.saturating_sub(2)),
            ] {
                let mut part = Vec::new();
                join_range(&bytes, from, count, &mut part);
                assert_eq!(
                    bits(&part),
                    bits(&values[from..from + count]),
                    "n {n}, {from}..+{count}"
                );
            }
        }
    }
}
