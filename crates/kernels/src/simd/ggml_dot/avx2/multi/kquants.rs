//! Q2_K..Q6_K / IQ4_XS many-token kernels on transposed sub-blocks: one, two
//! or four scale multiplies per (block, token) instead of eight or sixteen
//! (IQ4_XS: one f32 multiply by the eight sub-block scales).
//!
//! The plain layout multiplies each 32-value sub-block in its own register
//! (`vpmaddubsw`), so every register has its own scale and needs its own
//! `vpmaddwd` before the registers can be summed: 16 multiplies per block
//! and token, and the multiply ports were the limit. Here the weight codes
//! and the activations are both transposed in 4-byte columns: register `i`
//! holds values `4i..4i + 4` of all eight sub-blocks (one per u32 lane, in
//! [`ORDER`]), so every register has the same lane-to-sub-block map and the
//! eight `vpmaddubsw` results add up as i16 (|pair| <= 2 * 15 * 127 = 3810,
//! eight of them 30480 < 2^15), then one `vpmaddwd` against the lane scales.
//!
//! The weights are transposed per block (shared by the group's tokens), the
//! activations once per group into a copy (shared by every row of the run).
//! The integer sum of each (block, token) is the single-token kernel's; its
//! split over the 8 i32 lanes differs, and Q4_K / Q5_K take their mins term
//! in f32 per sub-block ([`TBlock`]'s `xsums`), so the result agrees with it
//! to rounding, not bit for bit.
//!
//! The token loop is bound by the vector ports (`vpmaddubsw`, `vpmaddwd`,
//! converts and FMAs share them on Zen 3), so it spends as few of those per
//! (block, token) as it can: taking the mins term as one f32 FMA, and the
//! two scales' product as one vector multiply, made the Q4_K kernel 17-22%
//! faster (`examples/prefill_gemm.rs q4k`, 1 thread, best of 20 alternating
//! runs; `llvm-mca -mcpu=znver3` on the loop agrees in direction). Each
//! (block, token) step is one `asm!` block ([`crate::simd::columns::steps`], which says why).

use std::arch::x86_64::*;

use super::super::{
    bsums, f16_at, iq4_codes, iq4_table, iq4_xs_ls32, load128, load256, madd, q3_k_scales_vec, scales_mins_k4, top2,
};
use super::BlockUnits;
use crate::simd::act::BlockQ8K;
use crate::simd::columns::steps::{self, Cols};
use crate::simd::columns::{transpose4, transpose8};

/// The sub-block in u32 lane `k` of a transposed register: the nibble split
/// of four 32-byte rows of Q4_K codes gives sub-blocks 0, 2, 4, 6 (low
/// nibbles), then 1, 3, 5, 7 (high).
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// One activation block as the kernels here read it: the codes transposed
/// (see [`transpose`]), the group sums and scale, 32-byte aligned so that
/// no load of the token loop straddles a cache line (a `BlockQ8K`'s codes
/// sit at offset 4 of 292 bytes: half of their 32-byte loads do).
#[repr(C, align(32))]
pub(crate) struct TBlock {
    qs: [__m256i; 8],
    bsums: __m256i,
    /// Lane `k`: `d` times the sum of the 32 codes of sub-block `k` (in
    /// order, not [`ORDER`]). Q4_K / Q5_K's mins term is then one f32 FMA
    /// against the weight row's `dmin · m_k` per (block, token), instead of
    /// an integer multiply, a convert, a scalar product and an FMA.
    xsums: __m256,
    /// The activation scale in every lane, so that its product with the
    /// weight block's scale is one vector multiply (a scalar product would
    /// need a broadcast as well).
    d: __m256,
}

/// The tokens' blocks `x` as [`TBlock`]s at `p` (one per block, whatever
/// the row length `_nb`).
///
/// # Safety
/// The CPU runs AVX2; `p` has room for `x.len()` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn transpose_blocks(x: &[BlockQ8K], _nb: usize, p: *mut TBlock) {
    for (i, b) in x.iter().enumerate() {
        let bs = bsums(b);
        let d = _mm256_set1_ps(b.d);
        let xsums = _mm256_mul_ps(d, _mm256_cvtepi32_ps(madd(bs, _mm256_set1_epi16(1))));
        p.add(i).write(TBlock { qs: transpose(&b.qs), bsums: bs, xsums, d });
    }
}

/// 256 codes as eight rows (sub-blocks, in [`ORDER`]) of eight u32 columns,
/// column by column: 32-byte register `i` = bytes `4i..4i + 4` of each
/// sub-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose(qs: &[i8; 256]) -> [__m256i; 8] {
    let p = qs.as_ptr() as *const u8;
    transpose8(ORDER.map(|j| load256(p.add(32 * j))))
}

/// Q4_K (`FIVE` false) / Q5_K against activations from [`transpose_blocks`].
/// Q5_K's codes reach 31, so its i16 sums take four registers at a time
/// (4 * 2 * 31 * 127 = 31496 < 2^15) and two `vpmaddwd`.
pub(super) struct Q45K<const FIVE: bool>;

/// A Q4_K / Q5_K block as the token steps take it: the codes as eight
/// transposed columns (lane `k`: sub-block `ORDER[k]`), the lanes' scales as
/// i16 pairs, `dmin · m_k` and `d`.
#[repr(C, align(32))]
pub(crate) struct Unpacked45 {
    w: [__m256i; 8],
    scales: __m256i,
    mins: __m256,
    d: __m256,
}

impl<const FIVE: bool> BlockUnits for Q45K<FIVE> {
    type X = TBlock;
    type U = Unpacked45;
    const BYTES: usize = if FIVE { 176 } else { 144 };

    fn units(nb: usize) -> usize {
        nb
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, _nb: usize, i: usize) -> Unpacked45 {
        let b = row.add(i * Self::BYTES);
        let qs_at = if FIVE { 48 } else { 16 };
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        // Bytes of the scale of lane pair m's sub-block, ORDER[m], twice.
        let pick = _mm_setr_epi8(0, 0, 2, 2, 4, 4, 6, 6, 1, 1, 3, 3, 5, 5, 7, 7);
        // Q5_K: lane k's fifth bit is bit ORDER[k] of each byte of qh.
        let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        let (d, dmin) = (_mm256_set1_ps(f16_at(b)), f16_at(b.add(2)));
        let (sc, m) = scales_mins_k4(&*(b.add(4) as *const [u8; 12]));
        let scales = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(sc as i64), pick));
        // Rows p = 0..4 of 32 code bytes (low nibble sub-block 2p, high 2p + 1)
        // to columns, then split: low 128 bits sub-blocks 0, 2, 4, 6, high 1, 3, 5, 7.
        let q: [__m256i; 4] = std::array::from_fn(|p| load256(b.add(qs_at + 32 * p)));
        let (c04, c15, c26, c37) = transpose4(q[0], q[1], q[2], q[3]);
        let mut w = [_mm256_setzero_si256(); 8];
        for (k, c) in [c04, c15, c26, c37].into_iter().enumerate() {
            let lo = _mm256_and_si256(c, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(c), m4);
            w[k] = _mm256_permute2x128_si256::<0x20>(lo, hi);
            w[k + 4] = _mm256_permute2x128_si256::<0x31>(lo, hi);
        }
        if FIVE {
            // Column i's qh bytes are u32 lane i of qh: broadcast it, shift
            // each lane's bit down to bit 0 of every byte, move it to bit 4.
            let qh = load256(b.add(16));
            for (k, wk) in w.iter_mut().enumerate() {
                let h = _mm256_permutevar8x32_epi32(qh, _mm256_set1_epi32(k as i32));
                let h = _mm256_and_si256(_mm256_srlv_epi32(h, order), one);
                *wk = _mm256_or_si256(*wk, _mm256_slli_epi16::<4>(h));
            }
        }
        // Mins as f32 `dmin · m_k`, lane k, against each token's `xsums`.
        let m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m as i64));
        let mins = _mm256_mul_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(m32));
        Unpacked45 { w, scales, mins, d }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &Unpacked45, x: &TBlock, acc: &mut __m256) {
        let x = Cols { cols: x.qs.as_ptr(), sums: &x.xsums, d: &x.d };
        if FIVE {
            steps::q5_k(&u.w, u.scales, u.mins, u.d, x, acc);
        } else {
            steps::q4_k(&u.w, u.scales, u.mins, u.d, x, acc);
        }
    }
}

/// Q6_K against activations from [`transpose_blocks`]: each block's eight 32-value
/// runs of 6-bit codes assembled as in the plain kernel, then transposed.
/// Lane `k` of column `i` holds values `4i..4i + 4` of sub-block `ORDER[k]`: its
/// 16-value group is `2 ORDER[k]` for columns 0..4 and `2 ORDER[k] + 1` for
/// 4..8. Codes reach 63, so the i16 sums take two registers at a time
/// (2 * 2 * 63 * 127 = 32004 < 2^15): four `vpmaddwd` per (block, token)
/// instead of eight; the `- 32` through the group sums as before.
pub(super) struct Q6K;

/// A Q6_K or Q3_K block as [`steps::groups16`] takes it: the transposed
/// codes, the scales of the low and high columns and of the sixteen groups,
/// and `d`.
#[repr(C, align(32))]
pub(crate) struct Unpacked16 {
    w: [__m256i; 8],
    scales: [__m256i; 3],
    d: __m256,
}

impl BlockUnits for Q6K {
    type X = TBlock;
    type U = Unpacked16;
    const BYTES: usize = 210;

    fn units(nb: usize) -> usize {
        nb
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, _nb: usize, i: usize) -> Unpacked16 {
        let b = row.add(i * Self::BYTES);
        let m4 = _mm256_set1_epi8(0x0F);
        let d = _mm256_set1_ps(f16_at(b.add(208)));
        let sc = load128(b.add(192));
        let [sc_lo, sc_hi] = column_scales(sc);
        let sc16 = _mm256_cvtepi8_epi16(sc);
        // Run 4n + k of half n: low (k < 2) or high nibbles of ql bytes
        // 64n + 32 (k % 2).., topped by bit pair k of qh bytes 32n...
        let mut runs = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let ql0 = load256(b.add(64 * n));
            let ql1 = load256(b.add(64 * n + 32));
            let qh = load256(b.add(128 + 32 * n));
            runs[4 * n] = _mm256_or_si256(_mm256_and_si256(ql0, m4), top2(qh));
            runs[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), top2(_mm256_srli_epi16::<2>(qh)));
            runs[4 * n + 2] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), top2(_mm256_srli_epi16::<4>(qh)));
            runs[4 * n + 3] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), top2(_mm256_srli_epi16::<6>(qh)));
        }
        Unpacked16 { w: transpose8(ORDER.map(|j| runs[j])), scales: [sc_lo, sc_hi, sc16], d }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &Unpacked16, x: &TBlock, acc: &mut __m256) {
        let x = Cols { cols: x.qs.as_ptr(), sums: &x.bsums as *const __m256i as *const __m256, d: &x.d };
        steps::groups16::<5>(&u.w, u.scales, u.d, x, acc);
    }
}

/// The scales of the low (groups `2 ORDER[k]`) and high (`2 ORDER[k] + 1`)
/// columns from the sixteen i8 group scales `sc`, as i16 pairs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn column_scales(sc: __m128i) -> [__m256i; 2] {
    // Bytes of group 2 ORDER[k] (columns 0..4) and 2 ORDER[k] + 1, twice each.
    let pick_lo = _mm_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 2, 2, 6, 6, 10, 10, 14, 14);
    let pick_hi = _mm_add_epi8(pick_lo, _mm_set1_epi8(1));
    [_mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, pick_lo)), _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, pick_hi))]
}

/// Q3_K against activations from [`transpose_blocks`]: the codes `q2 + 4h`
/// (0..7) of each 32-value run assembled as in the plain kernel, then
/// transposed and stepped as Q6_K's, with the `- 4` through the group sums.
pub(super) struct Q3K;

impl BlockUnits for Q3K {
    type X = TBlock;
    type U = Unpacked16;
    const BYTES: usize = 110;

    fn units(nb: usize) -> usize {
        nb
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, _nb: usize, i: usize) -> Unpacked16 {
        let b = row.add(i * Self::BYTES);
        let m2 = _mm256_set1_epi8(3);
        let one = _mm256_set1_epi8(1);
        let sc = q3_k_scales_vec(b);
        let [sc_lo, sc_hi] = column_scales(sc);
        let hm = load256(b);
        // Run 4n + k: bit pair k of qs bytes 32n.., topped by bit 4n + k of hmask.
        let mut runs = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let qv = load256(b.add(32 + 32 * n));
            for k in 0..4 {
                let q2 = _mm256_and_si256(_mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * k as i32)), m2);
                let h = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * n + k) as i32)), one);
                runs[4 * n + k] = _mm256_or_si256(q2, _mm256_slli_epi16::<2>(h));
            }
        }
        let d = _mm256_set1_ps(f16_at(b.add(108)));
        Unpacked16 { w: transpose8(ORDER.map(|j| runs[j])), scales: [sc_lo, sc_hi, _mm256_cvtepi8_epi16(sc)], d }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &Unpacked16, x: &TBlock, acc: &mut __m256) {
        let x = Cols { cols: x.qs.as_ptr(), sums: &x.bsums as *const __m256i as *const __m256, d: &x.d };
        steps::groups16::<2>(&u.w, u.scales, u.d, x, acc);
    }
}

/// Q2_K against activations from [`transpose_blocks`]: the four 2-bit runs of
/// each half cut as in the plain kernel, transposed; scales and mins per
/// 16-value group as Q6_K's scales ([`steps::q2_k`]).
pub(super) struct Q2K;

/// A Q2_K block as [`steps::q2_k`] takes it: the transposed codes, the
/// scales of the low and high columns, the sixteen group mins, `d` and
/// `dmin`.
#[repr(C, align(32))]
pub(crate) struct Unpacked2 {
    w: [__m256i; 8],
    scales: [__m256i; 3],
    d: [__m256; 2],
}

impl BlockUnits for Q2K {
    type X = TBlock;
    type U = Unpacked2;
    const BYTES: usize = 84;

    fn units(nb: usize) -> usize {
        nb
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, _nb: usize, i: usize) -> Unpacked2 {
        let b = row.add(i * Self::BYTES);
        let m2 = _mm256_set1_epi8(3);
        let raw = load128(b);
        let [sc_lo, sc_hi] = column_scales(_mm_and_si128(raw, _mm_set1_epi8(0x0F)));
        let m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), _mm_set1_epi8(0x0F)));
        let mut runs = [_mm256_setzero_si256(); 8];
        for n in 0..2 {
            let qv = load256(b.add(16 + 32 * n));
            for k in 0..4 {
                runs[4 * n + k] = _mm256_and_si256(_mm256_srl_epi16(qv, _mm_cvtsi32_si128(2 * k as i32)), m2);
            }
        }
        let d = [_mm256_set1_ps(f16_at(b.add(80))), _mm256_set1_ps(f16_at(b.add(82)))];
        Unpacked2 { w: transpose8(ORDER.map(|j| runs[j])), scales: [sc_lo, sc_hi, m16], d }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &Unpacked2, x: &TBlock, acc: &mut __m256) {
        let x = Cols { cols: x.qs.as_ptr(), sums: &x.bsums as *const __m256i as *const __m256, d: &x.d };
        steps::q2_k(&u.w, u.scales, u.d, x, acc);
    }
}

/// IQ4_XS against activations from [`transpose_blocks`]: each sub-block's 32
/// codes looked up in the level table (low nibbles are values 0..16, high
/// 16..32), the sub-blocks in [`ORDER`] transposed to columns as the
/// activations are, so lane `k` of every column belongs to sub-block
/// `ORDER[k]`. The codes reach ±127, so each column's `vpmaddubsw` (sign
/// trick) goes to i32 on its own before the columns add; the lanes' scales
/// `d (ls - 32)` then multiply all eight sub-block sums at once.
pub(super) struct IQ4XS;

/// Signed codes as [`steps::signed`] takes them: the transposed columns'
/// absolute values (`aw`) and the codes themselves (`w`), and the lanes'
/// f32 scales.
#[repr(C, align(32))]
pub(crate) struct UnpackedSigned {
    pub(super) aw: [__m256i; 8],
    pub(super) w: [__m256i; 8],
    pub(super) scale: __m256,
}

impl BlockUnits for IQ4XS {
    type X = TBlock;
    type U = UnpackedSigned;
    const BYTES: usize = 136;

    fn units(nb: usize) -> usize {
        nb
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(row: *const u8, _nb: usize, i: usize) -> UnpackedSigned {
        let b = row.add(i * Self::BYTES);
        let table = iq4_table();
        let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        let ls = _mm256_permutevar8x32_epi32(iq4_xs_ls32(b), order);
        let scale = _mm256_mul_ps(_mm256_set1_ps(f16_at(b)), _mm256_cvtepi32_ps(ls));
        let w = transpose8(ORDER.map(|j| iq4_codes(table, b.add(8 + 16 * j))));
        UnpackedSigned { aw: w.map(|c| _mm256_sign_epi8(c, c)), w, scale }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &UnpackedSigned, x: &TBlock, acc: &mut __m256) {
        steps::signed(&u.aw, &u.w, u.scale, x.qs.as_ptr(), &x.d, acc);
    }
}
