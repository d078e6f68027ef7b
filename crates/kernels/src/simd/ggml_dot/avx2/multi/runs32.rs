//! Many-token kernels of the 32-value types on transposed runs of eight
//! blocks: the symmetric ones (Q8_0, Q4_0, Q5_0, IQ4_NL: `d · code`, the f16
//! `d` first in the block; [`Sym32`]) and the offset ones (Q4_1, Q5_1: `d ·
//! code + m`; [`Offset32`]), one scale multiply per eight (block, token)
//! pairs instead of one per pair.
//!
//! The plain loop gives every 32-value block of every token its own
//! `vcvtdq2ps`, scalar `d_w · d_x`, broadcast and FMA, as many float
//! operations as integer ones; for Q8_0 it measured about two thirds of the
//! Q4_K kernel's rate. Here eight consecutive blocks are transposed in 4-byte
//! columns (register `c` holds bytes `4c..4c + 4` of block `k` in u32 lane
//! `k`), weights per run and activations once per token group, so every
//! lane belongs to one block throughout: the eight column products add up
//! (signed codes: as i32, each `vpmaddwd` lane at most 2 · 2 · 128 · 127;
//! unsigned 4- and 5-bit codes: as i16, as the k-quants') into one register
//! that holds the eight blocks' integer sums, scaled at once by the vector of
//! their `d_w · d_x`; the offset types add `m` times the blocks' input sums
//! with one FMA.
//!
//! Each block's integer sum and its scale product are the single-token
//! kernel's; the blocks are summed in another order, so results agree with it
//! to f32 rounding. A row whose block count is not a multiple of eight ends
//! with a partial run: missing blocks are zero codes with scale zero on both
//! sides and read nothing past the row.

use std::arch::x86_64::*;

use super::super::{iq4_codes, iq4_table, load128, load256, q4_0_codes, q4_1_codes, q5_codes, split_nibbles};
use super::kquants::UnpackedSigned;
use super::BlockUnits;
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::steps::{self, Cols};
use crate::simd::columns::{block_lanes, transpose8};

/// Eight consecutive activation blocks of one token as the steps read them:
/// the codes transposed (column `c`, lane `k`: codes `4c..4c + 4` of block
/// `k`), the eight exact input sums (the offset types' `m` term) and the
/// eight scales.
#[repr(C, align(32))]
pub(crate) struct TRun {
    cols: [__m256i; 8],
    sums: __m256,
    d: __m256,
}

/// The tokens of `x` (`nb` blocks each) as [`TRun`]s at `p`.
///
/// # Safety
/// The CPU runs AVX2; `p` has room for `nb.div_ceil(8)` runs per token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transpose_runs(x: &[BlockQ8x32], nb: usize, mut p: *mut TRun) {
    for token in x.chunks_exact(nb) {
        for blocks in token.chunks(8) {
            let (sums, d) = (block_lanes(blocks, IN_ORDER, |b| b.sum), block_lanes(blocks, IN_ORDER, |b| b.d));
            p.write(TRun { cols: run_columns(blocks), sums, d });
            p = p.add(1);
        }
    }
}

/// Lane `k` is block `k` of a run.
pub(super) const IN_ORDER: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// Up to eight activation blocks' codes transposed (column `c`, lane `k`:
/// codes `4c..4c + 4` of block `k`; zero where the run has no block `k`).
///
/// # Safety
/// The CPU runs AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run_columns(blocks: &[BlockQ8x32]) -> [__m256i; 8] {
    transpose8(std::array::from_fn(|k| match blocks.get(k) {
        Some(b) => load256(b.qs.as_ptr() as *const u8),
        None => _mm256_setzero_si256(),
    }))
}

/// The symmetric 32-value type `TYPE` (one of the constants below) on runs
/// of eight blocks against activations from [`transpose_runs`]: per run the
/// weight codes (signed bytes) are transposed and their absolute values
/// taken once; per token, eight sign-trick `vpmaddubsw` + `vpmaddwd` into
/// one i32 register, then one convert and one FMA ([`steps::signed`]).
/// Q8_0 and IQ4_NL run so at this level (their codes made unsigned would
/// saturate `vpmaddubsw`); Q4_0 and Q5_0 run [`Unsigned32`]. The AVX-512
/// kernels take their signed codes from here ([`Sym32::codes`]).
pub(crate) struct Sym32<const TYPE: u8>;

pub(crate) const Q8_0: u8 = 0;
pub(crate) const Q4_0: u8 = 1;
pub(crate) const Q5_0: u8 = 2;
pub(crate) const IQ4_NL: u8 = 3;

pub(super) type Q80Runs = Sym32<Q8_0>;
pub(super) type IQ4NLRuns = Sym32<IQ4_NL>;

impl<const TYPE: u8> Sym32<TYPE> {
    /// The signed codes of the block at `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn codes(b: *const u8) -> __m256i {
        match TYPE {
            Q8_0 => load256(b.add(2)),
            Q4_0 => q4_0_codes(b),
            Q5_0 => q5_codes(b, 2, 6, true),
            _ => iq4_codes(iq4_table(), b.add(2)),
        }
    }
}

impl<const TYPE: u8> BlockUnits for Sym32<TYPE> {
    type X = TRun;
    type U = UnpackedSigned;
    const BYTES: usize = match TYPE {
        Q8_0 => 34,
        Q5_0 => 22,
        _ => 18,
    };

    fn units(nb: usize) -> usize {
        nb.div_ceil(8)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, nb: usize, r: usize) -> UnpackedSigned {
        let ts = Self::BYTES;
        let (b, here, w) = run_codes(row, nb, r, ts, |p| Self::codes(p));
        let scale = f16_lanes(b, ts, 0, here);
        UnpackedSigned { aw: w.map(|c| _mm256_sign_epi8(c, c)), w, scale }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &UnpackedSigned, x: &TRun, acc: &mut __m256) {
        steps::signed(&u.aw, &u.w, u.scale, x.cols.as_ptr(), &x.d, acc);
    }
}

/// The f16 at byte `at` of each of the `here` blocks of `ts` bytes from `b`,
/// as eight f32 lanes (zero past `here`).
///
/// # Safety
/// AVX2 + FMA + F16C; `b` points at `here` blocks of `ts` bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_lanes(b: *const u8, ts: usize, at: usize, here: usize) -> __m256 {
    let mut h = [0u16; 8];
    for (k, hk) in h.iter_mut().enumerate().take(here) {
        *hk = (b.add(k * ts + at) as *const u16).read_unaligned();
    }
    _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i))
}

/// Run `r` of a row of `nb` blocks of `ts` bytes at `row`: its first block,
/// how many blocks it holds (at most eight), and their codes (`codes` of
/// each block's bytes) transposed as [`run_columns`] lays out activations,
/// zero where the run has no block.
///
/// # Safety
/// AVX2 + FMA + F16C; `row` points at `nb > 8 r` blocks of `ts` bytes;
/// `codes` reads only inside the block it is given.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_codes(
    row: *const u8,
    nb: usize,
    r: usize,
    ts: usize,
    codes: impl Fn(*const u8) -> __m256i,
) -> (*const u8, usize, [__m256i; 8]) {
    let here = (nb - 8 * r).min(8);
    let b = row.add(8 * r * ts);
    let rows = std::array::from_fn(|k| if k < here { codes(b.add(k * ts)) } else { _mm256_setzero_si256() });
    (b, here, transpose8(rows))
}

/// The offset 32-value type `TYPE` ([`Q4_1`] or [`Q5_1`]) on runs of eight
/// blocks against activations from [`transpose_runs`]: the unsigned codes
/// transposed once per run; per token the Q4_K step (Q5_1: the Q5_K step,
/// its codes reaching 31) with unit scales, `d_w · d_x` per lane, and `m`
/// against the blocks' input sums.
pub(super) struct Offset32<const TYPE: u8>;

pub(crate) const Q4_1: u8 = 4;
pub(crate) const Q5_1: u8 = 5;

/// The unsigned codes of the Q4_1 / Q5_1 block at `b`.
///
/// # Safety
/// The CPU runs AVX2; `b` points at a block of the type.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn offset_codes<const TYPE: u8>(b: *const u8) -> __m256i {
    if TYPE == Q4_1 {
        q4_1_codes(b)
    } else {
        q5_codes(b, 4, 8, false)
    }
}

pub(super) type Q41Runs = Offset32<Q4_1>;
pub(super) type Q51Runs = Offset32<Q5_1>;

/// A run of offset blocks as the steps take it: the transposed codes, the
/// blocks' `-m` and `d`.
#[repr(C, align(32))]
pub(crate) struct UnpackedOffset {
    w: [__m256i; 8],
    neg_m: __m256,
    d: __m256,
}

impl<const TYPE: u8> BlockUnits for Offset32<TYPE> {
    type X = TRun;
    type U = UnpackedOffset;
    const BYTES: usize = if TYPE == Q4_1 { 20 } else { 24 };

    fn units(nb: usize) -> usize {
        nb.div_ceil(8)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, nb: usize, r: usize) -> UnpackedOffset {
        let ts = Self::BYTES;
        let (b, here, w) = run_codes(row, nb, r, ts, |p| offset_codes::<TYPE>(p));
        let neg_m = _mm256_sub_ps(_mm256_setzero_ps(), f16_lanes(b, ts, 2, here));
        UnpackedOffset { w, neg_m, d: f16_lanes(b, ts, 0, here) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &UnpackedOffset, x: &TRun, acc: &mut __m256) {
        let cols = Cols { cols: x.cols.as_ptr(), sums: &x.sums, d: &x.d };
        // The steps subtract `mins · sums`: `-m` adds the offset term.
        if TYPE == Q4_1 {
            steps::q4_k(&u.w, _mm256_set1_epi16(1), u.neg_m, u.d, cols, acc);
        } else {
            steps::q5_k(&u.w, _mm256_set1_epi16(1), u.neg_m, u.d, cols, acc);
        }
    }
}

/// Q4_0 (`SHIFT` 3) / Q5_0 (`SHIFT` 4) on runs of eight blocks with their
/// codes unsigned (nibbles `0..16`, five bits `0..32`), the offset (8, 16)
/// taken in each lane's integer sum from the token's prepared `-offset Σ x`
/// ([`TRunNeg`]), and the Q4_K step's i16 column sums
/// ([`steps::offset32`]): per run and token about 20 vector operations,
/// against 44 for the sign trick's (two `vpsignb`, a `vpmaddubsw` and a
/// `vpmaddwd` per column).
pub(super) struct Unsigned32<const SHIFT: i32>;

pub(super) type Q40Runs = Unsigned32<3>;
pub(super) type Q50Runs = Unsigned32<4>;

/// Eight consecutive activation blocks of one token for [`Unsigned32`]: the
/// columns of [`TRun`], each block's `-2^SHIFT Σ x` (exact, i32) and the
/// eight scales. `SHIFT` (3 for Q4_0, 4 for Q5_0) also keeps the two
/// layouts apart in the thread's copy.
#[repr(C, align(32))]
pub(crate) struct TRunNeg<const SHIFT: i32> {
    cols: [__m256i; 8],
    neg: __m256i,
    d: __m256,
}

/// The tokens of `x` (`nb` blocks each) as [`TRunNeg`]s at `p`.
///
/// # Safety
/// The CPU runs AVX2; `p` has room for `nb.div_ceil(8)` runs per token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transpose_runs_neg<const SHIFT: i32>(x: &[BlockQ8x32], nb: usize, mut p: *mut TRunNeg<SHIFT>) {
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    for token in x.chunks_exact(nb) {
        for blocks in token.chunks(8) {
            let cols = run_columns(blocks);
            // Each block's Σ x on its lane: the columns' byte pairs as i16
            // (at most 8 · 2 · 128 in size), then pairs of those.
            let pairs =
                cols.iter().fold(_mm256_setzero_si256(), |s, &c| _mm256_add_epi16(s, _mm256_maddubs_epi16(ones8, c)));
            let neg =
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<SHIFT>(_mm256_madd_epi16(pairs, ones16)));
            p.write(TRunNeg { cols, neg, d: block_lanes(blocks, IN_ORDER, |b| b.d) });
            p = p.add(1);
        }
    }
}

/// A run of Q4_0 / Q5_0 blocks as [`steps::offset32`] takes it: the
/// transposed unsigned codes and the blocks' `d`.
#[repr(C, align(32))]
pub(crate) struct UnpackedUnsigned {
    w: [__m256i; 8],
    d: __m256,
}

impl<const SHIFT: i32> BlockUnits for Unsigned32<SHIFT> {
    type X = TRunNeg<SHIFT>;
    type U = UnpackedUnsigned;
    const BYTES: usize = if SHIFT == 3 { 18 } else { 22 };

    fn units(nb: usize) -> usize {
        nb.div_ceil(8)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, nb: usize, r: usize) -> UnpackedUnsigned {
        let ts = Self::BYTES;
        let codes = |p: *const u8| if SHIFT == 3 { split_nibbles(load128(p.add(2))) } else { q5_codes(p, 2, 6, false) };
        let (b, here, w) = run_codes(row, nb, r, ts, codes);
        UnpackedUnsigned { w, d: f16_lanes(b, ts, 0, here) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &UnpackedUnsigned, x: &Self::X, acc: &mut __m256) {
        let cols = Cols { cols: x.cols.as_ptr(), sums: &x.neg as *const __m256i as *const __m256, d: &x.d };
        if SHIFT == 3 {
            steps::offset32::<false>(&u.w, u.d, cols, acc)
        } else {
            steps::offset32::<true>(&u.w, u.d, cols, acc)
        }
    }
}
