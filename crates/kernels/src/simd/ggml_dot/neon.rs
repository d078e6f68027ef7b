//! NEON kernels for the ggml types (AArch64, baseline ARMv8.0 NEON).
//!
//! Weight codes are unpacked into signed bytes (every type's codes fit:
//! 4/5/6-bit codes are small and non-negative, Q8_0 / IQ4 codes are i8), and
//! multiplied with the activation codes by [`dot16`] (16 products summed
//! into 4 i32 lanes, exact). A (sub-)block's integer sum is then scaled
//! exactly where the scalar twin scales it, with the twin's f32 expression
//! in the twin's order: the integer sums being exact, this level returns the
//! twin's bits. (A horizontal add per block is the price; it is small next
//! to the unpacking.)

use std::arch::aarch64::*;

use qmoe_core::GgmlType;

use super::scalar::q3_k_scales;
use super::scales_mins_k4;
use crate::ggml::IQ4_LEVELS;
use crate::simd::act::{BlockQ8K, BlockQ8x32};
use crate::simd::neon::{dot16, dot32, f16_at};

/// The row loop, expanded inside each `#[target_feature]` entry point so
/// the per-type dot is inlined into it.
macro_rules! rows {
    ($w:expr, $x:expr, $y:expr, $ts:expr, $dot:ident) => {{
        let (w, x, y): (&[u8], _, &mut [f32]) = ($w, $x, $y);
        let row_bytes = x.len() * $ts;
        for (r, yr) in y.iter_mut().enumerate() {
            *yr = $dot(w.as_ptr().add(r * row_bytes), x);
        }
    }};
}

/// # Safety
/// The CPU runs NEON; `w` is exactly `y.len()` rows of `x.len()` blocks of
/// `ty`, which takes Q8K activations.
#[target_feature(enable = "neon")]
pub(super) unsafe fn gemv_q8k(ty: GgmlType, w: &[u8], x: &[BlockQ8K], y: &mut [f32]) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    gemv_table!(q8k: ty, w, x, y, GgmlType::IQ4XS => rows!(w, x, y, 136, dot_iq4_xs))
}

/// # Safety
/// As [`gemv_q8k`], for a type taking Q8x32 activations.
#[target_feature(enable = "neon")]
pub(super) unsafe fn gemv_q8x32(ty: GgmlType, w: &[u8], x: &[BlockQ8x32], y: &mut [f32]) {
    // SAFETY (each arm): the caller's contract, passed on unchanged.
    gemv_table!(q8x32: ty, w, x, y)
}

// ---- helpers ------------------------------------------------------------------

#[inline]
#[target_feature(enable = "neon")]
unsafe fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

/// 16 bytes of nibble pairs: (low nibbles, high nibbles).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// The IQ4 level table as one register, for `tbl` lookups.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn iq4_table() -> int8x16_t {
    vld1q_s8(IQ4_LEVELS.as_ptr())
}

/// Q5's fifth bits: bit `j` of the little-endian u32 at `p` becomes 0x10 in
/// byte `j` (values 0..16 in the first vector, 16..32 in the second).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn fifth_bits(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // Byte j takes byte j / 8 of the word, then tests bit j % 8 of it.
    const PICK_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    const PICK_HI: [u8; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let word = vreinterpretq_u8_u32(vdupq_n_u32((p as *const u32).read_unaligned()));
    let bit = vld1q_u8(BIT.as_ptr());
    let sixteen = vdupq_n_u8(0x10);
    let spread = |pick: &[u8; 16]| vandq_u8(vtstq_u8(vqtbl1q_u8(word, vld1q_u8(pick.as_ptr())), bit), sixteen);
    (spread(&PICK_LO), spread(&PICK_HI))
}

// ---- 32-value blocks (Q8x32 activations) --------------------------------------

/// The shared block loop, the twin's `dot32`: `codes(b)` gives the block's 32
/// codes as two signed 16-byte halves (values 0..16, 16..32), `$m` the
/// offset of `d q + m` types (`None` for symmetric ones).
macro_rules! blocks32 {
    ($row:expr, $x:expr, $ts:expr, |$b:ident| $codes:expr, $m:expr) => {{
        let (row, x): (*const u8, &[BlockQ8x32]) = ($row, $x);
        let (mut acc, mut offs) = (0.0f32, 0.0f32);
        for (i, xb) in x.iter().enumerate() {
            let $b = row.add(i * $ts);
            let (w0, w1): (int8x16_t, int8x16_t) = $codes;
            let s = vaddvq_s32(dot32(w0, w1, xb.qs.as_ptr()));
            acc += f16_at($b) * xb.d * s as f32;
            if let Some(m) = $m {
                offs += m * xb.sum;
            }
        }
        acc + offs
    }};
}

// Each `dot_*` below: # Safety: `row` points at `x.len()` readable blocks of
// the type, and the CPU runs NEON.

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q8_0(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    blocks32!(row, x, 34, |b| (vld1q_s8(b.add(2) as *const i8), vld1q_s8(b.add(18) as *const i8)), None::<f32>)
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q4_0(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    let eight = vdupq_n_s8(8);
    blocks32!(
        row,
        x,
        18,
        |b| {
            let (lo, hi) = nibbles(b.add(2));
            (vsubq_s8(s8(lo), eight), vsubq_s8(s8(hi), eight))
        },
        None::<f32>
    )
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q4_1(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    blocks32!(
        row,
        x,
        20,
        |b| {
            let (lo, hi) = nibbles(b.add(4));
            (s8(lo), s8(hi))
        },
        Some(f16_at(b.add(2)))
    )
}

/// Q5 codes `nibble | fifth bit << 4` from the nibbles at `b + qs_at` and
/// the bits at `b + qh_at`; with `signed`, minus 16.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q5_codes(b: *const u8, qh_at: usize, qs_at: usize, signed: bool) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = nibbles(b.add(qs_at));
    let (h0, h1) = fifth_bits(b.add(qh_at));
    let (lo, hi) = (s8(vorrq_u8(lo, h0)), s8(vorrq_u8(hi, h1)));
    if signed {
        let sixteen = vdupq_n_s8(16);
        (vsubq_s8(lo, sixteen), vsubq_s8(hi, sixteen))
    } else {
        (lo, hi)
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q5_0(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    blocks32!(row, x, 22, |b| q5_codes(b, 2, 6, true), None::<f32>)
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q5_1(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    blocks32!(row, x, 24, |b| q5_codes(b, 4, 8, false), Some(f16_at(b.add(2))))
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_iq4_nl(row: *const u8, x: &[BlockQ8x32]) -> f32 {
    let table = iq4_table();
    blocks32!(
        row,
        x,
        18,
        |b| {
            let (lo, hi) = nibbles(b.add(2));
            (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
        },
        None::<f32>
    )
}

// ---- 256-value super-blocks (Q8K activations) -----------------------------------

/// `Σ_g a[g] · bsums[g]` over the 16 group sums, `a` 16 i16 in two vectors.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_bsums(a0: int16x8_t, a1: int16x8_t, xb: &BlockQ8K) -> i32 {
    let b0 = vld1q_s16(xb.bsums.as_ptr());
    let b1 = vld1q_s16(xb.bsums.as_ptr().add(8));
    let s = vmull_s16(vget_low_s16(a0), vget_low_s16(b0));
    let s = vmlal_high_s16(s, a0, b0);
    let s = vmlal_s16(s, vget_low_s16(a1), vget_low_s16(b1));
    vaddvq_s32(vmlal_high_s16(s, a1, b1))
}

/// Q4_K / Q5_K: per pair of 32-value sub-blocks `2p`, `2p + 1`, 32 bytes of
/// nibbles (low: sub-block 2p, high: 2p + 1), plus Q5_K's fifth bits (bit
/// `j` of `qh[l]` tops value `l` of sub-block `j`).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q45_k<const FIVE: bool>(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let (ts, qs_at) = if FIVE { (176, 48) } else { (144, 16) };
    let sixteen = vdupq_n_u8(0x10);
    let mut acc = 0.0f32;
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * ts);
        let xq = xb.qs.as_ptr();
        let (sc, m) = scales_mins_k4(&*(b.add(4) as *const [u8; 12]));
        let qh = if FIVE { [vld1q_u8(b.add(16)), vld1q_u8(b.add(32))] } else { [vdupq_n_u8(0); 2] };
        let mut sumi = vdupq_n_s32(0);
        for p in 0..4 {
            let (lo0, hi0) = nibbles(b.add(qs_at + 32 * p));
            let (lo1, hi1) = nibbles(b.add(qs_at + 32 * p + 16));
            let (mut lo, mut hi) = ([lo0, lo1], [hi0, hi1]);
            if FIVE {
                let (bl, bh) = (vdupq_n_u8(1 << (2 * p)), vdupq_n_u8(2 << (2 * p)));
                for h in 0..2 {
                    lo[h] = vorrq_u8(lo[h], vandq_u8(vtstq_u8(qh[h], bl), sixteen));
                    hi[h] = vorrq_u8(hi[h], vandq_u8(vtstq_u8(qh[h], bh), sixteen));
                }
            }
            let s_lo = dot32(s8(lo[0]), s8(lo[1]), xq.add(64 * p));
            let s_hi = dot32(s8(hi[0]), s8(hi[1]), xq.add(64 * p + 32));
            sumi = vmlaq_n_s32(sumi, s_lo, (sc >> (16 * p)) as u8 as i32);
            sumi = vmlaq_n_s32(sumi, s_hi, (sc >> (16 * p + 8)) as u8 as i32);
        }
        // Min j against the sum of groups 2j, 2j + 1 (pairwise add: lane j).
        let b0 = vld1q_s16(xb.bsums.as_ptr());
        let b1 = vld1q_s16(xb.bsums.as_ptr().add(8));
        let pairs = vpaddq_s16(b0, b1);
        let mins = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(m)));
        let summ = vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(mins), vget_low_s16(pairs)), mins, pairs));
        let sumi = vaddvq_s32(sumi);
        acc += f16_at(b) * xb.d * sumi as f32;
        acc -= f16_at(b.add(2)) * xb.d * summ as f32;
    }
    acc
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q4_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    dot_q45_k::<false>(row, x)
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q5_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    dot_q45_k::<true>(row, x)
}

/// `v >> shift` per byte, `shift` known at run time only (`ushl` by a
/// negative count).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn shr(v: uint8x16_t, shift: usize) -> uint8x16_t {
    vshlq_u8(v, vdupq_n_s8(-(shift as i8)))
}

/// Q2_K: 16-value group `g = 8n + 2k + half` is bit pair `k` of the 16
/// bytes of `qs` at `32n + 16 half`; scale byte `g` holds the group's scale
/// (low nibble) and min (high nibble).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q2_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m3 = vdupq_n_u8(3);
    let mut acc = 0.0f32;
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 84);
        let xq = xb.qs.as_ptr();
        let raw = vld1q_u8(b);
        let sc = *(b as *const [u8; 16]);
        let mins = vshrq_n_u8::<4>(raw);
        let mins = (vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins))), vreinterpretq_s16_u16(vmovl_high_u8(mins)));
        let summ = dot_bsums(mins.0, mins.1, xb);
        let mut sumi = vdupq_n_s32(0);
        for n in 0..2 {
            for half in 0..2 {
                let q = vld1q_u8(b.add(16 + 32 * n + 16 * half));
                for k in 0..4 {
                    let g = 8 * n + 2 * k + half;
                    let codes = s8(vandq_u8(shr(q, 2 * k), m3));
                    let s = dot16(vdupq_n_s32(0), codes, vld1q_s8(xq.add(16 * g)));
                    sumi = vmlaq_n_s32(sumi, s, (sc[g] & 0xF) as i32);
                }
            }
        }
        let sumi = vaddvq_s32(sumi);
        acc += f16_at(b.add(80)) * xb.d * sumi as f32;
        acc -= f16_at(b.add(82)) * xb.d * summ as f32;
    }
    acc
}

/// Q3_K: Q2_K's code layout plus a third bit per value from `hmask` (bit
/// `4n + k` of the 16 bytes at `16 half` for group `8n + 2k + half`): codes
/// 0..8 multiplied as they are, the `- 4` taken off through the group sums.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q3_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m3 = vdupq_n_u8(3);
    let four = vdupq_n_u8(4);
    let mut acc = 0.0f32;
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 110);
        let xq = xb.qs.as_ptr();
        let scales = q3_k_scales(std::slice::from_raw_parts(b.add(96), 12));
        let sc = vld1q_s8(scales.as_ptr());
        let offs = dot_bsums(vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc), xb);
        let hm = [vld1q_u8(b), vld1q_u8(b.add(16))];
        let mut sumi = vdupq_n_s32(0);
        for n in 0..2 {
            for (half, &hm) in hm.iter().enumerate() {
                let q = vld1q_u8(b.add(32 + 32 * n + 16 * half));
                for k in 0..4 {
                    let g = 8 * n + 2 * k + half;
                    let low = vandq_u8(shr(q, 2 * k), m3);
                    let high = vandq_u8(vtstq_u8(hm, vdupq_n_u8(1 << (4 * n + k))), four);
                    let s = dot16(vdupq_n_s32(0), s8(vorrq_u8(low, high)), vld1q_s8(xq.add(16 * g)));
                    sumi = vmlaq_n_s32(sumi, s, scales[g] as i32);
                }
            }
        }
        let sumi = vaddvq_s32(sumi);
        acc += f16_at(b.add(108)) * xb.d * (sumi - 4 * offs) as f32;
    }
    acc
}

/// Q6_K: 16-value group `g = 8n + 2 part + half` takes the low or high
/// nibbles (`part / 2`) of 16 bytes of `ql` (at `64n + 32 (part % 2) + 16
/// half`) topped by bit pair `part` of 16 bytes of `qh` (at `32n + 16
/// half`): codes 0..64 multiplied as they are, the `- 32` taken off through
/// the group sums, as the twin does.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_q6_k(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let m4 = vdupq_n_u8(0x0F);
    let m30 = vdupq_n_u8(0x30);
    let mut acc = 0.0f32;
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 210);
        let xq = xb.qs.as_ptr();
        let sc = vld1q_s8(b.add(192) as *const i8);
        let sc_arr = *(b.add(192) as *const [i8; 16]);
        let offs = dot_bsums(vmovl_s8(vget_low_s8(sc)), vmovl_high_s8(sc), xb);
        let mut sumi = vdupq_n_s32(0);
        for n in 0..2 {
            for half in 0..2 {
                let ql = [vld1q_u8(b.add(64 * n + 16 * half)), vld1q_u8(b.add(64 * n + 32 + 16 * half))];
                let qh = vld1q_u8(b.add(128 + 32 * n + 16 * half));
                for part in 0..4 {
                    let q = ql[part % 2];
                    let nib = if part < 2 { vandq_u8(q, m4) } else { vshrq_n_u8::<4>(q) };
                    // Bit pair `part` of qh moved to bits 4..6 (a negative
                    // shift count shifts right).
                    let top = vandq_u8(vshlq_u8(qh, vdupq_n_s8(4 - 2 * part as i8)), m30);
                    let g = 8 * n + 2 * part + half;
                    let s = dot16(vdupq_n_s32(0), s8(vorrq_u8(nib, top)), vld1q_s8(xq.add(16 * g)));
                    sumi = vmlaq_n_s32(sumi, s, sc_arr[g] as i32);
                }
            }
        }
        let sumi = vaddvq_s32(sumi);
        acc += f16_at(b.add(208)) * xb.d * (sumi - 32 * offs) as f32;
    }
    acc
}

/// IQ4_XS: per 32-value sub-block `ib`, 16 bytes of nibbles (low: values
/// 0..16, high: 16..32) looked up in the level table, times `ls - 32`,
/// `ls` nibble `ib` of the u32 `scales_l` topped by bit pair `ib` of the
/// u16 `scales_h`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_iq4_xs(row: *const u8, x: &[BlockQ8K]) -> f32 {
    let table = iq4_table();
    let mut acc = 0.0f32;
    for (i, xb) in x.iter().enumerate() {
        let b = row.add(i * 136);
        let xq = xb.qs.as_ptr();
        let h = (b.add(2) as *const u16).read_unaligned() as u32;
        let l = (b.add(4) as *const u32).read_unaligned();
        let mut sumi = vdupq_n_s32(0);
        for ib in 0..8 {
            let ls = (((l >> (4 * ib)) & 0xF) | ((h >> (2 * ib)) & 3) << 4) as i32 - 32;
            let (lo, hi) = nibbles(b.add(8 + 16 * ib));
            let s = dot32(vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi), xq.add(32 * ib));
            sumi = vmlaq_n_s32(sumi, s, ls);
        }
        acc += f16_at(b) * xb.d * vaddvq_s32(sumi) as f32;
    }
    acc
}
