//! MLX affine many-token kernels at AVX-512 + VNNI (4 and 8 bits; 2, 3, 5
//! and 6 unpacked to a byte each, with VBMI, as [`Unpacked`]): a unit
//! is sixteen 32-value blocks of two rows, lane `k` of every register block
//! `k` of the unit throughout (the layout of the symmetric ggml types'
//! kernel, `ggml_dot/multi/avx512/sym32.rs`).
//!
//! Per (unit, row, token): eight `vpdpbusd` leave each i32 lane with its
//! block's exact integer dot `S`, then `acc += (S d_x) scale_g + bias_g
//! sum_x` per lane (a convert, a multiply and two FMAs for sixteen blocks),
//! where `d_x` and `sum_x` are the activation block's scale and exact sum.
//! Each activation register a step loads feeds both rows' `vpdpbusd`.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, and MLX codes are
//! unsigned: they go in as they are, against the signed int8 activations,
//! with no offset to correct. (The AVX2 level's `vpmaddubsw` saturates its
//! i16 pairs, which made it split 8-bit activations in two; here the
//! products add straight into i32.)
//!
//! Code order inside a block (the activations are laid out to match, once
//! per token):
//! * 8-bit ([`Eight`]): byte `i` is value `i`, so register `r` lane `k` is
//!   values `4r..4r + 4` of block `k` ([`columns16`] of the blocks).
//! * 4-bit ([`Four`]): byte `j` of a block holds values `2j` (low nibble)
//!   and `2j + 1`. Register `2m` takes the low nibbles of the block's word
//!   `m` (values `8m, 8m + 2, 8m + 4, 8m + 6`), register `2m + 1` its high
//!   nibbles (the odd values); an activation block's bytes are shuffled to
//!   that order before the transpose.
//!
//! Absent blocks of a row's last, partial unit are zero codes against zero
//! activations (scale, sum and `d` zero too). Every block's integer dot is
//! the single-token kernel's; the f32 scaling and the summation order
//! differ, so results agree with it to rounding.

use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::ops::Range;

use super::x86::{Mat, Units};
use crate::simd::act::BlockQ8x32;
use crate::simd::affine_dot::avx512::load16;
use crate::simd::columns::unpacked::avx512::{groups, Unpacks};
use crate::simd::columns::{block_lanes16, columns16, BLOCKS16};
use crate::simd::scratch::{Table, Tokens};

/// A code width's unit layout.
pub(super) trait Width: Sized + 'static {
    /// Bits per code.
    const BITS: usize;

    /// Sixteen activation blocks' codes (zero past `blocks.len()`) in this
    /// width's order: register `r` lane `k` matches the weights' register `r`.
    ///
    /// # Safety
    /// This file's features.
    unsafe fn activation_columns(blocks: &[BlockQ8x32]) -> [__m512i; 8];

    /// The code registers of the `here` blocks at `b` (codes only: MLX keeps
    /// scales and biases apart).
    ///
    /// # Safety
    /// This file's features; `b` points at `here <= 16` blocks' codes.
    unsafe fn weight_columns(b: *const u8, here: usize) -> [__m512i; 8];
}

/// 4-bit codes (see the module doc).
pub(super) struct Four;

/// 8-bit codes (see the module doc).
pub(super) struct Eight;

impl Width for Four {
    const BITS: usize = 4;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn activation_columns(blocks: &[BlockQ8x32]) -> [__m512i; 8] {
        // Per 128-bit lane: even values of 0..8, odd values of 0..8, then of 8..16.
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, //
            0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
        );
        columns16(&std::array::from_fn(|k| match blocks.get(k) {
            Some(b) => _mm256_shuffle_epi8(_mm256_loadu_si256(b.qs.as_ptr() as *const __m256i), split),
            None => _mm256_setzero_si256(),
        }))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn weight_columns(b: *const u8, here: usize) -> [__m512i; 8] {
        // Load `p` holds blocks 4p..4p + 4, one per 128-bit lane.
        let q: [__m512i; 4] = if here == BLOCKS16 {
            std::array::from_fn(|p| _mm512_loadu_si512(b.add(64 * p) as *const _))
        } else {
            let mut pad = [0u8; 256];
            std::ptr::copy_nonoverlapping(b, pad.as_mut_ptr(), 16 * here);
            std::array::from_fn(|p| _mm512_loadu_si512(pad.as_ptr().add(64 * p) as *const _))
        };
        let nib = _mm512_set1_epi8(0x0F);
        let lo = q.map(|v| _mm512_and_si512(v, nib));
        let hi = q.map(|v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib));
        // Word `m` of every block of a pair of loads: 32-bit element `4l + m`
        // of lane `l`, the second load's from 16 on.
        let word = |v: &[__m512i; 4], m: i32| {
            let idx =
                _mm512_setr_epi32(m, 4 + m, 8 + m, 12 + m, 16 + m, 20 + m, 24 + m, 28 + m, 0, 0, 0, 0, 0, 0, 0, 0);
            let first = _mm512_permutex2var_epi32(v[0], idx, v[1]);
            let second = _mm512_permutex2var_epi32(v[2], idx, v[3]);
            _mm512_inserti64x4::<1>(first, _mm512_castsi512_si256(second))
        };
        let mut w = [_mm512_setzero_si512(); 8];
        for m in 0..4 {
            w[2 * m] = word(&lo, m as i32);
            w[2 * m + 1] = word(&hi, m as i32);
        }
        w
    }
}

impl Width for Eight {
    const BITS: usize = 8;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn activation_columns(blocks: &[BlockQ8x32]) -> [__m512i; 8] {
        columns16(&std::array::from_fn(|k| match blocks.get(k) {
            Some(b) => _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i),
            None => _mm256_setzero_si256(),
        }))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn weight_columns(b: *const u8, here: usize) -> [__m512i; 8] {
        columns16(&std::array::from_fn(|k| {
            if k < here {
                _mm256_loadu_si256(b.add(32 * k) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            }
        }))
    }
}

/// 2, 3, 5 or 6-bit codes (`B`), unpacked to a byte each: then as [`Eight`].
/// Takes AVX-512 VBMI.
pub(super) struct Unpacked<const B: usize>;

impl<const B: usize> Width for Unpacked<B> {
    const BITS: usize = B;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn activation_columns(blocks: &[BlockQ8x32]) -> [__m512i; 8] {
        Eight::activation_columns(blocks)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    unsafe fn weight_columns(b: *const u8, here: usize) -> [__m512i; 8] {
        // Two blocks (`8 B` bytes, 64 values) per unpack; absent blocks zero.
        let block_bytes = 4 * B;
        let mut codes = [_mm256_setzero_si256(); BLOCKS16];
        for pair in 0..here.div_ceil(2) {
            let bytes = (block_bytes * (here - 2 * pair)).min(2 * block_bytes);
            let v = crate::simd::affine_dot::avx512::unpack::<B>(b.add(2 * block_bytes * pair), (1u64 << bytes) - 1);
            codes[2 * pair] = _mm512_castsi512_si256(v);
            codes[2 * pair + 1] = _mm512_extracti64x4_epi64::<1>(v);
        }
        columns16(&codes)
    }
}

/// Sixteen activation blocks of one token: `cols` in the width's order,
/// and per lane the block's scale `d` and exact sum.
#[repr(C, align(64))]
pub(super) struct XRun16<W> {
    cols: [__m512i; 8],
    d: __m512,
    sum: __m512,
    width: PhantomData<W>,
}

/// Sixteen weight blocks of one row as the steps take them: the codes, and
/// per lane the scale and bias of the block's group.
#[repr(C, align(64))]
pub(super) struct Unit {
    w: [__m512i; 8],
    scale: __m512,
    bias: __m512,
}

/// A width's units of two rows, as the shared many-token loop takes them.
pub(super) struct Affine16<W>(PhantomData<W>);

/// Unit `i` of row `r`.
///
/// # Safety
/// Row `r` lies inside the matrix, `i < mu.count()`; this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack<W: Width>(mu: &Units<BLOCKS16>, r: usize, i: usize) -> Unit {
    let m = mu.m;
    let w = W::weight_columns(m.words.as_ptr().add(r * m.row_bytes + BLOCKS16 * i * 32 * W::BITS / 8), mu.here(i));
    let ug = mu.groups(i);
    // Sixteen values from the unit's first group in one load.
    let (g, n) = ug.at_row(m, r);
    let idx = _mm512_loadu_si512(ug.idx.as_ptr() as *const _);
    let scale = _mm512_permutexvar_ps(idx, load16(m.dt, m.scales.as_ptr(), g, n));
    let bias = _mm512_permutexvar_ps(idx, load16(m.dt, m.biases.as_ptr(), g, n));
    Unit { w, scale, bias }
}

impl<W: Width> Unpacks for Affine16<W> {
    type X = XRun16<W>;
    type U = [Unit; 2];
    type A = [__m512; 2];
    type M<'a> = Units<'a, BLOCKS16>;

    fn units(m: &Units<BLOCKS16>) -> usize {
        m.count()
    }

    fn stream<'a>(m: &Self::M<'a>) -> (&'a [u8], usize) {
        m.stream()
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Units<BLOCKS16>, r: usize, i: usize) -> [Unit; 2] {
        // A unit past the last row reads that row again (its sums unused).
        let next = if r + 1 < m.rows() { r + 1 } else { r };
        [unpack::<W>(m, r, i), unpack::<W>(m, next, i)]
    }

    #[inline(always)]
    unsafe fn step(u: &[Unit; 2], x: &XRun16<W>, acc: &mut [__m512; 2]) {
        let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0].w[0], x.cols[0]);
        let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1].w[0], x.cols[0]);
        for r in 1..8 {
            let c = x.cols[r];
            s0 = _mm512_dpbusd_epi32(s0, u[0].w[r], c);
            s1 = _mm512_dpbusd_epi32(s1, u[1].w[r], c);
        }
        let [a0, a1] = acc;
        let t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(s0), x.d);
        let t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(s1), x.d);
        *a0 = _mm512_fmadd_ps(u[0].bias, x.sum, _mm512_fmadd_ps(t0, u[0].scale, *a0));
        *a1 = _mm512_fmadd_ps(u[1].bias, x.sum, _mm512_fmadd_ps(t1, u[1].scale, *a1));
    }
}

/// Tokens per group: eight accumulators (two rows) beside the unit's 20
/// registers.
const GROUP: usize = 4;

/// The product of rows `rows` of `m` (codes of width `W`) with `n_tokens`
/// tokens' blocks `x`, into `y[t * y_stride + i]`, in the shared many-token
/// loop ([`groups`]); with an `id` (non-zero), the thread keeps every
/// token's units from call to call.
///
/// # Safety
/// The CPU runs AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C; `m` checked
/// against its shape with `W::BITS` bits, `rows` inside it, `x` `n_tokens
/// >= 1` rows of `cols / 32` blocks, `y` valid for writes at `t * y_stride
/// + i`, `i < rows.len()`; an `id` other than 0 always comes with the same
/// `x` contents.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn run<W: Width>(
    m: &Mat,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    id: u64,
) {
    let nb = m.blocks();
    let mut table = Table::default();
    let mu = Units::new(m, std::array::from_fn(|k| k), &mut table);
    let units = mu.count();
    let mut tokens = Tokens::default();
    let mut prep = |t0: usize, n: usize| {
        // SAFETY (closure): `p` has room for the tokens' units.
        let fill = |ts, p| unsafe { prepare::<W>(x, nb, ts, p) };
        (tokens.group(id, (n_tokens, units), (t0, n), fill), units)
    };
    groups::<Affine16<W>>(&mu, rows, n_tokens, GROUP, y, y_stride, &mut prep)
}

/// Tokens `tokens` of `x` (`nb` blocks each) as units at `p`,
/// `nb.div_ceil(16)` per token.
///
/// # Safety
/// This file's features; `p` has room for the tokens' units.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn prepare<W: Width>(x: &[BlockQ8x32], nb: usize, tokens: Range<usize>, p: *mut XRun16<W>) {
    let units = nb.div_ceil(BLOCKS16);
    for (i, t) in tokens.enumerate() {
        for (k, blocks) in x[t * nb..(t + 1) * nb].chunks(BLOCKS16).enumerate() {
            let run = XRun16 {
                cols: W::activation_columns(blocks),
                d: block_lanes16(blocks, |b| b.d),
                sum: block_lanes16(blocks, |b| b.sum),
                width: PhantomData,
            };
            p.add(i * units + k).write(run);
        }
    }
}
