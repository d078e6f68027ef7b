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
//! Summation order. The scalar twin, per group: the blocks' `d_b · isum_b`
//! into the group sum, times the group's scale into the row sum;
//! `bias_g · xsum_g` into a separate bias sum; the row is `scaled + biased`.
//! The AVX2 level rearranges the activations once per pass of up to 8192
//! columns (4-bit: codes split by even / odd index to match a load's low and
//! high nibbles; other widths: codes widened to i16; per group the sum of
//! the block sums), then runs the rows (4 and 8 bits one at a time, other
//! widths two at a time), adding each block's integer sums times
//! `d_b · scale_g` into 8 row lanes, and the bias term as one dot product of
//! the row's biases with the group sums. The integer
//! block sums are exact at both levels, so they differ by f32 rounding only.
//! At the AVX-512 level, weights in groups of 32, 64 or 128 (every MLX
//! checkpoint) run [`avx512`], `vpdpbusd` on one step of codes at a time:
//! 4 and 8 bits always, 2, 3, 5 and 6 bits where the CPU has AVX-512 VBMI
//! to unpack them. Other group sizes, and those widths without VBMI, run
//! the AVX2 row there.
//! The NEON level (4 and 8 bits; other widths run the twin) keeps the
//! twin's order exactly, so it returns the twin's bits (`simd/neon/affine.rs`).

use std::ops::Range;

use qmoe_core::dtype::DType;

use crate::linear::{Encoding, MatRef};
use crate::simd::act::BlockQ8x32;
use crate::simd::Level;

/// Whether [`gemv_affine`] handles `bits`-bit weights in groups of
/// `group_size`: a multiple of 32, at most 8192 (one pass of the AVX2 level).
pub fn supports_affine(bits: u32, group_size: usize) -> bool {
    matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) && group_size > 0 && group_size & 31 == 0 && group_size <= MAX_GROUP
}

/// Largest supported group: the AVX2 level's columns per pass.
const MAX_GROUP: usize = 8192;

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
        Level::Avx2 | Level::Avx512 => {
            #[cfg(target_arch = "x86_64")]
            if level == Level::Avx512 && avx512::supports(bits, group_size) {
                assert!(
                    crate::simd::avx512_detected() && crate::simd::float_dot::x86::available(),
                    "gemv_affine: AVX-512 level on a CPU without AVX-512 F/BW/VL + VNNI, AVX2, FMA and F16C"
                );
                // SAFETY: the CPU runs AVX-512 F/BW/VL + VNNI, AVX2, FMA and
                // F16C (checked just above); `m` was
                // checked against its shape, `bits` and `group_size` by
                // `supports`; `rows`, `x` and `y` as below.
                unsafe { avx512::gemv(&m, rows, x, y) }
            } else {
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
        Level::Neon => {
            #[cfg(target_arch = "aarch64")]
            if super::neon::affine::supports(bits) {
                assert!(super::neon::available(), "gemv_affine: NEON level on a CPU without it");
                // SAFETY: the CPU runs NEON (checked just above); shapes as
                // in the AVX2 arm; `bits` is one the kernel supports.
                unsafe { super::neon::affine::gemv(&m, rows, x, y) };
                return;
            }
            // Other widths (and other architectures): the scalar twin.
            gemv_affine(Level::Scalar, w, rows, x, y)
        }
    }
}

/// The parts of a checked affine matrix.
pub(crate) struct AffineMat<'a> {
    /// `[rows, row_bytes]` packed words.
    pub(crate) words: &'a [u8],
    pub(crate) row_bytes: usize,
    /// `[rows, groups]` each, of `scale_dtype`.
    pub(crate) scales: &'a [u8],
    pub(crate) biases: &'a [u8],
    pub(crate) scale_dtype: DType,
    /// Bytes of one row of scales (or biases).
    pub(crate) scale_row: usize,
    pub(crate) bits: u32,
    pub(crate) groups: usize,
    pub(crate) group_size: usize,
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
pub(crate) mod avx512;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    use qmoe_core::dtype::DType;

    use super::AffineMat;
    use crate::simd::act::BlockQ8x32;
    use crate::simd::float_dot::x86::{hsum, prefetch};

    // Least distance in bytes from a row read to its prefetch.
    use crate::simd::PREFETCH_BYTES as PREFETCH_LEAD;
    /// Rows ahead whose scales and biases are prefetched.
    const PREFETCH_ROWS: usize = 4;
    /// Blocks of 32 columns per pass over the rows (8192 columns): the
    /// rearranged activations of one pass (about 20 KB) stay in L1/L2.
    pub const CHUNK: usize = 256;

    /// How a pass's activations are rearranged for the row loops.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Layout {
        /// 4-bit, an even number of blocks per group: blocks in pairs,
        /// `q[2p]` = both blocks' even-indexed codes (16 + 16), `q[2p + 1]`
        /// their odd-indexed ones, matching a 32-byte load's low and high
        /// nibbles; `dv[p]` = `[d0 ×4, d1 ×4]`.
        Pairs4,
        /// 4-bit, odd blocks per group: `q[k]` = block k's 16 even-indexed
        /// then 16 odd-indexed codes.
        Single4,
        /// Other widths: `q[2k]`, `q[2k + 1]` = block k's codes widened to i16.
        Wide16,
    }

    /// Activations of one pass, rearranged once for all rows.
    struct Prep {
        q: [MaybeUninit<__m256i>; 2 * CHUNK],
        dv: [MaybeUninit<__m256>; CHUNK / 2],
        /// `d` of each block.
        d: [MaybeUninit<f32>; CHUNK],
        /// Σ of the block sums per group, zero-padded to a multiple of 8.
        gsum: [MaybeUninit<f32>; CHUNK + 8],
    }

    /// # Safety
    /// avx2, fma and f16c available; `m` checked against its shape,
    /// `rows.end <=` its rows, `x` `[cols / 32]`, `y.len() == rows.len()`,
    /// `m.group_size <= 32 * CHUNK`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemv(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
        match m.bits {
            4 => run::<4>(m, rows, x, y),
            8 => run::<8>(m, rows, x, y),
            2 => run::<2>(m, rows, x, y),
            3 => run::<3>(m, rows, x, y),
            5 => run::<5>(m, rows, x, y),
            6 => run::<6>(m, rows, x, y),
            b => unreachable!("{b} bits checked by supports_affine"),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run<const B: usize>(m: &AffineMat, rows: Range<usize>, x: &[BlockQ8x32], y: &mut [f32]) {
        let per_group = m.group_size / 32;
        let layout = match B {
            4 if per_group & 1 == 0 => Layout::Pairs4,
            4 => Layout::Single4,
            _ => Layout::Wide16,
        };
        // Whole groups per pass.
        let chunk = CHUNK / per_group * per_group;
        y.fill(0.0);
        let mut prep = MaybeUninit::<Prep>::uninit();
        let mut k0 = 0;
        while k0 < x.len() {
            let k1 = (k0 + chunk).min(x.len());
            // SAFETY: `prep` is written for blocks k0..k1 (at most CHUNK)
            // by `prepare` before `pass` reads exactly those entries.
            let p = prep.as_mut_ptr();
            prepare(layout, per_group, &x[k0..k1], p);
            match per_group {
                1 => rows_pass::<B, 1>(m, layout, &*p, rows.clone(), k0..k1, y),
                2 => rows_pass::<B, 2>(m, layout, &*p, rows.clone(), k0..k1, y),
                4 => rows_pass::<B, 4>(m, layout, &*p, rows.clone(), k0..k1, y),
                _ => rows_pass::<B, 0>(m, layout, &*p, rows.clone(), k0..k1, y),
            }
            k0 = k1;
        }
    }

    /// Every row of `rows` over blocks `ks`. 4- and 8-bit rows, whose
    /// decode is bound by memory, go one at a time: reading two rows side by
    /// side (sharing the activation loads) measured 25-30% below a single
    /// row's DRAM rate (`examples/simd_gemv.rs`, 256 MB, 1 thread: 0.58-0.62
    /// vs 0.78-0.88 of a plain streaming read), though faster in cache: two
    /// interleaved short streams seem to defeat the hardware prefetcher.
    /// The other widths unpack at compute-bound speed and keep two rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_pass<const B: usize, const PG: usize>(
        m: &AffineMat,
        layout: Layout,
        p: &Prep,
        rows: Range<usize>,
        ks: Range<usize>,
        y: &mut [f32],
    ) {
        // SAFETY: as `gemv`; `y` has `rows.len()` entries, each pass writes
        // `y[r - rows.start ..][..NR]` with `r + NR <= rows.end`.
        if layout == Layout::Pairs4 {
            for r in rows.clone() {
                row_pairs4::<PG>(m, p, r, ks.clone(), y.as_mut_ptr().add(r - rows.start));
            }
            return;
        }
        let mut r = rows.start;
        if B != 4 && B != 8 {
            while r + 2 <= rows.end {
                pass::<B, 2, PG>(m, layout, p, r, ks.clone(), y.as_mut_ptr().add(r - rows.start));
                r += 2;
            }
        }
        while r < rows.end {
            pass::<B, 1, PG>(m, layout, p, r, ks.clone(), y.as_mut_ptr().add(r - rows.start));
            r += 1;
        }
    }

    /// Block `b`'s codes as [evens 0-14, evens 16-30, odds 1-15, odds
    /// 17-31] (64-bit quarters): the order of a 4-bit load's low nibbles,
    /// then its high ones (also the AVX-512 kernel's, [`super::avx512`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn evens_odds(b: &BlockQ8x32) -> __m256i {
        // Per 128-bit lane: the 8 even-indexed bytes, then the 8 odd ones.
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, //
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
        );
        let v = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
        _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, split), 0b11_01_10_00)
    }

    /// Fills `p` for the blocks `x` (a whole number of groups, <= CHUNK).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare(layout: Layout, per_group: usize, x: &[BlockQ8x32], p: *mut Prep) {
        // SAFETY: every index written is below the array's length
        // (x.len() <= CHUNK blocks, groups <= x.len()).
        let q = std::ptr::addr_of_mut!((*p).q) as *mut __m256i;
        let dv = std::ptr::addr_of_mut!((*p).dv) as *mut __m256;
        let d = std::ptr::addr_of_mut!((*p).d) as *mut f32;
        let gsum = std::ptr::addr_of_mut!((*p).gsum) as *mut f32;
        for (k, b) in x.iter().enumerate() {
            *d.add(k) = b.d;
        }
        match layout {
            Layout::Pairs4 => {
                for pi in 0..x.len() / 2 {
                    let (a, b) = (evens_odds(&x[2 * pi]), evens_odds(&x[2 * pi + 1]));
                    q.add(2 * pi).write(_mm256_permute2x128_si256(a, b, 0x20));
                    q.add(2 * pi + 1).write(_mm256_permute2x128_si256(a, b, 0x31));
                    let (d0, d1) = (_mm_set1_ps(x[2 * pi].d), _mm_set1_ps(x[2 * pi + 1].d));
                    dv.add(pi).write(_mm256_insertf128_ps(_mm256_castps128_ps256(d0), d1, 1));
                }
            }
            Layout::Single4 => {
                for (k, b) in x.iter().enumerate() {
                    q.add(k).write(evens_odds(b));
                }
            }
            Layout::Wide16 => {
                for (k, b) in x.iter().enumerate() {
                    let v = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
                    q.add(2 * k).write(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
                    q.add(2 * k + 1).write(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)));
                }
            }
        }
        let groups = x.len() / per_group;
        for g in 0..groups {
            let mut s = 0.0f32;
            for b in &x[g * per_group..(g + 1) * per_group] {
                s += b.sum;
            }
            *gsum.add(g) = s;
        }
        for g in groups..groups.next_multiple_of(8) {
            *gsum.add(g) = 0.0;
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
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(src as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            }
        }
    }

    /// Adds rows `r .. r + NR`'s products over blocks `ks` into `y[0..NR]`,
    /// with `PG` blocks per group (0: `m.group_size / 32`, read at run time;
    /// the common sizes are constants so their group loops unroll). The
    /// [`Layout::Pairs4`] rows run [`row_pairs4`] instead.
    ///
    /// # Safety
    /// As [`gemv`]; `p` prepared for `ks`, `r + NR <=` rows, `y` valid for NR writes.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pass<const B: usize, const NR: usize, const PG: usize>(
        m: &AffineMat,
        layout: Layout,
        p: &Prep,
        r: usize,
        ks: Range<usize>,
        y: *mut f32,
    ) {
        // SAFETY (loads below): rows r .. r + NR exist; blocks ks of each
        // row lie inside its words; groups ks / per_group inside its scales
        // and biases; `p` holds the pass's blocks (written by `prepare`).
        let per_group = if PG == 0 { m.group_size / 32 } else { PG };
        let dt = m.scale_dtype;
        let block_bytes = 4 * B;
        let (g0, ng) = (ks.start / per_group, ks.len() / per_group);
        let n_rows = m.words.len() / m.row_bytes;
        let end = m.words.as_ptr_range().end;
        let q = p.q.as_ptr() as *const __m256i;
        let d = p.d.as_ptr() as *const f32;
        let gsum = p.gsum.as_ptr() as *const f32;
        let w: [*const u8; NR] =
            std::array::from_fn(|j| m.words.as_ptr().add((r + j) * m.row_bytes + ks.start * block_bytes));
        let sp: [*const u8; NR] = std::array::from_fn(|j| m.scales.as_ptr().add((r + j) * m.scale_row));
        let bp: [*const u8; NR] = std::array::from_fn(|j| m.biases.as_ptr().add((r + j) * m.scale_row));
        if r + NR + PREFETCH_ROWS <= n_rows {
            for j in 0..NR {
                prefetch(sp[j], PREFETCH_ROWS * m.scale_row);
                prefetch(bp[j], PREFETCH_ROWS * m.scale_row);
            }
        }
        let pf = lead(NR * m.row_bytes);
        let nib = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut lanes = [_mm256_setzero_ps(); NR];
        let mut gb = 0;
        while gb < ng {
            let n = (ng - gb).min(8);
            let sv: [__m256; NR] = std::array::from_fn(|j| load8(dt, sp[j], g0 + gb, n));
            for gi in 0..n {
                // Group scale of each row, broadcast: the block's `d` times it
                // scales the block's integer sums straight into the row lanes.
                let idx = _mm256_set1_epi32(gi as i32);
                let sc: [__m256; NR] = std::array::from_fn(|j| _mm256_permutevar8x32_ps(sv[j], idx));
                let kb = (gb + gi) * per_group;
                for k in kb..kb + per_group {
                    let dk = _mm256_broadcast_ss(&*d.add(k));
                    for j in 0..NR {
                        let pw = w[j].add(block_bytes * k);
                        if (block_bytes * k) % 64 < block_bytes {
                            prefetch(pw, pf);
                        }
                        let s = match layout {
                            Layout::Single4 => {
                                let v = _mm_loadu_si128(pw as *const __m128i);
                                let v = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
                                let s = _mm256_maddubs_epi16(_mm256_and_si256(v, nib), *q.add(k));
                                _mm256_madd_epi16(s, ones)
                            }
                            _ if B == 8 => {
                                let w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pw as *const __m128i));
                                let w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(pw.add(16) as *const __m128i));
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(w0, *q.add(2 * k)),
                                    _mm256_madd_epi16(w1, *q.add(2 * k + 1)),
                                )
                            }
                            _ => block_generic::<B>(pw, end, q.add(2 * k)),
                        };
                        lanes[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dk, sc[j]), lanes[j]);
                    }
                }
            }
            gb += n;
        }
        // Bias term: Σ_g bias_g · gsum_g, 8 groups at a time.
        for j in 0..NR {
            let mut bsum = _mm256_setzero_ps();
            let mut g = 0;
            while g < ng {
                let n = (ng - g).min(8);
                bsum = _mm256_fmadd_ps(load8(dt, bp[j], g0 + g, n), _mm256_loadu_ps(gsum.add(g)), bsum);
                g += n;
            }
            *y.add(j) += hsum(lanes[j]) + hsum(bsum);
        }
    }

    /// Prefetch distance for passes of `pass_bytes` (rows read side by side):
    /// whole passes, so it lands on the same columns of a later row (a pass
    /// over long rows covers only some of their columns), and at least
    /// [`PREFETCH_LEAD`].
    fn lead(pass_bytes: usize) -> usize {
        pass_bytes * PREFETCH_LEAD.div_ceil(pass_bytes)
    }

    /// [`pass`] for one 4-bit row in the [`Layout::Pairs4`] layout, the MLX
    /// default (group 64) and the hottest decode loop of an MLX model. Eight
    /// groups at a time: their scales and biases are loaded as one vector,
    /// each group's scale is picked from it by a constant lane permute (a
    /// store and narrow reload would stall on store forwarding), and the
    /// bias term accumulates beside. Two accumulators break the FMA chain.
    ///
    /// # Safety
    /// As [`pass`], with `m.bits == 4` and an even number of blocks per group.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn row_pairs4<const PG: usize>(m: &AffineMat, p: &Prep, r: usize, ks: Range<usize>, y: *mut f32) {
        // SAFETY (loads below): as in `pass`.
        let per_group = if PG == 0 { m.group_size / 32 } else { PG };
        let ppg = per_group / 2;
        let dt = m.scale_dtype;
        let (g0, ng) = (ks.start / per_group, ks.len() / per_group);
        let q = p.q.as_ptr() as *const __m256i;
        let dv = p.dv.as_ptr() as *const __m256;
        let gsum = p.gsum.as_ptr() as *const f32;
        let w = m.words.as_ptr().add(r * m.row_bytes + ks.start * 16);
        let (sp, bp) = (m.scales.as_ptr().add(r * m.scale_row), m.biases.as_ptr().add(r * m.scale_row));
        if r + 1 + PREFETCH_ROWS <= m.words.len() / m.row_bytes {
            prefetch(sp, PREFETCH_ROWS * m.scale_row);
            prefetch(bp, PREFETCH_ROWS * m.scale_row);
        }
        let pf = lead(m.row_bytes);
        let nib = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let (mut acc0, mut acc1, mut bsum) = (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        // Block pair `pi` scaled by `sc` into `acc`; a `lead` pair starts a
        // 64-byte line, and prefetches.
        let pair = |acc: &mut __m256, pi: usize, sc: __m256, lead: bool| {
            let pw = w.add(32 * pi);
            if lead {
                prefetch(pw, pf);
            }
            let v = _mm256_loadu_si256(pw as *const __m256i);
            let lo = _mm256_and_si256(v, nib);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
            // |each maddubs lane| <= 2 * 15 * 127: the i16 add cannot overflow.
            let s = _mm256_add_epi16(
                _mm256_maddubs_epi16(lo, *q.add(2 * pi)),
                _mm256_maddubs_epi16(hi, *q.add(2 * pi + 1)),
            );
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
            *acc = _mm256_fmadd_ps(s, _mm256_mul_ps(*dv.add(pi), sc), *acc);
        };
        let mut g = 0;
        while g < ng {
            let n = (ng - g).min(8);
            let sv = load8(dt, sp, g0 + g, n);
            bsum = _mm256_fmadd_ps(load8(dt, bp, g0 + g, n), _mm256_loadu_ps(gsum.add(g)), bsum);
            // `g` is a multiple of 8, so a pair's parity (its accumulator,
            // whether it starts a line) follows from `gi` and `h` alone.
            let mut group = |gi: usize| {
                let sc = _mm256_permutevar8x32_ps(sv, _mm256_set1_epi32(gi as i32));
                for h in 0..ppg {
                    let pi = (g + gi) * ppg + h;
                    if (gi * ppg + h).is_multiple_of(2) {
                        pair(&mut acc0, pi, sc, true);
                    } else {
                        pair(&mut acc1, pi, sc, false);
                    }
                }
            };
            if n == 8 {
                // Constant bounds: unrolled, with constant permute indices.
                for gi in 0..8 {
                    group(gi);
                }
            } else {
                for gi in 0..n {
                    group(gi);
                }
            }
            g += n;
        }
        *y += hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), bsum));
    }

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

    /// One `B`-bit block (`4 B` bytes at `p`) against its codes widened to
    /// i16 (`qs16[0..2]`): 8 lanes of i32 partial sums. `end` is the end of
    /// the weight bytes: a 2- or 3-bit block within 16 bytes of it is copied
    /// out first, since its 16-byte load would run past it.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_generic<const B: usize>(p: *const u8, end: *const u8, qs16: *const __m256i) -> __m256i {
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
            s = _mm256_add_epi32(s, _mm256_madd_epi16(q, *qs16.add(h)));
        }
        s
    }
}
