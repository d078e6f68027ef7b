//! Decode matvec on MLX affine-quantized weights (2, 3, 4, 5, 6, 8 bits)
//! with int8 activations in blocks of 32 ([`BlockQ8x32`]).
//!
//! A group of `G` columns stores `w = scale * q + bias`, so
//! `row · x = Σ_g scale_g · Σ_i q_i x_i + bias_g · Σ_i x_i`. The first sum
//! takes `x_i ≈ d_b · qs_i` per 32-block `b`: an exact integer dot product
//! `Σ q_i qs_i` per block, scaled by `d_b`; the second uses the blocks'
//! exact f32 sums, so the bias term carries no quantization error. `G` must
//! be a multiple of 32 (mlx's group sizes 32, 64, 128 all are).
//!
//! Bit layout (as [`crate::quant::AffineRow`]): each row is one LSB-first
//! bitstream over little-endian u32 words, so a block of 32 values is
//! `4 * bits` bytes starting at byte `4 * bits * block`.
//!
//! Summation order, shared by both levels: per group, the blocks' `d_b ·
//! isum_b` are added into the group sum, which is multiplied by the group's
//! scale into the row sum; `bias_g · xsum_g` go into a separate bias sum; the
//! row is `scaled + biased`. (The AVX2 level keeps the group and row sums in
//! 8 lanes, so it differs from the twin by f32 rounding only; the integer
//! block sums are exact in both.)

use std::ops::Range;

use qmoe_core::dtype::DType;

use crate::linear::{Encoding, MatRef};
use crate::simd::act::BlockQ8x32;
use crate::simd::Level;

/// Whether [`gemv_affine`] handles `bits`-bit weights in groups of `group_size`.
pub fn supports_affine(bits: u32, group_size: usize) -> bool {
    matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) && group_size > 0 && group_size % 32 == 0
}

/// `y[i] = dot(row rows.start + i, x)` with `x` `[w.cols / 32]` int8 blocks,
/// `y` `[rows.len()]`. `w.enc` must be `Encoding::Affine` with
/// [`supports_affine`] bits and group size.
pub fn gemv_affine(level: Level, w: &MatRef, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
    let Encoding::Affine { bits, group_size, scales, biases, scale_dtype } = w.enc else {
        panic!("gemv_affine: encoding {:?} is not affine", w.enc)
    };
    assert!(supports_affine(bits, group_size), "gemv_affine: {bits} bits, group {group_size}");
    assert!(scale_dtype.is_float(), "gemv_affine: scale dtype {scale_dtype}");
    assert_eq!(w.cols % group_size, 0, "gemv_affine: group {group_size} does not divide {}", w.cols);
    assert!(rows.start <= rows.end && rows.end <= w.rows, "gemv_affine: rows {rows:?} of {}", w.rows);
    assert_eq!(x.len() * 32, w.cols, "gemv_affine: x blocks");
    assert_eq!(y.len(), rows.len(), "gemv_affine: y length");
    let row_bytes = w.cols * bits as usize / 8;
    assert_eq!(w.bytes.len(), w.rows * row_bytes, "gemv_affine: byte count");
    let groups = w.cols / group_size;
    let scale_row = groups * scale_dtype.size();
    assert_eq!(scales.len(), w.rows * scale_row, "gemv_affine: scale count");
    assert_eq!(biases.len(), w.rows * scale_row, "gemv_affine: bias count");
    let m = AffineMat { words: w.bytes, row_bytes, scales, biases, scale_dtype, scale_row, bits, groups, group_size };
    match level {
        Level::Scalar => {
            for (yi, r) in y.iter_mut().zip(rows) {
                *yi = scalar_row(&m, r, x);
            }
        }
        // Any x86 level above scalar includes AVX2 + FMA + F16C.
        #[allow(unreachable_patterns)]
        _ => {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::simd::float_dot::x86 as fx;
                assert!(fx::available(), "gemv_affine: AVX2/FMA/F16C level on a CPU without them");
                // SAFETY: the CPU supports avx2, fma and f16c (checked just
                // above); `m`'s slices were checked against its shape at
                // entry, `rows` lies inside it and `x` covers every column.
                unsafe { x86::gemv(&m, rows, x, y) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            gemv_affine(Level::Scalar, w, rows, x, y)
        }
    }
}

/// The parts of a checked affine matrix.
struct AffineMat<'a> {
    /// `[rows, row_bytes]` packed words.
    words: &'a [u8],
    row_bytes: usize,
    /// `[rows, groups]` each, of `scale_dtype`.
    scales: &'a [u8],
    biases: &'a [u8],
    scale_dtype: DType,
    /// Bytes of one row of scales (or biases).
    scale_row: usize,
    bits: u32,
    groups: usize,
    group_size: usize,
}

/// Element `i` of a little-endian F32 / F16 / BF16 array.
fn float_at(dt: DType, b: &[u8], i: usize) -> f32 {
    match dt {
        DType::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        DType::F16 => half::f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32(),
        DType::BF16 => f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16),
        other => unreachable!("scale dtype {other} checked to be float"),
    }
}

/// The 32 `bits`-bit values of one block (`4 * bits` bytes): value `i` sits
/// at bit `i * bits` of the little-endian stream, spanning at most 2 bytes.
fn unpack32(block: &[u8], bits: u32) -> [u8; 32] {
    let b = bits as usize;
    let mask = (1u16 << bits) - 1;
    std::array::from_fn(|i| {
        let (byte, sh) = (i * b / 8, i * b % 8);
        let hi = if sh + b > 8 { block[byte + 1] as u16 } else { 0 };
        (((block[byte] as u16 | hi << 8) >> sh) & mask) as u8
    })
}

/// The scalar twin of one AVX2 row.
fn scalar_row(m: &AffineMat, r: usize, x: &[BlockQ8x32]) -> f32 {
    let words = &m.words[r * m.row_bytes..(r + 1) * m.row_bytes];
    let srow = &m.scales[r * m.scale_row..(r + 1) * m.scale_row];
    let brow = &m.biases[r * m.scale_row..(r + 1) * m.scale_row];
    let per_group = m.group_size / 32;
    let block_bytes = 4 * m.bits as usize;
    let (mut scaled, mut biased) = (0.0f32, 0.0f32);
    for g in 0..m.groups {
        let (mut fsum, mut xsum) = (0.0f32, 0.0f32);
        for k in g * per_group..(g + 1) * per_group {
            let q = unpack32(&words[k * block_bytes..(k + 1) * block_bytes], m.bits);
            let isum: i32 = q.iter().zip(&x[k].qs).map(|(&a, &b)| a as i32 * b as i32).sum();
            fsum += x[k].d * isum as f32;
            xsum += x[k].sum;
        }
        scaled += float_at(m.scale_dtype, srow, g) * fsum;
        biased += float_at(m.scale_dtype, brow, g) * xsum;
    }
    scaled + biased
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::AffineMat;
    use crate::simd::act::BlockQ8x32;
    use crate::simd::float_dot::x86::{float_at, hsum, prefetch};

    /// Bytes of packed words ahead of the read pointer to prefetch.
    const PREFETCH: usize = 1024;
    /// Rows ahead whose scales and biases are prefetched.
    const PREFETCH_ROWS: usize = 4;

    /// Per-lane constants that cut 32 `B`-bit values out of a block, 16
    /// values (u16 lanes) per half: `pshufb` indices gathering each value's
    /// 16-bit window (`0x80`: a zero byte, where the value fits in its first
    /// byte) from a 16-byte load at `load[h]`, and the multiplier
    /// `2^(16 - shift - B)` that moves the value to the top of its lane
    /// (a logical right shift by `16 - B` then isolates it).
    struct Cut {
        load: [usize; 2],
        shuffle: [[u8; 32]; 2],
        mul: [[u16; 16]; 2],
    }

    const fn cut(b: usize) -> Cut {
        let mut c = Cut { load: [0, 0], shuffle: [[0; 32]; 2], mul: [[0; 16]; 2] };
        // Blocks under 16 bytes (2, 3 bits) are read whole by one load;
        // longer ones by a load at each end.
        if 4 * b > 16 {
            c.load[1] = 4 * b - 16;
        }
        let mut h = 0;
        while h < 2 {
            let mut l = 0;
            while l < 16 {
                let i = 16 * h + l;
                let (byte, sh) = (i * b / 8 - c.load[h], i * b % 8);
                c.shuffle[h][2 * l] = byte as u8;
                c.shuffle[h][2 * l + 1] = if sh + b > 8 { byte as u8 + 1 } else { 0x80 };
                c.mul[h][l] = 1 << (16 - sh - b);
                l += 1;
            }
            h += 1;
        }
        c
    }

    static CUTS: [Cut; 9] = [cut(1), cut(1), cut(2), cut(3), cut(4), cut(5), cut(6), cut(7), cut(8)];

    /// # Safety
    /// avx2, fma and f16c available; `m` checked against its shape,
    /// `rows.end <=` its rows, `x` `[cols / 32]`, `y.len() == rows.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
        match m.bits {
            4 => rows_q::<4>(m, rows, x, y),
            8 => rows_q::<8>(m, rows, x, y),
            2 => rows_q::<2>(m, rows, x, y),
            3 => rows_q::<3>(m, rows, x, y),
            5 => rows_q::<5>(m, rows, x, y),
            6 => rows_q::<6>(m, rows, x, y),
            b => unreachable!("{b} bits checked by supports_affine"),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_q<const B: usize>(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
        let per_group = m.group_size / 32;
        let dt = m.scale_dtype;
        let n_rows = m.words.len() / m.row_bytes.max(1);
        for (r, yr) in rows.zip(y.iter_mut()) {
            // SAFETY (all loads below): row r's words, scales and biases lie
            // inside their slices (shapes checked at entry, r < rows); block
            // k < cols / 32 reads bytes inside the row except where noted in
            // `block_generic`; `x[k]` exists for every block k of the row.
            let words = m.words.as_ptr().add(r * m.row_bytes);
            let srow = m.scales.as_ptr().add(r * m.scale_row);
            let brow = m.biases.as_ptr().add(r * m.scale_row);
            if r + PREFETCH_ROWS < n_rows {
                prefetch(srow, PREFETCH_ROWS * m.scale_row);
                prefetch(brow, PREFETCH_ROWS * m.scale_row);
            }
            let mut lanes = _mm256_setzero_ps();
            let mut biased = 0.0f32;
            for g in 0..m.groups {
                let mut acc = _mm256_setzero_ps();
                let mut xsum = 0.0f32;
                let mut k = g * per_group;
                let end = k + per_group;
                while k < end {
                    let p = words.add(k * 4 * B);
                    if k % 2 == 0 {
                        prefetch(p, PREFETCH);
                    }
                    if B == 4 && k + 2 <= end {
                        acc = pair_q4(p, &x[k], &x[k + 1], acc);
                        xsum += x[k].sum + x[k + 1].sum;
                        k += 2;
                        continue;
                    }
                    let s = match B {
                        4 => block_q4(p, &x[k]),
                        8 => block_q8(p, &x[k]),
                        _ => block_generic::<B>(p, m.words.as_ptr_range().end, &x[k]),
                    };
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(x[k].d), acc);
                    xsum += x[k].sum;
                    k += 1;
                }
                lanes = _mm256_fmadd_ps(acc, _mm256_set1_ps(float_at(dt, srow, g)), lanes);
                biased += float_at(dt, brow, g) * xsum;
            }
            *yr = hsum(lanes) + biased;
        }
    }

    /// Two 4-bit blocks (32 bytes at `p`) against `x0`, `x1`: the products
    /// scaled by `d` (lanes 0-3 block 0, 4-7 block 1) added into `acc`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_q4(p: *const u8, x0: &BlockQ8x32, x1: &BlockQ8x32, acc: __m256) -> __m256 {
        let nib = _mm256_set1_epi8(0x0f);
        let v = _mm256_loadu_si256(p as *const __m256i);
        let lo = _mm256_and_si256(v, nib);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
        // Byte j holds values 2j (low nibble) and 2j + 1: interleaving puts
        // block 0's values 0-15 | block 1's 0-15 in `a`, 16-31 | 16-31 in `b`.
        let a = _mm256_unpacklo_epi8(lo, hi);
        let b = _mm256_unpackhi_epi8(lo, hi);
        let q0 = _mm256_loadu_si256(x0.qs.as_ptr() as *const __m256i);
        let q1 = _mm256_loadu_si256(x1.qs.as_ptr() as *const __m256i);
        let xa = _mm256_permute2x128_si256(q0, q1, 0x20);
        let xb = _mm256_permute2x128_si256(q0, q1, 0x31);
        // |pair| <= 2 * 15 * 127 per maddubs, so the i16 add cannot overflow.
        let p16 = _mm256_add_epi16(_mm256_maddubs_epi16(a, xa), _mm256_maddubs_epi16(b, xb));
        let s = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        let d = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(x0.d)), _mm_set1_ps(x1.d), 1);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc)
    }

    /// One 4-bit block (16 bytes at `p`): 8 lanes of i32 partial sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_q4(p: *const u8, x: &BlockQ8x32) -> __m256i {
        let nib = _mm_set1_epi8(0x0f);
        let v = _mm_loadu_si128(p as *const __m128i);
        let lo = _mm_and_si128(v, nib);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
        let q = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
        let qs = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
        _mm256_madd_epi16(_mm256_maddubs_epi16(q, qs), _mm256_set1_epi16(1))
    }

    /// One 8-bit block (32 bytes at `p`), widened to i16 (u8 times i8 pairs
    /// would saturate `maddubs`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_q8(p: *const u8, x: &BlockQ8x32) -> __m256i {
        let w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
        let w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i));
        let q0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.qs.as_ptr() as *const __m128i));
        let q1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.qs.as_ptr().add(16) as *const __m128i));
        _mm256_add_epi32(_mm256_madd_epi16(w0, q0), _mm256_madd_epi16(w1, q1))
    }

    /// One `B`-bit block (`4 B` bytes at `p`) through [`Cut`]: 8 lanes of
    /// i32 partial sums. `end` is the end of the weight bytes: a 2- or 3-bit
    /// block within 16 bytes of it is copied out first, since its 16-byte
    /// load would run past it.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_generic<const B: usize>(p: *const u8, end: *const u8, x: &BlockQ8x32) -> __m256i {
        let cut = &CUTS[B];
        let mut pad = [0u8; 16];
        let src = if 4 * B < 16 && (end as usize - p as usize) < 16 {
            std::ptr::copy_nonoverlapping(p, pad.as_mut_ptr(), 4 * B);
            pad.as_ptr()
        } else {
            p
        };
        let mut s = _mm256_setzero_si256();
        for h in 0..2 {
            let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(src.add(cut.load[h]) as *const __m128i));
            let win = _mm256_shuffle_epi8(v, _mm256_loadu_si256(cut.shuffle[h].as_ptr() as *const __m256i));
            let top = _mm256_mullo_epi16(win, _mm256_loadu_si256(cut.mul[h].as_ptr() as *const __m256i));
            let q = _mm256_srl_epi16(top, _mm_cvtsi32_si128(16 - B as i32));
            let qs = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.qs.as_ptr().add(16 * h) as *const __m128i));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(q, qs));
        }
        s
    }
}
