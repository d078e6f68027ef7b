//! Many-token products of MLX affine weights with int8 activations (prefill).
//!
//! `y[t * y_stride + i] = dot(row rows.start + i, x[t])` with `x` holding
//! `n_tokens` tokens' [`BlockQ8x32`] blocks one after the other. The math is
//! [`super::affine_dot`]'s: per 32-block an exact integer dot `Σ q_i qs_i`,
//! scaled by `d_b · scale_g`, plus `bias_g` times the group's exact input sum.
//!
//! The AVX2 level (4- and 8-bit) reads each weight block once per group of
//! up to [`GROUP`] tokens and multiplies it with every token of the group.
//! 4-bit with an even number of blocks per group (mlx's 64 and 128): each
//! token's activations are first rearranged to the nibble layout (as
//! [`super::affine_dot`] does per pass), so two blocks' weights are one
//! 32-byte load split into low and high nibbles, and the bias term is one
//! vector dot of the row's biases with the token's group sums. Other 4-bit
//! groups: nibbles interleaved back to natural order per block. 8-bit: weight
//! bytes and (once per token group) activation codes widened to i16, since
//! `255 · 127 · 2` would saturate `maddubs`. Token groups
//! run outside, rows inside: the driver's run of rows stays in L2 for every
//! group after the first. Other widths run the single-token kernel per token.
//!
//! The scalar twin is the single-token scalar kernel per token: the same
//! integer block sums, so the levels (and the per-token kernels) agree to
//! float rounding.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use crate::linear::Encoding;
use crate::linear::MatRef;
use crate::simd::act::BlockQ8x32;
use crate::simd::affine_dot::{gemv_affine, supports_affine};
use crate::simd::Level;

/// Tokens per weight-block unpacking (as the ggml kernels).
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 4;

/// Whether the many-token kernel is worth taking for `bits`-bit weights in
/// groups of `group_size` (4 and 8 bits: the MLX releases' widths).
pub fn has_multi(bits: u32, group_size: usize) -> bool {
    matches!(bits, 4 | 8) && supports_affine(bits, group_size)
}

/// `y[t * y_stride + i] = dot(row rows.start + i, x[t])` for `i < rows.len()`,
/// `t < n_tokens`; `x` `[n_tokens, w.cols / 32]` blocks.
///
/// # Panics
/// If `w` is not an affine matrix [`supports_affine`] takes, or the lengths
/// do not match the shapes.
pub fn gemm_affine(
    level: Level,
    w: &MatRef,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: &mut [f32],
    y_stride: usize,
) {
    let n_rows = rows.len();
    if n_rows > 0 && n_tokens > 0 {
        assert!(n_tokens == 1 || y_stride >= n_rows, "gemm_affine: stride {y_stride} < {n_rows} rows");
        let need = (n_tokens - 1).checked_mul(y_stride).and_then(|v| v.checked_add(n_rows));
        assert!(need.is_some_and(|n| n <= y.len()), "gemm_affine: y of {} for {n_tokens} tokens", y.len());
    }
    // SAFETY: every `t * y_stride + i` lies inside `y` (checked just above).
    unsafe { gemm_affine_raw(level, w, rows, x, n_tokens, y.as_mut_ptr(), y_stride) }
}

/// [`gemm_affine`] into a raw output, so that threads can fill disjoint rows
/// of one product.
///
/// # Safety
/// `y` is valid for writes at `t * y_stride + i` for every `t < n_tokens`,
/// `i < rows.len()`, and nothing else accesses those elements during the call.
pub(crate) unsafe fn gemm_affine_raw(
    level: Level,
    w: &MatRef,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    y: *mut f32,
    y_stride: usize,
) {
    let nb = w.cols / 32;
    assert_eq!(x.len(), n_tokens * nb, "gemm_affine: {} blocks for {n_tokens} tokens of {} columns", x.len(), w.cols);
    assert!(rows.start <= rows.end && rows.end <= w.rows, "gemm_affine: rows {rows:?} of {}", w.rows);
    if n_tokens == 0 || rows.is_empty() {
        return;
    }
    // The single-token kernel's checks of `w` against its shape and of the
    // activation blocks, on no rows.
    gemv_affine(Level::Scalar, w, rows.start..rows.start, &x[..nb], &mut []);
    let per_token = |t: usize, level: Level| {
        // SAFETY: the caller's contract covers `t * y_stride + 0 .. rows.len()`.
        let yt = unsafe { std::slice::from_raw_parts_mut(y.add(t * y_stride), rows.len()) };
        gemv_affine(level, w, rows.clone(), &x[t * nb..(t + 1) * nb], yt);
    };
    #[cfg(target_arch = "x86_64")]
    if level != Level::Scalar {
        if let Encoding::Affine { bits: bits @ (4 | 8), group_size, scales, biases, scale_dtype } = w.enc {
            assert!(crate::simd::float_dot::x86::available(), "gemm_affine: AVX2 level on a CPU without AVX2/FMA/F16C");
            let m = x86::Mat {
                words: w.bytes,
                row_bytes: w.cols * bits as usize / 8,
                scales,
                biases,
                dt: scale_dtype,
                groups: w.cols / group_size,
                per_group: group_size / 32,
            };
            // SAFETY: the CPU runs AVX2 + FMA + F16C (checked just above);
            // the shapes of `w` were checked by `gemv_affine` and `MatRef`,
            // `rows` lies inside it, `x` holds `n_tokens` rows of `nb`
            // blocks; `y` is the caller's contract.
            unsafe {
                if bits == 4 {
                    x86::run::<4>(&m, rows, x, n_tokens, y, y_stride)
                } else {
                    x86::run::<8>(&m, rows, x, n_tokens, y, y_stride)
                }
            }
            return;
        }
    }
    for t in 0..n_tokens {
        per_token(t, level);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::ops::Range;

    use qmoe_core::dtype::DType;

    use super::GROUP;
    use crate::simd::act::BlockQ8x32;
    use crate::simd::float_dot::x86::hsum;

    /// Bytes of the weight stream prefetched ahead of the row being read
    /// (as the ggml kernels), in the first token group only.
    const PREFETCH_BYTES: usize = 4096;

    /// A checked affine matrix.
    pub(super) struct Mat<'a> {
        /// `[rows, row_bytes]` packed codes.
        pub words: &'a [u8],
        pub row_bytes: usize,
        /// `[rows, groups]` each, of `dt`.
        pub scales: &'a [u8],
        pub biases: &'a [u8],
        pub dt: DType,
        pub groups: usize,
        /// 32-blocks per group.
        pub per_group: usize,
    }

    /// # Safety
    /// AVX2 + FMA + F16C; `m` checked against its shape with `B` bits,
    /// `rows` inside it, `x` `n_tokens` rows of `cols / 32` blocks, `y`
    /// valid for writes at `t * y_stride + i`, `i < rows.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run<const B: usize>(
        m: &Mat,
        rows: Range<usize>,
        x: &[BlockQ8x32],
        n_tokens: usize,
        y: *mut f32,
        y_stride: usize,
    ) {
        let nb = m.groups * m.per_group;
        let mut t0 = 0;
        while t0 < n_tokens {
            let n = (n_tokens - t0).min(GROUP);
            let first = t0 == 0;
            // SAFETY (each arm): the contract above; tokens t0 .. t0 + n exist.
            match n {
                4 => group::<B, 4>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
                3 => group::<B, 3>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
                2 => group::<B, 2>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
                _ => group::<B, 1>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
            }
            t0 += n;
        }
    }

    /// Every row of `rows` against `N` tokens (`x` their blocks, `nb` per
    /// token), into `y[t * y_stride + i]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group<const B: usize, const N: usize>(
        m: &Mat,
        rows: Range<usize>,
        x: *const BlockQ8x32,
        nb: usize,
        y: *mut f32,
        y_stride: usize,
        prefetch: bool,
    ) {
        let xs: [*const BlockQ8x32; N] = std::array::from_fn(|t| x.add(t * nb));
        // Prepared layouts: 4-bit pairs (an even number of blocks per group) or 8-bit widened codes.
        let wide = B == 8;
        if wide || (B == 4 && m.per_group.is_multiple_of(2)) {
            let per_token = if wide { 3 * nb } else { 3 * (nb / 2) };
            PAIRS.with(|pairs| {
                GSUM.with(|gsum| {
                    let (mut pairs, mut gsum) = (pairs.borrow_mut(), gsum.borrow_mut());
                    let gpad = m.groups.next_multiple_of(8);
                    pairs.resize(N * per_token, _mm256_setzero_si256());
                    gsum.resize(N * gpad, 0.0);
                    for t in 0..N {
                        let (pt, gt) = (&mut pairs[t * per_token..][..per_token], &mut gsum[t * gpad..][..gpad]);
                        if wide {
                            prepare_wide(m, xs[t], pt, gt)
                        } else {
                            prepare_pairs(m, xs[t], pt, gt)
                        }
                    }
                    let base = m.words.as_ptr();
                    let mut fetched = rows.start * m.row_bytes;
                    for (i, r) in rows.clone().enumerate() {
                        if prefetch {
                            let until = ((r + 1) * m.row_bytes + PREFETCH_BYTES).min(m.words.len());
                            while fetched < until {
                                _mm_prefetch::<_MM_HINT_T0>(base.add(fetched) as *const i8);
                                fetched += 64;
                            }
                        }
                        let out = if wide {
                            row_prepared::<N, true>(m, r, &pairs, &gsum, gpad)
                        } else {
                            row_prepared::<N, false>(m, r, &pairs, &gsum, gpad)
                        };
                        for (t, v) in out.into_iter().enumerate() {
                            *y.add(t * y_stride + i) = v;
                        }
                    }
                })
            });
            return;
        }
        let base = m.words.as_ptr();
        let len = m.words.len();
        let mut fetched = rows.start * m.row_bytes;
        for (i, r) in rows.enumerate() {
            if prefetch {
                let until = ((r + 1) * m.row_bytes + PREFETCH_BYTES).min(len);
                while fetched < until {
                    _mm_prefetch::<_MM_HINT_T0>(base.add(fetched) as *const i8);
                    fetched += 64;
                }
            }
            let out = row_single4::<N>(m, r, xs);
            for (t, v) in out.into_iter().enumerate() {
                *y.add(t * y_stride + i) = v;
            }
        }
    }

    thread_local! {
        /// A token group's prepared activations (grow-only per worker). 4-bit
        /// pairs, per token `[nb / 2][3]`: even-indexed codes of blocks
        /// `2p, 2p + 1`, their odd-indexed codes, `[d_2p ×4, d_2p+1 ×4]`;
        /// 8-bit, per token `[nb][3]`: codes 0..16 and 16..32 as i16, `d ×8`.
        static PAIRS: RefCell<Vec<__m256i>> = const { RefCell::new(Vec::new()) };
        /// Per token: the exact input sum of each group, zero-padded to 8.
        static GSUM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// Rearranges one token's blocks `x` (`groups * per_group`, an even
    /// number per group) into `pairs` and its group sums into `gsum`, so
    /// that a 32-byte load of two blocks' weights meets them with no
    /// shuffles: its low nibbles are the blocks' even-indexed values, its
    /// high nibbles the odd-indexed ones (one block per 128-bit lane).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare_pairs(m: &Mat, x: *const BlockQ8x32, pairs: &mut [__m256i], gsum: &mut [f32]) {
        // Per 128-bit lane: the 8 even-indexed bytes, then the 8 odd ones.
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, //
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        );
        // Block k's codes as [evens 0..32 | odds 0..32] (16 bytes each).
        let evens_odds = |k: usize| {
            let v = _mm256_loadu_si256((*x.add(k)).qs.as_ptr() as *const __m256i);
            _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split))
        };
        for (p, out) in pairs.chunks_exact_mut(3).enumerate() {
            let (a, b) = (evens_odds(2 * p), evens_odds(2 * p + 1));
            out[0] = _mm256_permute2x128_si256::<0x20>(a, b);
            out[1] = _mm256_permute2x128_si256::<0x31>(a, b);
            let (d0, d1) = ((*x.add(2 * p)).d, (*x.add(2 * p + 1)).d);
            out[2] = _mm256_castps_si256(_mm256_set_m128(_mm_set1_ps(d1), _mm_set1_ps(d0)));
        }
        group_sums(m, x, gsum);
    }

    /// 8-bit: one token's blocks `x` as `[nb][3]`: codes 0..16 and 16..32
    /// widened to i16, `d` broadcast; group sums into `gsum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare_wide(m: &Mat, x: *const BlockQ8x32, prep: &mut [__m256i], gsum: &mut [f32]) {
        for (k, out) in prep.chunks_exact_mut(3).enumerate() {
            let b = &*x.add(k);
            out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr() as *const __m128i));
            out[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr().add(16) as *const __m128i));
            out[2] = _mm256_castps_si256(_mm256_set1_ps(b.d));
        }
        group_sums(m, x, gsum);
    }

    /// The exact input sum of each group, zero-padded.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group_sums(m: &Mat, x: *const BlockQ8x32, gsum: &mut [f32]) {
        gsum.fill(0.0);
        for (g, s) in gsum.iter_mut().take(m.groups).enumerate() {
            for k in g * m.per_group..(g + 1) * m.per_group {
                *s += (*x.add(k)).sum;
            }
        }
    }

    /// `n <= 8` floats of `dt` from element `i` of `p`, zero-padded to 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(dt: DType, p: *const u8, i: usize, n: usize) -> __m256 {
        let es = dt.size();
        let mut pad = [0u8; 32];
        let src = if n == 8 {
            p.add(i * es)
        } else {
            std::ptr::copy_nonoverlapping(p.add(i * es), pad.as_mut_ptr(), n * es);
            pad.as_ptr()
        };
        match dt {
            DType::F32 => _mm256_loadu_ps(src as *const f32),
            DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(src as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                src as *const __m128i,
            )))),
        }
    }

    /// Row `r` against the `N` tokens prepared in `pairs` / `gsum` (`gpad`
    /// sums per token). 4-bit (`WIDE` false): per pair of blocks the weights
    /// loaded and split into nibbles once, each token two `maddubs` on its
    /// prepared codes. 8-bit: per block the weights widened to i16 once,
    /// each token two `madd` on its widened codes. The bias term: one vector
    /// dot of the row's biases with each token's group sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_prepared<const N: usize, const WIDE: bool>(
        m: &Mat,
        r: usize,
        pairs: &[__m256i],
        gsum: &[f32],
        gpad: usize,
    ) -> [f32; N] {
        let words = m.words.as_ptr().add(r * m.row_bytes);
        let srow = m.scales.as_ptr().add(r * m.groups * m.dt.size());
        let brow = m.biases.as_ptr().add(r * m.groups * m.dt.size());
        let nb = m.groups * m.per_group;
        let per_token = if WIDE { 3 * nb } else { 3 * (nb / 2) };
        assert!(pairs.len() >= N * per_token && gsum.len() >= N * gpad);
        let pp = pairs.as_ptr();
        let nib = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // Units per group: pairs of blocks (4-bit) or blocks (8-bit).
        let per_group = if WIDE { m.per_group } else { m.per_group / 2 };
        let mut lanes = [_mm256_setzero_ps(); N];
        for g in 0..m.groups {
            let sc = _mm256_set1_ps(float_at(m.dt, srow, g));
            for p in g * per_group..(g + 1) * per_group {
                let (a, b) = if WIDE {
                    let w = words.add(32 * p) as *const __m128i;
                    (_mm256_cvtepu8_epi16(_mm_loadu_si128(w)), _mm256_cvtepu8_epi16(_mm_loadu_si128(w.add(1))))
                } else {
                    let v = _mm256_loadu_si256(words.add(32 * p) as *const __m256i);
                    (_mm256_and_si256(v, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib))
                };
                for (t, lane) in lanes.iter_mut().enumerate() {
                    let x = pp.add(t * per_token + 3 * p);
                    let s = if WIDE {
                        _mm256_add_epi32(_mm256_madd_epi16(a, *x), _mm256_madd_epi16(b, *x.add(1)))
                    } else {
                        // |each maddubs lane| <= 2 * 15 * 127: the i16 add cannot overflow.
                        let s = _mm256_add_epi16(_mm256_maddubs_epi16(a, *x), _mm256_maddubs_epi16(b, *x.add(1)));
                        _mm256_madd_epi16(s, ones)
                    };
                    *lane = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(s),
                        _mm256_mul_ps(_mm256_castsi256_ps(*x.add(2)), sc),
                        *lane,
                    );
                }
            }
        }
        // Bias term: Σ_g bias_g · gsum_g, 8 groups at a time.
        let mut bsum = [_mm256_setzero_ps(); N];
        let mut g = 0;
        while g < m.groups {
            let n = (m.groups - g).min(8);
            let b = load8(m.dt, brow, g, n);
            for (t, acc) in bsum.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(b, _mm256_loadu_ps(gsum.as_ptr().add(t * gpad + g)), *acc);
            }
            g += n;
        }
        std::array::from_fn(|t| hsum(lanes[t]) + hsum(bsum[t]))
    }

    /// Element `i` of a little-endian F32 / F16 / BF16 array at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn float_at(dt: DType, p: *const u8, i: usize) -> f32 {
        match dt {
            DType::F32 => (p.add(4 * i) as *const f32).read_unaligned(),
            DType::F16 => {
                let h = (p.add(2 * i) as *const u16).read_unaligned();
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
            }
            _ => f32::from_bits(((p.add(2 * i) as *const u16).read_unaligned() as u32) << 16),
        }
    }

    /// Row `r` of 4-bit weights with an odd number of blocks per group
    /// (unprepared activations): per block the nibbles interleaved back to
    /// natural order once, then each token's integer dot, scaled by
    /// `d_b · scale_g` into the token's lanes; the bias term per group
    /// against the exact input sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_single4<const N: usize>(m: &Mat, r: usize, xs: [*const BlockQ8x32; N]) -> [f32; N] {
        let words = m.words.as_ptr().add(r * m.row_bytes);
        let srow = m.scales.as_ptr().add(r * m.groups * m.dt.size());
        let brow = m.biases.as_ptr().add(r * m.groups * m.dt.size());
        let nib = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut lanes = [_mm256_setzero_ps(); N];
        let mut biased = [0.0f32; N];
        for g in 0..m.groups {
            let (sc, bias) = (float_at(m.dt, srow, g), float_at(m.dt, brow, g));
            let ks = g * m.per_group..(g + 1) * m.per_group;
            for k in ks.clone() {
                // Byte j holds values 2j (low nibble) and 2j + 1 (high).
                let v = _mm_loadu_si128(words.add(16 * k) as *const __m128i);
                let (lo, hi) = (_mm_and_si128(v, nib), _mm_and_si128(_mm_srli_epi16::<4>(v), nib));
                let q = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
                for t in 0..N {
                    let xb = &*xs[t].add(k);
                    let xv = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
                    // Codes <= 15 times |x| <= 127, pairs summed: no saturation.
                    let s = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), ones);
                    lanes[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(xb.d * sc), lanes[t]);
                }
            }
            for t in 0..N {
                let mut s = 0.0f32;
                for k in ks.clone() {
                    s += (*xs[t].add(k)).sum;
                }
                biased[t] += bias * s;
            }
        }
        std::array::from_fn(|t| hsum(lanes[t]) + biased[t])
    }
}
