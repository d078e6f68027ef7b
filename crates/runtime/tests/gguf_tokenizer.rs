//! Tokenizer / chat template / stop ids through GGUF metadata: model folder → metadata (as
//! llama.cpp's converter writes it) → GGUF file → tokenizer, checked against the tokenizer.json
//! tokenizers on the golden data; plus the refusals.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{demo_dir, ids_of, qwen3_next_dir, read_jsonl, scratch_dir, tokenizer};
use qmoe_formats::gguf::{GgufArray, GgufFile, GgufValue, GgufWriter};
use qmoe_runtime::gguf_tokenizer::{
    token_type, KEY_ADD_BOS, KEY_BOS_ID, KEY_CHAT_TEMPLATE, KEY_CHAT_TEMPLATES, KEY_EOS_ID, KEY_MERGES, KEY_MODEL,
    KEY_PAD_ID, KEY_PRE, KEY_TOKENS, KEY_TOKEN_TYPE, QWEN2_PRE_REGEX, QWEN35_PRE_REGEX,
};
use qmoe_runtime::{
    chat_template_from_gguf, gguf_tokenizer_json, gguf_tokenizer_metadata, stop_ids_from_gguf, stop_token_ids,
    tokenizer_from_gguf, ChatTemplate, RuntimeError, Tokenizer,
};
use serde_json::{json, Value};

/// Writes metadata-only GGUF (no tensors) at `path`.
fn write_gguf(path: &Path, metadata: &[(String, GgufValue)]) {
    let mut w = GgufWriter::new(path, 32).expect("create gguf");
    w.add_metadata("general.architecture", "qwen35moe").unwrap();
    for (key, value) in metadata {
        w.add_metadata(key.clone(), value.clone()).unwrap();
    }
    w.finish().expect("finish gguf");
}

/// A vocabulary taken through metadata → GGUF → tokenizer.
struct ViaGguf {
    dir: PathBuf,
    metadata: Vec<(String, GgufValue)>,
    file: GgufFile,
    tokenizer: Tokenizer,
}

fn via_gguf(vocab: &str) -> &'static ViaGguf {
    static QWEN36: OnceLock<ViaGguf> = OnceLock::new();
    static QWEN3_NEXT: OnceLock<ViaGguf> = OnceLock::new();
    let build = |dir: PathBuf, rows: usize, name: &str| {
        let metadata = gguf_tokenizer_metadata(&dir, rows).expect("metadata");
        let path = scratch_dir(&format!("gguf-tokenizer-{name}")).join("tok.gguf");
        write_gguf(&path, &metadata);
        let file = GgufFile::open(&path).expect("open gguf");
        let tokenizer = tokenizer_from_gguf(&file).expect("tokenizer from gguf");
        ViaGguf { dir, metadata, file, tokenizer }
    };
    match vocab {
        "qwen3.6" => QWEN36.get_or_init(|| build(demo_dir(), 248_320, "qwen36")),
        "qwen3-next" => QWEN3_NEXT.get_or_init(|| build(qwen3_next_dir(), 151_936, "qwen3next")),
        other => panic!("unknown vocab {other}"),
    }
}

fn keys(metadata: &[(String, GgufValue)]) -> Vec<&str> {
    metadata.iter().map(|(k, _)| k.as_str()).collect()
}

fn value<'a>(metadata: &'a [(String, GgufValue)], key: &str) -> &'a GgufValue {
    &metadata.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key}")).1
}

fn strings<'a>(metadata: &'a [(String, GgufValue)], key: &str) -> &'a [String] {
    match value(metadata, key) {
        GgufValue::Array(GgufArray::String(v)) => v,
        other => panic!("{key}: {other:?}"),
    }
}

fn types(metadata: &[(String, GgufValue)]) -> &[i32] {
    match value(metadata, KEY_TOKEN_TYPE) {
        GgufValue::Array(GgufArray::I32(v)) => v,
        other => panic!("token_type: {other:?}"),
    }
}

/// Expected type of every id: `ranges` of (first, last, type) over the added tokens; normal below
/// `n_normal`, unused from `n_tokens` on.
fn check_types(types: &[i32], n_normal: usize, n_tokens: usize, ranges: &[(usize, usize, i32)]) {
    for (id, &ty) in types.iter().enumerate() {
        let want = if id < n_normal {
            token_type::NORMAL
        } else if id >= n_tokens {
            token_type::UNUSED
        } else {
            ranges
                .iter()
                .find(|(a, b, _)| (*a..=*b).contains(&id))
                .map(|r| r.2)
                .unwrap_or_else(|| panic!("id {id} not covered"))
        };
        assert_eq!(ty, want, "type of id {id}");
    }
}

#[test]
fn regex_constants_are_the_committed_ones() {
    for (dir, want) in [(demo_dir(), QWEN35_PRE_REGEX), (qwen3_next_dir(), QWEN2_PRE_REGEX)] {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
        assert_eq!(json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], json!(want));
    }
}

#[test]
fn qwen36_metadata_is_what_the_converter_writes() {
    let m = &via_gguf("qwen3.6").metadata;
    assert_eq!(
        keys(m),
        [
            KEY_MODEL,
            KEY_PRE,
            KEY_TOKENS,
            KEY_TOKEN_TYPE,
            KEY_MERGES,
            KEY_EOS_ID,
            KEY_PAD_ID,
            KEY_BOS_ID,
            KEY_ADD_BOS,
            KEY_CHAT_TEMPLATE
        ]
    );
    assert_eq!(value(m, KEY_MODEL), &GgufValue::from("gpt2"));
    assert_eq!(value(m, KEY_PRE), &GgufValue::from("qwen35"));
    let tokens = strings(m, KEY_TOKENS);
    assert_eq!(tokens.len(), 248_320);
    assert_eq!(tokens[0], "!");
    assert_eq!(tokens[248_044], "<|endoftext|>");
    assert_eq!(tokens[248_046], "<|im_end|>");
    assert_eq!(tokens[248_069], "</think>");
    assert_eq!(tokens[248_076], "<|audio_pad|>");
    assert_eq!(tokens[248_077], "[PAD248077]");
    assert_eq!(tokens[248_319], "[PAD248319]");
    // special=false in tokenizer.json: <tool_call> </tool_call> (248058-9), the fim/repo/file
    // tokens (248060-5, control anyway: they look special), <tool_response> … </think> (248066-9).
    check_types(
        types(m),
        248_044,
        248_077,
        &[
            (248_044, 248_057, token_type::CONTROL),
            (248_058, 248_059, token_type::USER_DEFINED),
            (248_060, 248_065, token_type::CONTROL),
            (248_066, 248_069, token_type::USER_DEFINED),
            (248_070, 248_076, token_type::CONTROL),
        ],
    );
    let merges = strings(m, KEY_MERGES);
    assert_eq!(merges.len(), 247_587);
    assert_eq!(merges[0], "Ġ Ġ");
    assert_eq!(value(m, KEY_EOS_ID), &GgufValue::U32(248_046));
    assert_eq!(value(m, KEY_PAD_ID), &GgufValue::U32(248_044));
    assert_eq!(value(m, KEY_BOS_ID), &GgufValue::U32(248_044));
    assert_eq!(value(m, KEY_ADD_BOS), &GgufValue::Bool(false));
    let template = std::fs::read_to_string(demo_dir().join("chat_template.jinja")).unwrap();
    assert_eq!(value(m, KEY_CHAT_TEMPLATE), &GgufValue::String(template));
}

#[test]
fn qwen3_next_metadata_is_what_the_converter_writes() {
    let m = &via_gguf("qwen3-next").metadata;
    // No config.json in assets/tokenizers/qwen3-next, so no bos (tokenizer_config has bos null).
    assert_eq!(
        keys(m),
        [
            KEY_MODEL,
            KEY_PRE,
            KEY_TOKENS,
            KEY_TOKEN_TYPE,
            KEY_MERGES,
            KEY_EOS_ID,
            KEY_PAD_ID,
            KEY_ADD_BOS,
            KEY_CHAT_TEMPLATE
        ]
    );
    assert_eq!(value(m, KEY_PRE), &GgufValue::from("qwen2"));
    let tokens = strings(m, KEY_TOKENS);
    assert_eq!(tokens.len(), 151_936);
    assert_eq!(tokens[151_645], "<|im_end|>");
    assert_eq!(tokens[151_668], "</think>");
    assert_eq!(tokens[151_669], "[PAD151669]");
    check_types(
        types(m),
        151_643,
        151_669,
        &[
            (151_643, 151_656, token_type::CONTROL),
            (151_657, 151_658, token_type::USER_DEFINED),
            (151_659, 151_664, token_type::CONTROL),
            (151_665, 151_668, token_type::USER_DEFINED),
        ],
    );
    assert_eq!(strings(m, KEY_MERGES).len(), 151_387);
    assert_eq!(value(m, KEY_EOS_ID), &GgufValue::U32(151_645));
    assert_eq!(value(m, KEY_PAD_ID), &GgufValue::U32(151_643));
    assert_eq!(value(m, KEY_ADD_BOS), &GgufValue::Bool(false));
}

#[test]
fn gguf_tokenizer_json_is_the_committed_file_up_to_fim_special_flags() {
    for vocab in ["qwen3.6", "qwen3-next"] {
        let v = via_gguf(vocab);
        let got = gguf_tokenizer_json(&v.file).unwrap();
        let mut want: Value =
            serde_json::from_str(&std::fs::read_to_string(v.dir.join("tokenizer.json")).unwrap()).unwrap();
        // GGUF keeps only control/user-defined; the fim/repo/file tokens look special (<|…|>),
        // so the converter makes them control although tokenizer.json says special=false.
        let mut flipped = 0;
        for t in want["added_tokens"].as_array_mut().unwrap() {
            let content = t["content"].as_str().unwrap();
            if t["special"] == json!(false) && content.starts_with("<|") && content.ends_with("|>") {
                t["special"] = json!(true);
                flipped += 1;
            }
        }
        assert_eq!(flipped, 6, "{vocab}");
        assert!(got == want, "{vocab}: assembled tokenizer.json differs");
    }
}

#[test]
fn golden_encodings_through_gguf() {
    let records = read_jsonl("golden-encodings.jsonl");
    assert_eq!(records.len(), 548);
    let mut checked = 0;
    for (i, r) in records.iter().enumerate() {
        let vocab = r["vocab"].as_str().unwrap();
        let text = r["text"].as_str().unwrap();
        let want = ids_of(r);
        let tok = &via_gguf(vocab).tokenizer;
        assert_eq!(tok.encode(text).unwrap(), want, "record {i} ({vocab}) {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), tokenizer(vocab).decode(&want).unwrap(), "record {i} ({vocab}) decode");
        checked += 1;
    }
    assert_eq!(checked, 548);
}

#[test]
fn gguf_tokenizer_has_the_same_tokens_and_refuses_padding_ids() {
    for (vocab, size, pad) in [("qwen3.6", 248_077, 248_077u32), ("qwen3-next", 151_669, 151_935)] {
        let v = via_gguf(vocab);
        let reference = tokenizer(vocab);
        assert_eq!(v.tokenizer.vocab_size(), size);
        assert_eq!(v.tokenizer.vocab_size(), reference.vocab_size());
        assert_eq!(v.tokenizer.path(), v.file.path());
        for id in 0..size as u32 {
            assert_eq!(v.tokenizer.id_to_token(id), reference.id_to_token(id), "{vocab} id {id}");
        }
        match v.tokenizer.decode(&[pad]) {
            Err(RuntimeError::UnknownTokenId { id, .. }) => assert_eq!(id, pad),
            other => panic!("{vocab}: {other:?}"),
        }
    }
}

#[test]
fn chat_template_through_gguf_renders_as_the_model_folder() {
    let records = read_jsonl("chat-template-renders.jsonl");
    let mut checked = 0;
    for (vocab, name) in [("qwen3.6", "qwen3.6/chat_template.jinja"), ("qwen3-next", "qwen3-next/chat_template.jinja")]
    {
        let v = via_gguf(vocab);
        let from_gguf = chat_template_from_gguf(&v.file).unwrap().expect("template");
        let from_dir = ChatTemplate::from_model_dir(&v.dir).unwrap();
        assert_eq!(from_gguf.source(), from_dir.source());
        for r in records.iter().filter(|r| r["template"] == json!(name)) {
            let label = format!("{name} / {}", r["case"].as_str().unwrap());
            let messages = r["messages"].as_array().unwrap();
            let tools = r["tools"].as_array().map(Vec::as_slice);
            let kwargs = r["kwargs"].as_object().unwrap();
            let gen = r["add_generation_prompt"].as_bool().unwrap();
            let got = from_gguf.render(messages, tools, gen, kwargs).unwrap();
            assert_eq!(got, r["rendered"].as_str().unwrap(), "{label}");
            assert_eq!(got, from_dir.render(messages, tools, gen, kwargs).unwrap(), "{label}");
            assert_eq!(v.tokenizer.encode(&got).unwrap(), ids_of(r), "{label}: ids");
            checked += 1;
        }
    }
    assert_eq!(checked, 16);
}

#[test]
fn stop_ids_through_gguf() {
    let v = via_gguf("qwen3.6");
    let ids = stop_ids_from_gguf(&v.file, &v.tokenizer).unwrap();
    assert_eq!(ids, [248_046, 248_044]);
    assert_eq!(ids, stop_token_ids(demo_dir(), tokenizer("qwen3.6")).unwrap());
    let v = via_gguf("qwen3-next");
    assert_eq!(stop_ids_from_gguf(&v.file, &v.tokenizer).unwrap(), [151_645, 151_643]);
}

// ---- small hand-made vocabularies --------------------------------------------------------------

/// gpt2/qwen2 toy: a b ab <|im_end|> [PAD4], merge "a b", eos 3.
fn toy() -> Vec<(String, GgufValue)> {
    let s = |v: &[&str]| GgufValue::from(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    vec![
        (KEY_MODEL.into(), "gpt2".into()),
        (KEY_PRE.into(), "qwen2".into()),
        (KEY_TOKENS.into(), s(&["a", "b", "ab", "<|im_end|>", "[PAD4]"])),
        (KEY_TOKEN_TYPE.into(), vec![1i32, 1, 1, 3, 5].into()),
        (KEY_MERGES.into(), s(&["a b"])),
        (KEY_EOS_ID.into(), 3u32.into()),
    ]
}

fn with(mut metadata: Vec<(String, GgufValue)>, key: &str, value: Option<GgufValue>) -> Vec<(String, GgufValue)> {
    let pos = metadata.iter().position(|(k, _)| k == key);
    match (pos, value) {
        (Some(i), Some(v)) => metadata[i].1 = v,
        (Some(i), None) => {
            metadata.remove(i);
        }
        (None, Some(v)) => metadata.push((key.into(), v)),
        (None, None) => {}
    }
    metadata
}

fn open_toy(name: &str, metadata: &[(String, GgufValue)]) -> GgufFile {
    let path = scratch_dir(&format!("gguf-tokenizer-toy-{name}")).join("toy.gguf");
    write_gguf(&path, metadata);
    GgufFile::open(&path).unwrap()
}

/// The key and message of a `GgufTokenizer` error from building the toy's tokenizer.
fn toy_error(name: &str, metadata: &[(String, GgufValue)]) -> (String, String) {
    let file = open_toy(name, metadata);
    match tokenizer_from_gguf(&file) {
        Err(e @ RuntimeError::GgufTokenizer { .. }) => {
            let message = e.to_string();
            assert!(message.contains("toy.gguf"), "{message}");
            let RuntimeError::GgufTokenizer { key, .. } = e else { unreachable!() };
            (key, message)
        }
        Err(other) => panic!("{name}: unexpected error {other}"),
        Ok(_) => panic!("{name}: accepted"),
    }
}

#[test]
fn toy_vocabulary_works() {
    let file = open_toy("ok", &toy());
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(tok.vocab_size(), 4);
    assert_eq!(tok.encode("ab<|im_end|>ba").unwrap(), [2, 3, 1, 0]);
    assert_eq!(tok.decode(&[2, 3]).unwrap(), "ab<|im_end|>");
    assert!(matches!(tok.decode(&[4]), Err(RuntimeError::UnknownTokenId { id: 4, .. })));
    assert_eq!(stop_ids_from_gguf(&file, &tok).unwrap(), [3]);
    assert!(chat_template_from_gguf(&file).unwrap().is_none());
}

#[test]
fn unknown_tokenizer_model_is_refused() {
    let (key, message) = toy_error("model", &with(toy(), KEY_MODEL, Some("llama".into())));
    assert_eq!(key, KEY_MODEL);
    assert!(message.contains("\"llama\"") && message.contains("gpt2"), "{message}");
}

#[test]
fn unknown_or_missing_pre_is_refused() {
    let (key, message) = toy_error("pre", &with(toy(), KEY_PRE, Some("deepseek-llm".into())));
    assert_eq!(key, KEY_PRE);
    assert!(message.contains("\"deepseek-llm\"") && message.contains("qwen35"), "{message}");
    let (key, message) = toy_error("no-pre", &with(toy(), KEY_PRE, None));
    assert_eq!(key, KEY_PRE);
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn tokens_and_types_of_different_length_are_refused() {
    let (key, message) = toy_error("lengths", &with(toy(), KEY_TOKEN_TYPE, Some(vec![1i32, 1, 1, 3].into())));
    assert_eq!(key, KEY_TOKEN_TYPE);
    assert!(message.contains("4 entries") && message.contains("has 5"), "{message}");
}

#[test]
fn merges_naming_unknown_tokens_are_refused() {
    let merges = |m: &[&str]| Some(GgufValue::from(m.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
    let (key, message) = toy_error("merge-part", &with(toy(), KEY_MERGES, merges(&["a b", "a c"])));
    assert_eq!(key, KEY_MERGES);
    assert!(message.contains("merge 1") && message.contains("\"c\""), "{message}");
    let (key, message) = toy_error("merge-result", &with(toy(), KEY_MERGES, merges(&["b a"])));
    assert_eq!(key, KEY_MERGES);
    assert!(message.contains("\"ba\""), "{message}");
    let (key, _) = toy_error("merge-shape", &with(toy(), KEY_MERGES, merges(&["ab"])));
    assert_eq!(key, KEY_MERGES);
    // A merge may not name an added token either.
    let (key, _) = toy_error("merge-added", &with(toy(), KEY_MERGES, merges(&["a <|im_end|>"])));
    assert_eq!(key, KEY_MERGES);
    // The JSON view refuses the same, up front.
    let file = open_toy("merge-json", &with(toy(), KEY_MERGES, merges(&["a c"])));
    match gguf_tokenizer_json(&file) {
        Err(RuntimeError::GgufTokenizer { key, .. }) => assert_eq!(key, KEY_MERGES),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_inconsistent_vocabularies_are_refused() {
    let s = |v: &[&str]| Some(GgufValue::from(v.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
    // Same token twice.
    let (key, message) = toy_error("dup", &with(toy(), KEY_TOKENS, s(&["a", "b", "ab", "a", "[PAD4]"])));
    assert_eq!(key, KEY_TOKENS);
    assert!(message.contains("repeats token 0"), "{message}");
    // Two normal tokens alike (would silently shrink the BPE vocabulary).
    let (key, message) = toy_error(
        "dup-normal",
        &with(
            with(toy(), KEY_TOKENS, s(&["a", "b", "a", "<|im_end|>", "[PAD4]"])),
            KEY_MERGES,
            Some(GgufValue::from(Vec::<String>::new())),
        ),
    );
    assert_eq!(key, KEY_TOKENS);
    assert!(message.contains("token 2 \"a\" repeats token 0"), "{message}");
    // An added token before the end of the normal ones would be renumbered by `tokenizers`.
    let (key, message) = toy_error(
        "order",
        &with(
            with(toy(), KEY_TOKENS, s(&["a", "<|im_end|>", "b", "ab", "[PAD4]"])),
            KEY_TOKEN_TYPE,
            Some(vec![1i32, 3, 1, 1, 5].into()),
        ),
    );
    assert_eq!(key, KEY_TOKEN_TYPE);
    assert!(message.contains("must have id 3"), "{message}");
    // Byte tokens belong to SentencePiece vocabularies.
    let (key, _) = toy_error("byte", &with(toy(), KEY_TOKEN_TYPE, Some(vec![1i32, 1, 1, 6, 5].into())));
    assert_eq!(key, KEY_TOKEN_TYPE);
    // token_type of the wrong element type.
    let (key, _) = toy_error("type-type", &with(toy(), KEY_TOKEN_TYPE, s(&["1", "1", "1", "3", "5"])));
    assert_eq!(key, KEY_TOKEN_TYPE);
    // A missing token list is the reader's error.
    let file = open_toy("no-tokens", &with(toy(), KEY_TOKENS, None));
    match tokenizer_from_gguf(&file) {
        Err(RuntimeError::Format(e)) => assert!(e.to_string().contains(KEY_TOKENS), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_stop_ids_are_refused() {
    let tok = tokenizer_from_gguf(&open_toy("eos-ok", &toy())).unwrap();
    // The padding row has no token.
    let file = open_toy("eos-pad", &with(toy(), KEY_EOS_ID, Some(4u32.into())));
    match stop_ids_from_gguf(&file, &tok) {
        Err(RuntimeError::GgufTokenizer { key, .. }) => assert_eq!(key, KEY_EOS_ID),
        other => panic!("{other:?}"),
    }
    let file = open_toy("eos-range", &with(toy(), KEY_EOS_ID, Some(9u32.into())));
    assert!(matches!(stop_ids_from_gguf(&file, &tok), Err(RuntimeError::GgufTokenizer { .. })));
    let file = open_toy("eos-type", &with(toy(), KEY_EOS_ID, Some("3".into())));
    assert!(matches!(stop_ids_from_gguf(&file, &tok), Err(RuntimeError::GgufTokenizer { .. })));
}

// ---- export from small model folders ------------------------------------------------------------

fn toy_tokenizer_json(regex: &str) -> Value {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 3, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 4, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
            {"id": 5, "content": "<|fim_pad|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level.clone()
        ]},
        "post_processor": byte_level.clone(),
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}
    })
}

fn toy_dir(name: &str, tokenizer: &Value, config: Option<Value>) -> PathBuf {
    let dir = scratch_dir(&format!("gguf-tokenizer-dir-{name}"));
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    if let Some(config) = config {
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    }
    dir
}

#[test]
fn toy_folder_round_trips() {
    let config = json!({
        "eos_token": {"content": "<|im_end|>"}, "pad_token": null, "add_bos_token": false,
        "chat_template": [
            {"name": "default", "template": "{{ messages[0]['content'] }}{{ eos_token }}"},
            {"name": "tool use", "template": "tools"}
        ]
    });
    let dir = toy_dir("ok", &toy_tokenizer_json(QWEN2_PRE_REGEX), Some(config));
    let m = gguf_tokenizer_metadata(&dir, 8).unwrap();
    assert_eq!(
        keys(&m),
        [
            KEY_MODEL,
            KEY_PRE,
            KEY_TOKENS,
            KEY_TOKEN_TYPE,
            KEY_MERGES,
            KEY_EOS_ID,
            KEY_ADD_BOS,
            "tokenizer.chat_template.tool_use",
            KEY_CHAT_TEMPLATES,
            KEY_CHAT_TEMPLATE
        ]
    );
    assert_eq!(strings(&m, KEY_TOKENS), ["a", "b", "ab", "<|im_end|>", "<think>", "<|fim_pad|>", "[PAD6]", "[PAD7]"]);
    assert_eq!(types(&m), [1, 1, 1, 3, 4, 3, 5, 5]);
    assert_eq!(strings(&m, KEY_MERGES), ["a b"]);
    assert_eq!(value(&m, KEY_EOS_ID), &GgufValue::U32(3));
    assert_eq!(strings(&m, KEY_CHAT_TEMPLATES), ["tool_use"]);

    let path = dir.join("toy.gguf");
    write_gguf(&path, &m);
    let file = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(tok.encode("<think>ab<|fim_pad|>").unwrap(), [4, 2, 5]);
    let template = chat_template_from_gguf(&file).unwrap().unwrap();
    let out = template.render(&[json!({"role": "user", "content": "hi"})], None, false, &Default::default()).unwrap();
    assert_eq!(out, "hi<|im_end|>");
    assert_eq!(stop_ids_from_gguf(&file, &tok).unwrap(), [3]);
}

#[test]
fn export_refusals() {
    let field_of = |r: Result<Vec<(String, GgufValue)>, RuntimeError>| match r {
        Err(RuntimeError::ConfigField { field, problem, .. }) => (field, problem),
        other => panic!("{other:?}"),
    };
    // A regex llama.cpp has no name for here.
    let dir = toy_dir("regex", &toy_tokenizer_json(r"\s+|\S+"), None);
    let (field, problem) = field_of(gguf_tokenizer_metadata(&dir, 8));
    assert_eq!(field, "pre_tokenizer");
    assert!(problem.contains("qwen35"), "{problem}");
    // Fewer embedding rows than tokens.
    let dir = toy_dir("rows", &toy_tokenizer_json(QWEN35_PRE_REGEX), None);
    let (field, problem) = field_of(gguf_tokenizer_metadata(&dir, 5));
    assert_eq!(field, "added_tokens");
    assert!(problem.contains("id 5") && problem.contains("5 rows"), "{problem}");
    // Not NFC.
    let mut json = toy_tokenizer_json(QWEN35_PRE_REGEX);
    json["normalizer"] = Value::Null;
    let dir = toy_dir("nfc", &json, None);
    assert_eq!(field_of(gguf_tokenizer_metadata(&dir, 8)).0, "normalizer");
    // Two tokens on one id.
    let mut json = toy_tokenizer_json(QWEN35_PRE_REGEX);
    json["model"]["vocab"]["ba"] = json!(2);
    let dir = toy_dir("dup", &json, None);
    assert_eq!(field_of(gguf_tokenizer_metadata(&dir, 8)).0, "model.vocab");
    // No tokenizer.json at all.
    let dir = scratch_dir("gguf-tokenizer-dir-empty");
    assert!(matches!(gguf_tokenizer_metadata(&dir, 8), Err(RuntimeError::Io { .. })));
}
