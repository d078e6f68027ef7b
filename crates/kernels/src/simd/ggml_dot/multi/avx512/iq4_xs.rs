//! IQ4_XS with 512-bit `vpdpbusd`: a unit is two 256-value blocks of two
//! rows, in the sub-block-major lanes of Q4_K's kernel ([`super::PairBlock`]'s
//! codes and scales), so after a (unit, row, token)'s eight `vpdpbusd` each
//! i32 lane is one 32-value sub-block's exact dot, and one multiply (`d_w
//! ls_j` by the token's `d`) and one FMA scale the sixteen sub-blocks of
//! both blocks.
//!
//! `vpdpbusd` takes unsigned bytes first: the codes are looked up in the
//! level table plus 128 (`1..=241`, as the AVX-512 single-token kernel does)
//! and the sums start from `-128 B_j` (the sub-block's activation sum),
//! prepared with the token's unit ([`PairBlockIq`]), so each lane's sum is
//! exactly `Σ level · x`. That start is the only difference from Q4_K's
//! step, which has mins to take off in f32 instead.
//!
//! Before this kernel IQ4_XS ran the AVX2 many-token kernel at this level
//! (eight `vpmaddubsw` with their sign fixes and widening per block and
//! token): `examples/prefill_gemm iq4xs --tokens 128` (Zen 4, 1 thread,
//! `matmul` GFLOP/s, two alternations) `[512 x 2048]` 122.6-124.9 ->
//! 263.9-294.7, `[2048 x 512]` 113.4 -> 212.4-245.7.

use std::arch::x86_64::*;

use super::super::super::avx512::{f16_at, iq4_table_u8, iq4_xs_scales, load512};
use super::{for_pairs, pair_codes, pair_d, pair_sums, Kernel, Rows, ZERO_BLOCK};
use crate::simd::act::BlockQ8K;
use crate::simd::columns::unpacked::avx512::Unpacks;

/// Two prepared Q8K activation blocks: the codes and scales of
/// [`super::PairBlock`], and per lane `-128 B_j`, the start of the lane's
/// integer sum.
#[repr(C, align(64))]
pub(super) struct PairBlockIq {
    qs: [__m512i; 8],
    off: __m512i,
    d: __m512,
}

/// IQ4_XS, two blocks of two rows a unit.
///
/// Sub-block `j`'s 16 bytes (`qs[16j..]`, after the block's 8 bytes of
/// scales) hold values 0..16 in their low nibbles and 16..32 in their high.
/// So register `r`'s lane `j` takes code word `4j + r % 4`, shifted down a
/// nibble when `r >= 4`: one permute of a block gives registers `r` and `r
/// + 1` (lanes 0..8 and 8..16), and its two nibbles registers `r + 4` and
/// `r + 5`.
pub(super) struct Iq4Xs;

/// Two IQ4_XS blocks of a row as the steps take them: the eight code
/// registers (level + 128, lanes as [`PairBlockIq::qs`]) and per lane `d
/// ls_j` of the lane's sub-block.
#[repr(C, align(64))]
pub(super) struct UnpackedIq {
    wq: [__m512i; 8],
    scale: __m512,
}

/// Unit `i` (blocks `2i`, `2i + 1`) of row `r`.
///
/// # Safety
/// Row `r` lies inside `m`, `2i < m.nb`; the CPU runs this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack(m: &Rows, r: usize, i: usize) -> UnpackedIq {
    let table = iq4_table_u8();
    let m4 = _mm512_set1_epi8(0x0F);
    // Words 4j of sub-blocks j in lanes 0..8, 4j + 1 in 8..16 (then + r).
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    let a = m.block(r, 2 * i);
    // A missing second block reads zeros: its scale is 0, and so are the
    // activations it meets.
    let b = if 2 * i + 1 < m.nb { m.block(r, 2 * i + 1) } else { ZERO_BLOCK.as_ptr() };
    let d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(f16_at(a)), _mm512_set1_ps(f16_at(b)));
    let ls = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(iq4_xs_scales(a)), iq4_xs_scales(b));
    let scale = _mm512_mul_ps(d, _mm512_cvtepi32_ps(ls));
    let (qa0, qa1) = (load512(a.add(8)), load512(a.add(72)));
    let (qb0, qb1) = (load512(b.add(8)), load512(b.add(72)));
    let mut wq = [_mm512_setzero_si512(); 8];
    for r in [0, 2] {
        let ix = _mm512_add_epi32(idx, _mm512_set1_epi32(r as i32));
        let ta = _mm512_permutex2var_epi32(qa0, ix, qa1);
        let tb = _mm512_permutex2var_epi32(qb0, ix, qb1);
        for (nib, (ta, tb)) in
            [(ta, tb), (_mm512_srli_epi16::<4>(ta), _mm512_srli_epi16::<4>(tb))].into_iter().enumerate()
        {
            let (ta, tb) = (_mm512_and_si512(ta, m4), _mm512_and_si512(tb, m4));
            // Lanes 0..8 of each block for register r, 8..16 for r + 1.
            wq[r + 4 * nib] = _mm512_shuffle_epi8(table, _mm512_shuffle_i64x2::<0b01_00_01_00>(ta, tb));
            wq[r + 4 * nib + 1] = _mm512_shuffle_epi8(table, _mm512_shuffle_i64x2::<0b11_10_11_10>(ta, tb));
        }
    }
    UnpackedIq { wq, scale }
}

impl Unpacks for Iq4Xs {
    type X = PairBlockIq;
    type U = [UnpackedIq; 2];
    type A = [__m512; 2];
    rows_of_blocks!(|nb: usize| nb.div_ceil(2));

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Self::M<'_>, r: usize, i: usize) -> [UnpackedIq; 2] {
        let next = m.second_row(r);
        [unpack(m, r, i), unpack(m, next, i)]
    }

    #[inline(always)]
    unsafe fn step(u: &[UnpackedIq; 2], xb: &PairBlockIq, acc: &mut [__m512; 2]) {
        let mut s0 = _mm512_dpbusd_epi32(xb.off, u[0].wq[0], xb.qs[0]);
        let mut s1 = _mm512_dpbusd_epi32(xb.off, u[1].wq[0], xb.qs[0]);
        for r in 1..8 {
            let x = xb.qs[r];
            s0 = _mm512_dpbusd_epi32(s0, u[0].wq[r], x);
            s1 = _mm512_dpbusd_epi32(s1, u[1].wq[r], x);
        }
        let [a0, a1] = acc;
        *a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(u[0].scale, xb.d), *a0);
        *a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), _mm512_mul_ps(u[1].scale, xb.d), *a1);
    }
}

impl Kernel for Iq4Xs {
    /// Four: eight accumulators (two rows) beside the unit's 18 registers.
    const GROUP: usize = 4;
    type Src = BlockQ8K;
    fn rows(w: &[u8], nb: usize) -> Self::M<'_> {
        Rows { w, nb, ts: 136 }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8K], dst: *mut PairBlockIq) {
        for_pairs(src, |i, a, b| {
            let off = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(pair_sums(a, b)));
            dst.add(i).write(PairBlockIq { qs: pair_codes(a, b), off, d: pair_d(a, b) });
        })
    }
}
