//! Many-token kernels of the symmetric 32-value types (Q8_0, Q4_0, Q5_0,
//! IQ4_NL: `d · code`, the f16 `d` first in the block) on transposed runs of
//! eight blocks: one scale multiply per eight (block, token) pairs instead of
//! one per pair.
//!
//! The plain loop gives every 32-value block of every token its own
//! `vcvtdq2ps`, scalar `d_w · d_x`, broadcast and FMA, as many float
//! operations as integer ones; for Q8_0 it measured about two thirds of the
//! Q4_K kernel's rate. Here eight consecutive blocks are transposed in 4-byte
//! columns (register `c` holds bytes `4c..4c + 4` of block `k` in u32 lane
//! `k`), weights per run and activations once per token group, so every
//! lane belongs to one block throughout: the eight column products add up as
//! i32 (each `vpmaddwd` lane is at most 2 · 2 · 128 · 127) into one register
//! that holds the eight blocks' integer sums, scaled at once by the vector of
//! their `d_w · d_x`.
//!
//! Each block's integer sum and its scale product are the single-token
//! kernel's; the blocks are summed in another order, so results agree with it
//! to f32 rounding. A row whose block count is not a multiple of eight ends
//! with a partial run: missing blocks are zero codes with scale zero on both
//! sides and read nothing past the row.

use std::arch::x86_64::*;

use super::super::super::scratch::{Scratch, Whole};
use super::super::{hsum, iq4_codes, iq4_table, load256, q4_0_codes, q5_codes};
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::{steps, transpose8};

/// Eight consecutive activation blocks of one token as [`dot_sym32_t`] reads
/// them: the codes transposed (column `c`, lane `k`: codes `4c..4c + 4` of
/// block `k`) and the eight scales.
#[repr(C, align(32))]
pub(super) struct TRun {
    cols: [__m256i; 8],
    d: __m256,
}

/// The group's activations (tokens `t0..t0 + n`, `nb` blocks each) as
/// [`TRun`]s, `nb.div_ceil(8)` per token: in the call's scratch, or, when
/// the driver names the input (`id` non-zero), at their place in the
/// thread's copy of every token (as [`super::kquants::transposed`]).
///
/// # Safety
/// The CPU runs AVX2; `x` holds tokens `t0..t0 + n` of `nb` blocks, and an
/// `id` other than 0 always comes with the same `x` contents.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transposed32(
    x: &[BlockQ8x32],
    t0: usize,
    n: usize,
    nb: usize,
    id: u64,
    scratch: &mut (Scratch, Whole),
) -> (*const TRun, usize) {
    let runs = nb.div_ceil(8);
    if id != 0 {
        let tokens = x.len() / nb;
        // SAFETY (closure): `p` has room for every token's runs.
        let all = scratch.1.get::<TRun>(id, tokens * runs, |p| unsafe { transpose_runs(x, nb, p) });
        return (all.add(t0 * runs), runs);
    }
    let p = scratch.0.room::<TRun>(n * runs);
    transpose_runs(&x[t0 * nb..(t0 + n) * nb], nb, p);
    (p, runs)
}

/// The tokens of `x` (`nb` blocks each) as [`TRun`]s at `p`.
///
/// # Safety
/// The CPU runs AVX2; `p` has room for `nb.div_ceil(8)` runs per token.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose_runs(x: &[BlockQ8x32], nb: usize, mut p: *mut TRun) {
    for token in x.chunks_exact(nb) {
        for blocks in token.chunks(8) {
            let rows = std::array::from_fn(|k| match blocks.get(k) {
                Some(b) => load256(b.qs.as_ptr() as *const u8),
                None => _mm256_setzero_si256(),
            });
            let d: [f32; 8] = std::array::from_fn(|k| blocks.get(k).map_or(0.0, |b| b.d));
            p.write(TRun { cols: transpose8(rows), d: _mm256_loadu_ps(d.as_ptr()) });
            p = p.add(1);
        }
    }
}

/// One row of `nb` blocks of `ts` bytes against `N` tokens from
/// [`transposed32`]: per run of eight blocks the weight codes (`codes` of a
/// block's address, signed bytes) are transposed and their absolute values
/// taken once; per token, eight sign-trick `vpmaddubsw` + `vpmaddwd` into
/// one i32 register, then one convert and one FMA.
///
/// # Safety
/// `row` points at `nb` blocks of `ts` bytes, each starting with its f16
/// scale, on which `codes` is sound; each `xs[t]` points at
/// `nb.div_ceil(8)` transposed runs; the CPU runs AVX2 + FMA + F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_sym32_t<const N: usize>(
    row: *const u8,
    xs: [*const TRun; N],
    nb: usize,
    ts: usize,
    codes: impl Fn(*const u8) -> __m256i,
) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for r in 0..nb.div_ceil(8) {
        let here = (nb - 8 * r).min(8);
        let b = row.add(8 * r * ts);
        let rows = std::array::from_fn(|k| if k < here { codes(b.add(k * ts)) } else { _mm256_setzero_si256() });
        let mut h = [0u16; 8];
        for (k, hk) in h.iter_mut().enumerate().take(here) {
            *hk = (b.add(k * ts) as *const u16).read_unaligned();
        }
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
        let w = transpose8(rows);
        let aw = w.map(|c| _mm256_sign_epi8(c, c));
        for (t, a) in acc.iter_mut().enumerate() {
            let xr = &*xs[t].add(r);
            steps::signed(&aw, &w, dw, xr.cols.as_ptr(), &xr.d, a);
        }
    }
    acc.map(|a| hsum(a))
}

// Each `dot_*_t` below: # Safety: as [`dot_sym32_t`] for blocks of the type.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0_t<const N: usize>(row: *const u8, xs: [*const TRun; N], nb: usize) -> [f32; N] {
    dot_sym32_t(row, xs, nb, 34, |b| load256(b.add(2)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0_t<const N: usize>(row: *const u8, xs: [*const TRun; N], nb: usize) -> [f32; N] {
    dot_sym32_t(row, xs, nb, 18, |b| q4_0_codes(b))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_0_t<const N: usize>(row: *const u8, xs: [*const TRun; N], nb: usize) -> [f32; N] {
    dot_sym32_t(row, xs, nb, 22, |b| q5_codes(b, 2, 6, true))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_nl_t<const N: usize>(row: *const u8, xs: [*const TRun; N], nb: usize) -> [f32; N] {
    let table = iq4_table();
    dot_sym32_t(row, xs, nb, 18, |b| iq4_codes(table, b.add(2)))
}
