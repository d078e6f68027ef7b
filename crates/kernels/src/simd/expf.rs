//! A vectorised `e^x` shared by the kernels that need many exponentials
//! (the GDN conv's SiLU, the attention softmax): libm's `expf` one lane at a
//! time costs more than the arithmetic around it.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `e^x` lane-wise: `2^n * p(r)` with `x = n ln2 + r`, `|r| <= ln2/2`,
/// `p` the degree-7 Taylor polynomial (truncation < 6e-9 relative), `x`
/// clamped to `[-87, 88]` so `2^n` stays a normal float (so `e^x` never
/// returns 0: callers that need exact zeros mask them themselves). Within
/// 2 ulp of libm's `expf`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn exp_avx2(x: __m256) -> __m256 {
    unsafe {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // ln 2 split in a part exact in 16 bits and the rest, so n * hi
        // is exact and r keeps its low bits.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let c = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
        let mut p = _mm256_set1_ps(c[0]);
        for &ci in &c[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(ci));
        }
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
    }
}
