//! Which token ids end generation.
//!
//! Why a union of three files: they disagree by design. Qwen3.5/3.6 `config.json` says
//! `eos_token_id: 248044` (`<|endoftext|>`) while `tokenizer_config.json` says `eos_token:
//! "<|im_end|>"` (248046), and a chat turn ends with the latter; `generation_config.json`
//! (which transformers' `generate` uses) usually lists both. Stopping on only one of them
//! either runs past the end of the turn or never stops on raw-text prompts, so we stop on all.
//!
//! Order: generation_config.json, then config.json (top level, then `text_config`), then
//! tokenizer_config.json; duplicates dropped, first occurrence kept.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Result, RuntimeError};
use crate::model_dir::read_json_if_exists;
use crate::tokenizer::Tokenizer;

/// Stop ids of a model folder (see the module docs). Missing files contribute nothing;
/// malformed JSON, a non-integer `eos_token_id`, or an `eos_token` the tokenizer does not know
/// is an error naming the file.
pub fn stop_token_ids(model_dir: impl AsRef<Path>, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let dir = model_dir.as_ref();
    let mut ids = Vec::new();

    let path = dir.join("generation_config.json");
    if let Some(json) = read_json_if_exists(&path)? {
        push_eos_ids(&mut ids, json.get("eos_token_id"), &path, "eos_token_id")?;
    }

    let path = dir.join("config.json");
    if let Some(json) = read_json_if_exists(&path)? {
        push_eos_ids(&mut ids, json.get("eos_token_id"), &path, "eos_token_id")?;
        let nested = json.get("text_config").and_then(|t| t.get("eos_token_id"));
        push_eos_ids(&mut ids, nested, &path, "text_config.eos_token_id")?;
    }

    let path = dir.join("tokenizer_config.json");
    if let Some(json) = read_json_if_exists(&path)? {
        let token = match json.get("eos_token") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.as_str()),
            // AddedToken form: {"content": "<|im_end|>", "special": true, ...}
            Some(Json::Object(o)) => match o.get("content") {
                Some(Json::String(s)) => Some(s.as_str()),
                _ => return Err(field_error(&path, "eos_token", "has no string `content`")),
            },
            Some(_) => return Err(field_error(&path, "eos_token", "must be a string or an object")),
        };
        if let Some(token) = token {
            let id = tokenizer
                .token_to_id(token)
                .ok_or_else(|| RuntimeError::UnknownToken { path: path.clone(), token: token.to_string() })?;
            push_unique(&mut ids, id);
        }
    }
    Ok(ids)
}

/// `eos_token_id`: an int, a list of ints, or null/absent.
fn push_eos_ids(ids: &mut Vec<u32>, value: Option<&Json>, path: &Path, field: &str) -> Result<()> {
    let as_id = |v: &Json| -> Result<u32> {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| field_error(path, field, &format!("must be a token id, not {v}")))
    };
    match value {
        None | Some(Json::Null) => {}
        Some(Json::Array(list)) => {
            for v in list {
                push_unique(ids, as_id(v)?);
            }
        }
        Some(v) => push_unique(ids, as_id(v)?),
    }
    Ok(())
}

fn push_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

fn field_error(path: &Path, field: &str, problem: &str) -> RuntimeError {
    RuntimeError::ConfigField { path: path.to_path_buf(), field: field.to_string(), problem: problem.to_string() }
}
