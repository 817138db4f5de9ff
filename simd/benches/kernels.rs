//! Kernel benchmarks per SIMD tier (divan).
//!
//! `cargo bench -p quiver-simd --bench kernels` — ns per distance at dims 96/128/384/768/960 for each
//! tier, and PQ codes scored per second for M = 16/32/64. Distances are measured in the one-to-many
//! form (one query against 64 rows that stay in L1/L2, one dispatch per batch), the shape of a
//! rerank or brute-force scan; divan reports the time per batch and, via the item counter, per
//! distance. `avx512-novnni` is the AVX-512BW widening path for integer kernels on a VNNI CPU.
//! Figures and ratios are recorded in BENCHMARKS.md.

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use quiver_simd::{Isa, Kernels, PQ_CENTROIDS, PqTable, Tier};

fn main() {
    divan::main();
}

const TIERS: &[&str] = &["scalar", "avx2", "avx512", "avx512-novnni", "neon"];
const DIMS: &[usize] = &[96, 128, 384, 768, 960];
const ROWS: usize = 64;

/// The kernels for a tier name, or `None` where the CPU (or architecture) lacks it.
fn isa(name: &str) -> Option<Isa> {
    match name {
        "avx512-novnni" => {
            #[cfg(target_arch = "x86_64")]
            {
                quiver_simd::Avx512::new().map(|t| Isa::Avx512(t.without_vnni()))
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                None
            }
        }
        other => Isa::for_tier(other.parse::<Tier>().ok()?),
    }
}

/// Deterministic pseudo-random data (splitmix64).
fn data(n: usize, seed: u64) -> impl Iterator<Item = u64> {
    let mut s = seed;
    (0..n).map(move |_| {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A buffer whose first element sits on a 64-byte boundary, as the index stores vectors (a large
/// `Vec` from the system allocator is only 16-byte aligned, which would make every AVX-512 load
/// split a cache line).
struct Aligned<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    fn new(items: impl Iterator<Item = T>) -> Self {
        let items: Vec<T> = items.collect();
        let slack = 64 / size_of::<T>();
        let mut buf = vec![T::default(); items.len() + slack];
        let off = buf.as_ptr().align_offset(64);
        buf[off..off + items.len()].copy_from_slice(&items);
        Self { buf, off, len: items.len() }
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

fn floats(n: usize, seed: u64) -> Aligned<f32> {
    Aligned::new(data(n, seed).map(|x| (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5))
}

fn bytes(n: usize, seed: u64) -> Aligned<u8> {
    Aligned::new(data(n, seed).map(|x| x as u8))
}

macro_rules! distance_bench {
    ($name:ident, $gen:ident, $out:ty, $method:ident $(, $conv:expr)?) => {
        #[divan::bench(args = TIERS, consts = DIMS)]
        fn $name<const DIM: usize>(bencher: Bencher<'_, '_>, tier: &str) {
            let Some(k) = isa(tier) else { return };
            let q = $gen(DIM, 1);
            let rows = $gen(DIM * ROWS, 2);
            $(let (q, rows) = (Aligned::new(q.iter().map($conv)), Aligned::new(rows.iter().map($conv)));)?
            let mut out = vec![<$out>::default(); ROWS];
            bencher.counter(ItemsCount::new(ROWS)).bench_local(|| {
                k.$method(black_box(&q), black_box(&rows), &mut out);
                black_box(&out);
            });
        }
    };
}

distance_bench!(l2_f32, floats, f32, l2_sq_f32_many);
distance_bench!(dot_f32, floats, f32, dot_f32_many);
distance_bench!(cosine_f32, floats, f32, cosine_f32_many);
distance_bench!(l2_u8, bytes, u32, l2_sq_u8_many);
distance_bench!(l2_i8, bytes, u32, l2_sq_i8_many, |&x: &u8| x as i8);

/// `l2_f32` with the rows kept in L1 (at most 16 KiB of rows), so the kernel, not the L2→L1
/// bandwidth, is what is measured at the large dimensions.
#[divan::bench(args = TIERS, consts = DIMS)]
fn l2_f32_l1_resident<const DIM: usize>(bencher: Bencher<'_, '_>, tier: &str) {
    let Some(k) = isa(tier) else { return };
    let rows_n = (16_384 / (DIM * 4)).max(1);
    let (q, rows) = (floats(DIM, 1), floats(DIM * rows_n, 2));
    let mut out = vec![0.0f32; rows_n];
    bencher.counter(ItemsCount::new(rows_n)).bench_local(|| {
        k.l2_sq_f32_many(black_box(&q), black_box(&rows), &mut out);
        black_box(&out);
    });
}

/// `dot_u8` has no one-to-many form: pairwise calls on one token (no per-call dispatch).
#[divan::bench(args = TIERS, consts = DIMS)]
fn dot_u8<const DIM: usize>(bencher: Bencher<'_, '_>, tier: &str) {
    struct Run<'a>(&'a [u8], &'a [u8], &'a mut [u32]);
    impl quiver_simd::WithKernels for Run<'_> {
        type Output = ();
        fn run<K: Kernels>(self, k: K) {
            let dim = self.0.len();
            for (row, o) in self.1.chunks_exact(dim).zip(self.2.iter_mut()) {
                *o = k.dot_u8(self.0, row);
            }
        }
    }
    let Some(k) = isa(tier) else { return };
    let (q, rows) = (bytes(DIM, 1), bytes(DIM * ROWS, 2));
    let mut out = vec![0u32; ROWS];
    bencher.counter(ItemsCount::new(ROWS)).bench_local(|| {
        k.dispatch(Run(black_box(&q), black_box(&rows), &mut out));
        black_box(&out);
    });
}

const PQ_M: &[usize] = &[16, 32, 64];
/// Codes scored per call in the contiguous case (stays in L2 at M = 64: 256 KiB).
const PQ_BATCH: usize = 4_096;
/// Size of the code array neighbour lists are drawn from (64 MiB at M = 64: out of cache, as in a
/// real index), and of one neighbour list.
const PQ_POOL: usize = 1 << 20;
const PQ_NEIGHBOURS: usize = 64;

fn pq_table(m: usize) -> Vec<f32> {
    floats(m * PQ_CENTROIDS, 3).iter().map(|x| x.abs() * 1000.0).collect()
}

/// Contiguous codes: PQ codes scored per second (divan's item rate).
#[divan::bench(args = TIERS, consts = PQ_M)]
fn pq_contiguous<const M: usize>(bencher: Bencher<'_, '_>, tier: &str) {
    let Some(k) = isa(tier) else { return };
    let table = pq_table(M);
    let codes = bytes(PQ_BATCH * M, 4);
    let mut out = vec![0.0f32; PQ_BATCH];
    bencher.counter(ItemsCount::new(PQ_BATCH)).bench_local(|| {
        k.pq_score(PqTable::new(black_box(&table), M), black_box(&codes), &mut out);
        black_box(&out);
    });
}

/// Neighbour lists: 64 random ids into a code array of 2²⁰ codes, a new list each call.
#[divan::bench(args = TIERS, consts = PQ_M)]
fn pq_neighbour_list<const M: usize>(bencher: Bencher<'_, '_>, tier: &str) {
    let Some(k) = isa(tier) else { return };
    let table = pq_table(M);
    let codes = bytes(PQ_POOL * M, 5);
    let lists: Vec<u32> =
        data(PQ_NEIGHBOURS * 4_096, 6).map(|x| (x % PQ_POOL as u64) as u32).collect();
    let mut out = vec![0.0f32; PQ_NEIGHBOURS];
    let mut next = 0usize;
    bencher.counter(ItemsCount::new(PQ_NEIGHBOURS)).bench_local(|| {
        let ids = &lists[next * PQ_NEIGHBOURS..(next + 1) * PQ_NEIGHBOURS];
        next = (next + 1) % 4_096;
        k.pq_score_ids(PqTable::new(black_box(&table), M), black_box(&codes), ids, &mut out);
        black_box(&out);
    });
}

/// Codes of a filtered search's ranking: every tenth code of a 2¹⁸-code array (a 10% filter on
/// a 262k-row segment), ascending, scored through the `f32` table and through its byte table.
const PQ_RANKED_ROWS: usize = 1 << 18;

fn pq_ranked_ids(m: usize) -> (Vec<f32>, Vec<u8>, Vec<u32>) {
    let codes = bytes(PQ_RANKED_ROWS * m, 7);
    let ids: Vec<u32> = data(PQ_RANKED_ROWS, 8)
        .enumerate()
        .filter(|&(_, x)| x % 10 == 0)
        .map(|(i, _)| i as u32)
        .collect();
    (pq_table(m), codes.to_vec(), ids)
}

/// A tenth of the codes, ascending, through the `f32` table.
#[divan::bench(args = TIERS, consts = PQ_M)]
fn pq_ranked_f32<const M: usize>(bencher: Bencher<'_, '_>, tier: &str) {
    let Some(k) = isa(tier) else { return };
    let (table, codes, ids) = pq_ranked_ids(M);
    let mut out = vec![0.0f32; ids.len()];
    bencher.counter(ItemsCount::new(ids.len())).bench_local(|| {
        k.pq_score_ids(PqTable::new(black_box(&table), M), black_box(&codes), &ids, &mut out);
        black_box(&out);
    });
}

/// The same codes through the byte table.
#[divan::bench(args = TIERS, consts = PQ_M)]
fn pq_ranked_u8<const M: usize>(bencher: Bencher<'_, '_>, tier: &str) {
    let Some(k) = isa(tier) else { return };
    let (table, codes, ids) = pq_ranked_ids(M);
    let mut out = vec![0u16; ids.len()];
    let mut bytes = Vec::new();
    quiver_simd::quantize_pq_table(PqTable::new(&table, M), &mut bytes);
    bencher.counter(ItemsCount::new(ids.len())).bench_local(|| {
        let t = quiver_simd::PqTableU8::new(black_box(&bytes), M);
        k.pq_score_ids_u8(t, black_box(&codes), &ids, &mut out);
        black_box(&out);
    });
}

/// Making the byte table of one query ([`quiver_simd::quantize_pq_table`]): once per query
/// and index a filtered search ranks by bytes.
#[divan::bench(consts = PQ_M)]
fn pq_quantize_table<const M: usize>(bencher: Bencher<'_, '_>) {
    let table = pq_table(M);
    let mut bytes = Vec::new();
    bencher.counter(ItemsCount::new(M * PQ_CENTROIDS)).bench_local(|| {
        quiver_simd::quantize_pq_table(PqTable::new(black_box(&table), M), &mut bytes);
        black_box(&bytes);
    });
}
