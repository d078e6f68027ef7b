//! Chat templates against transformers' (jinja2) renderings, and the ways a template is found.

mod common;

use std::path::PathBuf;

use common::{demo_dir, ids_of, qwen36_assets_dir, qwen3_next_dir, read_jsonl, scratch_dir, tokenizer};
use qmoe_runtime::{ChatTemplate, RuntimeError};
use serde_json::{json, Map, Value};

/// Where each `template` named in chat-template-renders.jsonl is committed.
fn template_path(name: &str) -> PathBuf {
    match name {
        "qwen3.6/chat_template.jinja" => demo_dir().join("chat_template.jinja"),
        "qwen3.6/chat_template.qwen3.5.jinja" => qwen36_assets_dir().join("chat_template.qwen3.5.jinja"),
        "qwen3.6/chat_template.qwen3.5-small.jinja" => qwen36_assets_dir().join("chat_template.qwen3.5-small.jinja"),
        "qwen3-next/chat_template.jinja" => qwen3_next_dir().join("chat_template.jinja"),
        other => panic!("unmapped template {other}"),
    }
}

fn no_kwargs() -> Map<String, Value> {
    Map::new()
}

#[test]
fn renders_match_transformers_byte_for_byte() {
    let records = read_jsonl("chat-template-renders.jsonl");
    assert_eq!(records.len(), 36);
    for r in &records {
        let label = format!("{} / {}", r["template"].as_str().unwrap(), r["case"].as_str().unwrap());
        let template = ChatTemplate::from_file(template_path(r["template"].as_str().unwrap())).unwrap();
        let messages = r["messages"].as_array().unwrap();
        let tools = r["tools"].as_array().map(Vec::as_slice);
        let kwargs = r["kwargs"].as_object().unwrap();
        let rendered = template
            .render(messages, tools, r["add_generation_prompt"].as_bool().unwrap(), kwargs)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(rendered, r["rendered"].as_str().unwrap(), "{label}");
        let tok = tokenizer(r["vocab"].as_str().unwrap());
        assert_eq!(tok.encode(&rendered).unwrap(), ids_of(r), "{label}: ids");
    }
}

#[test]
fn model_dir_prefers_chat_template_jinja() {
    let template = ChatTemplate::from_model_dir(demo_dir()).unwrap();
    let on_disk = std::fs::read_to_string(demo_dir().join("chat_template.jinja")).unwrap();
    assert_eq!(template.source(), on_disk);
    let out = template.render(&[json!({"role": "user", "content": "Hi"})], None, true, &no_kwargs()).unwrap();
    assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n");
}

#[test]
fn model_dir_falls_back_to_tokenizer_config() {
    let dir = scratch_dir("chat-config-string");
    let config = json!({"eos_token": "<E>", "chat_template": "{{ eos_token }}|{{ messages[0].content }}"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap();
    let out = template.render(&[json!({"role": "user", "content": "x"})], None, false, &no_kwargs());
    assert_eq!(out.unwrap(), "<E>|x");

    // Caller kwargs override special tokens, as in transformers.
    let mut extra = Map::new();
    extra.insert("eos_token".into(), json!("<F>"));
    let out = template.render(&[json!({"role": "user", "content": "x"})], None, false, &extra);
    assert_eq!(out.unwrap(), "<F>|x");
}

#[test]
fn model_dir_named_template_list_takes_default() {
    let dir = scratch_dir("chat-config-list");
    let config = json!({
        "eos_token": {"content": "<E>", "special": true},
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "default {{ eos_token }}"}
        ]
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap();
    assert_eq!(template.render(&[], None, false, &no_kwargs()).unwrap(), "default <E>");

    let config = json!({"chat_template": [{"name": "tool_use", "template": "tools"}]});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::ConfigField { ref field, .. } if field == "chat_template"), "{err}");
}

#[test]
fn qwen3_next_dir_from_assets() {
    let template = ChatTemplate::from_model_dir(qwen3_next_dir()).unwrap();
    let out = template.render(&[json!({"role": "user", "content": "Hi"})], None, true, &no_kwargs()).unwrap();
    assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn tojson_is_python_json_dumps() {
    let template = ChatTemplate::from_source(
        "{{ tools[0] | tojson }}\n{{ tools[0] | tojson(indent=2, sort_keys=true) }}",
        "inline",
    )
    .unwrap();
    let tool = json!({
        "name": "f",
        "description": "a < b & c > 'd' é \"q\"\n",
        "n": [1, 2.0, 1e-7, null, true]
    });
    let out = template.render(&[], Some(&[tool]), false, &no_kwargs()).unwrap();
    // Python 3: json.dumps(x, ensure_ascii=False), then with indent=2, sort_keys=True.
    let want = concat!(
        r#"{"name": "f", "description": "a < b & c > 'd' é \"q\"\n", "#,
        r#""n": [1, 2.0, 1e-07, null, true]}"#,
        "\n{\n  \"description\": \"a < b & c > 'd' é \\\"q\\\"\\n\",\n",
        "  \"n\": [\n    1,\n    2.0,\n    1e-07,\n    null,\n    true\n  ],\n",
        "  \"name\": \"f\"\n}"
    );
    assert_eq!(out, want);
}

#[test]
fn tools_is_none_not_undefined_when_absent() {
    let template = ChatTemplate::from_source(
        "{{ tools is defined }} {{ tools is none }} {{ enable_thinking is defined }}",
        "inline",
    )
    .unwrap();
    // Booleans print as Python does.
    assert_eq!(template.render(&[], None, false, &no_kwargs()).unwrap(), "True True False");
}

#[test]
fn model_dir_reads_processor_chat_template_json() {
    let dir = scratch_dir("chat-processor-json");
    std::fs::write(dir.join("chat_template.json"), r#"{"chat_template": "P{{ messages|length }}"}"#).unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap();
    assert_eq!(template.render(&[json!({})], None, false, &no_kwargs()).unwrap(), "P1");
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ChatTemplate>();
    check::<qmoe_runtime::Tokenizer>();
    check::<qmoe_runtime::StreamDecoder>();
    check::<qmoe_runtime::Sampler>();
}
