//! Element types a checkpoint may store, and their widening to f32.
//!
//! Only types whose bytes we can interpret are listed; anything else in a
//! file is refused by the format readers with the tensor's name.

use half::{bf16, f16};

/// Storage type of one tensor, as named by safetensors / GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// float8 e4m3fn (FP8 releases).
    F8E4M3,
    U8,
    I8,
    U32,
    I32,
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::U8 | DType::I8 => 1,
            DType::I64 => 8,
        }
    }

    /// Whether this is a floating type the f32 kernels read directly.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::I64 => "I64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Widen little-endian float elements of `dtype` to f32.
///
/// `bytes.len()` must be `out.len() * dtype.size()`; callers slice by shape,
/// which the format readers have already validated against the byte count.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * dtype.size(), "to_f32: byte count");
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        other => panic!("to_f32: {other} is not a float type"),
    }
}

/// Widen a whole float tensor into a new vector (for small tensors: norms, biases).
pub fn to_f32_vec(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; bytes.len() / dtype.size()];
    to_f32(dtype, bytes, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_each_float_type() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect();
        let bf16b: Vec<u8> = vals.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect();
        assert_eq!(to_f32_vec(DType::F32, &f32b), vals);
        assert_eq!(to_f32_vec(DType::F16, &f16b), vals);
        // bf16 keeps 8 mantissa bits: 65504 rounds to 65536.
        assert_eq!(to_f32_vec(DType::BF16, &bf16b), [1.5, -2.25, 0.0, 65536.0]);
    }
}
