//! Text <-> token ids, over the HF `tokenizers` crate, plus incremental decoding for streaming.
//!
//! Why a wrapper: the engine needs one fixed calling convention, the one the golden data and the
//! chat-template ids were produced with — `encode(text, add_special_tokens=false)` (Qwen adds no
//! BOS; special tokens written inline such as `<|im_start|>` are still matched as single ids) and
//! `decode(ids, skip_special_tokens=false)` — and errors that name the tokenizer file.
//!
//! Invariants:
//! * `decode` rejects ids that have no token (the Qwen embeddings have padding rows above the
//!   vocabulary; `tokenizers` would drop such ids silently). Engines should mask logits at or
//!   above [`Tokenizer::vocab_size`].
//! * [`StreamDecoder`]: the concatenation of everything it returns (pushes, then `finish`)
//!   equals `decode(all ids)`, and no returned piece ends in a partial UTF-8 character.
//! * `Tokenizer` is a cheap handle (`Arc`): clone it into each stream / request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, RuntimeError};

/// A loaded `tokenizer.json`. Cloning shares the underlying tables.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).field("vocab_size", &self.vocab_size()).finish()
    }
}

impl Tokenizer {
    /// Loads a HF `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        // Read it ourselves so a missing file is an `Io` error naming the path, and a parse
        // failure is a `TokenizerLoad` error.
        let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io { path: path.to_path_buf(), source })?;
        Tokenizer::from_bytes(&bytes, path)
    }

    /// Loads a HF `tokenizer.json` held in memory. `path` is where it came from (a file, or a
    /// GGUF it was assembled from); it names the tokenizer in errors and in [`Tokenizer::path`].
    pub fn from_bytes(json: &[u8], path: impl Into<PathBuf>) -> Result<Tokenizer> {
        let path = path.into();
        let inner = match tokenizers::Tokenizer::from_bytes(json) {
            Ok(inner) => inner,
            Err(source) => return Err(RuntimeError::TokenizerLoad { path, source }),
        };
        Ok(Tokenizer { inner: Arc::new(inner), path: Arc::new(path) })
    }

    /// The file this tokenizer was loaded from (for one built from GGUF metadata, the GGUF).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Text to ids. No BOS/EOS is added; special tokens written in the text are matched.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `encode_fast` skips offset tracking; the ids are the same as `encode`'s.
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|source| RuntimeError::Encode { path: self.path.to_path_buf(), source })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Ids to text, special tokens included. Incomplete UTF-8 at the end (or anywhere) comes back
    /// as U+FFFD, as in HF.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(RuntimeError::UnknownTokenId {
                path: self.path.to_path_buf(),
                id,
                vocab_size: self.vocab_size(),
            });
        }
        self.inner.decode(ids, false).map_err(|source| RuntimeError::Decode { path: self.path.to_path_buf(), source })
    }

    /// The id of a token string (as stored in the vocabulary, i.e. byte-level form for BPE
    /// tokens; added tokens such as `<|im_end|>` by their content).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, in vocabulary form (see [`Tokenizer::token_to_id`]).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens including added tokens (248,077 for Qwen3.5/3.6, 151,669 for
    /// Qwen3/Qwen3-Next); smaller than the model's embedding row count.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A fresh incremental decoder sharing this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(self.clone())
    }
}

/// Turns generated ids into text as they arrive, emitting only complete UTF-8.
///
/// Method: keep a short window of ids. `prefix_len` bytes of text come from the ids before
/// `read` (already emitted); decoding the whole window and cutting off that prefix gives the new
/// text. Decoding with the preceding ids as context (rather than the new ids alone) keeps
/// decoders that treat the first token specially (leading-space stripping) consistent with a
/// one-shot `decode`. New text is held back while it ends in U+FFFD, i.e. while a multi-byte
/// character is split across tokens; `finish` flushes whatever is held.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    /// ids[..read] are already emitted; they stay only as decoding context.
    ids: Vec<u32>,
    read: usize,
    /// Byte length of decode(ids[..read]).
    prefix_len: usize,
}

impl StreamDecoder {
    pub fn new(tokenizer: Tokenizer) -> StreamDecoder {
        StreamDecoder { tokenizer, ids: Vec::new(), read: 0, prefix_len: 0 }
    }

    /// Adds one id; returns newly completed text (empty while a character is incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = self.new_text(&text);
        // Slide the window: the ids just emitted stay as context, their standalone text is the
        // prefix to cut next time.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix_len = self.tokenizer.decode(&self.ids)?.len();
        Ok(new)
    }

    /// Emits everything still held (a trailing incomplete character becomes U+FFFD, as in
    /// `decode`) and resets the decoder for a new sequence.
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids)?;
        let rest = self.new_text(&text);
        self.reset();
        Ok(rest)
    }

    /// Forgets all state (start of a new sequence).
    pub fn reset(&mut self) {
        self.ids.clear();
        self.read = 0;
        self.prefix_len = 0;
    }

    /// `text` (= decode of the whole window) without the already-emitted prefix.
    fn new_text(&self, text: &str) -> String {
        // For byte-level BPE the window's text always extends the prefix's text; if some decoder
        // ever broke that, emit nothing rather than panic on a bad slice.
        text.get(self.prefix_len..).unwrap_or_default().to_string()
    }
}
