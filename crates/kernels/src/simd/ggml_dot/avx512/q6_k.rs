//! Q6_K gemv at AVX-512 VNNI, the codes built in their value order.
//!
//! A Q6_K block is 128 bytes of low nibbles (`ql`), 64 of bit pairs (`qh`),
//! sixteen i8 group scales and the f16 `d`. In half `n` of the block,
//! value `128n + 32k + l` (`k` 0..4, `l` 0..32) is nibble `k / 2` of
//! `ql[64n + 32 (k % 2) + l]` topped by bit pair `k` of `qh[32n + l]`; the
//! code (0..64) stands for `code - 32`. So 64 bytes of `ql` are runs 0 and 1
//! of a half in their low nibbles and runs 2 and 3 in their high, and the
//! half's 32 bytes of `qh`, broadcast to both halves of a register, give
//! the matching bit pairs through one variable shift per 64-bit lane: 64
//! codes in value order, which meet the activations as they come. Each
//! 128-bit lane of a `vpdpbusd` over them is one 16-value group; its i32
//! lanes (at most `4 · 63 · 128`) pack exactly into i16, and `vpdpwssd`
//! multiplies them by their group scales, and the `- 32` comes off through
//! the group sums (`32 Σ_g s_g B_g`): Q3_K's block step ([`offset_groups`]).
//!
//! The AVX2 kernel ran at this level before: eight 32-value runs a block
//! through `vpmaddubsw` and `vpmaddwd`, with a scale shuffle each. On a Zen
//! 4 (512-bit operations split in two) this kernel was faster in L2 but not
//! from DRAM, so it was not kept (see `avx512.rs`); Zen 5 runs 512-bit
//! operations whole, and there it pays (README, "How the CPU path is fast").

use std::arch::x86_64::*;

use super::{f16_at, load256, load512, offset_groups};
use crate::simd::act::BlockQ8K;

/// Bytes of a Q6_K block.
pub(super) const TS: usize = 210;

/// The dot of one Q6_K row with `x`.
///
/// # Safety
/// `row` points at `x.len()` readable Q6_K blocks; the CPU runs this
/// function's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m4 = _mm512_set1_epi8(0x0F);
    let top = _mm512_set1_epi8(0x30);
    // Bit pairs 0 (bytes 0..32) and 1 (32..64) up to bits 4, 5 for the low
    // nibbles' runs; pairs 2 and 3 for the high nibbles' (pair 2 is there).
    let up_low = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2);
    let down_high = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    let mut acc = _mm512_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * TS);
        let xq = xb.qs.as_ptr() as *const u8;
        let mut r = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let ql = load512(b.add(64 * n));
            let qh = _mm512_broadcast_i64x4(load256(b.add(128 + 32 * n)));
            let h_low = _mm512_and_si512(_mm512_sllv_epi64(qh, up_low), top);
            let h_high = _mm512_and_si512(_mm512_srlv_epi64(qh, down_high), top);
            // (ql & 0x0F) | h and ((ql >> 4) & 0x0F) | h: h has only bits 4, 5.
            let low = _mm512_ternarylogic_epi32::<0xEC>(ql, h_low, m4);
            let high = _mm512_ternarylogic_epi32::<0xEC>(_mm512_srli_epi16::<4>(ql), h_high, m4);
            for (k, code) in [low, high].into_iter().enumerate() {
                r[2 * n + k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), code, load512(xq.add(128 * n + 64 * k)));
            }
        }
        let sc = _mm_loadu_si128(b.add(192) as *const __m128i);
        acc = offset_groups::<5>(acc, &r, sc, xb, f16_at(b.add(208)));
    }
    _mm512_reduce_add_ps(acc)
}
