//! Decode matvec on FP8 E4M3 block-scaled weights (HF FP8 releases) with f32
//! activations.
//!
//! `w[r][c] = e4m3(code) * scale[r / block_rows][c / block_cols]`; any block
//! size, partial edge blocks, F32/F16/BF16 scales. Each column block is
//! summed on its own, then multiplied by its scale once.
//!
//! The AVX2 level widens codes through F16: `sign << 15 | (code & 0x7f) << 7`
//! is an f16 with the same 4-bit exponent field and 3 top mantissa bits, so
//! its value is exactly `e4m3(code) / 2^8` for every finite code, subnormals
//! included (both formats' subnormals scale by the same `2^8`: `m/8 · 2^-6`
//! against `m/8 · 2^-14`). The `2^8` is folded into the block scale, which
//! is exact, so no product changes. The NaN codes (`0x7f`, `0xff`) would
//! widen to ±480: they are detected instead and make the row's result NaN,
//! as the reference dequantisation does.
//!
//! Summation order. The scalar twin sums each column block on its own (four
//! 8-lane partial sums over steps of 32 columns, then steps of 8, then the
//! block's last `len % 8` columns one by one) and multiplies it by its
//! scale. The AVX2 level instead multiplies the activations by their
//! block's scale once per block row (`xs = x * s`, shared by up to
//! `block_rows` rows) and then runs one plain dot product over the codes
//! per row, with no per-block work in the inner loop: the products differ
//! from the twin's by the rounding of `x * s` only, so the two agree to f32
//! rounding, which the tests check. The AVX-512 level runs the same row in
//! steps of 64 codes ([`avx512`]) and hands the last `n % 64` to the AVX2
//! loop; its activations are laid out in the order its unpacks produce.

use std::ops::Range;

use qmoe_core::dtype::DType;

use crate::linear::{Encoding, MatRef};
use crate::quant::e4m3_to_f32;
use crate::simd::float_dot::{fold8, sum4};
use crate::simd::Level;

/// `y[i] = dot(row rows.start + i, x)`: `x` `[w.cols]`, `y` `[rows.len()]`.
/// `w.enc` must be `Encoding::Fp8Block`.
pub fn gemv_fp8(level: Level, w: &MatRef, rows: Range<usize>, x: &[f32], y: &mut [f32]) {
    let Encoding::Fp8Block { scales, scale_dtype, block_rows, block_cols } = w.enc else {
        panic!("gemv_fp8: encoding {:?} is not FP8", w.enc)
    };
    assert!(scale_dtype.is_float(), "gemv_fp8: scale dtype {scale_dtype}");
    assert!(block_rows > 0 && block_cols > 0, "gemv_fp8: block size");
    assert!(rows.start <= rows.end && rows.end <= w.rows, "gemv_fp8: rows {rows:?} of {}", w.rows);
    assert_eq!(x.len(), w.cols, "gemv_fp8: x length");
    assert_eq!(y.len(), rows.len(), "gemv_fp8: y length");
    assert_eq!(w.bytes.len(), w.rows * w.cols, "gemv_fp8: byte count");
    // Scales `[ceil(rows / block_rows), ceil(cols / block_cols)]`.
    let scale_row = w.cols.div_ceil(block_cols) * scale_dtype.size();
    assert_eq!(scales.len(), w.rows.div_ceil(block_rows) * scale_row, "gemv_fp8: scale count");
    let m = Fp8Mat { codes: w.bytes, cols: w.cols, scales, scale_dtype, scale_row, block_rows, block_cols };
    match level {
        Level::Scalar => {
            for (yi, r) in y.iter_mut().zip(rows) {
                *yi = scalar_row(&m, r, x);
            }
        }
        Level::Avx2 | Level::Avx512 => {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::simd::float_dot::x86 as fx;
                assert!(fx::available(), "gemv_fp8: AVX2/FMA/F16C level on a CPU without them");
                let wide = level == Level::Avx512;
                assert!(!wide || crate::simd::avx512_detected(), "gemv_fp8: AVX-512 level on a CPU without it");
                // SAFETY: the CPU supports avx2, fma and f16c, and AVX-512
                // F/BW/VL if `wide` (checked just above); `m`'s slices were
                // checked against its shape at entry, `rows` lies inside it
                // and `x` holds `cols` floats.
                unsafe { x86::gemv(&m, rows, x, y, wide) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            gemv_fp8(Level::Scalar, w, rows, x, y)
        }
        // No NEON kernel for FP8 yet: the scalar twin.
        Level::Neon => gemv_fp8(Level::Scalar, w, rows, x, y),
    }
}

/// The parts of a checked FP8 matrix.
struct Fp8Mat<'a> {
    /// `[rows, cols]` e4m3 codes.
    codes: &'a [u8],
    cols: usize,
    scales: &'a [u8],
    scale_dtype: DType,
    /// Bytes of one row of the scale grid.
    scale_row: usize,
    block_rows: usize,
    block_cols: usize,
}

impl Fp8Mat<'_> {
    /// Scale of the block holding row `r`, column block `j`.
    #[inline]
    fn scale(&self, r: usize, j: usize) -> f32 {
        let s = &self.scales[r / self.block_rows * self.scale_row..];
        match self.scale_dtype {
            DType::F32 => f32::from_le_bytes([s[4 * j], s[4 * j + 1], s[4 * j + 2], s[4 * j + 3]]),
            DType::F16 => half::f16::from_bits(u16::from_le_bytes([s[2 * j], s[2 * j + 1]])).to_f32(),
            DType::BF16 => f32::from_bits((u16::from_le_bytes([s[2 * j], s[2 * j + 1]]) as u32) << 16),
            other => unreachable!("scale dtype {other} checked to be float"),
        }
    }
}

/// The scalar twin of one AVX2 row.
fn scalar_row(m: &Fp8Mat, r: usize, x: &[f32]) -> f32 {
    let codes = &m.codes[r * m.cols..(r + 1) * m.cols];
    let mut row = [0.0f32; 8];
    let mut tail = 0.0f32;
    let mut c0 = 0;
    for j in 0..m.cols.div_ceil(m.block_cols) {
        let c1 = (c0 + m.block_cols).min(m.cols);
        let s = m.scale(r, j);
        let mut acc = [[0.0f32; 8]; 4];
        let mut c = c0;
        while c + 32 <= c1 {
            for (k, a) in acc.iter_mut().enumerate() {
                for (l, al) in a.iter_mut().enumerate() {
                    let i = c + 8 * k + l;
                    *al += e4m3_to_f32(codes[i]) * x[i];
                }
            }
            c += 32;
        }
        while c + 8 <= c1 {
            for (l, al) in acc[0].iter_mut().enumerate() {
                *al += e4m3_to_f32(codes[c + l]) * x[c + l];
            }
            c += 8;
        }
        for (rl, bl) in row.iter_mut().zip(sum4(&acc)) {
            *rl += bl * s;
        }
        let mut t = 0.0f32;
        for i in c..c1 {
            t += e4m3_to_f32(codes[i]) * x[i];
        }
        tail += t * s;
        c0 = c1;
    }
    fold8(row) + tail
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    use super::Fp8Mat;
    use crate::quant::e4m3_to_f32;
    use crate::simd::float_dot::x86::{float_at, hsum, prefetch};

    /// Bytes of codes ahead of the read pointer to prefetch.
    const PREFETCH: usize = 1024;

    /// `e4m3 / 2^8` as f16 bits in each u16 lane whose high byte is a code
    /// (low byte zero): `sign << 15 | (code & 0x7f) << 7`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn to_f16(hi: __m256i) -> __m256i {
        _mm256_and_si256(_mm256_srai_epi16(hi, 1), _mm256_set1_epi16(0xBF80u16 as i16))
    }

    /// Columns per pass: the scaled activations of one pass (32 KB) stay
    /// in L1/L2.
    const CHUNK: usize = 8192;

    /// # Safety
    /// avx2, fma and f16c available, and AVX-512 F/BW/VL if `wide`; `m`
    /// checked against its shape, `rows.end <= ` its rows, `x.len() ==
    /// m.cols`, `y.len() == rows.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv(m: &Fp8Mat, rows: Range<usize>, x: &[f32], y: &mut [f32], wide: bool) {
        let cols = m.cols;
        let mut xs = MaybeUninit::<[f32; CHUNK]>::uninit();
        let xs = xs.as_mut_ptr() as *mut f32;
        // The AVX-512 steps' prefetch lead (the AVX2 loop keeps [`PREFETCH`]).
        let lead = crate::simd::ggml_gemv_lead();
        let mut c0 = 0;
        while c0 < cols {
            let n = (cols - c0).min(CHUNK);
            let mut block_row = usize::MAX;
            for (r, yr) in rows.clone().zip(y.iter_mut()) {
                // SAFETY (all accesses below): row r has `cols` codes at
                // `r * cols` inside `m.codes`; the pass reads codes and
                // `xs` entries c0 + i, i < n, so within the row and the
                // CHUNK-long buffer, written for this block row just above
                // before any read. Scale row `r / block_rows` exists (grid
                // checked at entry) and every block index is below
                // `ceil(cols / block_cols)`.
                if r / m.block_rows != block_row {
                    block_row = r / m.block_rows;
                    scale_x(m, x, block_row, c0, n, xs);
                    if wide {
                        super::avx512::lay_out(xs, n);
                    }
                }
                let row = m.codes.as_ptr().add(r * cols + c0);
                let mut acc = [_mm256_setzero_ps(); 4];
                // Max over `code & 0x7f`: 0x7f anywhere means a NaN code.
                let mut nan = _mm256_setzero_si256();
                let start = if wide { super::avx512::head(row, xs, n, lead, &mut acc, &mut nan) } else { 0 };
                let sum = finish(row, xs, start, n, acc, nan);
                *yr = if c0 == 0 { sum } else { *yr + sum };
            }
            c0 += n;
        }
    }

    /// `xs[0..n]` = `x[c0..c0 + n]` times its column block's scale of
    /// block row `block_row`, times 2^8 (exact: the f16 codes are e4m3 / 2^8).
    ///
    /// # Safety
    /// As [`gemv`]; `xs` holds `n <= CHUNK` floats, `c0 + n <= m.cols`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale_x(m: &Fp8Mat, x: &[f32], block_row: usize, c0: usize, n: usize, xs: *mut f32) {
        let srow = m.scales.as_ptr().add(block_row * m.scale_row);
        let mut c = c0;
        while c < c0 + n {
            let j = c / m.block_cols;
            let end = ((j + 1) * m.block_cols).min(c0 + n);
            let s = float_at(m.scale_dtype, srow, j) * 256.0;
            for (i, xi) in x[c..end].iter().enumerate() {
                *xs.add(c - c0 + i) = xi * s;
            }
            c = end;
        }
    }

    /// The row's codes `i .. n` against `xs` (in column order from `i`), on
    /// top of the sums `acc` and the NaN maximum `nan` of codes `0 .. i`:
    /// steps of 32 and 8 codes, then the last ones one by one. Returns the
    /// row's sum, NaN if any code was.
    ///
    /// # Safety
    /// As [`gemv`]; `row` holds `n` codes and `xs` `n` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(
        row: *const u8,
        xs: *const f32,
        mut i: usize,
        n: usize,
        mut acc: [__m256; 4],
        mut nan: __m256i,
    ) -> f32 {
        let zero = _mm256_setzero_si256();
        let low7 = _mm256_set1_epi8(0x7f);
        let mut nan8 = _mm_setzero_si128();
        while i + 32 <= n {
            prefetch(row.add(i), PREFETCH);
            let v = _mm256_loadu_si256(row.add(i) as *const __m256i);
            nan = _mm256_max_epu8(nan, _mm256_and_si256(v, low7));
            // u16 lanes `code << 8`: codes 0-7 | 16-23 and 8-15 | 24-31.
            let a = to_f16(_mm256_unpacklo_epi8(zero, v));
            let b = to_f16(_mm256_unpackhi_epi8(zero, v));
            let f = [
                _mm256_cvtph_ps(_mm256_castsi256_si128(a)),
                _mm256_cvtph_ps(_mm256_castsi256_si128(b)),
                _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1)),
                _mm256_cvtph_ps(_mm256_extracti128_si256(b, 1)),
            ];
            for (k, (ak, fk)) in acc.iter_mut().zip(f).enumerate() {
                *ak = _mm256_fmadd_ps(fk, _mm256_loadu_ps(xs.add(i + 8 * k)), *ak);
            }
            i += 32;
        }
        while i + 8 <= n {
            let v = _mm_loadl_epi64(row.add(i) as *const __m128i);
            nan8 = _mm_max_epu8(nan8, _mm_and_si128(v, _mm256_castsi256_si128(low7)));
            let h = _mm_unpacklo_epi8(_mm_setzero_si128(), v);
            let h = _mm_and_si128(_mm_srai_epi16(h, 1), _mm_set1_epi16(0xBF80u16 as i16));
            acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xs.add(i)), acc[0]);
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        // Tail codes through the exact table (NaN included); the 2^8
        // comes back out of `xs` exactly.
        for t in i..n {
            sum += e4m3_to_f32(*row.add(t)) * (*xs.add(t) * (1.0 / 256.0));
        }
        let nan = _mm_max_epu8(_mm_max_epu8(_mm256_castsi256_si128(nan), _mm256_extracti128_si256(nan, 1)), nan8);
        if _mm_movemask_epi8(_mm_cmpeq_epi8(nan, _mm256_castsi256_si128(low7))) != 0 {
            sum = f32::NAN;
        }
        sum
    }
}
