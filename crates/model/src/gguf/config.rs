//! GGUF metadata to our [`Config`] (spec 5.1, 5.2).
//!
//! The metadata is translated into the equivalent HF text config and parsed
//! by the same validating parser as `config.json`, so a GGUF model obeys
//! exactly the same invariants. Layer kinds come from the tensors present
//! (`blk.i.attn_q` = full attention, `blk.i.ssm_a` = Gated DeltaNet) and are
//! cross-checked against `full_attention_interval` when the file has it.

use std::path::Path;

use qmoe_formats::gguf::GgufValue;
use serde_json::{json, Map, Value};

use crate::config::{Config, ConfigError};

/// GGUF architecture name to the HF `model_type` of its text model.
pub fn model_type_of(arch: &str) -> Option<&'static str> {
    match arch {
        "qwen35moe" => Some("qwen3_5_moe_text"),
        "qwen35" => Some("qwen3_5_text"),
        "qwen3next" => Some("qwen3_next"),
        _ => None,
    }
}

pub const SUPPORTED_ARCHS: &str = "qwen35moe, qwen35, qwen3next";

/// Builds the config. `get` reads a metadata key, `has` tells whether a
/// tensor exists, `vocab_rows` is the embedding's row count.
pub fn config_from_gguf<'a>(
    path: &Path,
    get: &dyn Fn(&str) -> Option<&'a GgufValue>,
    has: &dyn Fn(&str) -> bool,
    vocab_rows: usize,
) -> Result<Config, ConfigError> {
    let err = |field: &str, reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason,
    };
    let arch = match get("general.architecture") {
        Some(GgufValue::String(s)) => s.clone(),
        Some(v) => return Err(err("general.architecture", format!("must be a string, found {}", v.describe()))),
        None => {
            return Err(ConfigError::Missing {
                path: path.to_path_buf(),
                field: "general.architecture".into(),
                note: String::new(),
            })
        }
    };
    let model_type = model_type_of(&arch).ok_or_else(|| ConfigError::Unsupported {
        path: path.to_path_buf(),
        field: "general.architecture".into(),
        value: arch.clone(),
        reason: format!("supported GGUF architectures: {SUPPORTED_ARCHS}"),
    })?;
    let key = |k: &str| format!("{arch}.{k}");
    let uint = |k: &str| -> Result<Option<u64>, ConfigError> {
        match get(&key(k)) {
            None => Ok(None),
            Some(GgufValue::Array(a)) => {
                // Per-layer arrays (head_count_kv in hybrid files): one non-zero value.
                let vals: Vec<u64> = match a {
                    qmoe_formats::gguf::GgufArray::U32(v) => v.iter().map(|&x| x as u64).collect(),
                    qmoe_formats::gguf::GgufArray::I32(v) => v.iter().map(|&x| x.max(0) as u64).collect(),
                    qmoe_formats::gguf::GgufArray::U64(v) => v.clone(),
                    _ => {
                        return Err(err(
                            &key(k),
                            format!("must be an integer or integer array, found {}", a.describe()),
                        ))
                    }
                };
                let nz: Vec<u64> = vals.into_iter().filter(|&x| x != 0).collect();
                match nz.first() {
                    Some(&f) if nz.iter().all(|&x| x == f) => Ok(Some(f)),
                    Some(_) => Err(err(&key(k), "per-layer values differ; qmoe needs one value".into())),
                    None => Ok(None),
                }
            }
            Some(v) => {
                v.as_uint().map(Some).ok_or_else(|| err(&key(k), format!("must be an integer, found {}", v.describe())))
            }
        }
    };
    let float = |k: &str| -> Result<Option<f64>, ConfigError> {
        match get(&key(k)) {
            None => Ok(None),
            Some(v) => {
                v.as_float().map(Some).ok_or_else(|| err(&key(k), format!("must be a float, found {}", v.describe())))
            }
        }
    };
    let need = |k: &str, v: Option<u64>| {
        v.ok_or_else(|| ConfigError::Missing { path: path.to_path_buf(), field: key(k), note: String::new() })
    };

    let nextn = uint("nextn_predict_layers")?.unwrap_or(0);
    let blocks = need("block_count", uint("block_count")?)?;
    let n_layers = blocks.checked_sub(nextn).filter(|&n| n > 0).ok_or_else(|| {
        err(&key("block_count"), format!("{blocks} blocks leave no main layers after {nextn} nextn (MTP) layers"))
    })? as usize;
    if n_layers > crate::config::MAX_LAYERS {
        return Err(err(&key("block_count"), format!("{n_layers} layers is not plausible")));
    }

    let head_dim = need("attention.key_length", uint("attention.key_length")?)?;
    let rot = need("rope.dimension_count", uint("rope.dimension_count")?)?;
    let heads_v = need("ssm.time_step_rank", uint("ssm.time_step_rank")?)?;
    let inner = need("ssm.inner_size", uint("ssm.inner_size")?)?;
    if heads_v == 0 || inner % heads_v != 0 {
        return Err(err(&key("ssm.inner_size"), format!("{inner} is not a multiple of ssm.time_step_rank {heads_v}")));
    }

    let mut layer_types = Vec::with_capacity(n_layers);
    for i in 0..n_layers {
        let attn = has(&format!("blk.{i}.attn_q.weight"));
        let gdn = has(&format!("blk.{i}.ssm_a"));
        layer_types.push(match (attn, gdn) {
            (true, false) => "full_attention",
            (false, true) => "linear_attention",
            _ => {
                return Err(err(
                    &format!("blk.{i}"),
                    "layer is neither attention (attn_q) nor Gated DeltaNet (ssm_a), or both".into(),
                ))
            }
        });
    }
    // The converter writes both a per-layer `attention.recurrent_layers`
    // (authoritative: it follows `layer_types`) and the interval; check the
    // tensors against the first one present.
    if let Some(v) = get(&key("attention.recurrent_layers")) {
        let flags = match v {
            GgufValue::Array(qmoe_formats::gguf::GgufArray::Bool(b)) => b.clone(),
            other => {
                return Err(err(
                    &key("attention.recurrent_layers"),
                    format!("must be a bool array, found {}", other.describe()),
                ))
            }
        };
        for (i, t) in layer_types.iter().enumerate() {
            let recurrent = flags.get(i).copied().unwrap_or(false);
            if (*t == "linear_attention") != recurrent {
                return Err(err(
                    &key("attention.recurrent_layers"),
                    format!(
                        "says layer {i} is {} but its tensors are {t}",
                        if recurrent { "recurrent" } else { "attention" }
                    ),
                ));
            }
        }
    } else if let Some(n) = uint("full_attention_interval")? {
        for (i, t) in layer_types.iter().enumerate() {
            let by_interval =
                if n > 0 && (i as u64 + 1).is_multiple_of(n) { "full_attention" } else { "linear_attention" };
            if *t != by_interval {
                return Err(err(
                    &key("full_attention_interval"),
                    format!("{n} says layer {i} is {by_interval} but its tensors are {t}"),
                ));
            }
        }
    }

    let experts = uint("expert_count")?.unwrap_or(0);
    let mut tc = Map::new();
    tc.insert("model_type".into(), json!(model_type));
    tc.insert("vocab_size".into(), json!(vocab_rows));
    tc.insert("hidden_size".into(), json!(need("embedding_length", uint("embedding_length")?)?));
    tc.insert("num_hidden_layers".into(), json!(n_layers));
    tc.insert("num_attention_heads".into(), json!(need("attention.head_count", uint("attention.head_count")?)?));
    tc.insert("num_key_value_heads".into(), json!(need("attention.head_count_kv", uint("attention.head_count_kv")?)?));
    tc.insert("head_dim".into(), json!(head_dim));
    tc.insert("rms_norm_eps".into(), json!(float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6)));
    tc.insert(
        "rope_theta".into(),
        json!(float("rope.freq_base")?.ok_or_else(|| ConfigError::Missing {
            path: path.to_path_buf(),
            field: key("rope.freq_base"),
            note: String::new(),
        })?),
    );
    tc.insert("partial_rotary_factor".into(), json!(rot as f64 / head_dim as f64));
    tc.insert("max_position_embeddings".into(), json!(uint("context_length")?.unwrap_or(32768)));
    tc.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
    tc.insert("layer_types".into(), json!(layer_types));
    tc.insert("linear_conv_kernel_dim".into(), json!(need("ssm.conv_kernel", uint("ssm.conv_kernel")?)?));
    tc.insert("linear_key_head_dim".into(), json!(need("ssm.state_size", uint("ssm.state_size")?)?));
    tc.insert("linear_num_key_heads".into(), json!(need("ssm.group_count", uint("ssm.group_count")?)?));
    tc.insert("linear_num_value_heads".into(), json!(heads_v));
    tc.insert("linear_value_head_dim".into(), json!(inner / heads_v));
    if let Some(f) = uint("feed_forward_length")? {
        tc.insert("intermediate_size".into(), json!(f));
    }
    if experts > 0 {
        tc.insert("num_experts".into(), json!(experts));
        tc.insert("num_experts_per_tok".into(), json!(need("expert_used_count", uint("expert_used_count")?)?));
        tc.insert(
            "moe_intermediate_size".into(),
            json!(need("expert_feed_forward_length", uint("expert_feed_forward_length")?)?),
        );
        tc.insert(
            "shared_expert_intermediate_size".into(),
            json!(need("expert_shared_feed_forward_length", uint("expert_shared_feed_forward_length")?)?),
        );
        // llama.cpp hard-codes softmax + renormalise for these architectures.
        tc.insert("norm_topk_prob".into(), json!(true));
        if arch == "qwen3next" {
            let dense: Vec<usize> = (0..n_layers).filter(|i| !has(&format!("blk.{i}.ffn_gate_inp.weight"))).collect();
            tc.insert("mlp_only_layers".into(), json!(dense));
        }
    }
    if nextn > 0 {
        tc.insert("mtp_num_hidden_layers".into(), json!(nextn));
    }
    for (field, k) in [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")]
    {
        if let Some(v) = get(k).and_then(GgufValue::as_uint) {
            tc.insert(field.into(), json!(v));
        }
    }
    let text = Value::Object(tc).to_string();
    Config::from_json_str(&text, path)
}
