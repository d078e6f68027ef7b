//! Stop ids: union of generation_config, config (top level and text_config) and
//! tokenizer_config, in that order, deduplicated.

mod common;

use common::{demo_dir, qwen3_next_dir, scratch_dir, tokenizer};
use qmoe_runtime::stop_token_ids;
use serde_json::json;

#[test]
fn demo_model_dir() {
    // The demo folder always has tokenizer_config.json (eos_token <|im_end|>); once it also ships
    // config.json / generation_config.json they add <|endoftext|> (248044).
    let ids = stop_token_ids(demo_dir(), tokenizer("qwen3.6")).unwrap();
    let has_configs = ["config.json", "generation_config.json"].iter().any(|f| demo_dir().join(f).exists());
    if has_configs {
        assert_eq!(ids, [248_046, 248_044]);
    } else {
        assert_eq!(ids, [248_046]);
    }
}

#[test]
fn qwen36_layout_with_nested_text_config() {
    let dir = scratch_dir("stop-qwen36");
    std::fs::copy(demo_dir().join("tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
    // Qwen3.5/3.6 configs nest the text model's fields under text_config.
    let config = json!({"model_type": "qwen3_5_moe", "text_config": {"eos_token_id": 248044}});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    assert_eq!(stop_token_ids(&dir, tokenizer("qwen3.6")).unwrap(), [248_044, 248_046]);

    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [248046, 248044]}"#).unwrap();
    assert_eq!(stop_token_ids(&dir, tokenizer("qwen3.6")).unwrap(), [248_046, 248_044]);
}

#[test]
fn qwen3_next_layout_top_level_int() {
    let dir = scratch_dir("stop-qwen3-next");
    std::fs::copy(qwen3_next_dir().join("tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": 151645, "bos_token_id": 151643}"#).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [151645, 151643]}"#).unwrap();
    assert_eq!(stop_token_ids(&dir, tokenizer("qwen3-next")).unwrap(), [151_645, 151_643]);
}

#[test]
fn empty_dir_has_no_stop_ids() {
    let dir = scratch_dir("stop-empty");
    assert!(stop_token_ids(&dir, tokenizer("qwen3-next")).unwrap().is_empty());
}
