//! Portable twins of the SIMD kernels: plain Rust, the same integer sums per
//! (sub-)block as the SIMD levels, scaled in f32 in the same way.
//!
//! Bit layouts are those of [`crate::ggml`]'s decoders (see the `decode_*`
//! functions there); this file only regroups the arithmetic so the codes
//! meet the activation codes before any scale does.

use qmoe_core::GgmlType;

use crate::ggml::{f16_at, scale_min_k4, IQ4_LEVELS};
use crate::simd::act::{BlockQ8K, BlockQ8x32};

pub(super) fn gemv_q8k(ty: GgmlType, w: &[u8], x: &[BlockQ8K], y: &mut [f32]) {
    let dot: fn(&[u8], &[BlockQ8K]) -> f32 = match ty {
        GgmlType::Q2K => dot_q2_k,
        GgmlType::Q3K => dot_q3_k,
        GgmlType::Q4K => dot_q4_k,
        GgmlType::Q5K => dot_q5_k,
        GgmlType::Q6K => dot_q6_k,
        GgmlType::IQ4XS => dot_iq4_xs,
        _ => unreachable!("gemv_q8k: {ty} (checked by the caller)"),
    };
    rows(w, x, y, dot);
}

pub(super) fn gemv_q8x32(ty: GgmlType, w: &[u8], x: &[BlockQ8x32], y: &mut [f32]) {
    let dot: fn(&[u8], &[BlockQ8x32]) -> f32 = match ty {
        GgmlType::Q8_0 => |r, x| dot32(r, x, 34, unpack_q8_0),
        GgmlType::Q4_0 => |r, x| dot32(r, x, 18, unpack_q4_0),
        GgmlType::Q4_1 => |r, x| dot32(r, x, 20, unpack_q4_1),
        GgmlType::Q5_0 => |r, x| dot32(r, x, 22, unpack_q5_0),
        GgmlType::Q5_1 => |r, x| dot32(r, x, 24, unpack_q5_1),
        GgmlType::IQ4NL => |r, x| dot32(r, x, 18, unpack_iq4_nl),
        _ => unreachable!("gemv_q8x32: {ty} (checked by the caller)"),
    };
    rows(w, x, y, dot);
}

/// Splits `w` into `y.len()` equal rows and dots each with `x`.
fn rows<B>(w: &[u8], x: &[B], y: &mut [f32], dot: fn(&[u8], &[B]) -> f32) {
    if y.is_empty() {
        return;
    }
    let row_bytes = w.len() / y.len();
    if row_bytes == 0 {
        y.fill(0.0);
        return;
    }
    for (yr, row) in y.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *yr = dot(row, x);
    }
}

/// `Σ a[i] · b[i]` over equal-length code slices, in i32 (exact).
#[inline]
fn idot(a: impl IntoIterator<Item = i32>, b: &[i8]) -> i32 {
    a.into_iter().zip(b).map(|(a, &b)| a * b as i32).sum()
}

// ---- 32-value blocks ---------------------------------------------------------

/// A 32-value block as integer codes: value `i` is `d · q[i] (+ m)`.
struct Codes32 {
    d: f32,
    /// The offset of `d q + m` types (Q4_1, Q5_1); `None` for symmetric ones.
    m: Option<f32>,
    q: [i8; 32],
}

/// Blocks of `ts` bytes: `Σ_b d_w d_x Σ q_w q_x`, plus `Σ_b m · sum` kept
/// apart and added last (as the SIMD levels do).
fn dot32(row: &[u8], x: &[BlockQ8x32], ts: usize, unpack: fn(&[u8]) -> Codes32) -> f32 {
    let (mut acc, mut offs) = (0.0f32, 0.0f32);
    for (b, xb) in row.chunks_exact(ts).zip(x) {
        let c = unpack(b);
        let s = idot(c.q.iter().map(|&q| q as i32), &xb.qs);
        acc += c.d * xb.d * s as f32;
        if let Some(m) = c.m {
            offs += m * xb.sum;
        }
    }
    acc + offs
}

/// Nibble pairs: value `j` in the low nibble of `qs[j]`, `j + 16` in the high.
fn nibbles(qs: &[u8], q: &mut [i8; 32], map: impl Fn(u8) -> i8) {
    for (j, &b) in qs[..16].iter().enumerate() {
        q[j] = map(b & 0xF);
        q[j + 16] = map(b >> 4);
    }
}

/// Q5's fifth bit of value `j`: bit `j` of the little-endian u32 at `b[at..]`.
fn fifth_bits(b: &[u8], at: usize, q: &mut [i8; 32]) {
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    for (j, q) in q.iter_mut().enumerate() {
        *q |= (((qh >> j) & 1) << 4) as i8;
    }
}

fn unpack_q8_0(b: &[u8]) -> Codes32 {
    let mut q = [0i8; 32];
    for (q, &v) in q.iter_mut().zip(&b[2..34]) {
        *q = v as i8;
    }
    Codes32 { d: f16_at(b, 0), m: None, q }
}

fn unpack_q4_0(b: &[u8]) -> Codes32 {
    let mut q = [0i8; 32];
    nibbles(&b[2..], &mut q, |n| n as i8 - 8);
    Codes32 { d: f16_at(b, 0), m: None, q }
}

fn unpack_q4_1(b: &[u8]) -> Codes32 {
    let mut q = [0i8; 32];
    nibbles(&b[4..], &mut q, |n| n as i8);
    Codes32 { d: f16_at(b, 0), m: Some(f16_at(b, 2)), q }
}

fn unpack_q5_0(b: &[u8]) -> Codes32 {
    let mut q = [0i8; 32];
    nibbles(&b[6..], &mut q, |n| n as i8);
    fifth_bits(b, 2, &mut q);
    for q in &mut q {
        *q -= 16;
    }
    Codes32 { d: f16_at(b, 0), m: None, q }
}

fn unpack_q5_1(b: &[u8]) -> Codes32 {
    let mut q = [0i8; 32];
    nibbles(&b[8..], &mut q, |n| n as i8);
    fifth_bits(b, 4, &mut q);
    Codes32 { d: f16_at(b, 0), m: Some(f16_at(b, 2)), q }
}

fn unpack_iq4_nl(b: &[u8]) -> Codes32 {
    let mut q = [0i8; 32];
    nibbles(&b[2..], &mut q, |n| IQ4_LEVELS[n as usize]);
    Codes32 { d: f16_at(b, 0), m: None, q }
}

// ---- 256-value super-blocks -----------------------------------------------------

/// Activation code sum of 16-value group `g`.
#[inline]
fn bsum(xb: &BlockQ8K, g: usize) -> i32 {
    xb.bsums[g] as i32
}

/// Q2_K: `d_x (d Σ_g (sc_g & 15) S_g - dmin Σ_g (sc_g >> 4) B_g)` over 16-value groups.
fn dot_q2_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (b, xb) in row.chunks_exact(84).zip(x) {
        let (scales, qs) = (&b[..16], &b[16..80]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for (g, &sc) in scales.iter().enumerate() {
            let shift = (g % 8) / 2 * 2;
            let q = &qs[g / 8 * 32 + g % 2 * 16..][..16];
            let s = idot(q.iter().map(|&q| ((q >> shift) & 3) as i32), &xb.qs[16 * g..16 * g + 16]);
            sumi += (sc & 0xF) as i32 * s;
            summ += (sc >> 4) as i32 * bsum(xb, g);
        }
        acc += f16_at(b, 80) * xb.d * sumi as f32;
        acc -= f16_at(b, 82) * xb.d * summ as f32;
    }
    acc
}

/// Q3_K's 16 signed 6-bit group scales (`sc - 32`) from its 12 scale bytes,
/// a word at a time: the low nibbles of bytes 0..8 are groups 0..8, their
/// high nibbles groups 8..16; byte `8 + g % 4` holds group `g`'s top two
/// bits at bit pair `g / 4`. (A unit test checks it against that rule
/// applied byte by byte.)
#[inline]
pub(super) fn q3_k_scales(sc: &[u8]) -> [i8; 16] {
    const LOW4: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let a = u64::from_le_bytes(sc[..8].try_into().expect("8 bytes"));
    let h = u32::from_le_bytes(sc[8..12].try_into().expect("4 bytes"));
    let top = |s0: u32, s1: u32| ((h >> s0) & TOP2) as u64 | (((h >> s1) & TOP2) as u64) << 32;
    let lo = (a & LOW4) | top(0, 2) << 4;
    let hi = ((a >> 4) & LOW4) | top(4, 6) << 4;
    let mut out = [0i8; 16];
    for (o, v) in out.iter_mut().zip(lo.to_le_bytes().into_iter().chain(hi.to_le_bytes())) {
        *o = v as i8 - 32;
    }
    out
}

/// Q3_K: codes `q3 = q2 + 4 h` (0..8) multiplied unsigned, the `- 4` offset
/// taken through the group sums: `d d_x Σ_g s_g (S_g - 4 B_g)`.
fn dot_q3_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (b, xb) in row.chunks_exact(110).zip(x) {
        let (hmask, qs) = (&b[..32], &b[32..96]);
        let scales = q3_k_scales(&b[96..108]);
        let (mut sumi, mut offs) = (0i32, 0i32);
        for (g, &s) in scales.iter().enumerate() {
            let shift = (g % 8) / 2 * 2;
            let l0 = g % 2 * 16;
            let q = qs[g / 8 * 32 + l0..][..16].iter().zip(&hmask[l0..l0 + 16]);
            let codes = q.map(|(&q, &h)| ((q >> shift) & 3) as i32 + 4 * ((h >> (g / 2)) & 1) as i32);
            sumi += s as i32 * idot(codes, &xb.qs[16 * g..16 * g + 16]);
            offs += s as i32 * bsum(xb, g);
        }
        acc += f16_at(b, 108) * xb.d * (sumi - 4 * offs) as f32;
    }
    acc
}

/// Q4_K / Q5_K, 32-value sub-blocks `j` of 4-bit codes (plus a fifth bit from
/// `qh` for Q5_K): `d_x (d Σ_j sc_j S_j - dmin Σ_j m_j B_j)`.
fn dot_q45_k(row: &[u8], x: &[BlockQ8K], five: bool) -> f32 {
    let (ts, qs_at) = if five { (176, 48) } else { (144, 16) };
    let mut acc = 0.0f32;
    for (b, xb) in row.chunks_exact(ts).zip(x) {
        let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[qs_at..qs_at + 128]);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, scales);
            let shift = j % 2 * 4;
            let q = qs[j / 2 * 32..][..32].iter().zip(qh);
            let codes =
                q.map(|(&q, &h)| ((q >> shift) & 0xF) as i32 + if five { 16 * ((h >> j) & 1) as i32 } else { 0 });
            sumi += sc as i32 * idot(codes, &xb.qs[32 * j..32 * j + 32]);
            summ += m as i32 * (bsum(xb, 2 * j) + bsum(xb, 2 * j + 1));
        }
        acc += f16_at(b, 0) * xb.d * sumi as f32;
        acc -= f16_at(b, 2) * xb.d * summ as f32;
    }
    acc
}

fn dot_q4_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    dot_q45_k(row, x, false)
}

fn dot_q5_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    dot_q45_k(row, x, true)
}

/// Q6_K: 6-bit codes (0..64) multiplied unsigned, the `- 32` offset taken
/// through the group sums: `d d_x Σ_g sc_g (S_g - 32 B_g)`.
fn dot_q6_k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (b, xb) in row.chunks_exact(210).zip(x) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let (mut sumi, mut offs) = (0i32, 0i32);
        for (g, &s) in sc.iter().enumerate() {
            let s = s as i8 as i32;
            let (n, part, l0) = (g / 8, (g % 8) / 2, g % 2 * 16);
            let lo = &ql[n * 64 + part % 2 * 32 + l0..][..16];
            let hi = &qh[n * 32 + l0..][..16];
            let codes = lo
                .iter()
                .zip(hi)
                .map(|(&lo, &hi)| (((lo >> (part / 2 * 4)) & 0xF) | ((hi >> (2 * part)) & 3) << 4) as i32);
            sumi += s * idot(codes, &xb.qs[16 * g..16 * g + 16]);
            offs += s * bsum(xb, g);
        }
        acc += f16_at(b, 208) * xb.d * (sumi - 32 * offs) as f32;
    }
    acc
}

/// IQ4_XS's 8 signed 6-bit sub-block scales (`ls - 32`).
fn iq4_xs_scales(b: &[u8]) -> [i16; 8] {
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let mut out = [0i16; 8];
    for (ib, o) in out.iter_mut().enumerate() {
        let ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) as i16 | (((scales_h >> (2 * ib)) & 3) as i16) << 4;
        *o = ls - 32;
    }
    out
}

/// IQ4_XS: `d d_x Σ_j (ls_j - 32) Σ IQ4_LEVELS[q] q_x` over 32-value sub-blocks.
fn dot_iq4_xs(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (b, xb) in row.chunks_exact(136).zip(x) {
        let scales = iq4_xs_scales(b);
        let mut sumi = 0i32;
        for (ib, &ls) in scales.iter().enumerate() {
            let mut q = [0i8; 32];
            nibbles(&b[8 + 16 * ib..], &mut q, |n| IQ4_LEVELS[n as usize]);
            sumi += ls as i32 * idot(q.iter().map(|&q| q as i32), &xb.qs[32 * ib..32 * ib + 32]);
        }
        acc += f16_at(b, 0) * xb.d * sumi as f32;
    }
    acc
}
