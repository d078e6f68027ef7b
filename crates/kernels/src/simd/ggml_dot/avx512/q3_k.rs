//! Q3_K gemv at AVX-512 VNNI, the codes built in their value order.
//!
//! A Q3_K block is 32 bytes of high bits (`hmask`), 64 of bit pairs (`qs`),
//! 12 of packed 6-bit group scales and the f16 `d`. In half `n` of the
//! block, byte `l` of `qs[32n..]` holds in bit pair `k` the low two bits of
//! value `128n + 32k + l`, and bit `4n + k` of `hmask[l]` its third; the
//! code `q2 + 4h` (0..8) stands for `q2 + 4h - 4`. With the 32 bytes
//! broadcast to both halves of a register, one variable shift per 64-bit
//! lane lines up runs `k` and `k + 1` (bytes 0..32, 32..64), and one
//! variable rotate each byte's high bit: 64 codes in value order, which
//! meet the activations as they come. Each 128-bit lane of a `vpdpbusd` over
//! them is one 16-value group; its i32 lanes (at most `4 · 7 · 127`) pack
//! exactly into i16, and `vpdpwssd` multiplies them by their group scales;
//! the `- 4` comes off through the group sums (`4 Σ_g s_g B_g`). The AVX2
//! kernel runs eight 32-value runs a block through `vpmaddubsw` and
//! `vpmaddwd` with a scale shuffle each. `gemv_ggml` (Zen 4, 1 thread):
//! 9.5 -> 15.0 GB/s in L2 (`1024k`), 9.1-9.4 -> 14.0-14.3 from DRAM (`512`,
//! two alternations).

use std::arch::x86_64::*;

use super::super::avx2::q3_k_scales_vec;
use super::{f16_at, load256, load512, offset_groups, run_shifts};
use crate::simd::act::BlockQ8K;

/// Bytes of a Q3_K block.
pub(super) const TS: usize = 110;

/// The dot of one Q3_K row with `x`.
///
/// # Safety
/// `row` points at `x.len()` readable Q3_K blocks; the CPU runs this
/// function's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m2 = _mm512_set1_epi8(3);
    let bit2 = _mm512_set1_epi8(4);
    // Register `2n + p` holds runs `2p`, `2p + 1` of half `n`: their bit
    // pairs shifted down to bits 0, 1, and `hmask` bits `4n + 2p` and
    // `4n + 2p + 1` rotated to bit 2 (right by `bit - 2`, mod 64).
    let shift = run_shifts();
    let rot = |n: i64, p: i64| {
        let (b0, b1) = ((4 * n + 2 * p + 62) % 64, (4 * n + 2 * p + 63) % 64);
        _mm512_setr_epi64(b0, b0, b0, b0, b1, b1, b1, b1)
    };
    let rots = [rot(0, 0), rot(0, 1), rot(1, 0), rot(1, 1)];
    let mut acc = _mm512_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * TS);
        let xq = xb.qs.as_ptr() as *const u8;
        let hm = _mm512_broadcast_i64x4(load256(b));
        let mut r = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let qv = _mm512_broadcast_i64x4(load256(b.add(32 + 32 * n)));
            for p in 0..2 {
                let q2 = _mm512_and_si512(_mm512_srlv_epi64(qv, shift[p]), m2);
                // q2 | (h & 4)
                let code = _mm512_ternarylogic_epi32::<0xF8>(q2, _mm512_rorv_epi64(hm, rots[2 * n + p]), bit2);
                r[2 * n + p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), code, load512(xq.add(128 * n + 64 * p)));
            }
        }
        acc = offset_groups::<2>(acc, &r, q3_k_scales_vec(b), xb, f16_at(b.add(108)));
    }
    _mm512_reduce_add_ps(acc)
}
