//! Errors on bad input name the file or the problem, and never panic.

mod common;

use common::{demo_dir, scratch_dir};
use qmoe_runtime::{stop_token_ids, ChatTemplate, RuntimeError, Tokenizer};
use serde_json::{json, Map};

#[test]
fn missing_tokenizer_file() {
    let err = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(matches!(err, RuntimeError::Io { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/tokenizer.json"), "{err}");
}

#[test]
fn malformed_tokenizer_file() {
    let dir = scratch_dir("err-tokenizer");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, "{\"model\": {\"type\": \"BPE\", \"vocab\": ").unwrap();
    let err = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(err, RuntimeError::TokenizerLoad { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    std::fs::write(&path, "{\"version\": \"1.0\"}").unwrap();
    assert!(matches!(Tokenizer::from_file(&path), Err(RuntimeError::TokenizerLoad { .. })));
}

fn raised_message(err: &RuntimeError) -> &str {
    match err {
        RuntimeError::TemplateRaised { message, .. } => message,
        other => panic!("expected TemplateRaised, got {other}"),
    }
}

#[test]
fn template_that_raises() {
    let template = ChatTemplate::from_file(demo_dir().join("chat_template.jinja")).unwrap();
    // The Qwen3.6 template refuses an empty conversation and one without a user turn.
    let err = template.render(&[], None, true, &Map::new()).unwrap_err();
    match &err {
        RuntimeError::TemplateRaised { message, origin } => {
            assert_eq!(message, "No messages provided.");
            assert!(origin.ends_with("chat_template.jinja"), "{origin}");
        }
        other => panic!("expected TemplateRaised, got {other}"),
    }
    let system_only = [json!({"role": "system", "content": "be brief"})];
    let err = template.render(&system_only, None, true, &Map::new()).unwrap_err();
    assert_eq!(raised_message(&err), "No user query found in messages.");
    // Raised inside a macro (render_content) as well.
    let image_in_system = [
        json!({"role": "system", "content": [{"type": "image", "image": "x.png"}]}),
        json!({"role": "user", "content": "hi"}),
    ];
    let err = template.render(&image_in_system, None, true, &Map::new()).unwrap_err();
    assert_eq!(raised_message(&err), "System message cannot contain images.");
}

#[test]
fn template_syntax_and_render_errors() {
    let err = ChatTemplate::from_source("{% if %}", "broken.jinja").unwrap_err();
    assert!(matches!(err, RuntimeError::TemplateSyntax { .. }), "{err}");
    assert!(err.to_string().contains("broken.jinja"), "{err}");

    // tojson of an undefined value is a TypeError in Python, an error here.
    let template = ChatTemplate::from_source("{{ nothing | tojson }}", "t").unwrap();
    let err = template.render(&[], None, false, &Map::new()).unwrap_err();
    assert!(matches!(err, RuntimeError::TemplateRender { .. }), "{err}");

    let mut extra = Map::new();
    extra.insert("messages".into(), json!([]));
    let err = template.render(&[], None, false, &extra).unwrap_err();
    assert!(matches!(err, RuntimeError::ReservedTemplateKwarg { .. }), "{err}");
}

#[test]
fn missing_chat_template() {
    let dir = scratch_dir("err-no-template");
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::MissingChatTemplate { .. }), "{err}");

    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "<|im_end|>"}"#).unwrap();
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::MissingChatTemplate { .. }), "{err}");

    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": 3}"#).unwrap();
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::ConfigField { .. }), "{err}");
}

#[test]
fn malformed_config_json() {
    let dir = scratch_dir("err-config");
    std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, RuntimeError::Json { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
}

#[test]
fn malformed_stop_configs() {
    let tok = Tokenizer::from_file(common::qwen3_next_dir().join("tokenizer.json")).unwrap();
    let dir = scratch_dir("err-stop");
    std::fs::write(dir.join("generation_config.json"), "{\"eos_token_id\": [1,").unwrap();
    let err = stop_token_ids(&dir, &tok).unwrap_err();
    assert!(matches!(err, RuntimeError::Json { .. }), "{err}");
    assert!(err.to_string().contains("generation_config.json"), "{err}");

    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": "x"}"#).unwrap();
    let err = stop_token_ids(&dir, &tok).unwrap_err();
    assert!(matches!(err, RuntimeError::ConfigField { .. }), "{err}");

    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "<|no such token|>"}"#).unwrap();
    let err = stop_token_ids(&dir, &tok).unwrap_err();
    assert!(matches!(err, RuntimeError::UnknownToken { .. }), "{err}");
}
