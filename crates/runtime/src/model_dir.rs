//! Reading the small text/JSON files of a model folder (`config.json`, `generation_config.json`,
//! `tokenizer_config.json`, templates) with errors that name the file.
//!
//! A missing optional file is `Ok(None)`, not an error: model folders differ in which of these
//! they ship. A file that exists but does not parse is always an error.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Result, RuntimeError};

/// Reads a UTF-8 text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| RuntimeError::Io { path: path.to_path_buf(), source })
}

/// Parses a JSON file; `Ok(None)` if it does not exist.
pub(crate) fn read_json_if_exists(path: &Path) -> Result<Option<Json>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RuntimeError::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|source| RuntimeError::Json { path: path.to_path_buf(), source })
}
