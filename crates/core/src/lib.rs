//! Vocabulary shared by every qmoe crate: element types of stored tensors and
//! their conversion to f32. Imports nothing internal.

pub mod dtype;
pub mod ggml;

pub use dtype::DType;
pub use ggml::GgmlType;
