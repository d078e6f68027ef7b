//! Decoding of quantized weight rows: FP8 E4M3 with block scales (HF FP8
//! releases, spec §4.4) and MLX affine quantization (spec §4.6).
//!
//! Each decoder widens a run of columns of *one* row into an f32 slice the
//! caller owns (the matmul's stack block), so nothing is allocated and no
//! matrix is ever dequantised whole. [`crate::linear`] picks the decoder; this
//! module knows only the bit layouts.
//!
//! Numerics follow the reference dequantisation exactly, in f32:
//! FP8 `f32(code) * scale` (one multiply), affine `scale * q + bias` (a
//! multiply then an add, never fused), so a decoded value is bit-identical to
//! what a dequantise-then-matmul reference computes.
//!
//! Byte slices carry no alignment requirement: every word and scale is read
//! with `from_le_bytes`, so tensors may sit anywhere in an mmapped file.

use half::{bf16, f16};
use qmoe_core::dtype::DType;
use qmoe_core::GgmlType;

/// Why a quantized matrix's parts do not fit together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("scale dtype {0} is not a float type (need F32, F16 or BF16)")]
    ScaleDType(DType),
    #[error("fp8 block size [{block_rows}, {block_cols}] must be at least [1, 1]")]
    BlockSize { block_rows: usize, block_cols: usize },
    #[error("affine bits {0} unsupported (need 2, 3, 4, 5, 6 or 8)")]
    Bits(u32),
    #[error("affine group size {group_size} does not divide cols {cols}")]
    GroupSize { group_size: usize, cols: usize },
    #[error("affine row of {cols} {bits}-bit values is not a whole number of uint32 words")]
    RowWords { cols: usize, bits: u32 },
    #[error("{what}: shape {shape:?} of {elem} needs {expected} bytes, got {got}")]
    ByteCount { what: &'static str, shape: [usize; 2], elem: &'static str, expected: usize, got: usize },
    #[error("{ty} rows are whole blocks of {block_size} values, got {cols} columns")]
    GgmlBlock { ty: GgmlType, block_size: usize, cols: usize },
    #[error("shape [{rows}, {cols}] is too large to address")]
    TooLarge { rows: usize, cols: usize },
}

/// Affine bit widths mlx writes (and that this decoder handles).
pub const AFFINE_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];

/// f32 bit patterns of the 256 float8_e4m3fn codes.
///
/// E4M3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is
/// subnormal (`m/8 · 2^-6`); no infinities; `S.1111.111` is NaN; max 448.
/// Built at compile time in integers (every value is exact in f32).
static E4M3_BITS: [u32; 256] = e4m3_table();

const fn e4m3_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut code = 0;
    while code < 256 {
        let sign = ((code as u32) >> 7) << 31;
        let e = ((code >> 3) & 0xF) as u32;
        let m = (code & 0x7) as u32;
        t[code] = if e == 0xF && m == 0x7 {
            sign | 0x7FC0_0000
        } else if e != 0 {
            // 2^(e-7) · (1 + m/8): rebias the exponent, left-align the mantissa.
            sign | ((e + 127 - 7) << 23) | (m << 20)
        } else if m == 0 {
            sign
        } else {
            // m · 2^-9 with m in 1..8: normalise on m's top bit p.
            let p = 31 - m.leading_zeros();
            sign | ((p + 127 - 9) << 23) | ((m - (1 << p)) << (23 - p))
        };
        code += 1;
    }
    t
}

/// The value of one float8_e4m3fn code.
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    f32::from_bits(E4M3_BITS[code as usize])
}

/// Element `i` of a little-endian float array of `dtype` (F32, F16 or BF16).
#[inline]
fn float_at(dtype: DType, bytes: &[u8], i: usize) -> f32 {
    match dtype {
        DType::F32 => {
            let b = &bytes[i * 4..i * 4 + 4];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        DType::F16 => f16::from_bits(u16::from_le_bytes([bytes[i * 2], bytes[i * 2 + 1]])).to_f32(),
        DType::BF16 => bf16::from_bits(u16::from_le_bytes([bytes[i * 2], bytes[i * 2 + 1]])).to_f32(),
        other => unreachable!("scale dtype {other} passed validation"),
    }
}

/// One row of an FP8 block-scaled matrix.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Row<'a> {
    /// `[cols]` e4m3 codes.
    pub codes: &'a [u8],
    /// `[ceil(cols / block_cols)]` scales of this row's block row.
    pub scales: &'a [u8],
    pub scale_dtype: DType,
    pub block_cols: usize,
}

impl Fp8Row<'_> {
    /// Widens columns `c0 .. c0 + out.len()` into `out`.
    pub fn decode(&self, c0: usize, out: &mut [f32]) {
        let codes = &self.codes[c0..c0 + out.len()];
        let mut i = 0;
        // One scale per run of columns inside the same block.
        while i < out.len() {
            let c = c0 + i;
            let blk = c / self.block_cols;
            let end = ((blk + 1) * self.block_cols - c0).min(out.len());
            let s = float_at(self.scale_dtype, self.scales, blk);
            for (o, &q) in out[i..end].iter_mut().zip(&codes[i..end]) {
                *o = e4m3_to_f32(q) * s;
            }
            i = end;
        }
    }
}

/// One row of an MLX affine-quantized matrix.
#[derive(Clone, Copy, Debug)]
pub struct AffineRow<'a> {
    /// The row's packed uint32 words, `cols * bits / 8` bytes.
    pub words: &'a [u8],
    /// `[cols / group_size]` each.
    pub scales: &'a [u8],
    pub biases: &'a [u8],
    pub scale_dtype: DType,
    pub bits: u32,
    pub group_size: usize,
}

impl AffineRow<'_> {
    /// Widens columns `c0 .. c0 + out.len()` into `out`.
    ///
    /// Any `c0` works; the matmul passes multiples of 32, where the run
    /// starts on a word boundary (32 values of `bits` bits are `bits` words).
    pub fn decode(&self, c0: usize, out: &mut [f32]) {
        self.unpack(c0, out);
        let mut i = 0;
        // One (scale, bias) per run of columns inside the same group.
        while i < out.len() {
            let c = c0 + i;
            let g = c / self.group_size;
            let end = ((g + 1) * self.group_size - c0).min(out.len());
            let s = float_at(self.scale_dtype, self.scales, g);
            let b = float_at(self.scale_dtype, self.biases, g);
            for o in &mut out[i..end] {
                *o = s * *o + b;
            }
            i = end;
        }
    }

    /// Writes the raw integers `q` (as f32) of columns `c0 ..` into `out`.
    ///
    /// The row is one LSB-first bitstream over its little-endian words;
    /// values of 3, 5 or 6 bits straddle words, so a 64-bit window is
    /// refilled one word at a time. 8-bit values, and 4-bit ones from an
    /// even column, are whole bytes and nibbles: read as such (loops the
    /// compiler vectorises; the f32-activation router of an MLX model
    /// widens its 8-bit gate this way on every token).
    fn unpack(&self, c0: usize, out: &mut [f32]) {
        match self.bits {
            8 => {
                for (o, &b) in out.iter_mut().zip(&self.words[c0..]) {
                    *o = b as f32;
                }
            }
            4 if c0.is_multiple_of(2) => {
                let bytes = &self.words[c0 / 2..];
                let n = out.len();
                let mut pairs = out.chunks_exact_mut(2);
                for (pair, &b) in (&mut pairs).zip(bytes) {
                    pair[0] = (b & 15) as f32;
                    pair[1] = (b >> 4) as f32;
                }
                if let [last] = pairs.into_remainder() {
                    *last = (bytes[(n - 1) / 2] & 15) as f32;
                }
            }
            _ => self.unpack_bits(c0, out),
        }
    }

    /// [`Self::unpack`] for any width: the bitstream read value by value.
    fn unpack_bits(&self, c0: usize, out: &mut [f32]) {
        let bits = self.bits;
        let mask = (1u64 << bits) - 1;
        let word_at = |i: usize| {
            let b = &self.words[i * 4..i * 4 + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64
        };
        let start = c0 * bits as usize;
        let mut word = start / 32;
        let (mut acc, mut have) = (0u64, 0u32);
        let skip = (start % 32) as u32;
        if skip != 0 && !out.is_empty() {
            acc = word_at(word) >> skip;
            have = 32 - skip;
            word += 1;
        }
        for o in out.iter_mut() {
            if have < bits {
                acc |= word_at(word) << have;
                have += 32;
                word += 1;
            }
            *o = (acc & mask) as f32;
            acc >>= bits;
            have -= bits;
        }
    }
}

/// Bytes of a `[rows, cols]` array of `elem_size`-byte elements, or `None` on overflow.
pub(crate) fn array_bytes(rows: usize, cols: usize, elem_size: usize) -> Option<usize> {
    rows.checked_mul(cols)?.checked_mul(elem_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_and_nibble_unpack_equal_the_bitstream() {
        let words: Vec<u8> = (0..256u32).map(|i| (i * 97 + 13) as u8).collect();
        for bits in [4u32, 8] {
            let row =
                AffineRow { words: &words, scales: &[], biases: &[], scale_dtype: DType::F32, bits, group_size: 32 };
            let cols = words.len() * 8 / bits as usize;
            for c0 in 0..40 {
                for len in [0, 1, 2, 7, 32, cols - c0] {
                    let (mut fast, mut slow) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                    row.unpack(c0, &mut fast);
                    row.unpack_bits(c0, &mut slow);
                    assert_eq!(fast, slow, "{bits} bits, c0 {c0}, len {len}");
                }
            }
        }
    }

    #[test]
    fn e4m3_landmarks() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert!(e4m3_to_f32(0x80).is_sign_negative());
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9));
        assert!(e4m3_to_f32(0x7F).is_nan() && e4m3_to_f32(0xFF).is_nan());
    }

    #[test]
    fn unpack_straddles_words() {
        // 3-bit values 0..8 repeated: 32 values in 3 words.
        let q: Vec<u64> = (0..32).map(|i| i % 8).collect();
        let mut stream = [0u8; 12];
        for (i, &v) in q.iter().enumerate() {
            for k in 0..3 {
                let bit = i * 3 + k;
                stream[bit / 8] |= (((v >> k) & 1) as u8) << (bit % 8);
            }
        }
        let one = 1.0f32.to_le_bytes();
        let zero = 0.0f32.to_le_bytes();
        let row =
            AffineRow { words: &stream, scales: &one, biases: &zero, scale_dtype: DType::F32, bits: 3, group_size: 32 };
        let mut out = [0.0; 32];
        row.decode(0, &mut out);
        let want: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        assert_eq!(&out[..], &want[..]);
        // Runs that start mid-word decode the same values.
        for c0 in [1, 10, 11, 21, 31] {
            let mut part = [0.0; 32];
            let n = 32 - c0;
            row.decode(c0, &mut part[..n]);
            assert_eq!(&part[..n], &want[c0..], "c0 {c0}");
        }
    }
}
