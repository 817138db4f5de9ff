//! The scalar reference tier: plain loops in element order, the oracle the SIMD tiers are tested
//! against. It is also what a CPU without any supported extension runs.

use crate::{
    Kernels, PQ_CENTROIDS, PqTable, PqTableU8, Tier, check_int_pair, check_pair, check_pq,
    check_pq_ids, cosine_from_sums,
};

/// The scalar reference tier. Always available.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scalar;

impl Kernels for Scalar {
    fn tier(self) -> Tier {
        Tier::Scalar
    }

    fn l2_sq_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
    }

    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn cosine_f32(self, a: &[f32], b: &[f32]) -> f32 {
        check_pair(a.len(), b.len());
        let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
        for (x, y) in a.iter().zip(b) {
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
        cosine_from_sums(dot, na, nb)
    }

    fn l2_sq_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        a.iter().zip(b).map(|(&x, &y)| u32::from(x.abs_diff(y)).pow(2)).sum()
    }

    fn dot_u8(self, a: &[u8], b: &[u8]) -> u32 {
        check_int_pair(a.len(), b.len());
        a.iter().zip(b).map(|(&x, &y)| u32::from(x) * u32::from(y)).sum()
    }

    fn l2_sq_i8(self, a: &[i8], b: &[i8]) -> u32 {
        check_int_pair(a.len(), b.len());
        a.iter().zip(b).map(|(&x, &y)| u32::from(x.abs_diff(y)).pow(2)).sum()
    }

    fn dot_i8(self, a: &[i8], b: &[i8]) -> i32 {
        check_int_pair(a.len(), b.len());
        a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
    }

    fn pq_score(self, table: PqTable<'_>, codes: &[u8], out: &mut [f32]) {
        check_pq(&table, codes.len(), out.len());
        let m = table.subspaces();
        for (code, o) in codes.chunks_exact(m).zip(out.iter_mut()) {
            *o = pq_one(table, code);
        }
    }

    fn pq_score_ids(self, table: PqTable<'_>, codes: &[u8], ids: &[u32], out: &mut [f32]) {
        check_pq_ids(&table, codes.len(), ids, out.len());
        let m = table.subspaces();
        for (&id, o) in ids.iter().zip(out.iter_mut()) {
            let at = id as usize * m;
            *o = pq_one(table, &codes[at..at + m]);
        }
    }
}

/// The byte-table sum of each code `ids[j]` ([`crate::Kernels::pq_score_ids_u8`]'s reference).
pub(crate) fn pq_score_ids_u8(table: PqTableU8<'_>, codes: &[u8], ids: &[u32], out: &mut [u16]) {
    let (t, m) = (table.as_slice(), table.subspaces());
    for (&id, o) in ids.iter().zip(out.iter_mut()) {
        let code = &codes[id as usize * m..(id as usize + 1) * m];
        let entries =
            code.iter().enumerate().map(|(j, &c)| u16::from(t[j * PQ_CENTROIDS + usize::from(c)]));
        *o = entries.sum();
    }
}

/// The table distance of one code, summed in subspace order.
#[inline]
pub(crate) fn pq_one(table: PqTable<'_>, code: &[u8]) -> f32 {
    let t = table.as_slice();
    code.iter().enumerate().map(|(m, &c)| t[m * PQ_CENTROIDS + usize::from(c)]).sum()
}

/// Four codes at once with independent sums: the portable fast path for tiers without a gather
/// instruction (NEON). Each sum is still formed in subspace order, so results equal [`pq_one`]'s.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn pq_score_unrolled<'c>(
    table: PqTable<'_>,
    mut code_of: impl FnMut(usize) -> &'c [u8],
    out: &mut [f32],
) {
    let t = table.as_slice();
    let m = table.subspaces();
    let mut blocks = out.chunks_exact_mut(4);
    let mut n = 0;
    for block in &mut blocks {
        let c = [code_of(n), code_of(n + 1), code_of(n + 2), code_of(n + 3)];
        let mut s = [0.0f32; 4];
        for j in 0..m {
            let row = &t[j * PQ_CENTROIDS..(j + 1) * PQ_CENTROIDS];
            for k in 0..4 {
                s[k] += row[usize::from(c[k][j])];
            }
        }
        block.copy_from_slice(&s);
        n += 4;
    }
    for o in blocks.into_remainder() {
        *o = pq_one(table, code_of(n));
        n += 1;
    }
}
