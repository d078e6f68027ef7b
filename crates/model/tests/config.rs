//! `Config` parsing: every supported config shape, and one test per refusal
//! (the message must name the field and the file).

use std::path::Path;

use qmoe_model::config::{Arch, Config, ConfigError, LayerKind, MlpKind};
use serde_json::{json, Value};

const SRC: &str = "/ckpt/some-model/config.json";

fn parse(v: &Value) -> Result<Config, ConfigError> {
    Config::from_json_str(&v.to_string(), Path::new(SRC))
}

/// Parse, expect an error, and check it names the file and every one of `parts`.
#[track_caller]
fn refused(v: &Value, parts: &[&str]) -> ConfigError {
    let e = match parse(v) {
        Ok(c) => panic!("expected a refusal mentioning {parts:?}, got {c:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains(SRC), "{msg:?} does not name the file");
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not mention {p:?}");
    }
    e
}

/// Set `key` in `text_config` (if present) else at the top level.
fn set(mut v: Value, key: &str, val: Value) -> Value {
    let target = if v.get("text_config").is_some() { &mut v["text_config"] } else { &mut v };
    target[key] = val;
    v
}

fn remove(mut v: Value, key: &str) -> Value {
    if let Some(t) = v.get_mut("text_config").and_then(Value::as_object_mut) {
        t.remove(key);
    }
    v.as_object_mut().unwrap().remove(key);
    v
}

fn lin_full(n: usize) -> Vec<&'static str> {
    (0..n).map(|i| if (i + 1) % 4 == 0 { "full_attention" } else { "linear_attention" }).collect()
}

/// Qwen3.6-27B as released (spec §1.4; the text_config verbatim, the wrapper abridged).
fn qwen36_27b() -> Value {
    json!({
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "image_token_id": 248056,
        "model_type": "qwen3_5",
        "text_config": {
            "attention_bias": false, "attn_output_gate": true, "bos_token_id": 248044, "eos_token_id": 248044,
            "full_attention_interval": 4, "head_dim": 256, "hidden_act": "silu", "hidden_size": 5120,
            "intermediate_size": 17408, "layer_types": lin_full(64), "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 48,
            "linear_value_head_dim": 128, "mamba_ssm_dtype": "float32", "max_position_embeddings": 262144,
            "model_type": "qwen3_5_text", "mtp_num_hidden_layers": 1, "mtp_use_dedicated_embeddings": false,
            "num_attention_heads": 24, "num_hidden_layers": 64, "num_key_value_heads": 4,
            "output_gate_type": "swish", "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-6,
            "rope_parameters": {"mrope_interleaved": true, "mrope_section": [11, 11, 10],
                                "partial_rotary_factor": 0.25, "rope_theta": 10000000, "rope_type": "default"},
            "tie_word_embeddings": false, "vocab_size": 248320
        },
        "tie_word_embeddings": false,
        "video_token_id": 248057,
        "vision_config": {"depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "model_type": "qwen3_5_vision"},
        "vision_end_token_id": 248054,
        "vision_start_token_id": 248053
    })
}

/// A Qwen3.5/3.6-35B-A3B style wrapper in the older rope style, with MLX quantization.
fn qwen35_moe() -> Value {
    json!({
        "model_type": "qwen3_5_moe",
        "eos_token_id": [248046, 248044],
        "tie_word_embeddings": true,
        "quantization": {"group_size": 64, "bits": 4, "mode": "affine",
                         "language_model.model.layers.0.mlp.gate": {"group_size": 64, "bits": 8}},
        "quantization_config": {"group_size": 64, "bits": 4},
        "rms_norm_eps": 1e-5,
        "text_config": {
            "model_type": "qwen3_5_moe_text", "vocab_size": 248320, "hidden_size": 2048,
            "num_hidden_layers": 40, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "full_attention_interval": 4,
            "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
            "linear_num_key_heads": 16, "linear_num_value_heads": 32,
            "num_experts": 256, "num_experts_per_tok": 8, "moe_intermediate_size": 512,
            "shared_expert_intermediate_size": 512, "router_aux_loss_coef": 0.001,
            "rope_theta": 10000000, "partial_rotary_factor": 0.25,
            "rope_scaling": {"type": "mrope", "mrope_section": [11, 11, 10]},
            "bos_token_id": null, "eos_token_id": null
        }
    })
}

/// A flat Qwen3-Next config with a mixed MLP schedule.
fn qwen3_next() -> Value {
    json!({
        "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 8,
        "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "tie_word_embeddings": false,
        "rope_theta": 5000000, "partial_rotary_factor": 0.25, "rope_scaling": null,
        "full_attention_interval": 4, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
        "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512,
        "shared_expert_intermediate_size": 512, "norm_topk_prob": false,
        "decoder_sparse_step": 2, "mlp_only_layers": [0, 5, 100],
        "bos_token_id": 151643, "eos_token_id": 151645
    })
}

/// A text-only `qwen3_5_text` export (flat), e.g. a tied 0.8B.
fn qwen35_text() -> Value {
    json!({
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "vocab_size": 248320, "hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24,
        "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128,
        "linear_num_key_heads": 16, "linear_num_value_heads": 16,
        "rope_parameters": {"rope_type": "mrope", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                            "mrope_interleaved": true}
    })
}

#[test]
fn qwen36_27b_dense_wrapper() {
    let c = parse(&qwen36_27b()).unwrap();
    assert_eq!((c.arch, c.model_type.as_str()), (Arch::Qwen35, "qwen3_5"));
    assert_eq!((c.vocab_size, c.hidden_size, c.num_hidden_layers), (248320, 5120, 64));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (24, 4, 256));
    assert_eq!(c.intermediate_size, Some(17408));
    assert_eq!((c.rms_norm_eps, c.rope_theta, c.partial_rotary_factor), (1e-6, 1e7, 0.25));
    assert_eq!((c.max_position_embeddings, c.tie_word_embeddings), (262144, false));
    assert_eq!((c.n_linear_attention_layers(), c.n_full_attention_layers()), (48, 16));
    assert!(c.is_full_attention(3) && c.is_full_attention(63) && !c.is_full_attention(4));
    assert!(c.is_linear_attention(0) && !c.is_linear_attention(64) && !c.is_full_attention(64));
    assert_eq!(c.layer_types[7], LayerKind::FullAttention);
    assert!(c.mlp_kinds.iter().all(|k| *k == MlpKind::Dense));
    assert_eq!((c.n_moe_layers(), c.n_dense_layers()), (0, 64));
    assert_eq!((c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size), (0, 0, 0));
    // Derived shapes, spec §4.1 (27B column).
    assert_eq!(c.rotary_dims(), 64);
    assert_eq!((c.key_dim(), c.value_dim(), c.conv_dim()), (2048, 6144, 10240));
    assert_eq!(c.v_heads_per_k_head(), 3);
    assert_eq!((c.q_proj_dim(), c.kv_dim(), c.attn_out_dim()), (12288, 1024, 6144));
    assert_eq!(c.q_heads_per_kv_head(), 6);
    assert_eq!((c.attention_scale(), c.linear_q_scale()), (1.0 / 16.0, 1.0 / 128f32.sqrt()));
    assert_eq!((c.mtp_num_hidden_layers, c.has_mtp()), (1, true));
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(248044), &[248044][..]));
    assert!(c.quantization.is_none());
    assert!(c.norm_topk_prob);
}

#[test]
fn qwen35_moe_wrapper_with_fallbacks() {
    let c = parse(&qwen35_moe()).unwrap();
    assert_eq!(c.arch, Arch::Qwen35Moe);
    // layer_types absent: every 4th layer from full_attention_interval.
    assert_eq!(
        c.layer_types,
        (0..40)
            .map(|i| if i % 4 == 3 { LayerKind::FullAttention } else { LayerKind::LinearAttention })
            .collect::<Vec<_>>()
    );
    assert_eq!((c.n_moe_layers(), c.intermediate_size), (40, None));
    assert_eq!((c.num_experts, c.num_experts_per_tok), (256, 8));
    assert_eq!((c.moe_intermediate_size, c.shared_expert_intermediate_size), (512, 512));
    assert!(c.norm_topk_prob, "qwen3_5_moe always renormalises");
    assert_eq!((c.rope_theta, c.rotary_dims()), (1e7, 64));
    assert_eq!((c.key_dim(), c.value_dim(), c.conv_dim(), c.v_heads_per_k_head()), (2048, 4096, 8192, 2));
    // text_config wins where it has the key; the top level fills what it lacks;
    // null inside text_config counts as absent.
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.eos_token_ids, [248046, 248044]);
    assert_eq!(c.bos_token_id, None);
    assert_eq!((c.mtp_num_hidden_layers, c.has_mtp()), (0, false));
    // quantization: top-level quantization_config first.
    assert_eq!(c.quantization, Some(json!({"group_size": 64, "bits": 4})));
    let c = parse(&remove(qwen35_moe(), "quantization_config")).unwrap();
    assert_eq!(c.quantization.unwrap()["language_model.model.layers.0.mlp.gate"]["bits"], 8);
    // ... and in text_config when the top level has none.
    let mut v = remove(remove(qwen35_moe(), "quantization_config"), "quantization");
    v["text_config"]["quantization_config"] = json!({"quant_method": "fp8", "weight_block_size": [128, 128]});
    assert_eq!(parse(&v).unwrap().quantization.unwrap()["quant_method"], "fp8");
    // A norm_topk_prob: false in a qwen3_5_moe config is ignored, as in HF.
    assert!(parse(&set(qwen35_moe(), "norm_topk_prob", json!(false))).unwrap().norm_topk_prob);
}

#[test]
fn qwen3_next_flat_mixed_mlp_schedule() {
    let c = parse(&qwen3_next()).unwrap();
    assert_eq!(c.arch, Arch::Qwen3Next);
    // MoE iff i not in mlp_only_layers and (i+1) % 2 == 0: layers 1, 3, 7 (5 is forced dense).
    let moe: Vec<usize> = (0..8).filter(|&i| c.is_moe(i)).collect();
    assert_eq!(moe, [1, 3, 7]);
    assert_eq!(c.mlp_kinds[5], MlpKind::Dense);
    assert!(!c.is_moe(8));
    assert_eq!((c.n_moe_layers(), c.n_dense_layers(), c.intermediate_size), (3, 5, Some(5120)));
    assert!(!c.norm_topk_prob);
    assert_eq!((c.rope_theta, c.num_experts, c.num_experts_per_tok), (5e6, 512, 10));
    assert_eq!((c.qkvz_dim(), c.ba_dim()), (12288, 64));
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(151643), &[151645][..]));
    assert_eq!(c.mtp_num_hidden_layers, 0);
    // norm_topk_prob defaults to true as in HF; num_nextn_predict_layers is read.
    let v = set(remove(qwen3_next(), "norm_topk_prob"), "num_nextn_predict_layers", json!(1));
    let c = parse(&v).unwrap();
    assert!(c.norm_topk_prob);
    assert_eq!(c.mtp_num_hidden_layers, 1);
    // Zero experts: every layer dense, no expert fields needed.
    let mut v = set(qwen3_next(), "num_experts", json!(0));
    for k in ["num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"] {
        v = remove(v, k);
    }
    let c = parse(&v).unwrap();
    assert_eq!((c.n_moe_layers(), c.num_experts, c.num_experts_per_tok), (0, 0, 0));
}

#[test]
fn qwen35_text_only_export_with_mrope() {
    let c = parse(&qwen35_text()).unwrap();
    assert_eq!((c.arch, c.model_type.as_str()), (Arch::Qwen35, "qwen3_5_text"));
    assert_eq!(c.head_dim, 256, "head_dim defaults to hidden / heads");
    assert_eq!((c.rope_theta, c.partial_rotary_factor, c.rotary_dims()), (1e7, 0.25, 64));
    assert!(c.tie_word_embeddings);
    assert_eq!((c.v_heads_per_k_head(), c.conv_dim()), (1, 6144));
    assert_eq!((c.rms_norm_eps, c.max_position_embeddings, c.linear_conv_kernel_dim), (1e-6, 32768, 4));
    assert!(c.eos_token_ids.is_empty() && c.bos_token_id.is_none());
    // A qwen3_5_moe_text flat config maps to the MoE arch.
    let mut v = set(qwen35_text(), "model_type", json!("qwen3_5_moe_text"));
    for (k, n) in [
        ("num_experts", 8),
        ("num_experts_per_tok", 2),
        ("moe_intermediate_size", 64),
        ("shared_expert_intermediate_size", 64),
    ] {
        v = set(v, k, json!(n));
    }
    assert_eq!(parse(&v).unwrap().arch, Arch::Qwen35Moe);
}

/// Configs exactly as transformers 5.23 `to_dict()` writes them (vision part dropped).
#[test]
fn transformers_5_23_written_configs() {
    let moe = r#"{"transformers_version":"5.23.0","architectures":null,"output_hidden_states":false,"return_dict":true,"dtype":null,"chunk_size_feed_forward":0,"is_encoder_decoder":false,"id2label":{"0":"LABEL_0","1":"LABEL_1"},"label2id":{"LABEL_0":0,"LABEL_1":1},"problem_type":null,"text_config":{"architectures":null,"output_hidden_states":false,"return_dict":true,"dtype":null,"chunk_size_feed_forward":0,"is_encoder_decoder":false,"id2label":{"0":"LABEL_0","1":"LABEL_1"},"label2id":{"LABEL_0":0,"LABEL_1":1},"problem_type":null,"vocab_size":248320,"hidden_size":2048,"num_hidden_layers":4,"num_attention_heads":16,"num_key_value_heads":2,"hidden_act":"silu","max_position_embeddings":32768,"initializer_range":0.02,"rms_norm_eps":1e-06,"use_cache":true,"tie_word_embeddings":false,"rope_parameters":{"rope_theta":10000.0,"partial_rotary_factor":0.25,"rope_type":"default"},"attention_bias":false,"attention_dropout":0.0,"head_dim":256,"linear_conv_kernel_dim":4,"linear_key_head_dim":128,"linear_value_head_dim":128,"linear_num_key_heads":16,"linear_num_value_heads":32,"moe_intermediate_size":512,"shared_expert_intermediate_size":512,"num_experts_per_tok":8,"num_experts":256,"output_router_logits":false,"router_aux_loss_coef":0.001,"layer_types":["linear_attention","linear_attention","linear_attention","full_attention"],"pad_token_id":null,"bos_token_id":null,"eos_token_id":null,"_name_or_path":"","model_type":"qwen3_5_moe_text","output_attentions":false},"image_token_id":248056,"video_token_id":248057,"vision_start_token_id":248053,"vision_end_token_id":248054,"tie_word_embeddings":false,"_name_or_path":"","model_type":"qwen3_5_moe","output_attentions":false}"#;
    let c = Config::from_json_str(moe, Path::new(SRC)).unwrap();
    assert_eq!((c.arch, c.num_hidden_layers, c.rope_theta, c.n_full_attention_layers()), (Arch::Qwen35Moe, 4, 1e4, 1));
    let next = r#"{"transformers_version":"5.23.0","architectures":null,"output_hidden_states":false,"return_dict":true,"dtype":null,"chunk_size_feed_forward":0,"is_encoder_decoder":false,"id2label":{"0":"LABEL_0","1":"LABEL_1"},"label2id":{"LABEL_0":0,"LABEL_1":1},"problem_type":null,"vocab_size":151936,"hidden_size":2048,"intermediate_size":5632,"num_hidden_layers":4,"num_attention_heads":16,"num_key_value_heads":2,"hidden_act":"silu","max_position_embeddings":32768,"initializer_range":0.02,"rms_norm_eps":1e-06,"use_cache":true,"tie_word_embeddings":false,"rope_parameters":{"rope_theta":10000.0,"partial_rotary_factor":0.25,"rope_type":"default"},"attention_bias":false,"attention_dropout":0.0,"head_dim":256,"linear_conv_kernel_dim":4,"linear_key_head_dim":128,"linear_value_head_dim":128,"linear_num_key_heads":16,"linear_num_value_heads":32,"decoder_sparse_step":1,"moe_intermediate_size":512,"shared_expert_intermediate_size":512,"num_experts_per_tok":10,"num_experts":512,"norm_topk_prob":true,"output_router_logits":false,"router_aux_loss_coef":0.001,"mlp_only_layers":[2],"layer_types":["linear_attention","linear_attention","linear_attention","full_attention"],"pad_token_id":null,"bos_token_id":null,"eos_token_id":null,"_name_or_path":"","model_type":"qwen3_next","output_attentions":false}"#;
    let c = Config::from_json_str(next, Path::new(SRC)).unwrap();
    assert_eq!(c.mlp_kinds, [MlpKind::Moe, MlpKind::Moe, MlpKind::Dense, MlpKind::Moe]);
    assert_eq!(c.intermediate_size, Some(5632));
}

#[test]
fn from_file_reads_a_file_or_a_directory() {
    let dir = std::env::temp_dir().join(format!("qmoe-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, qwen3_next().to_string()).unwrap();
    let a = Config::from_file(&path).unwrap();
    let b = Config::from_file(&dir).unwrap();
    assert_eq!(a, b);
    let missing = dir.join("nope.json");
    let msg = Config::from_file(&missing).unwrap_err().to_string();
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- refusals ---------------------------------------------------------------------

#[test]
fn refuses_unknown_model_type_listing_supported() {
    let e = refused(&set(qwen3_next(), "model_type", json!("qwen3_moe")), &["qwen3_moe", "qwen3_5_moe", "qwen3_next"]);
    assert!(matches!(e, ConfigError::UnknownModelType { .. }));
    refused(&remove(qwen3_next(), "model_type"), &["model_type"]);
    refused(&set(qwen3_next(), "model_type", json!(7)), &["model_type", "string"]);
}

#[test]
fn refuses_bad_json_and_non_objects() {
    let e = Config::from_json_str("{\"model_type\": ", Path::new(SRC)).unwrap_err();
    assert!(matches!(e, ConfigError::Json { .. }) && e.to_string().contains(SRC));
    let e = Config::from_json_str("[1]", Path::new(SRC)).unwrap_err();
    assert!(matches!(e, ConfigError::NotObject { .. }) && e.to_string().contains(SRC));
    let mut v = qwen36_27b();
    v["text_config"] = json!("nope");
    refused(&v, &["text_config", "object"]);
}

#[test]
fn refuses_text_config_of_another_family() {
    let mut v = qwen36_27b();
    v["text_config"]["model_type"] = json!("qwen3_5_moe_text");
    refused(&v, &["text_config.model_type", "qwen3_5_moe_text"]);
}

#[test]
fn refuses_missing_required_fields() {
    for key in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_num_key_heads",
        "linear_num_value_heads",
    ] {
        let e = refused(&remove(qwen36_27b(), key), &[key]);
        assert!(matches!(e, ConfigError::Missing { .. }), "{key}: {e}");
    }
    for key in ["num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"] {
        refused(&remove(qwen35_moe(), key), &[key]);
        refused(&remove(qwen3_next(), key), &[key]);
    }
}

#[test]
fn refuses_missing_rope_theta() {
    // No safe default for any arch (see the module doc).
    let mut v = remove(qwen36_27b(), "rope_parameters");
    v = remove(v, "partial_rotary_factor");
    refused(&v, &["rope_theta"]);
    refused(&remove(qwen3_next(), "rope_theta"), &["rope_theta"]);
}

#[test]
fn refuses_wrong_json_types() {
    refused(
        &set(qwen36_27b(), "hidden_size", json!("5120")),
        &["text_config.hidden_size", "non-negative integer", "\"5120\""],
    );
    refused(&set(qwen36_27b(), "num_hidden_layers", json!(64.5)), &["num_hidden_layers", "integer"]);
    refused(&set(qwen36_27b(), "vocab_size", json!(-1)), &["vocab_size"]);
    refused(&set(qwen36_27b(), "tie_word_embeddings", json!("yes")), &["tie_word_embeddings", "true or false"]);
    refused(&set(qwen36_27b(), "rms_norm_eps", json!("1e-6")), &["rms_norm_eps", "number"]);
    refused(&set(qwen36_27b(), "layer_types", json!("linear_attention")), &["layer_types", "array"]);
    refused(&set(qwen36_27b(), "eos_token_id", json!("</s>")), &["eos_token_id"]);
    refused(&set(qwen36_27b(), "eos_token_id", json!([1, -2])), &["eos_token_id[1]"]);
    refused(&set(qwen36_27b(), "bos_token_id", json!(1u64 << 40)), &["bos_token_id"]);
    refused(&set(qwen3_next(), "mlp_only_layers", json!([0, "1"])), &["mlp_only_layers[1]"]);
    refused(&set(qwen3_next(), "mlp_only_layers", json!(3)), &["mlp_only_layers"]);
    refused(&set(qwen36_27b(), "rope_parameters", json!(1e7)), &["rope_parameters", "object"]);
    let mut v = qwen36_27b();
    v["text_config"]["rope_parameters"]["rope_theta"] = json!("1e7");
    refused(&v, &["text_config.rope_parameters.rope_theta", "number"]);
}

#[test]
fn refuses_zero_sizes() {
    for key in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "head_dim",
        "intermediate_size",
        "linear_conv_kernel_dim",
        "linear_key_head_dim",
        "linear_num_key_heads",
        "max_position_embeddings",
        "full_attention_interval",
    ] {
        let mut v = set(qwen36_27b(), key, json!(0));
        if key == "full_attention_interval" {
            v = remove(v, "layer_types");
        }
        let e = refused(&v, &[key]);
        assert!(matches!(e, ConfigError::Invalid { .. }), "{key}: {e}");
    }
    refused(&set(qwen3_next(), "decoder_sparse_step", json!(0)), &["decoder_sparse_step"]);
    refused(&set(qwen35_moe(), "moe_intermediate_size", json!(0)), &["moe_intermediate_size"]);
    refused(&set(qwen35_moe(), "num_experts", json!(0)), &["num_experts"]);
}

#[test]
fn refuses_value_heads_not_a_multiple_of_key_heads() {
    refused(&set(qwen36_27b(), "linear_num_value_heads", json!(40)), &["linear_num_value_heads", "40", "16"]);
}

#[test]
fn refuses_kv_heads_not_dividing_heads() {
    refused(&set(qwen36_27b(), "num_key_value_heads", json!(5)), &["num_key_value_heads"]);
}

#[test]
fn refuses_bad_top_k() {
    refused(&set(qwen35_moe(), "num_experts_per_tok", json!(0)), &["num_experts_per_tok"]);
    refused(&set(qwen35_moe(), "num_experts_per_tok", json!(257)), &["num_experts_per_tok", "257", "256"]);
    refused(&set(qwen3_next(), "num_experts_per_tok", json!(513)), &["num_experts_per_tok"]);
}

#[test]
fn refuses_bad_layer_types() {
    refused(&set(qwen36_27b(), "layer_types", json!(lin_full(60))), &["layer_types", "60", "64"]);
    let mut types = lin_full(64);
    types[3] = "sliding_attention";
    refused(&set(qwen36_27b(), "layer_types", json!(types)), &["text_config.layer_types[3]", "sliding_attention"]);
}

#[test]
fn refuses_dense_layers_without_intermediate_size() {
    refused(&remove(qwen36_27b(), "intermediate_size"), &["intermediate_size"]);
    // qwen3_next with forced-dense layers needs it too.
    refused(&remove(qwen3_next(), "intermediate_size"), &["intermediate_size", "layer 0"]);
}

#[test]
fn refuses_bad_head_and_rotary_dims() {
    refused(&set(qwen36_27b(), "head_dim", json!(255)), &["head_dim", "odd"]);
    // hidden / heads not integral and no head_dim.
    let v = set(remove(qwen35_text(), "head_dim"), "num_attention_heads", json!(3));
    refused(&set(v, "num_key_value_heads", json!(1)), &["head_dim"]);
    let mut v = qwen36_27b();
    v["text_config"]["rope_parameters"]["partial_rotary_factor"] = json!(65.0 / 256.0); // 65 dims: odd
    refused(&v, &["partial_rotary_factor", "65"]);
    v["text_config"]["rope_parameters"]["partial_rotary_factor"] = json!(0.001); // 0 dims
    refused(&v, &["partial_rotary_factor"]);
    v["text_config"]["rope_parameters"]["partial_rotary_factor"] = json!(1.5);
    refused(&v, &["text_config.rope_parameters.partial_rotary_factor"]);
    // Full rotation (factor 1) is fine.
    v["text_config"]["rope_parameters"]["partial_rotary_factor"] = json!(1.0);
    assert_eq!(parse(&v).unwrap().rotary_dims(), 256);
}

#[test]
fn refuses_scaled_rope() {
    let mut v = qwen36_27b();
    v["text_config"]["rope_parameters"]["rope_type"] = json!("yarn");
    let e = refused(&v, &["text_config.rope_parameters.rope_type", "yarn"]);
    assert!(matches!(e, ConfigError::Unsupported { .. }));
    let v = set(qwen3_next(), "rope_scaling", json!({"type": "yarn", "factor": 4.0}));
    refused(&v, &["rope_scaling.type", "yarn"]);
    let v = set(qwen3_next(), "rope_scaling", json!({"rope_type": "linear", "factor": 2.0}));
    refused(&v, &["rope_scaling.rope_type", "linear"]);
}

#[test]
fn refuses_bad_rope_theta_and_eps() {
    refused(&set(qwen3_next(), "rope_theta", json!(0)), &["rope_theta"]);
    refused(&set(qwen3_next(), "rms_norm_eps", json!(0.0)), &["rms_norm_eps"]);
    refused(&set(qwen3_next(), "rms_norm_eps", json!(1e-300)), &["rms_norm_eps"]);
}

#[test]
fn refuses_attention_bias() {
    let e = refused(&set(qwen36_27b(), "attention_bias", json!(true)), &["text_config.attention_bias"]);
    assert!(matches!(e, ConfigError::Unsupported { .. }));
}

#[test]
fn refuses_non_silu_activation() {
    refused(&set(qwen3_next(), "hidden_act", json!("gelu")), &["hidden_act", "gelu"]);
}

#[test]
fn refuses_absurd_layer_counts_before_allocating() {
    refused(&set(qwen35_moe(), "num_hidden_layers", json!(1u64 << 40)), &["num_hidden_layers", "limit"]);
    refused(&set(qwen35_moe(), "mtp_num_hidden_layers", json!(1u64 << 40)), &["mtp_num_hidden_layers", "limit"]);
}

#[test]
fn refuses_overflowing_sizes() {
    let v = set(set(qwen36_27b(), "linear_num_value_heads", json!(1u64 << 62)), "linear_num_key_heads", json!(1));
    refused(&v, &["overflow"]);
}

// ---- robustness -------------------------------------------------------------------

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn odd_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(0)),
            Just(json!(1)),
            Just(json!(3)),
            Just(json!(-1)),
            Just(json!(1.5)),
            Just(json!(u64::MAX)),
            Just(json!(1u64 << 40)),
            Just(json!("silu")),
            Just(json!("yarn")),
            Just(json!(true)),
            Just(json!([])),
            Just(json!(["full_attention"])),
            Just(json!({})),
            Just(json!({"rope_type": "yarn"})),
            Just(json!({"rope_theta": -1})),
            Just(json!(1e300)),
        ]
    }

    fn check_accepted(c: &Config) {
        // Every accessor must be total on an accepted config.
        let _ = (c.rotary_dims(), c.key_dim(), c.value_dim(), c.conv_dim(), c.v_heads_per_k_head());
        let _ = (c.qkvz_dim(), c.ba_dim(), c.q_proj_dim(), c.kv_dim(), c.attn_out_dim(), c.q_heads_per_kv_head());
        let _ = (c.attention_scale(), c.linear_q_scale(), c.n_full_attention_layers(), c.n_moe_layers());
        assert_eq!(c.layer_types.len(), c.num_hidden_layers);
        assert_eq!(c.mlp_kinds.len(), c.num_hidden_layers);
        assert!(c.rotary_dims() > 0 && c.rotary_dims() % 2 != 1 && c.rotary_dims() <= c.head_dim);
        if c.n_moe_layers() > 0 {
            assert!(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.num_experts);
        }
        if c.n_dense_layers() > 0 {
            assert!(c.intermediate_size.is_some());
        }
    }

    proptest! {
        // 1500 cases: each replaces 1-4 fields of a valid config with odd JSON values.
        #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn mutated_configs_never_panic(
            which in 0usize..4,
            edits in prop::collection::vec((any::<prop::sample::Index>(), odd_value(), any::<bool>()), 1..5),
        ) {
            let mut v = [qwen36_27b(), qwen35_moe(), qwen3_next(), qwen35_text()][which].clone();
            for (idx, val, top) in edits {
                let target = if !top && v.get("text_config").is_some() { &mut v["text_config"] } else { &mut v };
                let Some(obj) = target.as_object() else { continue };
                let keys: Vec<String> = obj.keys().cloned().collect();
                if keys.is_empty() {
                    continue;
                }
                let key = idx.get(&keys).clone();
                target[key.as_str()] = val;
            }
            match parse(&v) {
                Ok(c) => check_accepted(&c),
                Err(e) => prop_assert!(e.to_string().contains(SRC)),
            }
        }
    }
}
