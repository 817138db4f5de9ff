//! # quiver-simd — the distance kernels every Quiver search and build spends its time in
//!
//! This is the lowest crate of the workspace. It depends on nothing (not even another Quiver crate)
//! and knows nothing of graphs, files or logs: it turns slices of numbers into distances.
//!
//! ## What it holds
//! - Pairwise kernels: squared L2, inner product and cosine distance for `f32`; squared L2 and inner
//!   product for `u8` and `i8` (SIFT/BIGANN data are `u8`), computed exactly in integers.
//! - The PQ asymmetric-distance scorer: given a lookup table of `M × 256` `f32` ([`PqTable`]) and PQ
//!   codes of `M` bytes, the distance of every code — contiguous ([`Kernels::pq_score`]) or picked by id
//!   out of a large code array, the shape of a neighbour list ([`Kernels::pq_score_ids`]).
//! - One-to-many forms of every pairwise kernel (`*_many`), which dispatch once per batch.
//!
//! ## Tiers and proof of CPU features
//! Every kernel exists in up to four [`Tier`]s: a scalar reference ([`Scalar`], the test oracle), AVX2+FMA
//! ([`Avx2`]), AVX-512 F/BW/VL with a VNNI path for the integer kernels ([`Avx512`]) on x86-64, and NEON
//! (`Neon`) on aarch64. Each tier is a zero-sized (or near zero-sized) *token* type whose only public
//! constructor checks the CPU at run time; the `#[target_feature]` kernels behind a token are private,
//! so safe code cannot reach an AVX-512 instruction without first holding proof that the CPU has it.
//!
//! [`Isa`] is the run-time choice among the tokens. [`Isa::active`] is chosen once per process — the best
//! tier the CPU supports, capped by the environment variable `QUIVER_SIMD`
//! (`scalar` | `avx2` | `avx512` | `neon`; unset or `auto` means no cap) — and cached. The crate-level
//! functions ([`l2_sq_f32`], …) use it. Tests and benchmarks pick tiers explicitly with
//! [`Isa::for_tier`], so every tier runs on one machine.
//!
//! ## Contracts (checked, not assumed)
//! - The two operands of a pairwise kernel have equal lengths; a mismatch panics (it is a caller bug:
//!   the engine rejects wrong dimensions long before a kernel runs).
//! - Integer kernels accept at most [`MAX_DIM`] elements, which makes their results exact: the largest
//!   possible squared `u8` distance, `MAX_DIM × 255²`, fits in a `u32`.
//! - Float kernels of different tiers sum in different orders; they agree with the scalar reference
//!   within `dim × f32::EPSILON × Σ|terms|` (the forward error bound of a sum of `dim` products), which
//!   the property tests check.
//! - Cosine distance is `1 − a·b / (‖a‖‖b‖)`, clamped to `[0, 2]`; if either vector is zero the
//!   distance is `1` (no NaN is ever produced from finite input).
//!
//! ## Example
//! ```
//! use quiver_simd::{Isa, Kernels, PqTable, Tier};
//!
//! let a = [1.0f32, 2.0, 3.0];
//! let b = [1.0f32, 0.0, 3.0];
//! assert_eq!(quiver_simd::l2_sq_f32(&a, &b), 4.0); // the active tier, chosen once
//!
//! // Any tier explicitly, e.g. the scalar reference:
//! let scalar = Isa::for_tier(Tier::Scalar).unwrap();
//! assert_eq!(scalar.l2_sq_u8(&[0, 10], &[3, 6]), 9 + 16);
//!
//! // PQ: two subspaces, so a code is two bytes; distance = row0[code[0]] + row1[code[1]].
//! let mut table = vec![0.0f32; 2 * 256];
//! table[7] = 1.5;
//! table[256 + 9] = 2.0;
//! let mut out = [0.0f32; 1];
//! Isa::active().pq_score(PqTable::new(&table, 2), &[7, 9], &mut out);
//! assert_eq!(out[0], 3.5);
//! ```

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::pedantic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::many_single_char_names,
    clippy::similar_names,
    clippy::module_name_repetitions,
    clippy::inline_always,
    clippy::must_use_candidate,
    clippy::missing_panics_doc
)]

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
pub use neon::Neon;
pub use scalar::Scalar;
#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

/// The largest vector length the integer kernels accept. At this length the worst-case squared `u8`
/// distance (`65_536 × 255² = 4_261_478_400`) still fits in a `u32`, and no 32-bit lane accumulator
/// of any tier can overflow.
pub const MAX_DIM: usize = 65_536;

/// Centroids per PQ subspace: codes are one byte each.
pub const PQ_CENTROIDS: usize = 256;

/// The largest number of PQ subspaces (bytes per code) a [`PqTable`] may have.
pub const MAX_PQ_SUBSPACES: usize = 4_096;

/// Environment variable that caps the tier [`Isa::active`] picks.
pub const TIER_ENV: &str = "QUIVER_SIMD";

/// An instruction-set tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Portable Rust, no explicit SIMD: the reference every other tier is tested against.
    Scalar,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512 F/BW/VL, plus VNNI for the integer kernels when the CPU has it (x86-64).
    Avx512,
    /// Advanced SIMD (aarch64).
    Neon,
}

impl Tier {
    /// All tiers, weakest first.
    pub const ALL: [Tier; 4] = [Tier::Scalar, Tier::Neon, Tier::Avx2, Tier::Avx512];

    /// The name used by `QUIVER_SIMD` and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    /// Strength used when capping: scalar 0, the 128/256-bit tiers 1, AVX-512 2. A cap of `avx2` on an
    /// aarch64 machine therefore allows NEON.
    const fn rank(self) -> u8 {
        match self {
            Tier::Scalar => 0,
            Tier::Avx2 | Tier::Neon => 1,
            Tier::Avx512 => 2,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `QUIVER_SIMD` value that names no tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseTierError(pub String);

impl fmt::Display for ParseTierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown SIMD tier {:?}: expected one of scalar, avx2, avx512, neon", self.0)
    }
}

impl std::error::Error for ParseTierError {}

impl FromStr for Tier {
    type Err = ParseTierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Tier::Scalar),
            "avx2" => Ok(Tier::Avx2),
            "avx512" => Ok(Tier::Avx512),
            "neon" => Ok(Tier::Neon),
            _ => Err(ParseTierError(s.to_owned())),
        }
    }
}

/// A PQ lookup table: `M` rows of [`PQ_CENTROIDS`] `f32`, row `m` holding the distance from the query's
/// `m`-th sub-vector to each centroid of subspace `m`. A code's distance is the sum over `m` of
/// `row_m[code[m]]`, so every index a kernel forms is in bounds by construction.
#[derive(Clone, Copy, Debug)]
pub struct PqTable<'a> {
    data: &'a [f32],
    m: usize,
}

impl<'a> PqTable<'a> {
    /// Wraps `data` (row-major, `m × 256`) as a table of `m` subspaces.
    ///
    /// # Panics
    /// If `m` is 0 or above [`MAX_PQ_SUBSPACES`], or `data.len() != m × 256`.
    pub fn new(data: &'a [f32], m: usize) -> Self {
        assert!((1..=MAX_PQ_SUBSPACES).contains(&m), "PQ table: {m} subspaces, expected 1..=4096");
        assert_eq!(
            data.len(),
            m * PQ_CENTROIDS,
            "PQ table: {} floats for {m} subspaces",
            data.len()
        );
        Self { data, m }
    }

    /// Number of subspaces, i.e. bytes per code.
    pub fn subspaces(&self) -> usize {
        self.m
    }

    /// The table, row-major.
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }
}

/// Most subspaces a byte table ([`PqTableU8`]) may have: a code's sum of byte entries, at most
/// `m × 255`, must fit a `u16`.
pub const MAX_PQ_U8_SUBSPACES: usize = 256;

/// A PQ lookup table quantised to bytes ([`quantize_pq_table`]): `M` rows of [`PQ_CENTROIDS`]
/// `u8`. A code's sum of entries is an integer, computed exactly by every tier
/// ([`Kernels::pq_score_ids_u8`]); it ranks codes as the `f32` table does up to the
/// quantisation's error, which [`PqQuantization`] bounds.
#[derive(Clone, Copy, Debug)]
pub struct PqTableU8<'a> {
    data: &'a [u8],
    m: usize,
}

impl<'a> PqTableU8<'a> {
    /// Wraps `data` (row-major, `m × 256`) as a byte table of `m` subspaces.
    ///
    /// # Panics
    /// If `m` is 0 or above [`MAX_PQ_U8_SUBSPACES`], or `data.len() != m × 256`.
    pub fn new(data: &'a [u8], m: usize) -> Self {
        assert!(
            (1..=MAX_PQ_U8_SUBSPACES).contains(&m),
            "PQ byte table: {m} subspaces, expected 1..={MAX_PQ_U8_SUBSPACES}"
        );
        assert_eq!(
            data.len(),
            m * PQ_CENTROIDS,
            "PQ byte table: {} bytes for {m} subspaces",
            data.len()
        );
        Self { data, m }
    }

    /// Number of subspaces, i.e. bytes per code.
    pub fn subspaces(&self) -> usize {
        self.m
    }

    /// The table, row-major.
    pub fn as_slice(&self) -> &'a [u8] {
        self.data
    }
}

/// How a byte table's sums relate to the `f32` table it was made from: entry `q` of subspace
/// `j` stands for `low_j + step · q`, within `step / 2`. So a code's `f32` distance `d` and its
/// byte sum `s` satisfy `|d − offset − step · s| ≤ step · m / 2` (`offset = Σ low_j`), and a
/// code whose sum exceeds another's by more than [`PqQuantization::margin`] is farther by the
/// `f32` table too: ranking by sums and keeping everything within the margin of the `n`-th
/// loses none of the `n` nearest by the `f32` table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PqQuantization {
    /// `Σ low_j`: the distance of a code whose entries are all zero.
    pub offset: f32,
    /// The distance one unit of a sum stands for.
    pub step: f32,
    /// Subspaces.
    pub m: usize,
}

impl PqQuantization {
    /// Sum units by which two codes' sums must differ for their `f32` distances to be
    /// certainly in the same order: `m` (each sum is within `m / 2` units of its distance),
    /// plus one unit for the rounding of the `f32` arithmetic on both sides.
    pub fn margin(&self) -> u32 {
        self.m as u32 + 1
    }
}

/// Quantises `table` into `out` (`m × 256` bytes, replacing its contents): each subspace's
/// entries minus the subspace's smallest, divided by one step for all subspaces (the largest
/// subspace range over 255), rounded to the nearest byte. `None` (and `out` unspecified) if
/// the table holds a value that is not finite, or has more than [`MAX_PQ_U8_SUBSPACES`]
/// subspaces.
pub fn quantize_pq_table(table: PqTable<'_>, out: &mut Vec<u8>) -> Option<PqQuantization> {
    let m = table.subspaces();
    if m > MAX_PQ_U8_SUBSPACES {
        return None;
    }
    // Written as plain compares and integer tests so that the loops vectorise: this runs for
    // every query on every index a filtered search ranks by bytes.
    let mut ranges = [(0.0f32, 0.0f32); MAX_PQ_U8_SUBSPACES];
    let mut nonfinite = false;
    for (row, range) in table.as_slice().chunks_exact(PQ_CENTROIDS).zip(ranges.iter_mut()) {
        let (mut low, mut high) = (row[0], row[0]);
        for &x in row {
            low = if x < low { x } else { low };
            high = if x > high { x } else { high };
            nonfinite |= x.to_bits() & 0x7f80_0000 == 0x7f80_0000;
        }
        *range = (low, high);
    }
    let widest = ranges[..m].iter().map(|&(low, high)| high - low).fold(0.0f32, f32::max);
    if nonfinite || !widest.is_finite() {
        return None;
    }
    let (step, per_step) = if widest > 0.0 { (widest / 255.0, 255.0 / widest) } else { (1.0, 0.0) };
    let mut offset = 0.0f32;
    out.clear();
    out.resize(m * PQ_CENTROIDS, 0);
    let rows = table.as_slice().chunks_exact(PQ_CENTROIDS).zip(out.chunks_exact_mut(PQ_CENTROIDS));
    for ((row, bytes), &(low, _)) in rows.zip(&ranges[..m]) {
        offset += low;
        for (&x, byte) in row.iter().zip(bytes.iter_mut()) {
            // `x − low` is at least 0: adding a half and truncating rounds to the nearest.
            *byte = ((x - low) * per_step + 0.5).min(255.0) as u8;
        }
    }
    Some(PqQuantization { offset, step, m })
}

/// The kernels one tier provides. Implemented by every token type and by [`Isa`], which dispatches to
/// the token it holds. Generic code (`fn search<K: Kernels>(k: K, …)`) monomorphises per tier, so a
/// token's kernels are called directly, without per-call dispatch; see [`Isa::dispatch`].
///
/// Every method panics if its slices disagree in length (see the crate docs for the exact contracts).
pub trait Kernels: Copy + Send + Sync + fmt::Debug + 'static {
    /// The tier this value runs.
    fn tier(self) -> Tier;

    /// Squared Euclidean distance `Σ (aᵢ − bᵢ)²`.
    fn l2_sq_f32(self, a: &[f32], b: &[f32]) -> f32;
    /// Inner product `Σ aᵢ bᵢ`.
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32;
    /// Cosine distance `1 − a·b / (‖a‖‖b‖)` in `[0, 2]`; `1` if either vector is zero.
    fn cosine_f32(self, a: &[f32], b: &[f32]) -> f32;
    /// Squared Euclidean distance of `u8` vectors, exact. At most [`MAX_DIM`] elements.
    fn l2_sq_u8(self, a: &[u8], b: &[u8]) -> u32;
    /// Inner product of `u8` vectors, exact. At most [`MAX_DIM`] elements.
    fn dot_u8(self, a: &[u8], b: &[u8]) -> u32;
    /// Squared Euclidean distance of `i8` vectors, exact. At most [`MAX_DIM`] elements.
    fn l2_sq_i8(self, a: &[i8], b: &[i8]) -> u32;
    /// Inner product of `i8` vectors, exact. At most [`MAX_DIM`] elements.
    fn dot_i8(self, a: &[i8], b: &[i8]) -> i32;

    /// Scores contiguous codes: `codes` holds `out.len()` codes of `table.subspaces()` bytes each and
    /// `out[n]` becomes the table distance of code `n`.
    fn pq_score(self, table: PqTable<'_>, codes: &[u8], out: &mut [f32]);

    /// Scores the codes named by `ids` (a neighbour list) out of `codes`, an array of whole codes:
    /// `out[j]` becomes the table distance of code `ids[j]`.
    ///
    /// # Panics
    /// If an id is out of range or `out.len() != ids.len()`.
    fn pq_score_ids(self, table: PqTable<'_>, codes: &[u8], ids: &[u32], out: &mut [f32]);

    /// Scores the codes named by `ids` out of `codes` through a byte table: `out[j]` becomes
    /// the sum of `table`'s entries for code `ids[j]`, exactly (the tiers agree bit for bit).
    /// Several times faster than [`Kernels::pq_score_ids`] where the tier has byte shuffles
    /// (AVX-512 VBMI); the scalar loop elsewhere.
    ///
    /// # Panics
    /// If an id is out of range or `out.len() != ids.len()`.
    fn pq_score_ids_u8(self, table: PqTableU8<'_>, codes: &[u8], ids: &[u32], out: &mut [u16]) {
        check_pq_ids_m(table.subspaces(), codes.len(), ids, out.len());
        scalar::pq_score_ids_u8(table, codes, ids, out);
    }

    /// [`Kernels::l2_sq_f32`] of `query` against each row of `rows` (`out.len()` rows of `query.len()`).
    fn l2_sq_f32_many(self, query: &[f32], rows: &[f32], out: &mut [f32]) {
        many(query, rows, out, |a, b| self.l2_sq_f32(a, b));
    }
    /// [`Kernels::dot_f32`] of `query` against each row of `rows`.
    fn dot_f32_many(self, query: &[f32], rows: &[f32], out: &mut [f32]) {
        many(query, rows, out, |a, b| self.dot_f32(a, b));
    }
    /// [`Kernels::cosine_f32`] of `query` against each row of `rows`.
    fn cosine_f32_many(self, query: &[f32], rows: &[f32], out: &mut [f32]) {
        many(query, rows, out, |a, b| self.cosine_f32(a, b));
    }
    /// [`Kernels::l2_sq_u8`] of `query` against each row of `rows`.
    fn l2_sq_u8_many(self, query: &[u8], rows: &[u8], out: &mut [u32]) {
        many(query, rows, out, |a, b| self.l2_sq_u8(a, b));
    }
    /// [`Kernels::l2_sq_i8`] of `query` against each row of `rows`.
    fn l2_sq_i8_many(self, query: &[i8], rows: &[i8], out: &mut [u32]) {
        many(query, rows, out, |a, b| self.l2_sq_i8(a, b));
    }
}

/// Applies a pairwise kernel to `query` and each row of `rows`.
#[inline(always)]
fn many<T, R>(query: &[T], rows: &[T], out: &mut [R], f: impl Fn(&[T], &[T]) -> R) {
    let dim = query.len();
    assert!(dim > 0, "one-to-many kernel: empty query");
    assert_eq!(
        rows.len(),
        dim * out.len(),
        "one-to-many kernel: {} values for {} rows of {dim}",
        rows.len(),
        out.len()
    );
    for (row, o) in rows.chunks_exact(dim).zip(out.iter_mut()) {
        *o = f(query, row);
    }
}

/// Checks the operands of a pairwise float kernel.
#[inline(always)]
fn check_pair(a: usize, b: usize) {
    assert_eq!(a, b, "distance kernel: operands of different lengths ({a} and {b})");
}

/// Checks the operands of a pairwise integer kernel.
#[inline(always)]
fn check_int_pair(a: usize, b: usize) {
    check_pair(a, b);
    assert!(a <= MAX_DIM, "integer distance kernel: {a} elements, at most {MAX_DIM} allowed");
}

/// Checks the arguments of [`Kernels::pq_score`].
#[inline(always)]
fn check_pq(table: &PqTable<'_>, codes: usize, out: usize) {
    assert_eq!(
        codes,
        out * table.m,
        "PQ scorer: {codes} code bytes for {out} codes of {} bytes",
        table.m
    );
}

/// Checks the arguments of [`Kernels::pq_score_ids`] and returns the number of codes in the array.
#[inline(always)]
fn check_pq_ids(table: &PqTable<'_>, codes: usize, ids: &[u32], out: usize) -> usize {
    check_pq_ids_m(table.m, codes, ids, out)
}

/// Checks the arguments of a scorer of codes of `m` bytes picked by id; returns the number of
/// codes in the array.
#[inline(always)]
fn check_pq_ids_m(m: usize, codes: usize, ids: &[u32], out: usize) -> usize {
    assert_eq!(ids.len(), out, "PQ scorer: {} ids but {out} outputs", ids.len());
    assert_eq!(codes % m, 0, "PQ scorer: {codes} code bytes is not a whole number of codes");
    let n = codes / m;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
        panic!("PQ scorer: id {bad} out of range (the code array holds {n} codes)");
    }
    n
}

/// Turns the three sums of a cosine kernel into the distance. The ratio is formed in `f64` so that
/// `‖a‖²‖b‖²` cannot overflow for large finite inputs.
#[inline(always)]
fn cosine_from_sums(dot: f32, norm_a: f32, norm_b: f32) -> f32 {
    if norm_a == 0.0 || norm_b == 0.0 {
        return 1.0;
    }
    let cos = f64::from(dot) / (f64::from(norm_a) * f64::from(norm_b)).sqrt();
    (1.0 - cos).clamp(0.0, 2.0) as f32
}

/// A run-time choice of tier: holds the token that proves the chosen tier's CPU features.
#[derive(Clone, Copy, Debug)]
pub enum Isa {
    /// The scalar reference.
    Scalar(Scalar),
    /// AVX2 + FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    /// AVX-512.
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512),
    /// NEON.
    #[cfg(target_arch = "aarch64")]
    Neon(Neon),
}

static ACTIVE: OnceLock<Isa> = OnceLock::new();

impl Isa {
    /// The tier this process uses: the best the CPU supports, capped by `QUIVER_SIMD`. Chosen on first
    /// call and cached. An unparsable `QUIVER_SIMD` is reported once on standard error and ignored.
    pub fn active() -> Isa {
        *ACTIVE.get_or_init(|| {
            let cap = match std::env::var(TIER_ENV) {
                Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("auto") => None,
                Ok(v) => match v.parse::<Tier>() {
                    Ok(t) => Some(t),
                    Err(e) => {
                        eprintln!("quiver-simd: ignoring {TIER_ENV}: {e}");
                        None
                    }
                },
                Err(_) => None,
            };
            Isa::best_capped(cap)
        })
    }

    /// The best tier the CPU supports, ignoring `QUIVER_SIMD`.
    pub fn best() -> Isa {
        Isa::best_capped(None)
    }

    /// The best supported tier whose strength does not exceed `cap`'s.
    pub fn best_capped(cap: Option<Tier>) -> Isa {
        let limit = cap.map_or(u8::MAX, Tier::rank);
        Tier::ALL
            .iter()
            .rev()
            .filter(|t| t.rank() <= limit)
            .find_map(|&t| Isa::for_tier(t))
            .unwrap_or(Isa::Scalar(Scalar))
    }

    /// The given tier, if this CPU supports it.
    pub fn for_tier(tier: Tier) -> Option<Isa> {
        match tier {
            Tier::Scalar => Some(Isa::Scalar(Scalar)),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => Avx2::new().map(Isa::Avx2),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => Avx512::new().map(Isa::Avx512),
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => Neon::new().map(Isa::Neon),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Every tier this CPU supports, weakest first.
    pub fn supported() -> Vec<Isa> {
        Tier::ALL.iter().filter_map(|&t| Isa::for_tier(t)).collect()
    }

    /// Runs `f` monomorphised for the token this value holds: one dispatch, then direct calls.
    pub fn dispatch<F: WithKernels>(self, f: F) -> F::Output {
        match self {
            Isa::Scalar(k) => f.run(k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(k) => f.run(k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(k) => f.run(k),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(k) => f.run(k),
        }
    }

    /// Whether [`Kernels::pq_score_ids_u8`] runs a vector kernel here (AVX-512 VBMI), several
    /// times faster than [`Kernels::pq_score_ids`]; elsewhere it is the scalar loop, slower
    /// than the `f32` scorer of the same tier, and callers should score through `f32` tables.
    pub fn has_fast_byte_tables(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(k) => k.has_vbmi(),
            _ => false,
        }
    }

    /// A short description, e.g. `avx512 (vnni)`.
    pub fn describe(self) -> String {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(t) if t.has_vnni() => "avx512 (vnni)".to_owned(),
            other => other.tier().name().to_owned(),
        }
    }
}

/// A computation generic over the kernel tier; see [`Isa::dispatch`].
pub trait WithKernels {
    /// What the computation returns.
    type Output;
    /// Runs the computation with kernels `k`.
    fn run<K: Kernels>(self, k: K) -> Self::Output;
}

/// Forwards each [`Kernels`] method of [`Isa`] to the token it holds.
macro_rules! isa_forward {
    ($( fn $name:ident(self $(, $arg:ident : $ty:ty)*) $(-> $ret:ty)?; )*) => {
        impl Kernels for Isa {
            fn tier(self) -> Tier {
                match self {
                    Isa::Scalar(k) => k.tier(),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2(k) => k.tier(),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512(k) => k.tier(),
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon(k) => k.tier(),
                }
            }
            $(
                #[inline]
                fn $name(self $(, $arg: $ty)*) $(-> $ret)? {
                    match self {
                        Isa::Scalar(k) => k.$name($($arg),*),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2(k) => k.$name($($arg),*),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512(k) => k.$name($($arg),*),
                        #[cfg(target_arch = "aarch64")]
                        Isa::Neon(k) => k.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

isa_forward! {
    fn l2_sq_f32(self, a: &[f32], b: &[f32]) -> f32;
    fn dot_f32(self, a: &[f32], b: &[f32]) -> f32;
    fn cosine_f32(self, a: &[f32], b: &[f32]) -> f32;
    fn l2_sq_u8(self, a: &[u8], b: &[u8]) -> u32;
    fn dot_u8(self, a: &[u8], b: &[u8]) -> u32;
    fn l2_sq_i8(self, a: &[i8], b: &[i8]) -> u32;
    fn dot_i8(self, a: &[i8], b: &[i8]) -> i32;
    fn pq_score(self, table: PqTable<'_>, codes: &[u8], out: &mut [f32]);
    fn pq_score_ids(self, table: PqTable<'_>, codes: &[u8], ids: &[u32], out: &mut [f32]);
    fn pq_score_ids_u8(self, table: PqTableU8<'_>, codes: &[u8], ids: &[u32], out: &mut [u16]);
    fn l2_sq_f32_many(self, query: &[f32], rows: &[f32], out: &mut [f32]);
    fn dot_f32_many(self, query: &[f32], rows: &[f32], out: &mut [f32]);
    fn cosine_f32_many(self, query: &[f32], rows: &[f32], out: &mut [f32]);
    fn l2_sq_u8_many(self, query: &[u8], rows: &[u8], out: &mut [u32]);
    fn l2_sq_i8_many(self, query: &[i8], rows: &[i8], out: &mut [u32]);
}

/// The tier [`Isa::active`] runs.
pub fn active_tier() -> Tier {
    Isa::active().tier()
}

/// Squared L2 distance with the active tier; see [`Kernels::l2_sq_f32`].
pub fn l2_sq_f32(a: &[f32], b: &[f32]) -> f32 {
    Isa::active().l2_sq_f32(a, b)
}

/// Inner product with the active tier; see [`Kernels::dot_f32`].
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    Isa::active().dot_f32(a, b)
}

/// Cosine distance with the active tier; see [`Kernels::cosine_f32`].
pub fn cosine_f32(a: &[f32], b: &[f32]) -> f32 {
    Isa::active().cosine_f32(a, b)
}

/// Squared L2 distance of `u8` vectors with the active tier; see [`Kernels::l2_sq_u8`].
pub fn l2_sq_u8(a: &[u8], b: &[u8]) -> u32 {
    Isa::active().l2_sq_u8(a, b)
}

/// Inner product of `u8` vectors with the active tier; see [`Kernels::dot_u8`].
pub fn dot_u8(a: &[u8], b: &[u8]) -> u32 {
    Isa::active().dot_u8(a, b)
}

/// Squared L2 distance of `i8` vectors with the active tier; see [`Kernels::l2_sq_i8`].
pub fn l2_sq_i8(a: &[i8], b: &[i8]) -> u32 {
    Isa::active().l2_sq_i8(a, b)
}

/// Inner product of `i8` vectors with the active tier; see [`Kernels::dot_i8`].
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    Isa::active().dot_i8(a, b)
}

/// At most this many 64-byte lines of a slice are prefetched by [`prefetch`]: enough for a
/// 128-byte SIFT row or the head of a longer one, after which the hardware's streaming prefetcher
/// takes over.
pub const PREFETCH_LINES: usize = 4;

/// Asks the CPU to start loading the first cache lines of `bytes` (at most [`PREFETCH_LINES`]). A
/// hint with no effect on results: graph walks call it for every row they are about to score, so
/// that the rows' cache misses overlap instead of stalling one after another. A no-op off x86-64.
#[inline(always)]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch_range(bytes.as_ptr(), bytes.len(), PREFETCH_LINES);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Asks the CPU to start loading all of `items`' memory, up to [`PREFETCH_SLICE_LINES`] cache
/// lines: for small records of any type that a walk will read whole, such as a graph node's
/// adjacency list while it is built (`[AtomicU32]`, which has no byte view). A hint, as
/// [`prefetch`].
#[inline(always)]
pub fn prefetch_slice<T>(items: &[T]) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch_range(items.as_ptr().cast(), std::mem::size_of_val(items), PREFETCH_SLICE_LINES);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}

/// At most this many 64-byte lines are prefetched by [`prefetch_slice`]: a list of 64 ids and
/// its length, 260 bytes, spans at most 6.
pub const PREFETCH_SLICE_LINES: usize = 8;

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "these values are exact by construction")]
mod tests {
    use super::*;

    #[test]
    fn tier_names_round_trip_and_garbage_is_rejected() {
        for t in Tier::ALL {
            assert_eq!(t.name().parse::<Tier>(), Ok(t));
        }
        assert!("avx-512".parse::<Tier>().is_err());
    }

    #[test]
    fn cap_never_selects_a_stronger_tier() {
        assert_eq!(Isa::best_capped(Some(Tier::Scalar)).tier(), Tier::Scalar);
        for t in Tier::ALL {
            assert!(Isa::best_capped(Some(t)).tier().rank() <= t.rank());
        }
        assert!(Isa::best().tier().rank() >= Isa::best_capped(Some(Tier::Avx2)).tier().rank());
    }

    #[test]
    fn cosine_of_a_zero_vector_is_one_not_nan() {
        assert_eq!(cosine_from_sums(0.0, 0.0, 4.0), 1.0);
        assert_eq!(cosine_from_sums(3.0, 9.0, 1.0), 0.0);
    }

    /// Prefetching is a hint: empty slices, slices starting anywhere in a line, longer than the
    /// line limit or of atomics (which have no byte view) must neither fault nor change the data.
    #[test]
    fn prefetching_any_slice_is_harmless() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let words: Vec<AtomicU32> = (0..1_000).map(AtomicU32::new).collect();
        for start in 0..20 {
            for len in [0, 1, 15, 16, 17, 84, 300, 980] {
                prefetch_slice(&words[start..start + len]);
            }
        }
        prefetch_slice::<u64>(&[]);
        let bytes = vec![7u8; 4096];
        for start in 0..70 {
            prefetch(&bytes[start..]);
            prefetch_slice(&bytes[start..=start]);
        }
        assert!(words.iter().enumerate().all(|(i, w)| w.load(Ordering::Relaxed) == i as u32));
        assert!(bytes.iter().all(|&b| b == 7));
    }
}
