//! GGUF (llama.cpp) files: a memory-mapped reader and a streaming writer.
//!
//! Layout of a GGUF v2/v3 file, all integers little-endian:
//!
//! ```text
//! "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//! kv_count  × { string key, u32 value_type, value }
//! tensor_count × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//! zero padding up to `general.alignment` (default 32)
//! data section: each tensor at `data_start + offset`, offsets aligned
//! ```
//!
//! where a string is `u64 len` + UTF-8 bytes and an array value is
//! `u32 elem_type, u64 len` + elements (arrays may nest).
//!
//! Dimensions are kept in ggml order (`ne[0]` is the fastest-varying axis);
//! [`ggml_ne_to_shape`] turns them into the row-major shape used everywhere else
//! in qmoe. Tensor bytes are never copied: a [`GgufTensor`] holds a
//! [`TensorData`](crate::TensorData) handle into the file's memory map.
//!
//! Every input is hostile: lengths and counts are checked against the bytes left
//! in the file before anything is allocated, and every error names the file
//! (and the key or tensor).

mod reader;
mod types;
mod value;
mod writer;

pub use reader::{GgufFile, GgufTensor};
pub use types::{ggml_type_info, GgmlTypeInfo};
pub use value::{FromGgufValue, GgufArray, GgufValue, GgufValueType};
pub use writer::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version [`GgufWriter`] writes.
pub const GGUF_VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that sets the data alignment (a `u32`, a power of two).
pub const GGUF_ALIGNMENT_KEY: &str = "general.alignment";
/// ggml tensors have at most this many dimensions.
pub const GGUF_MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are refused (real files nest at most once).
pub const GGUF_MAX_ARRAY_DEPTH: usize = 8;
/// llama.cpp refuses tensor names this long or longer (`GGML_MAX_NAME`, with
/// its NUL); the writer enforces it, the reader does not.
pub const GGML_MAX_NAME: usize = 64;

/// ggml dims (`ne`, fastest-varying first) to a row-major shape (slowest first).
///
/// A 2-D GGUF weight with `ne = {in, out}` becomes `[out, in]`: its bytes are
/// exactly those of the Hugging Face `[out, in]` row-major matrix (before
/// quantization), so no transpose happens anywhere between the two. A 3-D
/// expert stack `{in, out, n_experts}` becomes `[n_experts, out, in]`.
///
/// Dims that do not fit `usize` (only possible on 32-bit targets, and never for
/// a tensor [`GgufFile`] accepted) saturate.
pub fn ggml_ne_to_shape(ne: &[u64]) -> Vec<usize> {
    ne.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
}

/// The inverse of [`ggml_ne_to_shape`]: a row-major shape to ggml `ne`.
pub fn shape_to_ggml_ne(shape: &[usize]) -> Vec<u64> {
    shape.iter().rev().map(|&d| d as u64).collect()
}

/// Round `x` up to a multiple of `align` (a power of two), `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ne_and_shape_are_reverses() {
        assert_eq!(ggml_ne_to_shape(&[2048, 512]), vec![512, 2048]);
        assert_eq!(ggml_ne_to_shape(&[2048, 512, 256]), vec![256, 512, 2048]);
        assert_eq!(ggml_ne_to_shape(&[]), Vec::<usize>::new());
        assert_eq!(shape_to_ggml_ne(&[512, 2048]), vec![2048, 512]);
    }

    #[test]
    fn align_up_rounds() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
    }
}
