//! The model crate's one error type. Every variant names what it is about:
//! the tensor, the file, the expected and found shapes.

use std::path::PathBuf;

use crate::config::ConfigError;
use qmoe_formats::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(transparent)]
    Format(#[from] FormatError),

    #[error("{dir}: tensor `{name}` is missing (needed for {what})")]
    MissingTensor { dir: PathBuf, name: String, what: String },

    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape { file: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{file}: tensor `{name}` is stored as {dtype}, which {why}")]
    DType { file: PathBuf, name: String, dtype: String, why: String },

    /// The tensor gate's report: everything missing, mis-shaped, invalid or
    /// unexpected, found in one pass.
    #[error("{0}")]
    Gate(Box<crate::loader::GateReport>),

    #[error("{dir}: {what}")]
    Unsupported { dir: PathBuf, what: String },

    #[error("token id {id} at position {pos} is outside the vocabulary (vocab_size {vocab})")]
    TokenOutOfRange { id: u32, pos: usize, vocab: usize },

    #[error("sequence position {pos} exceeds the cache limit of {limit} tokens")]
    ContextFull { pos: usize, limit: usize },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
