//! Four-byte-column layouts of the AVX2 many-token int8 kernels (ggml
//! k-quants and 32-value types in `ggml_dot/avx2/multi`, MLX affine 4-bit in
//! `affine_multi`): the transposes that give every u32 lane of a register
//! one block (or sub-block) throughout, and the per-(block, token) steps
//! ([`steps`]).

use std::arch::x86_64::*;

pub(crate) mod steps;

/// Eight rows of eight u32 to columns: register `i` of the result holds
/// element `i` of every row, row `k` in lane `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let (c04, c15, c26, c37) = transpose4(r[0], r[1], r[2], r[3]);
    let (d04, d15, d26, d37) = transpose4(r[4], r[5], r[6], r[7]);
    [
        _mm256_permute2x128_si256::<0x20>(c04, d04),
        _mm256_permute2x128_si256::<0x20>(c15, d15),
        _mm256_permute2x128_si256::<0x20>(c26, d26),
        _mm256_permute2x128_si256::<0x20>(c37, d37),
        _mm256_permute2x128_si256::<0x31>(c04, d04),
        _mm256_permute2x128_si256::<0x31>(c15, d15),
        _mm256_permute2x128_si256::<0x31>(c26, d26),
        _mm256_permute2x128_si256::<0x31>(c37, d37),
    ]
}

/// Four rows of eight u32 `a`, `b`, `c`, `d` to columns: `(c04, c15, c26,
/// c37)` where `cij` holds column `i` (`[a_i, b_i, c_i, d_i]`) in its low
/// 128 bits and column `j` in its high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn transpose4(
    a: __m256i,
    b: __m256i,
    c: __m256i,
    d: __m256i,
) -> (__m256i, __m256i, __m256i, __m256i) {
    let ab_lo = _mm256_unpacklo_epi32(a, b);
    let ab_hi = _mm256_unpackhi_epi32(a, b);
    let cd_lo = _mm256_unpacklo_epi32(c, d);
    let cd_hi = _mm256_unpackhi_epi32(c, d);
    (
        _mm256_unpacklo_epi64(ab_lo, cd_lo),
        _mm256_unpackhi_epi64(ab_lo, cd_lo),
        _mm256_unpacklo_epi64(ab_hi, cd_hi),
        _mm256_unpackhi_epi64(ab_hi, cd_hi),
    )
}
