//! The symmetric 32-value types (Q8_0, Q4_0, Q5_0, IQ4_NL: signed codes,
//! `d` first in the block) on runs of eight blocks with 256-bit `vpdpbusd`
//! (CPUs with AVX-512 VL + VNNI), in the AVX2 layout and loop: lane `k` of
//! every column is block `k` of the run, so one (run, token) step is eight
//! `vpdpbusd` into one i32 register and a single scaling, where a 512-bit
//! kernel scaled every pair of blocks on its own and the AVX2 one
//! ([`super::runs32::Sym32`]) needs a sign trick and a widening per column.
//!
//! `vpdpbusd` takes unsigned bytes first: the weights go in as `w + 128`
//! (their top bit flipped, once per kept run) and the activations as they
//! are, and the step starts from `-128 Σ x` per block, prepared with the
//! token's run, so each lane's i32 sum is exactly `Σ w x`.

use std::arch::x86_64::*;

use qmoe_core::GgmlType;

use super::runs32::{self, f16_lanes, run_columns, Sym32, IN_ORDER};
use super::{BlockRows, BlockUnits};
use crate::simd::act::BlockQ8x32;
use crate::simd::columns::steps::{self, Cols};
use crate::simd::columns::unpacked::avx2_vnni::{groups, Unpacks};
use crate::simd::columns::{block_lanes, transpose8};
use crate::simd::scratch::Tokens;

/// Eight activation blocks of one token for [`SymVnni`]: the codes
/// transposed as in `TRun`, `-128 Σ x` per block and the scales.
#[repr(C, align(32))]
pub(crate) struct XRunV {
    cols: [__m256i; 8],
    neg: __m256i,
    d: __m256,
}

/// A run of eight blocks as the steps take it: `w + 128` transposed, and
/// each block's `d` on its lane.
#[repr(C, align(32))]
pub(crate) struct UnpackedV {
    w: [__m256i; 8],
    d: __m256,
}

/// The symmetric type `TYPE` (`runs32::Q8_0` ..) on runs of eight blocks
/// with 256-bit VNNI steps.
pub(crate) struct SymVnni<const TYPE: u8>;

impl<const TYPE: u8> Unpacks for SymVnni<TYPE> {
    type X = XRunV;
    type U = UnpackedV;
    type A = __m256;
    type M<'a> = BlockRows<'a>;

    fn units(m: &BlockRows) -> usize {
        m.nb.div_ceil(8)
    }

    fn stream<'a>(m: &Self::M<'a>) -> (&'a [u8], usize) {
        (m.w, m.nb * <Sym32<TYPE> as BlockUnits>::BYTES)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(m: &BlockRows, r: usize, i: usize) -> UnpackedV {
        let ts = <Sym32<TYPE> as BlockUnits>::BYTES;
        let here = (m.nb - 8 * i).min(8);
        let b = m.w.as_ptr().add((r * m.nb + 8 * i) * ts);
        let flip = _mm256_set1_epi8(i8::MIN);
        // An absent block: codes 0 (128 after the flip) against zero activations, d 0.
        let rows =
            std::array::from_fn(
                |k| if k < here { Sym32::<TYPE>::codes(b.add(k * ts)) } else { _mm256_setzero_si256() },
            );
        UnpackedV { w: transpose8(rows).map(|c| _mm256_xor_si256(c, flip)), d: f16_lanes(b, ts, 0, here) }
    }

    #[inline(always)]
    unsafe fn step(u: &UnpackedV, x: &XRunV, acc: &mut __m256) {
        let cols = Cols { cols: x.cols.as_ptr(), sums: &x.neg as *const __m256i as *const __m256, d: &x.d };
        steps::q8_0_vnni(&u.w, u.d, cols, acc);
    }
}

/// The tokens of `x` (`nb` blocks each) as [`XRunV`]s at `p`.
///
/// # Safety
/// AVX2; `p` has room for `nb.div_ceil(8)` runs per token.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare(x: &[BlockQ8x32], nb: usize, mut p: *mut XRunV) {
    for token in x.chunks_exact(nb) {
        for blocks in token.chunks(8) {
            let neg: [i32; 8] = std::array::from_fn(|k| {
                blocks.get(k).map_or(0, |b| -128 * b.qs.iter().map(|&q| q as i32).sum::<i32>())
            });
            p.write(XRunV {
                cols: run_columns(blocks),
                neg: _mm256_loadu_si256(neg.as_ptr() as *const __m256i),
                d: block_lanes(blocks, IN_ORDER, |b| b.d),
            });
            p = p.add(1);
        }
    }
}

/// Whether `ty` has a kernel here.
pub(crate) fn has_kernel(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::IQ4NL)
}

/// `ty` (one [`has_kernel`] takes) on a CPU with AVX-512 VL + VNNI (see
/// the module doc).
///
/// # Safety
/// As `gemm_q8x32` for `ty`, on a CPU with AVX-512 F/BW/VL + VNNI.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn gemm(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    stride: usize,
    id: u64,
) {
    let nb = x.len() / n_tokens;
    let runs = nb.div_ceil(8);
    let mut tokens = Tokens::default();
    let mut prep = |t0: usize, n: usize| {
        // SAFETY (closure): `p` has room for the tokens' runs.
        let fill = |ts: std::ops::Range<usize>, p| unsafe { prepare(&x[ts.start * nb..ts.end * nb], nb, p) };
        (tokens.group(id, (n_tokens, runs), (t0, n), fill), runs)
    };
    let m = BlockRows { w, nb };
    let (rows, group) = (0..n_rows, super::GROUP);
    match ty {
        GgmlType::Q8_0 => groups::<SymVnni<{ runs32::Q8_0 }>>(&m, rows, n_tokens, group, y, stride, &mut prep),
        GgmlType::Q4_0 => groups::<SymVnni<{ runs32::Q4_0 }>>(&m, rows, n_tokens, group, y, stride, &mut prep),
        GgmlType::Q5_0 => groups::<SymVnni<{ runs32::Q5_0 }>>(&m, rows, n_tokens, group, y, stride, &mut prep),
        GgmlType::IQ4NL => groups::<SymVnni<{ runs32::IQ4_NL }>>(&m, rows, n_tokens, group, y, stride, &mut prep),
        _ => unreachable!("vnni::gemm: {ty} (checked by the caller)"),
    }
}
