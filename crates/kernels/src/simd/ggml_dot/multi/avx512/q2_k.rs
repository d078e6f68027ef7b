//! Q2_K with 512-bit `vpdpbusd`, in Q6_K's layout: a unit is one block of
//! two rows, each i32 lane one 16-value group, whose scale and min are
//! taken per lane as Q4_K's are per sub-block: `d sc_g S_g - dmin m_g B_g`,
//! then the token's `d` (the group sums as f32, [`GBlock`]).
//!
//! Before this kernel Q2_K ran the AVX2 many-token kernel at this level:
//! `examples/prefill_gemm q2k --tokens 128` (Zen 4, 1 thread, `matmul`
//! GFLOP/s, alternating) `[512 x 2048]` 179.6-179.8 -> 238.8-242.1,
//! `[2048 x 512]` 155.8-156.0 -> 221.3-221.8.

use std::arch::x86_64::*;

use super::super::super::avx512::{f16_at, load512};
use super::q3_k::bit_pairs;
use super::{group_codes, group_sums, Kernel, Rows};
use crate::simd::act::BlockQ8K;
use crate::simd::columns::unpacked::avx512::Unpacks;

/// One prepared Q8K activation block for Q2_K: the codes of
/// [`super::KBlock`], the group sums `B_g` as f32 (lane `g`) and the block
/// scale.
#[repr(C, align(64))]
pub(super) struct GBlock {
    qs: [__m512i; 4],
    bs: __m512,
    d: f32,
}

/// Q2_K, one block of two rows a unit. The codes are Q3_K's low two bits
/// ([`bit_pairs`], from byte 16 of the block); byte `g` of the first 16
/// holds group `g`'s scale (low nibble) and min (high).
pub(super) struct Q2K;

/// A Q2_K block as the steps take it: the four code registers and per lane
/// `d sc_g` and `dmin m_g`.
#[repr(C, align(64))]
pub(super) struct Unpacked2 {
    wq: [__m512i; 4],
    scale: __m512,
    mins: __m512,
}

/// Block `i` of row `r`.
///
/// # Safety
/// Row `r` and its block `i` lie inside `m`; the CPU runs this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack(m: &Rows, r: usize, i: usize) -> Unpacked2 {
    let m2 = _mm512_set1_epi8(3);
    let b = m.block(r, i);
    let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(b as *const __m128i));
    let (sc, mn) = (_mm512_and_si512(bytes, _mm512_set1_epi32(0xF)), _mm512_srli_epi32::<4>(bytes));
    let scale = _mm512_mul_ps(_mm512_set1_ps(f16_at(b.add(80))), _mm512_cvtepi32_ps(sc));
    let mins = _mm512_mul_ps(_mm512_set1_ps(f16_at(b.add(82))), _mm512_cvtepi32_ps(mn));
    let qs = load512(b.add(16));
    let wq = std::array::from_fn(|r| _mm512_and_si512(bit_pairs(qs, r), m2));
    Unpacked2 { wq, scale, mins }
}

/// `acc += x_d (d sc S - dmin m B)` per lane, `s` the lanes' integer sums `S`.
#[inline(always)]
unsafe fn scale(s: __m512i, u: &Unpacked2, xb: &GBlock, acc: &mut __m512) {
    let offs = _mm512_mul_ps(xb.bs, u.mins);
    let v = _mm512_fmsub_ps(_mm512_cvtepi32_ps(s), u.scale, offs);
    *acc = _mm512_fmadd_ps(v, _mm512_set1_ps(xb.d), *acc);
}

impl Unpacks for Q2K {
    type X = GBlock;
    type U = [Unpacked2; 2];
    type A = [__m512; 2];
    rows_of_blocks!(|nb: usize| nb);

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn unpack(m: &Self::M<'_>, r: usize, i: usize) -> [Unpacked2; 2] {
        let next = m.second_row(r);
        [unpack(m, r, i), unpack(m, next, i)]
    }

    #[inline(always)]
    unsafe fn step(u: &[Unpacked2; 2], xb: &GBlock, acc: &mut [__m512; 2]) {
        let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[0].wq[0], xb.qs[0]);
        let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[1].wq[0], xb.qs[0]);
        for r in 1..4 {
            let x = xb.qs[r];
            s0 = _mm512_dpbusd_epi32(s0, u[0].wq[r], x);
            s1 = _mm512_dpbusd_epi32(s1, u[1].wq[r], x);
        }
        let [a0, a1] = acc;
        scale(s0, &u[0], xb, a0);
        scale(s1, &u[1], xb, a1);
    }
}

impl Kernel for Q2K {
    /// Four, as Q6_K's.
    const GROUP: usize = 4;
    type Src = BlockQ8K;
    fn rows(w: &[u8], nb: usize) -> Self::M<'_> {
        Rows { w, nb, ts: 84 }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn prep(src: &[BlockQ8K], dst: *mut GBlock) {
        for (i, b) in src.iter().enumerate() {
            let bs = _mm512_cvtepi32_ps(group_sums(b));
            dst.add(i).write(GBlock { qs: group_codes(b), bs, d: b.d });
        }
    }
}
