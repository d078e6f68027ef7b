//! TEMPORARY: the many-token kernels as of fa2b8d3 (Q4_K, Q5_K, Q6_K,
//! Q8_0), with the avx2.rs helpers they use, so that the example can time
//! old and new side by side in one process.
#![allow(dead_code, clippy::all)]

use std::arch::x86_64::*;

use qmoe_core::GgmlType;
use qmoe_kernels::simd::act::{BlockQ8K, BlockQ8x32};

const PREFETCH_BYTES: usize = 4096;

#[inline(always)]
fn scales_mins_k4(s: &[u8; 12]) -> (u64, u64) {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let a2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_hi = (a2 & LOW4) | ((a0 >> 6) & TOP2) << 4;
    let m_hi = ((a2 >> 4) & LOW4) | ((a1 >> 6) & TOP2) << 4;
    let scales = (a0 & LOW6) as u64 | (sc_hi as u64) << 32;
    let mins = (a1 & LOW6) as u64 | (m_hi as u64) << 32;
    (scales, mins)
}
/// The little-endian f16 at `p`, widened exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load128(p: *const u8) -> __m128i {
    _mm_loadu_si128(p as *const __m128i)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Signed codes `w` times signed `x`, pairs summed to i16 (`|w| ≤ 128`,
/// `|x| ≤ 127`: no saturation).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_i8(w: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// i16 pairs times i16 `s`, summed to 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn madd(p: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(p, s)
}

/// 16 nibbles of `q` widened: low nibbles in bytes 0..16, high in 16..32
/// (the 32-value block layout: value `j` low, value `j + 16` high).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn split_nibbles(q: __m128i) -> __m256i {
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
        _mm256_set1_epi8(0x0F),
    )
}

/// Byte `j` = 0xFF where bit `j` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn spread_bits(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of `bits`, then tests bit j % 8 of it.
    let pick = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let v = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), pick);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, mask), mask)
}

/// i16 vector `[s[a] × 8, s[b] × 8]` from 16 i8 `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_i8(s: __m128i, a: i64, b: i64) -> __m256i {
    const ONES: i64 = 0x0101_0101_0101_0101;
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, _mm_set_epi64x(b * ONES, a * ONES)))
}

/// Broadcast of i16 element `j` (0..8) of each 128-bit half of `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast_i16(s: __m256i, j: i16) -> __m256i {
    _mm256_shuffle_epi8(s, _mm256_set1_epi16(((2 * j + 1) << 8) | (2 * j)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_u8(w: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(w, x)
}

// Each `dot_*` below: # Safety: `row` points at `x.len()` readable blocks of

/// Q5 codes: nibbles with the fifth bit from the u32 at `b + at`; with
/// `signed`, minus 16 (bit clear: the byte's top nibble set, i.e. `q - 16`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_codes(b: *const u8, at: usize, qs_at: usize, signed: bool) -> __m256i {
    let q = split_nibbles(load128(b.add(qs_at)));
    let hi = spread_bits((b.add(at) as *const u32).read_unaligned());
    if signed {
        _mm256_or_si256(q, _mm256_andnot_si256(hi, _mm256_set1_epi8(0xF0u8 as i8)))
    } else {
        _mm256_or_si256(q, _mm256_and_si256(hi, _mm256_set1_epi8(0x10)))
    }
}

#[inline]

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsums(xb: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(xb.bsums.as_ptr() as *const __m256i)
}


/// Bits 0..2 of each byte of `h`, moved to bits 4..6.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn top2(h: __m256i) -> __m256i {
    _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(3)))
}

/// accumulators (8 registers) plus the codes and scales fit AVX2's 16.
pub(crate) const GROUP: usize = 4;

/// The group loop, expanded inside each `#[target_feature]` function so the
/// per-type dot (`#[inline]`, same features, const `N` tokens) is inlined.
/// `$dot::<N>(row, xs, nb) -> [f32; N]`: one row against `N` tokens' blocks.
macro_rules! groups {
    ($w:expr, $n_rows:expr, $x:expr, $n_tokens:expr, $y:expr, $stride:expr, $ts:expr, $dot:ident) => {{
        let (w, n_rows, x, n_tokens, y, stride): (&[u8], usize, &[_], usize, *mut f32, usize) =
            ($w, $n_rows, $x, $n_tokens, $y, $stride);
        let nb = x.len() / n_tokens;
        let row_bytes = nb * $ts;
        let base = w.as_ptr();
        let mut t0 = 0;
        while t0 < n_tokens {
            let n = (n_tokens - t0).min(GROUP);
            // Only the first group reads the rows from memory: prefetch for it.
            let prefetch = t0 == 0;
            match n {
                4 => groups!(@run 4, base, n_rows, row_bytes, x, nb, t0, y, stride, prefetch, w.len(), $dot),
                3 => groups!(@run 3, base, n_rows, row_bytes, x, nb, t0, y, stride, prefetch, w.len(), $dot),
                2 => groups!(@run 2, base, n_rows, row_bytes, x, nb, t0, y, stride, prefetch, w.len(), $dot),
                _ => groups!(@run 1, base, n_rows, row_bytes, x, nb, t0, y, stride, prefetch, w.len(), $dot),
            }
            t0 += n;
        }
    }};
    (@run $n:literal, $base:expr, $n_rows:expr, $row_bytes:expr, $x:expr, $nb:expr, $t0:expr, $y:expr,
     $stride:expr, $prefetch:expr, $len:expr, $dot:ident) => {{
        let xs: [*const _; $n] = std::array::from_fn(|t| $x.as_ptr().add(($t0 + t) * $nb));
        let mut fetched = 0;
        for r in 0..$n_rows {
            if $prefetch {
                let until = ((r + 1) * $row_bytes + PREFETCH_BYTES).min($len);
                while fetched < until {
                    _mm_prefetch::<_MM_HINT_T0>($base.add(fetched) as *const i8);
                    fetched += 64;
                }
            }
            let out = $dot::<$n>($base.add(r * $row_bytes), xs, $nb);
            for (t, v) in out.into_iter().enumerate() {
                *$y.add(($t0 + t) * $stride + r) = v;
            }
        }
    }};
}

/// # Safety
/// The CPU runs AVX2, FMA and F16C; `ty` takes Q8K activations; `x` holds
/// `n_tokens >= 1` rows of `nb` blocks; `w` is exactly `n_rows` rows of `nb`
/// blocks of `ty`; `y` is valid for writes at `t * y_stride + r` for every
/// `t < n_tokens`, `r < n_rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q8k(ty: GgmlType, w: &[u8], n_rows: usize, x: &[BlockQ8K], n_tokens: usize, y: *mut f32, y_stride: usize) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q4K => groups!(w, n_rows, x, n_tokens, y, y_stride, 144, dot_q4_k),
        GgmlType::Q5K => groups!(w, n_rows, x, n_tokens, y, y_stride, 176, dot_q5_k),
        GgmlType::Q6K => groups!(w, n_rows, x, n_tokens, y, y_stride, 210, dot_q6_k),
        _ => unreachable!("gemm_q8k: {ty} (checked by the caller)"),
    }
}

/// # Safety
/// As [`gemm_q8k`], for a type taking Q8x32 activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q8x32(ty: GgmlType, w: &[u8], n_rows: usize, x: &[BlockQ8x32], n_tokens: usize, y: *mut f32, y_stride: usize) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    match ty {
        GgmlType::Q8_0 => groups!(w, n_rows, x, n_tokens, y, y_stride, 34, dot_q8_0),
        _ => unreachable!("gemm_q8x32: {ty} (checked by the caller)"),
    }
}

// Each `dot_*` below: # Safety: `row` points at `nb` readable blocks of the
// type, each `xs[t]` at `nb` activation blocks, and the CPU runs AVX2 + FMA
// + F16C.
macro_rules! dot32 {
    ($row:expr, $xs:expr, $nb:expr, $ts:expr, |$b:ident| $codes:expr, $signed:expr, $m:expr) => {{
        let (row, xs, nb): (*const u8, [*const BlockQ8x32; N], usize) = ($row, $xs, $nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offs = [0.0f32; N];
        for i in 0..nb {
            let $b = row.add(i * $ts);
            let q = $codes;
            let d = f16_at($b);
            let m: Option<f32> = $m;
            let aq = if $signed { _mm256_sign_epi8(q, q) } else { q };
            for t in 0..N {
                let xb = &*xs[t].add(i);
                let xv = load256(xb.qs.as_ptr() as *const u8);
                let xv = if $signed { _mm256_sign_epi8(xv, q) } else { xv };
                let p = madd(_mm256_maddubs_epi16(aq, xv), ones);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[t]);
                if let Some(m) = m {
                    offs[t] += m * xb.sum;
                }
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) + offs[t])
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0<const N: usize>(row: *const u8, xs: [*const BlockQ8x32; N], nb: usize) -> [f32; N] {
    dot32!(row, xs, nb, 34, |b| load256(b.add(2)), true, None)
}

/// Q4_K / Q5_K: the codes of each pair of sub-blocks unpacked once, then
/// every token's 64 activations against them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q45_k<const FIVE: bool, const N: usize>(row: *const u8, xs: [*const BlockQ8K; N], nb: usize) -> [f32; N] {
    let (ts, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = row.add(i * ts);
        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
        let (sc, m) = scales_mins_k4(&*(b.add(4) as *const [u8; 12]));
        // Mins: [m0, m0, m1, m1, ..] as i16 against the 16 group sums.
        let m8 = _mm_cvtsi64_si128(m as i64);
        let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
        let sc = _mm256_set_m128i(sc16, sc16);
        let qh = if FIVE { load256(b.add(16)) } else { _mm256_setzero_si256() };
        let mut sumi = [_mm256_setzero_si256(); N];
        for p in 0..4 {
            let q = load256(b.add(qs_at + 32 * p));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if FIVE {
                // Bit 2p of qh[l] tops value l of sub-block 2p, bit 2p + 1 of 2p + 1.
                let hl = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32)), one);
                let hh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32 + 1)), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hl));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(hh));
            }
            let j = 2 * p as i16;
            let (s_lo, s_hi) = (bcast_i16(sc, j), bcast_i16(sc, j + 1));
            for t in 0..N {
                let xq = (*xs[t].add(i)).qs.as_ptr() as *const u8;
                let plo = mul_u8(lo, load256(xq.add(64 * p)));
                let phi = mul_u8(hi, load256(xq.add(64 * p + 32)));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(madd(plo, s_lo), madd(phi, s_hi)));
            }
        }
        for t in 0..N {
            let xb = &*xs[t].add(i);
            let summ = madd(mins, bsums(xb));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * xb.d), _mm256_cvtepi32_ps(summ), acc[t]);
        }
    }
    acc.map(|a| hsum(a))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k<const N: usize>(row: *const u8, xs: [*const BlockQ8K; N], nb: usize) -> [f32; N] {
    dot_q45_k::<false, N>(row, xs, nb)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_k<const N: usize>(row: *const u8, xs: [*const BlockQ8K; N], nb: usize) -> [f32; N] {
    dot_q45_k::<true, N>(row, xs, nb)
}

/// Q6_K: each 32-value run of 6-bit codes assembled once, then every
/// token's activations against it; the `- 32` through the group sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k<const N: usize>(row: *const u8, xs: [*const BlockQ8K; N], nb: usize) -> [f32; N] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..nb {
        let b = row.add(i * 210);
        let d = f16_at(b.add(208));
        let sc = load128(b.add(192));
        let mut sumi = [_mm256_setzero_si256(); N];
        for n in 0..2 {
            let ql0 = load256(b.add(64 * n));
            let ql1 = load256(b.add(64 * n + 32));
            let qh = load256(b.add(128 + 32 * n));
            for k in 0..4 {
                let q = match k {
                    0 => _mm256_or_si256(_mm256_and_si256(ql0, m4), top2(qh)),
                    1 => _mm256_or_si256(_mm256_and_si256(ql1, m4), top2(_mm256_srli_epi16::<2>(qh))),
                    2 => _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        top2(_mm256_srli_epi16::<4>(qh)),
                    ),
                    _ => _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        top2(_mm256_srli_epi16::<6>(qh)),
                    ),
                };
                let g = (8 * n + 2 * k) as i64;
                let s = pair_i8(sc, g, g + 1);
                for t in 0..N {
                    let xq = (*xs[t].add(i)).qs.as_ptr() as *const u8;
                    let p = mul_u8(q, load256(xq.add(128 * n + 32 * k)));
                    sumi[t] = _mm256_add_epi32(sumi[t], madd(p, s));
                }
            }
        }
        let sc16 = _mm256_cvtepi8_epi16(sc);
        for t in 0..N {
            let xb = &*xs[t].add(i);
            let offs = madd(sc16, bsums(xb));
            let s = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32::<5>(offs));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(s), acc[t]);
        }
    }
    acc.map(|a| hsum(a))
}

