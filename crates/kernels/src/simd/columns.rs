//! Four-byte-column layouts of the AVX2 many-token int8 kernels (ggml
//! k-quants and 32-value types in `ggml_dot/avx2/multi`, MLX affine 4- and
//! 8-bit in `affine_multi`): the transposes that give every u32 lane of a
//! register one block (or sub-block) throughout, and the per-(block, token)
//! steps ([`steps`]).

use std::arch::x86_64::*;

use crate::simd::act::BlockQ8x32;

pub(crate) mod steps;
pub(crate) mod unpacked;

/// Most bytes of one token group's prepared activations for one column
/// chunk, so that the activations every row of the run reads stay in L1
/// (32 KB on the x86 cores of the day, beside the weight units passing
/// through): a group that would pass it takes four tokens instead of eight,
/// and rows wider still run in column chunks (partial sums added in the
/// output). Measured on Zen 3 with `examples/prefill_gemm.rs --shape
/// 512x4096` (6 alternations, best/mean GFLOP/s through the driver): Q4_K's
/// 45 KB per group of 8 tokens as two chunks 150.7/114.5 against
/// 113.7/99.6 as one. On Zen 4, 24 KB with the smaller groups against 40 KB
/// (`--shape 2048x4096`, 64 tokens, 3 alternations, mean): q8_0 127.1 ->
/// 176.9, q6k 163.6 -> 200.1, a4 144.3 -> 192.1, a8 77.1 -> 101.7, q4k
/// and q3k unchanged, and at the AVX2 level q6k 124.9 -> 140.7, q8_0 96.6
/// -> 109.0; `[512 x 2048]` and `[2048 x 512]` unchanged.
pub(crate) const L1_ACTS: usize = 24 << 10;

/// Column chunks of at most [`L1_ACTS`] bytes of activations for `units`
/// units of `unit_bytes` each (all tokens of a group): the units per chunk.
pub(crate) fn chunk_units(units: usize, unit_bytes: usize) -> usize {
    let chunks = (units * unit_bytes).div_ceil(L1_ACTS).max(1);
    units.div_ceil(chunks).max(1)
}

/// One f32 field `f` of up to eight activation blocks as eight lanes, lane
/// `k` from block `order[k]` (zero where the run has no such block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn block_lanes(blocks: &[BlockQ8x32], order: [usize; 8], f: fn(&BlockQ8x32) -> f32) -> __m256 {
    let v: [f32; 8] = order.map(|j| blocks.get(j).map_or(0.0, f));
    _mm256_loadu_ps(v.as_ptr())
}

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

/// Blocks in the 512-bit kernels' units: one per i32 lane.
pub(crate) const BLOCKS16: usize = 16;

/// As [`block_lanes`], for up to sixteen blocks in their order (lane `k`
/// from block `k`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn block_lanes16(blocks: &[BlockQ8x32], f: fn(&BlockQ8x32) -> f32) -> __m512 {
    let v: [f32; BLOCKS16] = std::array::from_fn(|k| blocks.get(k).map_or(0.0, f));
    _mm512_loadu_ps(v.as_ptr())
}

/// Sixteen blocks' eight u32 each (`b[k]` block `k`) to columns: register
/// `r`, lane `k` = word `r` of block `k`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn columns16(b: &[__m256i; BLOCKS16]) -> [__m512i; 8] {
    let pair = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    // A 4 x 4 transpose in every 128-bit lane: row `i` of lane `l` in, column
    // `i` of lane `l` out.
    let t4 = |a: __m512i, b: __m512i, c: __m512i, d: __m512i| {
        let (ab_lo, ab_hi) = (_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        let (cd_lo, cd_hi) = (_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
        [
            _mm512_unpacklo_epi64(ab_lo, cd_lo),
            _mm512_unpackhi_epi64(ab_lo, cd_lo),
            _mm512_unpacklo_epi64(ab_hi, cd_hi),
            _mm512_unpackhi_epi64(ab_hi, cd_hi),
        ]
    };
    // Register `k` of the first transpose is blocks `k` and `k + 4` (lanes
    // 0, 1: words 0..4 and 4..8 of block `k`; lanes 2, 3: of block `k + 4`),
    // so its output `j` holds word `j` of blocks 0..4 in lane 0, word `j + 4`
    // in lane 1, and the same of blocks 4..8 in lanes 2, 3. The second takes
    // blocks 8..16 alike.
    let c = t4(pair(b[0], b[4]), pair(b[1], b[5]), pair(b[2], b[6]), pair(b[3], b[7]));
    let d = t4(pair(b[8], b[12]), pair(b[9], b[13]), pair(b[10], b[14]), pair(b[11], b[15]));
    let mut out = [_mm512_setzero_si512(); 8];
    for j in 0..4 {
        // Lanes 0 and 2 of each (word `j`), then lanes 1 and 3 (word `j + 4`).
        out[j] = _mm512_shuffle_i64x2::<0b10_00_10_00>(c[j], d[j]);
        out[j + 4] = _mm512_shuffle_i64x2::<0b11_01_11_01>(c[j], d[j]);
    }
    out
}
