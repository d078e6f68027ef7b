//! AVX2 many-token kernels: each weight block is unpacked to byte codes
//! once, in registers, and multiplied with the int8 activations of up to
//! [`GROUP`] tokens (one accumulator set per token).
//!
//! Loop order: token groups outside, rows inside. The driver hands a run of
//! rows sized to stay in L2, so the first group streams the rows from DRAM
//! (with the single-token kernels' software prefetch) and later groups read
//! them from L2, while the group's activations stay in L1.
//!
//! Per (block, token) the integer sums are those of the single-token kernels
//! in [`super`], and so is the f32 scaling of each block; the 32-wide types
//! Q4_1 / Q5_1 keep one accumulator per token where the single-token kernel
//! alternates two, the 256-wide types ([`kquants`]) spread each block's sum
//! over the eight lanes differently, and Q8_0 / Q4_0 / Q5_0 / IQ4_NL
//! ([`sym32`]) give each of eight consecutive blocks a lane of its own, so
//! results agree with it to float rounding.

use std::arch::x86_64::*;

use qmoe_core::GgmlType;

use super::{f16_at, hsum, load256, madd, q4_1_codes, q5_codes, PREFETCH_BYTES};
use crate::simd::act::{BlockQ8K, BlockQ8x32};

mod kquants;
mod sym32;
mod unpacked;

use kquants::{transposed, IQ4XS, Q2K, Q3K, Q45K, Q6K};
use sym32::{transposed32, Sym32};

/// Tokens multiplied per weight-block unpacking: 4 tokens' integer and f32
/// accumulators (8 registers) plus the codes and scales fit AVX2's 16.
/// The transposed kernels ([`kquants`], [`sym32`]) take 8 (`groups!`'s
/// `$max`): each block's unpacking is then shared by twice the tokens, and
/// their f32 accumulators may sit in memory (touched once per block).
/// Measured on Zen 3 before those kernels were transposed: 1.1-1.2x over
/// groups of 4 for the k-quants, 1.02-1.05x for Q8_0.
pub(crate) const GROUP: usize = 4;

/// The group loop, expanded inside each `#[target_feature]` function so the
/// per-type dot (`#[inline]`, same features, const `N` tokens) is inlined.
///
/// The plain form: `$dot::<N>(row, xs, nb) -> [f32; N]`, one row against
/// `N` tokens' blocks as they are, in groups of [`GROUP`].
///
/// The `kept K:` form, for a type's transposed [`Unpacks`] kernel:
/// [`unpacked::groups`] in groups of `$max`, `$prep(x, t0, n, nb, id,
/// scratch)` giving the group's activations (`n` tokens of `nb` blocks from
/// token `t0`) as a rearranged copy in `scratch` (once per group, for every
/// row of the run; or once per thread for the whole input when the driver
/// names it with a non-zero `id`), and the distance from one token's to the
/// next's in its units.
macro_rules! groups {
    (kept $k:ty: $w:expr, $n_rows:expr, $x:expr, $n_tokens:expr, $y:expr, $stride:expr, $id:expr, $max:expr,
     $prep:ident) => {
        unpacked::groups::<$k, _, _>($w, $n_rows, $x, $n_tokens, $y, $stride, $id, $max, $prep)
    };
    ($w:expr, $n_rows:expr, $x:expr, $n_tokens:expr, $y:expr, $stride:expr, $id:expr, $ts:expr, $dot:ident) => {
        groups!(@loop $w, $n_rows, $x, $n_tokens, $y, $stride, $id, $ts, GROUP, as_is,
            |base, row_bytes, nb, _t0, r, xs| $dot(base.add(r * row_bytes), xs, nb))
    };
    (@loop $w:expr, $n_rows:expr, $x:expr, $n_tokens:expr, $y:expr, $stride:expr, $id:expr, $ts:expr, $max:expr,
     $prep:ident, |$base:ident, $row_bytes:ident, $nb:ident, $t0:ident, $r:ident, $xs:ident| $row:expr) => {{
        let (w, n_rows, x, n_tokens, y, stride): (&[u8], usize, &[_], usize, *mut f32, usize) =
            ($w, $n_rows, $x, $n_tokens, $y, $stride);
        let $nb = x.len() / n_tokens;
        let $row_bytes = $nb * $ts;
        let $base = w.as_ptr();
        // `$prep`'s buffer for the call (the type its last argument names).
        let mut scratch = Default::default();
        let mut $t0 = 0;
        while $t0 < n_tokens {
            // Groups of `$max`, the rest in groups of at most 4 (fewer
            // instances of the kernel than one per remainder).
            let left = n_tokens - $t0;
            let n = if left >= $max { $max } else { left.min(4) };
            let (xg, xstride) = $prep(x, $t0, n, $nb, $id, &mut scratch);
            // Only the first group reads the rows from memory: prefetch for it.
            let prefetch = $t0 == 0;
            match n {
                8 => groups!(@run 8, $base, n_rows, $row_bytes, xg, xstride, $t0, y, stride, prefetch, w.len(), |$r, $xs| $row),
                4 => groups!(@run 4, $base, n_rows, $row_bytes, xg, xstride, $t0, y, stride, prefetch, w.len(), |$r, $xs| $row),
                3 => groups!(@run 3, $base, n_rows, $row_bytes, xg, xstride, $t0, y, stride, prefetch, w.len(), |$r, $xs| $row),
                2 => groups!(@run 2, $base, n_rows, $row_bytes, xg, xstride, $t0, y, stride, prefetch, w.len(), |$r, $xs| $row),
                _ => groups!(@run 1, $base, n_rows, $row_bytes, xg, xstride, $t0, y, stride, prefetch, w.len(), |$r, $xs| $row),
            }
            $t0 += n;
        }
    }};
    (@run $n:literal, $base:expr, $n_rows:expr, $row_bytes:expr, $xg:expr, $xstride:expr, $t0:expr,
     $y:expr, $stride:expr, $prefetch:expr, $len:expr, |$r:ident, $xs:ident| $row:expr) => {{
        let $xs: [*const _; $n] = std::array::from_fn(|t| $xg.add(t * $xstride));
        let mut fetched = 0;
        for $r in 0..$n_rows {
            if $prefetch {
                let until = (($r + 1) * $row_bytes + PREFETCH_BYTES).min($len);
                while fetched < until {
                    _mm_prefetch::<_MM_HINT_T0>($base.add(fetched) as *const i8);
                    fetched += 64;
                }
            }
            let out: [f32; $n] = $row;
            for (t, v) in out.into_iter().enumerate() {
                *$y.add(($t0 + t) * $stride + $r) = v;
            }
        }
    }};
}

/// The group's activations as they are.
#[inline(always)]
fn as_is<B>(x: &[B], t0: usize, _n: usize, nb: usize, _id: u64, _scratch: &mut ()) -> (*const B, usize) {
    (x[t0 * nb..].as_ptr(), nb)
}

/// # Safety
/// The CPU runs AVX2, FMA and F16C; `ty` takes Q8K activations; `x` holds
/// `n_tokens >= 1` rows of `nb` blocks; `w` is exactly `n_rows` rows of `nb`
/// blocks of `ty`; `y` is valid for writes at `t * y_stride + r` for every
/// `t < n_tokens`, `r < n_rows`; an `acts_id` other than 0 always comes with
/// the same `x` contents (see `scratch::Whole`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_q8k(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8K],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q2K => groups!(kept Q2K: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed),
        GgmlType::Q3K => groups!(kept Q3K: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed),
        GgmlType::Q4K => groups!(kept Q45K<false>: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed),
        GgmlType::Q5K => groups!(kept Q45K<true>: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed),
        GgmlType::Q6K => groups!(kept Q6K: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed),
        GgmlType::IQ4XS => groups!(kept IQ4XS: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed),
        _ => unreachable!("gemm_q8k: {ty} (checked by the caller)"),
    }
}

/// # Safety
/// As [`gemm_q8k`], for a type taking Q8x32 activations.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemm_q8x32(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
    acts_id: u64,
) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q8_0 => {
            groups!(kept Sym32<{ sym32::Q8_0 }>: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed32)
        }
        GgmlType::Q4_0 => {
            groups!(kept Sym32<{ sym32::Q4_0 }>: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed32)
        }
        GgmlType::Q4_1 => groups!(w, n_rows, x, n_tokens, y, y_stride, acts_id, 20, dot_q4_1),
        GgmlType::Q5_0 => {
            groups!(kept Sym32<{ sym32::Q5_0 }>: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed32)
        }
        GgmlType::Q5_1 => groups!(w, n_rows, x, n_tokens, y, y_stride, acts_id, 24, dot_q5_1),
        GgmlType::IQ4NL => {
            groups!(kept Sym32<{ sym32::IQ4_NL }>: w, n_rows, x, n_tokens, y, y_stride, acts_id, 8, transposed32)
        }
        _ => unreachable!("gemm_q8x32: {ty} (checked by the caller)"),
    }
}

// Each `dot_*` below: # Safety: `row` points at `nb` readable blocks of the
// type, each `xs[t]` at `nb` activation blocks, and the CPU runs AVX2 + FMA
// + F16C.

// ---- 32-value blocks (Q8x32 activations) --------------------------------------

/// The loop of the offset 32-wide types (`d q + m`, codes unsigned; the
/// symmetric ones are in [`sym32`]): `$codes` (of block pointer `$b`) the
/// weight codes once per block, `$m` the block's offset.
macro_rules! dot32 {
    ($row:expr, $xs:expr, $nb:expr, $ts:expr, |$b:ident| $codes:expr, $m:expr) => {{
        let (row, xs, nb): (*const u8, [*const BlockQ8x32; N], usize) = ($row, $xs, $nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offs = [0.0f32; N];
        for i in 0..nb {
            let $b = row.add(i * $ts);
            let q = $codes;
            let (d, m) = (f16_at($b), $m);
            for t in 0..N {
                let xb = &*xs[t].add(i);
                let p = madd(_mm256_maddubs_epi16(q, load256(xb.qs.as_ptr() as *const u8)), ones);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[t]);
                offs[t] += m * xb.sum;
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) + offs[t])
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1<const N: usize>(row: *const u8, xs: [*const BlockQ8x32; N], nb: usize) -> [f32; N] {
    dot32!(row, xs, nb, 20, |b| q4_1_codes(b), f16_at(b.add(2)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1<const N: usize>(row: *const u8, xs: [*const BlockQ8x32; N], nb: usize) -> [f32; N] {
    dot32!(row, xs, nb, 24, |b| q5_codes(b, 4, 8, false), f16_at(b.add(2)))
}
