//! Q3_K with 512-bit `vpdpbusd`, in Q6_K's layout and step
//! ([`super::Groups16`]): a unit is one block of two rows, each i32 lane one
//! 16-value group (one scale), the codes `0..8` multiplied unsigned and
//! their offset of 4 taken in the integer sum from the token's `-4 B_g`
//! ([`super::KBlock<2>`]). This file unpacks the codes.
//!
//! Before this kernel Q3_K ran the AVX2 many-token kernel at this level:
//! `examples/prefill_gemm q3k --tokens 128` (Zen 4, 1 thread, `matmul`
//! GFLOP/s, two alternations) `[512 x 2048]` 188.9-191.0 -> 270.8-271.7,
//! `[2048 x 512]` 161.6-162.5 -> 230.6-239.1.

use std::arch::x86_64::*;

use super::super::super::avx2::q3_k_scales_vec;
use super::super::super::avx512::{f16_at, load256, load512};
use super::{Rows, Unpacked6};

/// Bytes of a Q3_K block.
pub(super) const TS: usize = 110;

/// Block `i` of row `r` of a Q3_K matrix, as Q6_K's unit holds its blocks.
///
/// In half `n` of a block, byte `l` of `qs[32n..]` holds in bit pair `k`
/// the low two bits of value `128n + 32k + l`, and bit `4n + k` of
/// `hmask[l]` its third. Group `g` (values `16g..`) is half `n = g / 8`,
/// pair `k = (g % 8) / 2`, bytes `l` from `16 (g % 2)`; so register `r`'s
/// lane `g` takes qs word `8n + 4 (g % 2) + r` shifted down by `2k`, and
/// hmask word `4 (g % 2) + r` rotated so that bit `4n + k` of each byte
/// lands on bit 2.
///
/// # Safety
/// Row `r` and its block `i` lie inside `m`; the CPU runs this file's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn unpack(m: &Rows, r: usize, i: usize) -> Unpacked6 {
    let hidx = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    // (2 - (4n + k)) mod 32.
    let hrot = _mm512_setr_epi32(2, 2, 1, 1, 0, 0, 31, 31, 30, 30, 29, 29, 28, 28, 27, 27);
    let m2 = _mm512_set1_epi8(3);
    let bit2 = _mm512_set1_epi8(4);
    let b = m.block(r, i);
    let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q3_k_scales_vec(b)));
    let scale = _mm512_mul_ps(_mm512_set1_ps(f16_at(b.add(108))), sc);
    let hm = _mm512_castsi256_si512(load256(b));
    let qs = load512(b.add(32));
    let mut wq = [_mm512_setzero_si512(); 4];
    for (r, wr) in wq.iter_mut().enumerate() {
        let rr = _mm512_set1_epi32(r as i32);
        let q2 = bit_pairs(qs, r);
        let h = _mm512_rolv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(hidx, rr), hm), hrot);
        // (q2 & 3) | (h & 4)
        *wr = _mm512_or_si512(_mm512_and_si512(q2, m2), _mm512_and_si512(h, bit2));
    }
    Unpacked6 { wq, scale }
}

/// Register `r`'s bit pairs of the 64 bytes `qs` (Q2_K's codes, Q3_K's low
/// two bits): lane `g` is qs word `8n + 4 (g % 2) + r` shifted down by `2k`
/// (`n = g / 8`, `k = (g % 8) / 2`), its bytes' other bits not yet masked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn bit_pairs(qs: __m512i, r: usize) -> __m512i {
    let idx = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 8, 12, 8, 12, 8, 12, 8, 12);
    let shift = _mm512_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6, 0, 0, 2, 2, 4, 4, 6, 6);
    _mm512_srlv_epi32(_mm512_permutexvar_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(r as i32)), qs), shift)
}
