//! Runtime pieces around the model: tokenizer, chat template, stop tokens, sampling.
//!
//! Everything here is text-side and model-agnostic; it reads the tokenizer/config files of a
//! model folder and never touches weights. The engine (generation loop) builds on these.
//!
//! * [`Tokenizer`] / [`StreamDecoder`] — ids <-> text, incremental UTF-8-safe output.
//! * [`ChatTemplate`] — transformers-compatible Jinja rendering of a conversation.
//! * [`stop_token_ids`] — union of the eos ids a model folder declares.
//! * [`gguf_tokenizer`] — the same three from a GGUF's `tokenizer.*` metadata, and that
//!   metadata for a model folder (GGUF export).
//! * [`Sampler`] / [`SamplerConfig`] — greedy or temperature/top-k/top-p/min-p sampling.

pub mod bench;
pub mod chat;
pub mod engine;
pub mod error;
pub mod export;
pub mod gguf_tokenizer;
mod model_dir;
mod pyjson;
pub mod sample;
pub mod stop;
pub mod synth;
pub mod tokenizer;

pub use chat::ChatTemplate;
pub use engine::{Session, Stats, StopReason};
pub use error::{Result, RuntimeError};
pub use gguf_tokenizer::{
    chat_template_from_gguf, gguf_tokenizer_json, gguf_tokenizer_metadata, stop_ids_from_gguf, tokenizer_from_gguf,
};
pub use sample::{argmax, Sampler, SamplerConfig};
pub use stop::stop_token_ids;
pub use tokenizer::{StreamDecoder, Tokenizer};
