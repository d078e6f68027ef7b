//! The Qwen3.5 / Qwen3.6 / Qwen3-Next hybrid model: configuration, typed
//! weights borrowed from the checkpoint, and one forward pass for every dialect.

pub mod cache;
pub mod config;
pub mod error;
pub mod gguf;
pub mod layers;
pub mod loader;
pub mod model;
pub mod names;
pub mod quant;
pub mod scratch;
pub mod weights;

pub use cache::{Cache, Snapshot};
pub use config::Config;
pub use error::ModelError;
pub use model::{Logits, Model, Source};
pub use scratch::Scratch;
