//! MLX affine 4-bit and 8-bit many-token kernels (AVX2) on transposed runs
//! of eight 32-value blocks, as the ggml k-quant kernels (`ggml_dot/avx2/multi`)
//! do with their sub-blocks: u32 lane `k` of every register belongs to one
//! block of the run throughout, so a (run, token) step sums its 256 products
//! as i16 and widens, converts and scales them once (`d_x · scale_g` per
//! lane), and the bias term is one FMA of the lanes' `bias_g` against the
//! token's block sums.
//!
//! 4-bit ([`Four`]): the Q4_K step ([`steps::q4_k`]) with unit sub-block
//! scales. The per-pair kernel this replaces converted and scaled every two
//! blocks (28 vector operations per 256 products and token, against 20).
//! Layout: a run's 128 weight bytes are four 32-byte loads, load `p` holding
//! blocks `2p` (low 128 bits) and `2p + 1`; their u32 transpose gives, in
//! register `i`, word `i` of every block, block [`ORDER`]`[k]` in lane `k`,
//! and each word's low and high nibbles are values `8i + 2j` and `8i + 2j +
//! 1` (`j` its byte). The activations are laid out to match once per token
//! group: column `2i` holds values `8i, 8i + 2, 8i + 4, 8i + 6` of each
//! block, column `2i + 1` the odd ones.
//!
//! 8-bit ([`Eight`]): codes reach 255, and `255 · 127 · 2` would saturate a
//! `vpmaddubsw` pair, so the activations are split instead, `x = 16 xh + xl`
//! with `xl` in 0..16 and `xh` in -8..8 ([`steps::u8_split`]): the run's
//! 256 weight bytes transposed as they are (block `k` in lane `k`), sixteen
//! `vpmaddubsw` per (run, token), in groups of 4 tokens: a token's run is
//! 576 bytes, and eight tokens' runs of a 2048-column row (36 KB) would not
//! stay in L1 (`examples/prefill_gemm.rs a8`, 5 alternations: groups of 4
//! best 94.7 and 88.3 GFLOP/s against 69.0 and 73.6 with 8). The
//! i16-widening kernel it replaces took a `vpmaddwd` per 16 products.
//!
//! Absent blocks of a last partial run are zero codes with zero scale and
//! sum on the activation side. When a call has more than one token group,
//! the first group keeps each weight run as it unpacked it for the later
//! ones, in the loop the ggml kernels share (`columns/unpacked.rs`, which
//! says why).
//!
//! Each block's integer dot is the single-token kernel's; the f32 scaling
//! and the order of the sums differ, so results agree with it to rounding.

use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::ops::Range;

use super::x86::{load8, Mat, Units};
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::steps::{self, Cols};
use crate::simd::columns::unpacked::avx2::{groups, Unpacks};
use crate::simd::columns::{block_lanes, transpose4, transpose8};
use crate::simd::scratch::{Table, Tokens};

/// 4-bit: the block of the run in u32 lane `k` (low 128 bits: blocks 0, 2, 4, 6).
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// A code width's layout and step.
pub(super) trait Width: Sized + 'static {
    /// Bits per code.
    const BITS: usize;
    /// Tokens per group (8 or 4): each step keeps its accumulator in memory,
    /// so the group size costs no registers, but the group's runs of every
    /// block of a row should stay in L1.
    const GROUP: usize;
    /// The block of the run in u32 lane `k`.
    const LANES: [usize; 8];
    /// One token's run of eight blocks, as the steps read it.
    type XRun: 'static;

    /// Up to eight activation blocks as a run.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C.
    unsafe fn prepare(blocks: &[BlockQ8x32]) -> Self::XRun;

    /// The code columns of the run at `b`, `here` blocks of it present.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `b` points at `here` blocks' codes.
    unsafe fn columns(b: *const u8, here: usize) -> [__m256i; 8];

    /// `acc += u · x` per lane.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C.
    unsafe fn step(u: &Unpacked, x: &Self::XRun, acc: &mut __m256);
}

/// 4-bit codes (see the module doc).
pub(super) struct Four;

/// 8-bit codes (see the module doc).
pub(super) struct Eight;

/// One token's run for [`Four`].
#[repr(C, align(32))]
pub(super) struct Run4 {
    cols: [__m256i; 8],
    /// Lane `k`: the exact input sum of block `LANES[k]` (the bias term).
    sums: __m256,
    /// Lane `k`: the activation scale of block `LANES[k]`.
    d: __m256,
}

/// One token's run for [`Eight`]: the columns of `xh`, then of `xl`.
#[repr(C, align(32))]
pub(super) struct Run8 {
    cols: [__m256i; 16],
    sums: __m256,
    d: __m256,
}

/// A run of weight blocks as the steps take it, kept for the later groups.
#[repr(C, align(32))]
pub(super) struct Unpacked {
    w: [__m256i; 8],
    neg_bias: __m256,
    scale: __m256,
}

impl Width for Four {
    const BITS: usize = 4;
    const GROUP: usize = 8;
    const LANES: [usize; 8] = ORDER;
    type XRun = Run4;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(blocks: &[BlockQ8x32]) -> Run4 {
        // Per 128-bit lane: even bytes of 0..8, odd bytes of 0..8, then of 8..16.
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15, //
            0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15,
        );
        let rows = ORDER.map(|j| match blocks.get(j) {
            Some(b) => _mm256_shuffle_epi8(_mm256_loadu_si256(b.qs.as_ptr() as *const __m256i), split),
            None => _mm256_setzero_si256(),
        });
        Run4 {
            cols: transpose8(rows),
            sums: block_lanes(blocks, ORDER, |b| b.sum),
            d: block_lanes(blocks, ORDER, |b| b.d),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns(b: *const u8, here: usize) -> [__m256i; 8] {
        let q: [__m256i; 4] = if here == 8 {
            std::array::from_fn(|p| _mm256_loadu_si256(b.add(32 * p) as *const __m256i))
        } else {
            // The row's last, partial run: its blocks, then zeros.
            let mut pad = [0u8; 128];
            std::ptr::copy_nonoverlapping(b, pad.as_mut_ptr(), 16 * here);
            std::array::from_fn(|p| _mm256_loadu_si256(pad.as_ptr().add(32 * p) as *const __m256i))
        };
        let nib = _mm256_set1_epi8(0x0F);
        let (c0, c1, c2, c3) = transpose4(q[0], q[1], q[2], q[3]);
        let mut w = [_mm256_setzero_si256(); 8];
        for (i, c) in [c0, c1, c2, c3].into_iter().enumerate() {
            w[2 * i] = _mm256_and_si256(c, nib);
            w[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(c), nib);
        }
        w
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &Unpacked, x: &Run4, acc: &mut __m256) {
        let cols = Cols { cols: x.cols.as_ptr(), sums: &x.sums, d: &x.d };
        steps::q4_k(&u.w, _mm256_set1_epi16(1), u.neg_bias, u.scale, cols, acc);
    }
}

impl Width for Eight {
    const BITS: usize = 8;
    const GROUP: usize = 4;
    const LANES: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
    type XRun = Run8;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(blocks: &[BlockQ8x32]) -> Run8 {
        let rows = Self::LANES.map(|j| match blocks.get(j) {
            Some(b) => _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i),
            None => _mm256_setzero_si256(),
        });
        let x = transpose8(rows);
        let nib = _mm256_set1_epi8(0x0F);
        let eight = _mm256_set1_epi8(8);
        let mut cols = [_mm256_setzero_si256(); 16];
        for (c, &v) in x.iter().enumerate() {
            // xh: the high nibble as a signed 4-bit value ((v ^ 8) - 8).
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
            cols[c] = _mm256_sub_epi8(_mm256_xor_si256(hi, eight), eight);
            cols[8 + c] = _mm256_and_si256(v, nib);
        }
        Run8 { cols, sums: block_lanes(blocks, Self::LANES, |b| b.sum), d: block_lanes(blocks, Self::LANES, |b| b.d) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns(b: *const u8, here: usize) -> [__m256i; 8] {
        transpose8(std::array::from_fn(|k| {
            if k < here {
                _mm256_loadu_si256(b.add(32 * k) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            }
        }))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &Unpacked, x: &Run8, acc: &mut __m256) {
        let cols = Cols { cols: x.cols.as_ptr(), sums: &x.sums, d: &x.d };
        steps::u8_split(&u.w, u.neg_bias, u.scale, cols, acc);
    }
}

/// A width's runs as the shared many-token loop takes them.
pub(super) struct Affine<W>(PhantomData<W>);

impl<W: Width> Unpacks for Affine<W> {
    type X = W::XRun;
    type U = Unpacked;
    type A = __m256;
    type M<'a> = Units<'a, 8>;

    fn units(m: &Units<8>) -> usize {
        m.count()
    }

    fn stream<'a>(m: &Self::M<'a>) -> (&'a [u8], usize) {
        m.stream()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(mr: &Units<8>, r: usize, run: usize) -> Unpacked {
        let m = mr.m;
        let rg = mr.groups(run);
        let w = W::columns(m.words.as_ptr().add(r * m.row_bytes + 8 * run * 32 * W::BITS / 8), mr.here(run));
        // Eight values from the run's first group in one load.
        let (g, n) = rg.at_row(m, r);
        let idx = _mm256_loadu_si256(rg.idx.as_ptr() as *const __m256i);
        let scale = _mm256_permutevar8x32_ps(load8(m.dt, m.scales.as_ptr(), g, n), idx);
        // The step subtracts `mins · sums`: the bias, negated, adds it.
        let bias = _mm256_permutevar8x32_ps(load8(m.dt, m.biases.as_ptr(), g, n), idx);
        let neg_bias = _mm256_sub_ps(_mm256_setzero_ps(), bias);
        Unpacked { w, neg_bias, scale }
    }

    #[inline(always)]
    unsafe fn step(u: &Unpacked, x: &W::XRun, acc: &mut __m256) {
        W::step(u, x, acc)
    }
}

/// The product of rows `rows` of `m` (codes of width `W`) with `n_tokens`
/// tokens' blocks `x`, into `y[t * y_stride + i]`, in the shared many-token
/// loop ([`groups`]). With an `id` (non-zero), the thread keeps every
/// token's runs from call to call, as the ggml kernels do.
///
/// # Safety
/// AVX2 + FMA + F16C; `m` checked against its shape with `W::BITS` bits,
/// `rows` inside it, `x` `n_tokens >= 1` rows of `cols / 32` blocks, `y`
/// valid for writes at `t * y_stride + i`, `i < rows.len()`; an `id` other
/// than 0 always comes with the same `x` contents.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let mr = Units::new(m, W::LANES, &mut table);
    let runs = mr.count();
    let mut tokens = Tokens::default();
    let mut prep = |t0: usize, n: usize| {
        // SAFETY (closure): `p` has room for the tokens' runs.
        let fill = |ts, p| unsafe { prepare::<W>(x, nb, ts, p) };
        (tokens.group(id, (n_tokens, runs), (t0, n), fill), runs)
    };
    groups::<Affine<W>>(&mr, rows, n_tokens, W::GROUP, y, y_stride, &mut prep)
}

/// Tokens `tokens` of `x` (`nb` blocks each) as runs at `p`, `nb.div_ceil(8)`
/// per token.
///
/// # Safety
/// AVX2 + FMA + F16C; `p` has room for the tokens' runs.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare<W: Width>(x: &[BlockQ8x32], nb: usize, tokens: Range<usize>, p: *mut W::XRun) {
    let runs = nb.div_ceil(8);
    for (i, t) in tokens.enumerate() {
        for (k, blocks) in x[t * nb..(t + 1) * nb].chunks(8).enumerate() {
            p.add(i * runs + k).write(W::prepare(blocks));
        }
    }
}
