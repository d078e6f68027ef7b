//! Checkpoint file formats: memory-mapped safetensors (single file, directory,
//! sharded index), `.npy` for golden logits.
//!
//! Tensor bytes are never copied at load: a [`TensorInfo`] carries a
//! [`TensorData`] handle (an `Arc` of the file's memory map plus a byte range),
//! so weights can be borrowed by the model without lifetimes. Every input is
//! treated as hostile: malformed files give a [`FormatError`] that names the
//! file and, where relevant, the tensor; nothing here panics on file contents.

pub mod checkpoint;
pub mod error;
pub mod gguf;
pub mod header;
pub mod npy;
pub mod tensor;
pub mod writer;

pub use checkpoint::{Checkpoint, SafetensorsFile, INDEX_FILE};
pub use error::{FormatError, Result};
pub use gguf::{
    ggml_ne_to_shape, shape_to_ggml_ne, GgufArray, GgufFile, GgufTensor, GgufValue, GgufValueType, GgufWriter,
};
pub use header::{json_kind, parse_header, Header, HeaderEntry, MAX_HEADER_LEN};
pub use npy::{read_npy_f32, write_npy_f32};
pub use tensor::{TensorData, TensorInfo};
pub use writer::{write_safetensors, TensorToWrite};
