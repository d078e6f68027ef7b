//! ggml block formats (the tensors of GGUF files): a decoder for every
//! [`GgmlType`] and the reference quantizers a GGUF export needs.
//!
//! Layouts are ggml's `block_*` structs: a block is `type_size` bytes holding
//! `block_size` consecutive values of one row; multi-byte fields are
//! little-endian, scales are IEEE binary16 (`d`, `dmin`, `m`). Bytes are read
//! with `from_le_bytes`, so blocks may sit at any offset of an mmapped file.
//!
//! Numerics of the decoders: each value is formed exactly as ggml's
//! `dequantize_row_*` (and gguf-py's `dequantize`) forms it, in f32 and in the
//! same order: the sub-block scale first (`d * sc`), then times the quant, then
//! the min subtracted (`- dmin * m`) or the offset added (`+ m`); never fused.
//! So decoded values are bit-identical to theirs.
//!
//! Numerics of the quantizers: they follow the `quantize_row_*_ref` functions
//! (what `llama-quantize` runs without an importance matrix) operation by
//! operation in f32: `nearest_int`'s round-half-to-even, `roundf`'s
//! half-away-from-zero, truncating casts, and every sum accumulated in the
//! reference's order. Rust never contracts `a * b + c` into an FMA, so the
//! bytes equal those of a reference built without FMA contraction (the
//! portable x86-64 default, as llama-cpp-python builds ggml-base); a build
//! that contracts could differ in rare near-ties.

use half::{bf16, f16};
use qmoe_core::GgmlType;

/// Values per K-quant super-block (`QK_K`).
const QK_K: usize = 256;

/// The 16 levels of IQ4_NL / IQ4_XS (`kvalues_iq4nl`), a non-linear 4-bit grid.
pub(crate) const IQ4_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Decodes whole blocks: `bytes` holds `out.len() / block_size` blocks of `ty`.
///
/// # Panics
/// If `out.len()` is not a whole number of blocks or `bytes` is not exactly
/// their size (a caller's shape bug; the byte *contents* never panic).
pub fn decode_blocks(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    assert!(
        out.len().is_multiple_of(bs) && bytes.len() == out.len() / bs * ts,
        "decode_blocks: {} bytes do not hold {} {ty} values",
        bytes.len(),
        out.len()
    );
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    let decode: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, o| o[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        GgmlType::Q4_0 => decode_q4_0,
        GgmlType::Q4_1 => decode_q4_1,
        GgmlType::Q5_0 => decode_q5_0,
        GgmlType::Q5_1 => decode_q5_1,
        GgmlType::Q8_0 => decode_q8_0,
        GgmlType::Q2K => decode_q2_k,
        GgmlType::Q3K => decode_q3_k,
        GgmlType::Q4K => decode_q4_k,
        GgmlType::Q5K => decode_q5_k,
        GgmlType::Q6K => decode_q6_k,
        GgmlType::IQ4NL => decode_iq4_nl,
        GgmlType::IQ4XS => decode_iq4_xs,
    };
    for (b, o) in blocks {
        decode(b, o);
    }
}

/// The f16 at byte offset `i`, widened (exactly) to f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

// ---- 32-value blocks -------------------------------------------------------
// Value `j < 16` sits in the low nibble of `qs[j]`, value `j + 16` in its high
// nibble; Q5's fifth bits are bit `j` of the little-endian u32 `qh`.

/// Q4_0 `{ d: f16, qs: [u8; 16] }`: `(q - 8) * d`.
fn decode_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        o[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1 `{ d: f16, m: f16, qs: [u8; 16] }`: `d * q + m`.
fn decode_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        o[j] = d * (q & 0xF) as f32 + m;
        o[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0 `{ d: f16, qh: u32, qs: [u8; 16] }`: `(q - 16) * d`.
fn decode_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let lo = (q & 0xF) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = (lo as i32 - 16) as f32 * d;
        o[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

/// Q5_1 `{ d: f16, m: f16, qh: u32, qs: [u8; 16] }`: `d * q + m`.
fn decode_q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let lo = (q & 0xF) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

/// Q8_0 `{ d: f16, qs: [i8; 32] }`: `q * d`.
fn decode_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// IQ4_NL `{ d: f16, qs: [u8; 16] }`: `d * IQ4_LEVELS[q]`.
fn decode_iq4_nl(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        o[j] = d * IQ4_LEVELS[(q & 0xF) as usize] as f32;
        o[j + 16] = d * IQ4_LEVELS[(q >> 4) as usize] as f32;
    }
}

// ---- 256-value super-blocks (K-quants, IQ4_XS) -----------------------------
// Quants are packed in 128-value halves: a byte holds one value of each of
// 2 (4-bit) or 4 (2-bit) consecutive 32-value runs, lowest bits first.

/// Scale and min of 32-value sub-block `j` (0..8) from Q4_K / Q5_K's 12 bytes:
/// bytes 0..4 hold scales 0..4 (low 6 bits), 4..8 mins 0..4, 8..12 the low
/// nibbles of scales / mins 4..8, whose top 2 bits are the top bits of 0..8.
#[inline]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | (s[j - 4] >> 6) << 4, (s[j + 4] >> 4) | (s[j] >> 6) << 4)
    }
}

/// Q2_K `{ scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }`, 16-value
/// groups: `d * (sc & 0xF) * q - dmin * (sc >> 4)`, q 2 bits.
fn decode_q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (g, og) in o.chunks_exact_mut(16).enumerate() {
        let sc = scales[g];
        let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
        // Group g: half g / 8, bit pair (g % 8) / 2, bytes (g % 2) * 16 ..
        let shift = (g % 8) / 2 * 2;
        let q = &qs[g / 8 * 32 + g % 2 * 16..][..16];
        for (o, &q) in og.iter_mut().zip(q) {
            *o = dl * ((q >> shift) & 3) as f32 - ml;
        }
    }
}

/// Q3_K `{ hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }`, 16-value
/// groups: `d * (sc - 32) * (q - 4 * !h)`, q 2 bits, h the group's hmask bit.
fn decode_q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    for (g, og) in o.chunks_exact_mut(16).enumerate() {
        // 6-bit scale: low nibble from bytes 0..8 (groups 8.. use the high
        // nibble), top 2 bits from byte 8 + g % 4 at bit pair g / 4.
        let low = if g < 8 { sc[g] & 0xF } else { sc[g - 8] >> 4 };
        let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        let dl = d * ((low | high << 4) as i32 - 32) as f32;
        let shift = (g % 8) / 2 * 2;
        let l0 = g % 2 * 16;
        let q = &qs[g / 8 * 32 + l0..][..16];
        // Value e's high bit is bit e / 32 of hmask[e % 32]; set means no -4.
        let h = &hmask[l0..l0 + 16];
        for ((o, &q), &h) in og.iter_mut().zip(q).zip(h) {
            let v = ((q >> shift) & 3) as i32 - if (h >> (g / 2)) & 1 != 0 { 0 } else { 4 };
            *o = dl * v as f32;
        }
    }
}

/// Q4_K `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`, 32-value
/// sub-blocks: `d * sc * q - dmin * m`, q 4 bits.
fn decode_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (j, oj) in o.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let shift = j % 2 * 4;
        for (o, &q) in oj.iter_mut().zip(&qs[j / 2 * 32..][..32]) {
            *o = d1 * ((q >> shift) & 0xF) as f32 - m1;
        }
    }
}

/// Q5_K `{ d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`:
/// as Q4_K with a fifth bit, bit `j` of `qh[l]` for value `l` of sub-block `j`.
fn decode_q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (j, oj) in o.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let shift = j % 2 * 4;
        for ((o, &q), &h) in oj.iter_mut().zip(&qs[j / 2 * 32..][..32]).zip(qh) {
            let v = ((q >> shift) & 0xF) as u32 + ((h >> j) & 1) as u32 * 16;
            *o = d1 * v as f32 - m1;
        }
    }
}

/// Q6_K `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`, 16-value
/// groups: `d * sc * (q - 32)`, q 6 bits (4 from ql, 2 from qh).
fn decode_q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (g, og) in o.chunks_exact_mut(16).enumerate() {
        let dl = d * (sc[g] as i8) as f32;
        // Group g: half n, 32-value run `part` of it, values l0 .. l0 + 16 of
        // the run. Runs 0/1 use ql's low nibbles (bytes 0..32 / 32..64 of the
        // half), runs 2/3 the high ones; qh holds the runs' bit pairs.
        let (n, part, l0) = (g / 8, (g % 8) / 2, g % 2 * 16);
        let lo = &ql[n * 64 + part % 2 * 32 + l0..][..16];
        let hi = &qh[n * 32 + l0..][..16];
        let lo_shift = part / 2 * 4;
        for ((o, &lo), &hi) in og.iter_mut().zip(lo).zip(hi) {
            let q = ((lo >> lo_shift) & 0xF) | ((hi >> (2 * part)) & 3) << 4;
            *o = dl * (q as i32 - 32) as f32;
        }
    }
}

/// IQ4_XS `{ d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128] }`,
/// 32-value sub-blocks: `d * (ls - 32) * IQ4_LEVELS[q]`, ls 6 bits (low nibble
/// from scales_l, top 2 from scales_h), values laid out as IQ4_NL blocks.
fn decode_iq4_xs(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (ib, oi) in o.chunks_exact_mut(32).enumerate() {
        let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32 | (((scales_h >> (2 * ib)) & 3) as i32) << 4;
        let dl = d * (ls - 32) as f32;
        for (j, &q) in qs[ib * 16..][..16].iter().enumerate() {
            oi[j] = dl * IQ4_LEVELS[(q & 0xF) as usize] as f32;
            oi[j + 16] = dl * IQ4_LEVELS[(q >> 4) as usize] as f32;
        }
    }
}

// ---- Reference quantizers ---------------------------------------------------

/// A quantizer: `x` a whole number of blocks, `out` exactly their bytes.
pub type Quantizer = fn(&[f32], &mut [u8]);

/// The reference quantizer of `ty`, where qmoe has one (the float types,
/// Q4_0, Q8_0, Q4_K, Q6_K).
pub fn quantizer(ty: GgmlType) -> Option<Quantizer> {
    Some(match ty {
        GgmlType::F32 => quantize_f32,
        GgmlType::F16 => quantize_f16,
        GgmlType::BF16 => quantize_bf16,
        GgmlType::Q4_0 => quantize_q4_0,
        GgmlType::Q8_0 => quantize_q8_0,
        GgmlType::Q4K => quantize_q4_k,
        GgmlType::Q6K => quantize_q6_k,
        _ => return None,
    })
}

/// Checks the caller's shapes: `x` whole blocks, `out` their bytes.
fn blocks_of(ty: GgmlType, x: &[f32], out: &[u8]) -> usize {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    assert!(
        x.len().is_multiple_of(bs) && out.len() == x.len() / bs * ts,
        "quantize {ty}: {} values into {} bytes",
        x.len(),
        out.len()
    );
    x.len() / bs
}

/// f32 as little-endian bytes (GGUF F32).
pub fn quantize_f32(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::F32, x, out);
    for (o, v) in out.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// f16, round to nearest even (ggml's `GGML_FP32_TO_FP16`).
pub fn quantize_f16(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::F16, x, out);
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

/// bf16 as ggml's `ggml_compute_fp32_to_bf16`: round to nearest even on the
/// bits, NaN kept NaN with the quiet bit forced.
pub fn quantize_bf16(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::BF16, x, out);
    for (o, v) in out.chunks_exact_mut(2).zip(x) {
        let u = v.to_bits();
        let h = if u & 0x7FFF_FFFF > 0x7F80_0000 {
            (u >> 16) | 64
        } else {
            ((u as u64 + 0x7FFF + ((u >> 16) & 1) as u64) >> 16) as u32
        };
        o.copy_from_slice(&(h as u16).to_le_bytes());
    }
}

fn put_f16(out: &mut [u8], at: usize, v: f32) {
    out[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// C's `MAX(a, b)`: `a > b ? a : b` (NaN-propagating as the reference is).
#[inline]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `quantize_row_q8_0_ref`: `d = amax / 127`, `q = roundf(x / d)` (computed
/// as `x * (1 / d)`), half away from zero.
pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::Q8_0, x, out);
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0.0f32, |a, v| c_max(a, v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(y, 0, d);
        for (q, &v) in y[2..].iter_mut().zip(xb) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// `quantize_row_q4_0_ref`: `d = max / -8` with `max` the signed value of
/// largest magnitude (first one on ties), `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::Q4_0, x, out);
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(y, 0, d);
        for j in 0..16 {
            let q0 = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((xb[j + 16] * id + 8.5) as i8).min(15) as u8;
            y[2 + j] = q0 | q1 << 4;
        }
    }
}

/// ggml's `nearest_int`: round half to even via the 1.5 * 2^23 trick (exact
/// for |v| <= 2^22 - 1; kept literal so out-of-range inputs agree too).
#[inline]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007F_FFFF) - 0x0040_0000
}

/// `make_qkx2_quants`: asymmetric `n`-value quantization to `0..=nmax`,
/// trying `nstep + 1` scales around `nmax / (max - min)` and keeping the one
/// with least weighted squared error (least squares for scale and min each
/// try). Writes the levels to `l`, returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)] // the reference's parameters, one to one
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let wl = w * q as f32;
            sum_l += wl;
            sum_l2 += wl * q as f32;
            sum_xl += wl * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `quantize_row_q4_K_ref`: per 32-value sub-block a `make_qkx2_quants`
/// (weights `rms + |x|`, 21 tries), then scales and mins quantized to 6 bits
/// against the block maxima, then the 4-bit levels recomputed from the
/// quantized scales.
pub fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::Q4K, x, out);
    for (xb, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)) {
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 32];
        let mut weights = [0.0f32; 32];
        let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (scale, min) =
                make_qkx2_quants(xs, &weights, 15, &mut l[32 * j..32 * j + 32], &mut laux, -1.0, 0.1, 20);
            (scales[j], mins[j]) = (scale, min);
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let sc = &mut y[4..16];
        for j in 0..8 {
            // `uint8_t ls = nearest_int(..)` wraps before the MIN, as in C.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xF) | (lm & 0xF) << 4;
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        put_f16(y, 0, max_scale / 63.0);
        put_f16(y, 2, max_min / 63.0);
        let (d_all, dmin_all) = (f16_at(y, 0), f16_at(y, 2));
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &y[4..16]);
            let d = d_all * s as f32;
            if d == 0.0 {
                continue; // keeps make_qkx2_quants' levels, as the reference does
            }
            let dm = dmin_all * m as f32;
            for i in 32 * j..32 * j + 32 {
                l[i] = nearest_int((xb[i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        let qs = &mut y[16..144];
        for c in 0..4 {
            for i in 0..32 {
                qs[c * 32 + i] = l[c * 64 + i] | l[c * 64 + i + 32] << 4;
            }
        }
    }
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights: symmetric
/// `n`-value quantization to `-nmax..nmax`, weights `x^2`, trying 19 scales
/// around `-nmax / max` and keeping the best least-squares fit. Writes
/// `l + nmax` to `levels`, returns the scale.
fn make_qx_quants(x: &[f32], nmax: i32, levels: &mut [i8]) -> f32 {
    /// ggml's `GROUP_MAX_EPS`: below this a group counts as all zero.
    const GROUP_MAX_EPS: f32 = 1e-15;
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Sums of w*x*l and w*l*l, w = x*x, in the reference's association.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (o, &v) in levels.iter_mut().zip(x) {
        *o = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in levels.iter_mut().zip(x) {
                *o = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref`: per 16-value group a `make_qx_quants` to
/// `-32..32`, the group scales quantized to i8 against the one of largest
/// magnitude (`d = max_scale / -128`), then the 6-bit levels recomputed from
/// the quantized scales.
pub fn quantize_q6_k(x: &[f32], out: &mut [u8]) {
    blocks_of(GgmlType::Q6K, x, out);
    for (xb, y) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..16 {
            let scale = make_qx_quants(&xb[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < 1e-15 {
            y.fill(0); // all-zero block, d = +0
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(y, 208, 1.0 / iscale);
        for ib in 0..16 {
            // `int8_t = MIN(127, nearest_int(..))`: the store wraps as in C.
            y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        let d_all = f16_at(y, 208);
        for j in 0..16 {
            let d = d_all * (y[192 + j] as i8) as f32;
            if d == 0.0 {
                continue; // keeps make_qx_quants' levels, as the reference does
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(xb[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let (ql, qh) = y[..192].split_at_mut(128);
        for n in 0..2 {
            let (ql, qh, l) = (&mut ql[n * 64..n * 64 + 64], &mut qh[n * 32..n * 32 + 32], &l[n * 128..n * 128 + 128]);
            for i in 0..32 {
                let q = [l[i] as u8, l[i + 32] as u8, l[i + 64] as u8, l[i + 96] as u8];
                ql[i] = (q[0] & 0xF) | (q[2] & 0xF) << 4;
                ql[i + 32] = (q[1] & 0xF) | (q[3] & 0xF) << 4;
                qh[i] = q[0] >> 4 | (q[1] >> 4) << 2 | (q[2] >> 4) << 4 | (q[3] >> 4) << 6;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (v, want) in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-3.51, -4), (63.0, 63)] {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }

    #[test]
    fn q4_k_scale_packing_round_trips() {
        // Pack 8 (scale, min) pairs the way quantize_q4_k does, read them back.
        let pairs: [(u8, u8); 8] = [(0, 63), (1, 62), (33, 17), (63, 0), (48, 5), (16, 47), (31, 32), (62, 1)];
        let mut s = [0u8; 12];
        for (j, &(ls, lm)) in pairs.iter().enumerate() {
            if j < 4 {
                s[j] = ls;
                s[j + 4] = lm;
            } else {
                s[j + 4] = (ls & 0xF) | (lm & 0xF) << 4;
                s[j - 4] |= (ls >> 4) << 6;
                s[j] |= (lm >> 4) << 6;
            }
        }
        for (j, &p) in pairs.iter().enumerate() {
            assert_eq!(scale_min_k4(j, &s), p, "sub-block {j}");
        }
    }
}
