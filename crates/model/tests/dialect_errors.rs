//! Quantized dialects refuse contradictions instead of guessing: a config
//! that disagrees with the stored shapes (the "8-bit router read as 4-bit"
//! bug), FP8 scales that do not fit the declared block size, and the gate
//! reporting every problem in one pass.

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use qmoe_model::{Model, ModelError};
use serde_json::Value;

/// Copies a fixture directory, letting `edit` change its config.json.
fn with_config(name: &str, tag: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let src = fixture(name);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qmoe-dialect-errors-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

fn err(dir: &Path) -> ModelError {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

fn remove_router_overrides(cfg: &mut Value) {
    for key in ["quantization", "quantization_config"] {
        if let Some(q) = cfg.get_mut(key).and_then(Value::as_object_mut) {
            q.retain(|k, _| !k.ends_with("mlp.gate") && !k.ends_with("shared_expert_gate"));
        }
    }
}

#[test]
fn router_gate_read_at_the_global_width_is_a_contradiction() {
    let dir = with_config("mlx_q4", "router", remove_router_overrides);
    let e = err(&dir).to_string();
    assert!(e.contains("language_model.model.layers.0.mlp.gate.weight"), "{e}");
    assert!(e.contains("config says 4-bit group 32") && e.contains("8-bit group 64"), "{e}");
    // Both gates of all four layers, in one report.
    assert!(e.contains("8 invalid"), "{e}");
}

#[test]
fn explicit_float_entry_for_a_packed_weight_is_refused() {
    let dir = with_config("mlx_q4", "false", |cfg| {
        for key in ["quantization", "quantization_config"] {
            cfg[key]["language_model.model.layers.2.mlp.gate"] = Value::Bool(false);
        }
    });
    let e = err(&dir).to_string();
    assert!(e.contains("layers.2.mlp.gate.weight") && e.contains("not quantized"), "{e}");
}

#[test]
fn fp8_block_size_must_match_the_scales() {
    let dir = with_config("fp8_block", "block", |cfg| {
        cfg["quantization_config"]["weight_block_size"] = serde_json::json!([128, 128]);
    });
    let ModelError::Gate(g) = err(&dir) else { panic!("expected the gate report") };
    assert!(g.misshaped().count() > 10, "{g}");
    let text = g.to_string();
    assert!(text.contains("weight_scale_inv") && text.contains("expected [1, 1]"), "{text}");
}

#[test]
fn fp8_without_block_size_is_unsupported() {
    let dir = with_config("fp8_block", "noblock", |cfg| {
        cfg["quantization_config"].as_object_mut().unwrap().remove("weight_block_size");
    });
    let e = err(&dir).to_string();
    assert!(e.contains("weight_block_size"), "{e}");
}

#[test]
fn fp8_module_listed_as_not_converted_is_refused() {
    let dir = with_config("fp8_block", "notconv", |cfg| {
        cfg["quantization_config"]["modules_to_not_convert"]
            .as_array_mut()
            .unwrap()
            .push(Value::String("model.language_model.layers.3.self_attn.q_proj".into()));
    });
    let e = err(&dir).to_string();
    assert!(e.contains("layers.3.self_attn.q_proj.weight") && e.contains("modules_to_not_convert"), "{e}");
}

#[test]
fn unknown_quant_method_is_named() {
    let dir = with_config("fp8_block", "awq", |cfg| {
        cfg["quantization_config"]["quant_method"] = Value::String("awq".into());
    });
    let e = err(&dir).to_string();
    assert!(e.contains("awq") && e.contains("not supported"), "{e}");
}
