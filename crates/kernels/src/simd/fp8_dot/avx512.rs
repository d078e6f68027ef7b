//! The AVX-512 part of the FP8 decode matvec: a row's codes in steps of 64
//! (one 64-byte load), widened through f16 as the AVX2 level does
//! ([`super::x86`]), which then takes the row's last `n % 64` codes.
//!
//! `vpunpck{l,h}bw` work within 128-bit lanes, so the 64 codes of a step
//! come out of the two unpacks and four f16 -> f32 conversions in the
//! column order [`ORDER`]; the block row's scaled activations are laid out
//! once in that order ([`lay_out`]), so the step needs no shuffle.
//!
//! On the Zen 5 VM (`examples/simd_gemv.rs fp8`, 1 thread, against the AVX2
//! level alternating): 21 -> 38 GB/s in L2; from DRAM 19.4-19.8 -> 25.1-25.7
//! with the AVX2 level's 1 KiB prefetch lead, and 31.9-32.3 with the ggml
//! rows' lead for the CPU ([`crate::simd::ggml_gemv_lead`], 8 KiB there; 2,
//! 4 and 16 KiB read 27.5-27.9, 30.9-32.1 and 27.7-30.0), which it takes.

use std::arch::x86_64::*;

use crate::simd::float_dot::x86::prefetch;

/// First column of each run of 8 in a step's converted vectors: the
/// unpacks' low halves hold codes 0-7 of each 16-byte lane, the high
/// halves 8-15.
const ORDER: [usize; 8] = [0, 16, 32, 48, 8, 24, 40, 56];

/// Rearranges each whole step of `xs[0..n]` into [`ORDER`].
///
/// # Safety
/// `xs` holds `n` floats.
pub(super) unsafe fn lay_out(xs: *mut f32, n: usize) {
    for step in 0..n / 64 {
        let p = xs.add(64 * step);
        let mut natural = [0.0f32; 64];
        std::ptr::copy_nonoverlapping(p, natural.as_mut_ptr(), 64);
        for (k, &c) in ORDER.iter().enumerate() {
            std::ptr::copy_nonoverlapping(natural.as_ptr().add(c), p.add(8 * k), 8);
        }
    }
}

/// The row's whole steps of 64 codes against `xs` (laid out by
/// [`lay_out`]), added into `acc` (four 8-lane sums) and the maximum of
/// `code & 0x7f` into `nan`, prefetching `lead` bytes ahead; returns the
/// first column left.
///
/// # Safety
/// The CPU runs AVX-512 F/BW/VL, AVX2, FMA and F16C; `row` holds `n` codes
/// and `xs` `n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn head(
    row: *const u8,
    xs: *const f32,
    n: usize,
    lead: usize,
    acc: &mut [__m256; 4],
    nan: &mut __m256i,
) -> usize {
    let zero = _mm512_setzero_si512();
    let low7 = _mm512_set1_epi8(0x7f);
    let sign_code = _mm512_set1_epi16(0xBF80u16 as i16);
    let mut sums = [_mm512_setzero_ps(); 4];
    let mut most = _mm512_setzero_si512();
    let mut i = 0;
    while i + 64 <= n {
        prefetch(row.add(i), lead);
        let v = _mm512_loadu_si512(row.add(i) as *const __m512i);
        most = _mm512_max_epu8(most, _mm512_and_si512(v, low7));
        // u16 lanes `code << 8`, made f16 as the AVX2 level's `to_f16` does.
        let lo = _mm512_and_si512(_mm512_srai_epi16::<1>(_mm512_unpacklo_epi8(zero, v)), sign_code);
        let hi = _mm512_and_si512(_mm512_srai_epi16::<1>(_mm512_unpackhi_epi8(zero, v)), sign_code);
        let f = [
            _mm512_cvtph_ps(_mm512_castsi512_si256(lo)),
            _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(lo)),
            _mm512_cvtph_ps(_mm512_castsi512_si256(hi)),
            _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(hi)),
        ];
        for (k, (sk, fk)) in sums.iter_mut().zip(f).enumerate() {
            *sk = _mm512_fmadd_ps(fk, _mm512_loadu_ps(xs.add(i + 16 * k)), *sk);
        }
        i += 64;
    }
    for (a, s) in acc.iter_mut().zip(sums) {
        *a = _mm256_add_ps(
            *a,
            _mm256_add_ps(
                _mm512_castps512_ps256(s),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))),
            ),
        );
    }
    let most = _mm256_max_epu8(_mm512_castsi512_si256(most), _mm512_extracti64x4_epi64::<1>(most));
    *nan = _mm256_max_epu8(*nan, most);
    i
}
