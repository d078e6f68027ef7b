//! The Qwen3.5 / Qwen3.6 / Qwen3-Next hybrid model: configuration, typed
//! weights borrowed from the checkpoint, and one forward pass for every dialect.

pub mod config;
