//! Numeric kernels behind one module boundary.
//!
//! Everything here works on f32 activations. Weights arrive as borrowed,
//! still-encoded bytes (`Matrix`) and are widened on the fly, never copied
//! whole. The fast SIMD versions (a later step) will sit beside these and be
//! tested against them; the model code calls only the functions exported here.

pub mod act;
pub mod attention;
pub mod conv;
pub mod gdn;
pub mod gdn_prep;
pub mod ggml;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod quant;
pub mod rope;
pub mod simd;
pub mod threads;
pub mod vecops;
