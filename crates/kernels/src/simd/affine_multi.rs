//! Many-token products of MLX affine weights with int8 activations (prefill).
//!
//! `y[t * y_stride + i] = dot(row rows.start + i, x[t])` with `x` holding
//! `n_tokens` tokens' [`BlockQ8x32`] blocks one after the other. The math is
//! [`super::affine_dot`]'s: per 32-block an exact integer dot `Σ q_i qs_i`,
//! scaled by `d_b · scale_g`, plus `bias_g` times the group's exact input sum.
//!
//! The AVX2 level (4- and 8-bit) reads each weight block once per group of
//! tokens and multiplies it with every token of the group. 4-bit: transposed
//! runs of eight blocks, eight tokens per unpacking ([`runs4`]). 8-bit:
//! weight bytes and (once per token group) activation codes widened to i16,
//! since `255 · 127 · 2` would saturate `maddubs`, groups of [`GROUP`]
//! tokens. Token groups run outside, rows inside: the driver's run of rows
//! stays in L2 for every group after the first. Other widths run the
//! single-token kernel per token.
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

/// Tokens per weight-block unpacking of the 8-bit kernel.
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
                    runs4::run(&m, rows, x, n_tokens, y, y_stride)
                } else {
                    x86::run(&m, rows, x, n_tokens, y, y_stride)
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
mod runs4;

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
    /// AVX2 + FMA + F16C; `m` checked against its shape with 8 bits,
    /// `rows` inside it, `x` `n_tokens` rows of `cols / 32` blocks, `y`
    /// valid for writes at `t * y_stride + i`, `i < rows.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run(
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
                4 => group::<4>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
                3 => group::<3>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
                2 => group::<2>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
                _ => group::<1>(m, rows.clone(), x.as_ptr().add(t0 * nb), nb, y.add(t0 * y_stride), y_stride, first),
            }
            t0 += n;
        }
    }

    /// Every row of `rows` against `N` tokens (`x` their blocks, `nb` per
    /// token), into `y[t * y_stride + i]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group<const N: usize>(
        m: &Mat,
        rows: Range<usize>,
        x: *const BlockQ8x32,
        nb: usize,
        y: *mut f32,
        y_stride: usize,
        prefetch: bool,
    ) {
        let per_token = 3 * nb;
        WIDE.with(|wide| {
            GSUM.with(|gsum| {
                let (mut wide, mut gsum) = (wide.borrow_mut(), gsum.borrow_mut());
                let gpad = m.groups.next_multiple_of(8);
                wide.resize(N * per_token, _mm256_setzero_si256());
                gsum.resize(N * gpad, 0.0);
                for t in 0..N {
                    let (pt, gt) = (&mut wide[t * per_token..][..per_token], &mut gsum[t * gpad..][..gpad]);
                    prepare_wide(m, x.add(t * nb), pt, gt);
                }
                for_rows(m, rows, y, y_stride, prefetch, |r| row_wide::<N>(m, r, &wide, &gsum, gpad));
            })
        });
    }

    /// `y[t * y_stride + i] = row(r)[t]` for row `r = rows.start + i` of
    /// `rows`, in order; with `prefetch` (the token group that reads the rows
    /// from memory) the weight stream is prefetched [`PREFETCH_BYTES`] ahead.
    ///
    /// # Safety
    /// `rows` lies inside `m`; `y` is valid for writes at `t * y_stride + i`
    /// for `t < N`, `i < rows.len()`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn for_rows<const N: usize>(
        m: &Mat,
        rows: Range<usize>,
        y: *mut f32,
        y_stride: usize,
        prefetch: bool,
        mut row: impl FnMut(usize) -> [f32; N],
    ) {
        let base = m.words.as_ptr();
        let mut fetched = rows.start * m.row_bytes;
        for (i, r) in rows.enumerate() {
            if prefetch {
                let until = ((r + 1) * m.row_bytes + PREFETCH_BYTES).min(m.words.len());
                while fetched < until {
                    _mm_prefetch::<_MM_HINT_T0>(base.add(fetched) as *const i8);
                    fetched += 64;
                }
            }
            for (t, v) in row(r).into_iter().enumerate() {
                *y.add(t * y_stride + i) = v;
            }
        }
    }

    thread_local! {
        /// A token group's widened activations (grow-only per worker), per
        /// token `[nb][3]`: codes 0..16 and 16..32 as i16, `d ×8`.
        static WIDE: RefCell<Vec<__m256i>> = const { RefCell::new(Vec::new()) };
        /// Per token: the exact input sum of each group, zero-padded to 8.
        static GSUM: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// One token's blocks `x` as `[nb][3]`: codes 0..16 and 16..32 widened
    /// to i16, `d` broadcast; group sums into `gsum`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare_wide(m: &Mat, x: *const BlockQ8x32, prep: &mut [__m256i], gsum: &mut [f32]) {
        for (k, out) in prep.chunks_exact_mut(3).enumerate() {
            let b = &*x.add(k);
            out[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr() as *const __m128i));
            out[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.qs.as_ptr().add(16) as *const __m128i));
            out[2] = _mm256_castps_si256(_mm256_set1_ps(b.d));
        }
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
    pub(super) unsafe fn load8(dt: DType, p: *const u8, i: usize, n: usize) -> __m256 {
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

    /// Row `r` against the `N` tokens prepared in `wide` / `gsum` (`gpad`
    /// sums per token): per block the weights widened to i16 once, each
    /// token two `madd` on its widened codes; the bias term one vector dot
    /// of the row's biases with each token's group sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_wide<const N: usize>(m: &Mat, r: usize, wide: &[__m256i], gsum: &[f32], gpad: usize) -> [f32; N] {
        let words = m.words.as_ptr().add(r * m.row_bytes);
        let srow = m.scales.as_ptr().add(r * m.groups * m.dt.size());
        let brow = m.biases.as_ptr().add(r * m.groups * m.dt.size());
        let nb = m.groups * m.per_group;
        let per_token = 3 * nb;
        assert!(wide.len() >= N * per_token && gsum.len() >= N * gpad);
        let pp = wide.as_ptr();
        let mut lanes = [_mm256_setzero_ps(); N];
        for g in 0..m.groups {
            let sc = _mm256_set1_ps(float_at(m.dt, srow, g));
            for k in g * m.per_group..(g + 1) * m.per_group {
                let w = words.add(32 * k) as *const __m128i;
                let (a, b) =
                    (_mm256_cvtepu8_epi16(_mm_loadu_si128(w)), _mm256_cvtepu8_epi16(_mm_loadu_si128(w.add(1))));
                for (t, lane) in lanes.iter_mut().enumerate() {
                    let x = pp.add(t * per_token + 3 * k);
                    let s = _mm256_add_epi32(_mm256_madd_epi16(a, *x), _mm256_madd_epi16(b, *x.add(1)));
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
}
