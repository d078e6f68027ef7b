//! The AVX2 gemv of the 32-value types whose unsigned codes stay small
//! (Q4_0, Q4_1, Q5_0, Q5_1: at most 31, so `vpmaddubsw`'s i16 pairs cannot
//! saturate), sixteen blocks a step over the activations laid out once
//! ([`Group`], shared with the AVX-512 loop).
//!
//! The pair loop it replaces made each block's codes signed (two
//! `vpsignb` per block for `vpmaddubsw`'s unsigned operand) and built each
//! block's scale from scalars (an f16 conversion, a multiply and a
//! broadcast). Here the codes stay unsigned, the `-offset Σ` of each lane
//! comes from the prepared `-128 Σ` shifted right, and the sixteen weight
//! scales are read on the integer side, widened in two conversions and
//! multiplied by the activation scales; each block takes its own with a
//! permute. Q4_1 and Q5_1 add `m · Σx` with two FMAs per sixteen blocks.
//! IQ4_NL and Q8_0 keep the pair loop: their unsigned codes reach 241 and
//! 255, which would saturate. `gemv_ggml` (Zen 4 under `QMOE_SIMD=avx2`,
//! 1 thread), GB/s in L2 (`1024k`) and from DRAM (`512`, two
//! alternations): Q4_0 13.2 -> 15.1 and 12.5-12.7 -> 13.7-13.9, Q4_1 14.7
//! -> 18.6 and 13.8-13.9 -> 15.6-16.6, Q5_0 11.9 -> 13.4 and 11.3 ->
//! 12.7, Q5_1 13.1 -> 15.7 and 12.4 -> 15.2. Its first form kept the two
//! block accumulators in a slice indexed by the block, which put them in
//! memory: 9-11 GB/s in L2.

use std::arch::x86_64::*;

use super::{load128, load256, q4_1_codes, q5_codes, split_nibbles};
use crate::simd::act::BlockQ8x32;
use crate::simd::ggml_dot::group32::{packed_halves, Group, Layout32, BLOCKS};
use crate::simd::ggml_dot::group32::{Q4_0, Q4_1, Q5_0, Q5_1};

/// How a block of a small-code 32-value type becomes 32 unsigned codes.
pub(super) trait Small32: Layout32 {
    /// The unsigned codes of the block at `b`.
    ///
    /// # Safety
    /// The block is readable; the CPU runs AVX2, FMA and F16C.
    unsafe fn codes(b: *const u8) -> __m256i;
}

impl Small32 for Q4_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m256i {
        split_nibbles(load128(b.add(2)))
    }
}

impl Small32 for Q4_1 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m256i {
        q4_1_codes(b)
    }
}

impl Small32 for Q5_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m256i {
        q5_codes(b, 2, 6, false)
    }
}

impl Small32 for Q5_1 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(b: *const u8) -> __m256i {
        q5_codes(b, 4, 8, false)
    }
}

/// Row `row` (`x.len()` blocks of `K`) times the activations `groups`
/// laid out from `x` (`group32::laid_out`).
///
/// # Safety
/// The CPU runs AVX2, FMA and F16C; `row` points at `x.len()` blocks of
/// `K`; `groups` is `group32::laid_out` of `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot<K: Small32>(row: *const u8, x: &[BlockQ8x32], groups: *const Group) -> f32 {
    let n = x.len();
    let mut acc = [_mm256_setzero_ps(); 3];
    let mut b = 0;
    let mut g = groups;
    while b + BLOCKS <= n {
        group::<K>(row.add(b * K::TS), &*g, BLOCKS, &mut acc);
        b += BLOCKS;
        g = g.add(1);
    }
    if b < n {
        group::<K>(row.add(b * K::TS), &*g, n - b, &mut acc);
    }
    let [a0, a1, am] = acc;
    super::hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), am))
}

/// The `take` (at most 16) blocks at `base` against group `g`, into two
/// block accumulators and the `m` one.
#[inline(always)]
unsafe fn group<K: Small32>(base: *const u8, g: &Group, take: usize, acc: &mut [__m256; 3]) {
    // (No closures: one would not inline the intrinsics it calls.)
    let [d0, d1] = halves(base, 0, K::TS, take);
    let s0 = _mm256_mul_ps(d0, _mm256_loadu_ps(g.d.as_ptr()));
    let s1 = _mm256_mul_ps(d1, _mm256_loadu_ps(g.d.as_ptr().add(8)));
    if let Some(at) = K::M_AT {
        let [m0, m1] = halves(base, at, K::TS, take);
        acc[2] = _mm256_fmadd_ps(m0, _mm256_loadu_ps(g.sum.as_ptr()), acc[2]);
        acc[2] = _mm256_fmadd_ps(m1, _mm256_loadu_ps(g.sum.as_ptr().add(8)), acc[2]);
    }
    // Two blocks a step into two local accumulators (a slice indexed by
    // the block kept them in memory).
    let (mut a0, mut a1) = (acc[0], acc[1]);
    let mut j = 0;
    while j + 2 <= take {
        a0 = block::<K>(base, g, j, if j < 8 { s0 } else { s1 }, a0);
        a1 = block::<K>(base, g, j + 1, if j < 8 { s0 } else { s1 }, a1);
        j += 2;
    }
    if j < take {
        a0 = block::<K>(base, g, j, if j < 8 { s0 } else { s1 }, a0);
    }
    (acc[0], acc[1]) = (a0, a1);
}

/// Block `j` of the group at `base` into `acc`, its scale lane `j % 8` of `scale`.
#[inline(always)]
unsafe fn block<K: Small32>(base: *const u8, g: &Group, j: usize, scale: __m256, acc: __m256) -> __m256 {
    let (pair, half) = (&g.pairs[j / 2], j % 2);
    let xs = load256(pair.qs.as_ptr().add(32 * half) as *const u8);
    let mut sums = _mm256_madd_epi16(_mm256_maddubs_epi16(K::codes(base.add(j * K::TS)), xs), _mm256_set1_epi16(1));
    if let Some(s) = K::OFFSET_SHIFT {
        let neg = _mm256_loadu_si256(pair.neg.as_ptr().add(8 * half) as *const __m256i);
        sums = _mm256_add_epi32(sums, _mm256_sra_epi32(neg, _mm_cvtsi32_si128(s)));
    }
    let sc = _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32((j % 8) as i32));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), sc, acc)
}

/// The f16 at offset `at` of the `take` (at most 16) blocks of `ts` bytes
/// at `base`, as two vectors of eight f32; zero past `take` (see
/// [`packed_halves`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(base: *const u8, at: usize, ts: usize, take: usize) -> [__m256; 2] {
    let [a, b, c, d] = packed_halves(base, at, ts, take);
    [_mm256_cvtph_ps(_mm_set_epi64x(b, a)), _mm256_cvtph_ps(_mm_set_epi64x(d, c))]
}
