//! Q2_K gemv at AVX-512 VNNI, the codes built in their value order.
//!
//! A Q2_K block is 16 scale bytes (group scale in the low nibble, group
//! min in the high), 64 bytes of bit pairs (`qs`), then the f16 `d` and
//! `dmin`. In half `n` of the block, byte `l` of `qs[32n..]` holds in bit
//! pair `k` value `128n + 32k + l`. With those 32 bytes broadcast to both
//! halves of a register, one variable shift per 64-bit lane lines up runs
//! `k` and `k + 1`: 64 codes in value order, against the activations as
//! they come, each 128-bit lane of a `vpdpbusd` one 16-value group. Its
//! i32 lanes (at most `4 · 3 · 127`) pack exactly into i16 for the scales'
//! `vpdpwssd`, and the mins meet the group sums in one `vpmaddwd`; the two
//! results share one conversion and one FMA (`[d, -dmin]` times the token's
//! `d`), as the Q4_K kernel's do. The AVX2 kernel takes eight 32-value runs
//! a block through `vpmaddubsw` and `vpmaddwd`. `gemv_ggml` (Zen 4, 1
//! thread): 12.0 -> 14.9 GB/s in L2 (`1024k`), 11.5-11.6 -> 13.4-13.7 from
//! DRAM (`512`, two alternations).

use std::arch::x86_64::*;

use super::{bsums, load256, load512, run_shifts, scaled_groups};
use crate::simd::act::BlockQ8K;

/// Bytes of a Q2_K block.
pub(super) const TS: usize = 84;

/// The dot of one Q2_K row with `x`.
///
/// # Safety
/// `row` points at `x.len()` readable Q2_K blocks; the CPU runs this
/// function's features.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m2 = _mm512_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0F);
    // Register `2n + p` holds runs `2p`, `2p + 1` of half `n`.
    let shift = run_shifts();
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let mut acc = _mm512_setzero_ps();
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * TS);
        let xq = xb.qs.as_ptr() as *const u8;
        let mut r = [_mm512_setzero_si512(); 4];
        for n in 0..2 {
            let qv = _mm512_broadcast_i64x4(load256(b.add(16 + 32 * n)));
            for p in 0..2 {
                let code = _mm512_and_si512(_mm512_srlv_epi64(qv, shift[p]), m2);
                r[2 * n + p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), code, load512(xq.add(128 * n + 64 * p)));
            }
        }
        let bytes = _mm_loadu_si128(b as *const __m128i);
        let sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(bytes, m4)));
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(bytes), m4));
        // Σ_g m_g B_g as eight pair sums.
        let summ = _mm256_madd_epi16(mins, bsums(xb));
        let s = scaled_groups(_mm512_setzero_si512(), &r, sc);
        // Lanes 0..8: the scaled code sums folded in half (d); 8..16: the mins' (-dmin).
        let s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(s8), summ);
        // [d, dmin] from the block's two f16 at once, times the token's d, dmin negated.
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128((b.add(80) as *const i32).read_unaligned()));
        let dd = _mm_xor_ps(_mm_mul_ps(dd, _mm_set1_ps(xb.d)), _mm_setr_ps(0.0, -0.0, 0.0, 0.0));
        let scale = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(dd));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(both), scale, acc);
    }
    _mm512_reduce_add_ps(acc)
}
