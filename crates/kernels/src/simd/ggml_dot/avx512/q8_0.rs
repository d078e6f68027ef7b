//! Q8_0 gemv at AVX-512 VNNI, sixteen blocks a step.
//!
//! The pair loop Q4_0 keeps ([`super::dot_q4_0`]) spent on Q8_0, per pair of blocks,
//! two scalar f16 loads and conversions, two multiplies and a permute to
//! build the scale register, and a second `vpdpbusd` for the `w + 128`
//! offset: a compute ceiling of 31.8 GB/s on one Zen 4 core
//! (`examples/gemv_ggml.rs 256k q8_0`, weights in L2), against 40.4 here.
//! The DRAM share of one of two cores is not far below that, and when both
//! are close the kernel cannot hide its memory stalls (512 MB from DRAM, 1
//! thread: 84% of a plain streaming read before, 93% here).
//!
//! Here the call lays the activations out once ([`Group`]): each pair of
//! blocks as 64 contiguous codes beside `-128 Σ` of each lane's four codes,
//! which is the accumulator `vpdpbusd` starts from, so `(w + 128) · x`
//! comes out as the exact `w · x`. The sixteen weight scales of a group are
//! read on the integer side ([`weight_scales`]), widened to f32 in one
//! conversion and multiplied by the activation scales; each pair takes its
//! two from that register with a permute. Per pair that leaves an insert, an xor, a `vpdpbusd`, a permute,
//! a conversion and an FMA.

use std::arch::x86_64::*;

use super::{load256, load_2x256};
use crate::simd::act::BlockQ8x32;

/// Bytes of a Q8_0 block: f16 `d`, 32 i8 codes.
const TS: usize = 34;
/// Blocks a [`Group`] holds (one read of weight scales, [`weight_scales`]).
const BLOCKS: usize = 16;

/// Two activation blocks as the kernel reads them: the codes of block `2k`
/// then `2k + 1`, and for each i32 lane of a `vpdpbusd` over them,
/// `-128` times the sum of its four codes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Pair {
    qs: [i8; 64],
    neg: [i32; 16],
}

/// Sixteen activation blocks: their pairs and scales. A short last group is
/// padded with zero codes and scales.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Group {
    pairs: [Pair; BLOCKS / 2],
    d: [f32; BLOCKS],
}

/// The [`Group`]s that hold `n` blocks.
pub(super) fn groups(n: usize) -> usize {
    n.div_ceil(BLOCKS)
}

/// `x` as [`Group`]s at `dst`.
///
/// # Safety
/// `dst` has room for [`groups`]`(x.len())` values.
pub(super) unsafe fn prep(x: &[BlockQ8x32], dst: *mut Group) {
    for (gi, blocks) in x.chunks(BLOCKS).enumerate() {
        let mut g = Group { pairs: [Pair { qs: [0; 64], neg: [0; 16] }; BLOCKS / 2], d: [0.0; BLOCKS] };
        for (j, xb) in blocks.iter().enumerate() {
            g.d[j] = xb.d;
            let (pair, half) = (&mut g.pairs[j / 2], j % 2);
            pair.qs[32 * half..32 * half + 32].copy_from_slice(&xb.qs);
            for (l, four) in xb.qs.chunks_exact(4).enumerate() {
                pair.neg[8 * half + l] = -128 * four.iter().map(|&q| q as i32).sum::<i32>();
            }
        }
        // SAFETY: `dst` has room for every group (the caller's contract).
        unsafe { dst.add(gi).write(g) };
    }
}

/// Row `row` (`x.len()` blocks) times the activations `groups` prepared
/// from `x` by [`prep`].
///
/// # Safety
/// The CPU runs the features below; `row` points at `x.len()` Q8_0 blocks;
/// `groups` is [`prep`] of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot(row: *const u8, x: &[BlockQ8x32], groups: *const Group) -> f32 {
    let n = x.len();
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut b = 0;
    let mut g = groups;
    while b < n {
        let take = (n - b).min(BLOCKS);
        let base = row.add(b * TS);
        let scale = _mm512_mul_ps(weight_scales(base, take), _mm512_load_ps((*g).d.as_ptr()));
        let pairs = &(*g).pairs;
        if take == BLOCKS {
            for k in (0..BLOCKS / 2).step_by(2) {
                acc0 = pair(base.add(2 * k * TS), &pairs[k], scale, k, acc0);
                acc1 = pair(base.add(2 * (k + 1) * TS), &pairs[k + 1], scale, k + 1, acc1);
            }
        } else {
            for (k, x) in pairs.iter().enumerate().take(take / 2) {
                acc0 = pair(base.add(2 * k * TS), x, scale, k, acc0);
            }
            if take % 2 == 1 {
                acc1 = last(base.add((take - 1) * TS), &pairs[take / 2], scale, take / 2, acc1);
            }
        }
        b += take;
        g = g.add(1);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// The f16 `d` of the `take` (at most 16) blocks at `base`, as f32; zero
/// past `take`.
///
/// Read with scalar loads and packed four to a u64 on the integer side,
/// which the vector work leaves idle: a `vpgatherdd` of the sixteen took
/// about a third of the kernel's time on a Zen 4.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn weight_scales(base: *const u8, take: usize) -> __m512 {
    let d = |i: usize| if i < take { (base.add(i * TS) as *const u16).read_unaligned() as u64 } else { 0 };
    let four = |j: usize| (d(4 * j) | d(4 * j + 1) << 16 | d(4 * j + 2) << 32 | d(4 * j + 3) << 48) as i64;
    _mm512_cvtph_ps(_mm256_setr_epi64x(four(0), four(1), four(2), four(3)))
}

/// `scale`'s lanes `2k` (block `2k`'s `d_w d_x`) in lanes 0..8 and `2k + 1`
/// in lanes 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_scale(scale: __m512, k: usize) -> __m512 {
    let idx = _mm512_mask_mov_epi32(_mm512_set1_epi32(2 * k as i32), 0xFF00, _mm512_set1_epi32(2 * k as i32 + 1));
    _mm512_permutexvar_ps(idx, scale)
}

/// Blocks `2k`, `2k + 1` of the group (weights at `b`) into `acc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn pair(b: *const u8, x: &Pair, scale: __m512, k: usize, acc: __m512) -> __m512 {
    // w + 128 as an unsigned byte is w with its top bit flipped.
    let w = _mm512_xor_si512(load_2x256(b.add(2), b.add(TS + 2)), _mm512_set1_epi8(i8::MIN));
    let xs = _mm512_load_si512(x.qs.as_ptr() as *const __m512i);
    let sums = _mm512_dpbusd_epi32(_mm512_load_si512(x.neg.as_ptr() as *const __m512i), w, xs);
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), pair_scale(scale, k), acc)
}

/// Block `2k` alone (a group's odd last block), in the low 256 bits.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn last(b: *const u8, x: &Pair, scale: __m512, k: usize, acc: __m512) -> __m512 {
    let w = _mm256_xor_si256(load256(b.add(2)), _mm256_set1_epi8(i8::MIN));
    let xs = _mm256_load_si256(x.qs.as_ptr() as *const __m256i);
    let sums = _mm256_dpbusd_epi32(_mm256_load_si256(x.neg.as_ptr() as *const __m256i), w, xs);
    // The upper lanes stay zero, so the second block's scale meets zeros.
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(sums)), pair_scale(scale, k), acc)
}
