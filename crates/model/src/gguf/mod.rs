//! Loading llama.cpp GGUF files (`qwen35moe`, `qwen35`, `qwen3next`).

pub mod config;
pub mod loader;

pub use config::{config_from_gguf, model_type_of, SUPPORTED_ARCHS};
pub use loader::{load_gguf_weights, GgufConventions};
