//! The one error type of the runtime crate.
//!
//! Every variant that comes from a file carries the path, so a user who points the engine at a
//! broken model folder learns which file to fix. Nothing in this crate panics on input data:
//! malformed files, odd template kwargs and out-of-vocabulary ids all end up here.

use std::path::PathBuf;

/// Errors of tokenization, chat-template rendering and stop-token discovery.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file could not be read (missing, permissions, not UTF-8 for text files).
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config.json, generation_config.json, tokenizer_config.json) is not valid JSON.
    #[error("malformed JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A JSON file parsed but a field has the wrong shape (e.g. `eos_token_id: "x"`).
    #[error("{path}: field `{field}` {problem}")]
    ConfigField { path: PathBuf, field: String, problem: String },

    /// `tokenizer.json` was read but the `tokenizers` crate rejected it.
    #[error("cannot load tokenizer {path}: {source}")]
    TokenizerLoad {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    /// The tokenizer failed to encode a text (does not happen for byte-level BPE in practice).
    #[error("tokenizer {path}: encoding failed: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    /// The tokenizer failed to decode ids.
    #[error("tokenizer {path}: decoding failed: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    /// An id given to `decode` has no token (e.g. an embedding padding row above the vocabulary).
    #[error("tokenizer {path}: token id {id} is not in the vocabulary (size {vocab_size})")]
    UnknownTokenId { path: PathBuf, id: u32, vocab_size: usize },

    /// A token named in a config file (e.g. `eos_token`) is not in the tokenizer's vocabulary.
    #[error("{path}: token {token:?} is not in the tokenizer's vocabulary")]
    UnknownToken { path: PathBuf, token: String },

    /// The model folder has neither `chat_template.jinja` nor a `chat_template` in
    /// `tokenizer_config.json`.
    #[error(
        "no chat template in {dir}: expected chat_template.jinja or a `chat_template` field in \
         tokenizer_config.json"
    )]
    MissingChatTemplate { dir: PathBuf },

    /// The template source does not compile (syntax error, unknown tag).
    #[error("chat template {origin} does not compile: {source}")]
    TemplateSyntax {
        origin: String,
        #[source]
        source: minijinja::Error,
    },

    /// The template called `raise_exception(message)`: the messages are not acceptable to it.
    #[error("chat template {origin} rejected the conversation: {message}")]
    TemplateRaised { origin: String, message: String },

    /// Rendering failed for another reason (type error in the template, bad `tojson` input).
    #[error("chat template {origin} failed to render: {source}")]
    TemplateRender {
        origin: String,
        #[source]
        source: minijinja::Error,
    },

    /// A template kwarg in `extra` would shadow a variable the renderer sets itself.
    #[error("template kwarg `{name}` is reserved (set by the renderer itself)")]
    ReservedTemplateKwarg { name: String },

    /// A sampler setting is out of range (see `SamplerConfig::validate`).
    #[error("sampler setting `{field}` = {value} is invalid: {problem}")]
    SamplerConfig { field: &'static str, value: String, problem: &'static str },

    /// GGUF tokenizer metadata that cannot become a tokenizer: an unsupported
    /// `tokenizer.ggml.model` or `tokenizer.ggml.pre`, arrays that disagree, merges naming
    /// unknown tokens, a special-token id with no token, ...
    #[error("{path}: GGUF key `{key}`: {problem}")]
    GgufTokenizer { path: PathBuf, key: String, problem: String },

    /// The GGUF reader refused the file or a key (missing, wrong type).
    #[error(transparent)]
    Format(#[from] qmoe_formats::FormatError),

    /// The model refused the input or state (token out of range, context full, ...).
    #[error(transparent)]
    Model(#[from] qmoe_model::ModelError),

    /// Generation could not proceed (empty prompt, output stream closed).
    #[error("generation: {0}")]
    Generation(String),

    /// A model could not be exported (unsupported combination, write failure).
    #[error("export: {0}")]
    Export(String),
}

/// Result with [`RuntimeError`] as the default error.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
