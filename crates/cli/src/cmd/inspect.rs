//! `qmoe inspect`: what a checkpoint is and how qmoe reads it: dialect and
//! the evidence for it, every convention applied, per-tensor storage, bytes
//! by category, MTP presence, and the tensor gate's verdict. It reports even
//! when the model would not load, so the user sees why. `--json` prints the
//! same report as one JSON object.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use qmoe_formats::Checkpoint;
use qmoe_model::config::{LayerKind, MlpKind};
use qmoe_model::loader::{detect_dialect, load_weights, ExpertLayout, GdnProjLayout, NormStorage, Problem, MTP_NORMS};
use qmoe_model::quant::QuantScheme;
use qmoe_model::{Config, ModelError};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json + safetensors).
    path: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<()> {
    let report = build(&a.path)?;
    let text = if a.json { serde_json::to_string_pretty(&report)? + "\n" } else { render(&report)? };
    super::common::print_stdout(&text)
}

fn build(path: &std::path::Path) -> Result<Value> {
    if let Some(gguf) = qmoe_model::model::gguf_path(path)? {
        return build_gguf(&gguf);
    }
    let dir = super::common::model_dir(path);
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&dir).with_context(|| format!("opening {}", dir.display()))?;

    let mut r = json!({
        "checkpoint": dir.display().to_string(),
        "files": ckpt.files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "index": ckpt.index().map(|p| p.display().to_string()),
        "tensor_count": ckpt.len(),
        "total_bytes": ckpt.total_bytes(),
        "config": config_summary(&cfg),
    });

    match detect_dialect(&ckpt, &cfg) {
        Ok(d) => {
            r["dialect"] = json!({
                "name": d.name(),
                "trunk_prefix": d.trunk_prefix,
                "norms": match d.norms {
                    NormStorage::ZeroCentred => "zero-centred, stored as w: applied as 1 + w (f32, once)",
                    NormStorage::Effective => "stored as 1 + w already: applied as stored",
                },
                "norms_because": d.norms_reason,
                "quantization": quant_summary(&d.quant),
            });
        }
        Err(e) => r["dialect"] = json!({ "error": e.to_string() }),
    }

    let mut tensors: Vec<Value> = ckpt
        .tensors()
        .map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape, "bytes": t.byte_len()}))
        .collect();
    match load_weights(&ckpt, &cfg) {
        Ok((_, conv)) => {
            r["conventions"] = json!({
                "lm_head": conv.lm_head.clone().unwrap_or_else(|| "tied to embed_tokens".into()),
                "experts": match conv.experts {
                    Some(ExpertLayout::Fused) => "fused experts.gate_up_proj [E,2I,H] + experts.down_proj [E,H,I], split into per-expert views (no copy)",
                    Some(ExpertLayout::PerExpert) => "per-expert experts.{e}.{gate,up,down}_proj, indices 0..E checked",
                    Some(ExpertLayout::SwitchMlp) => "MLX switch_mlp stacks [E,I,H] / [E,H,I], per-expert views (no copy)",
                    None => "none (dense MLP)",
                },
                "gdn_projections": match conv.gdn_proj {
                    GdnProjLayout::Separate => "separate in_proj_qkv / in_proj_z / in_proj_b / in_proj_a",
                    GdnProjLayout::FusedGrouped => "fused in_proj_qkvz / in_proj_ba grouped per key head, un-grouped after the matmul",
                },
                "v_head_order": "grouped: value head h reads key head h / (Hv/Hk)",
                "conv1d": "taps read as [C, K] from [C,1,K] or [C,K,1]",
                "a_log": "-exp(A_log) computed in f32 at load",
            });
            let by_cat: serde_json::Map<String, Value> =
                conv.bytes_by_category().into_iter().map(|(c, b)| (c.name().to_string(), json!(b))).collect();
            r["bytes_by_category"] = Value::Object(by_cat);
            r["ignored"] = json!(conv.ignored);
            r["mtp"] = match &conv.mtp {
                Some(m) => json!({
                    "present": true,
                    "loaded": true,
                    "layers": m.layers,
                    "prefix": m.prefix,
                    "note": format!(
                        "loaded: {} block(s) under `{}` (count from {}); {}; exported as GGUF nextn blocks; MTP decoding is not implemented yet",
                        m.layers, m.prefix, m.layers_from, MTP_NORMS
                    ),
                }),
                None => json!({"present": false, "loaded": false, "layers": 0, "note": "no mtp.* tensors"}),
            };
            for t in &mut tensors {
                let name = t["name"].as_str().unwrap_or_default().to_string();
                t["use"] = match conv.tensors.get(&name) {
                    Some(Some(u)) => json!({"category": u.category.name(), "storage": u.storage}),
                    Some(None) => json!("scales of a quantized weight"),
                    None => json!("ignored"),
                };
            }
            r["gate"] = json!({"ok": true});
        }
        Err(e) => r["gate"] = gate_failure(&e),
    }
    r["tensors"] = Value::Array(tensors);
    Ok(r)
}

/// The report for a GGUF file: metadata, how qmoe maps it, tensor types.
fn build_gguf(path: &std::path::Path) -> Result<Value> {
    use qmoe_formats::gguf::GgufFile;
    let file = GgufFile::open(path)?;
    let meta: serde_json::Map<String, Value> = file
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer.ggml.") && k != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), json!(v.to_string())))
        .collect();
    let mut r = json!({
        "checkpoint": path.display().to_string(),
        "files": [path.display().to_string()],
        "index": null,
        "tensor_count": file.tensors().len(),
        "total_bytes": file.total_tensor_bytes(),
        "gguf": {"version": file.version(), "alignment": file.alignment(), "metadata": meta,
                 "tokenizer": {"model": file.get("tokenizer.ggml.model").map(|v| v.to_string()),
                               "pre": file.get("tokenizer.ggml.pre").map(|v| v.to_string()),
                               "tokens": file.get("tokenizer.ggml.tokens").map(|v| v.to_string()),
                               "chat_template": file.contains_key("tokenizer.chat_template")}},
    });
    let mut tensors: Vec<Value> = file
        .tensors()
        .iter()
        .map(|t| json!({"name": t.name, "dtype": t.type_name(), "shape": t.shape(), "bytes": t.byte_len()}))
        .collect();
    match qmoe_model::Model::load_gguf(path) {
        Ok(model) => {
            r["config"] = config_summary(&model.config);
            if let qmoe_model::Source::Gguf { conventions: cv, .. } = &model.source {
                r["dialect"] = json!({
                    "name": format!("GGUF ({})", cv.arch),
                    "trunk_prefix": "blk.",
                    "norms": "stored as 1 + w by the converter (F32): applied as stored",
                    "norms_because": "GGUF files always carry effective norm weights",
                    "quantization": "per-tensor ggml types, decoded block by block in the matmul",
                });
                r["conventions"] = json!({
                    "lm_head": if model.config.tie_word_embeddings { "tied to token_embd" } else { "output.weight" },
                    "experts": cv.experts,
                    "gdn_projections": cv.gdn_proj,
                    "v_head_order": match cv.head_map {
                        qmoe_kernels::gdn::HeadMap::Tiled => "tiled (qwen35* converter reorder): value head n reads key head n mod Hk",
                        qmoe_kernels::gdn::HeadMap::Grouped => "grouped: value head h reads key head h / (Hv/Hk)",
                    },
                    "ssm_a": "stored as -exp(A_log): used directly",
                    "conv1d": "ssm_conv1d ne {K, C} = [C, K]",
                });
                let mut by_cat = serde_json::Map::new();
                for u in cv.tensors.values().flatten() {
                    let e = by_cat.entry(u.category.name().to_string()).or_insert(json!(0));
                    *e = json!(e.as_u64().unwrap_or(0) + u.bytes as u64);
                }
                r["bytes_by_category"] = Value::Object(by_cat);
                r["ignored"] = json!(cv.ignored);
                r["mtp"] = json!({"present": cv.mtp_present, "loaded": cv.mtp_present, "layers": cv.mtp_layers,
                    "note": if cv.mtp_present {
                        format!("loaded: {} nextn block(s) blk.{}.. (eh_proj, enorm, hnorm, shared_head_norm, norms stored 1 + w); MTP decoding is not implemented yet",
                            cv.mtp_layers, model.config.num_hidden_layers)
                    } else { "no nextn blocks".to_string() }});
                for t in &mut tensors {
                    let name = t["name"].as_str().unwrap_or_default().to_string();
                    t["use"] = match cv.tensors.get(&name) {
                        Some(Some(u)) => json!({"category": u.category.name(), "storage": u.storage}),
                        _ => json!("ignored"),
                    };
                }
            }
            r["gate"] = json!({"ok": true});
        }
        Err(e) => r["gate"] = gate_failure(&e),
    }
    if r.get("config").is_none() {
        r["config"] = json!({});
        r["dialect"] = json!({"error": "see the tensor gate"});
    }
    r["tensors"] = Value::Array(tensors);
    Ok(r)
}

/// The gate's verdict on a model that did not load: the tensor gate's lists,
/// or the one error that stopped loading earlier.
fn gate_failure(e: &ModelError) -> Value {
    let ModelError::Gate(g) = e else { return json!({"ok": false, "summary": e.to_string()}) };
    let list = |it: &mut dyn Iterator<Item = &Problem>| it.map(|p| p.to_string()).collect::<Vec<_>>();
    json!({
        "ok": false,
        "summary": g.to_string().lines().next().unwrap_or_default(),
        "missing": list(&mut g.missing()),
        "misshaped": list(&mut g.misshaped()),
        "invalid": list(&mut g.invalid()),
        "unexpected": g.unexpected,
        "ignored": g.ignored,
    })
}

fn config_summary(c: &Config) -> Value {
    let pattern: String =
        c.layer_types.iter().map(|t| if *t == LayerKind::FullAttention { 'A' } else { 'd' }).collect();
    let moe_layers = c.mlp_kinds.iter().filter(|m| **m == MlpKind::Moe).count();
    json!({
        "model_type": c.model_type,
        "arch": format!("{:?}", c.arch),
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "layer_pattern": pattern,
        "attention": {"heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                      "rotary_dims": c.rotary_dims(), "rope_theta": c.rope_theta},
        "deltanet": {"key_heads": c.linear_num_key_heads, "key_head_dim": c.linear_key_head_dim,
                     "value_heads": c.linear_num_value_heads, "value_head_dim": c.linear_value_head_dim,
                     "conv_kernel": c.linear_conv_kernel_dim},
        "moe": {"layers": moe_layers, "experts": c.num_experts, "top_k": c.num_experts_per_tok,
                "expert_width": c.moe_intermediate_size, "shared_width": c.shared_expert_intermediate_size,
                "renormalise": c.norm_topk_prob},
        "dense_layers": c.num_hidden_layers - moe_layers,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tie_word_embeddings,
        "mtp_num_hidden_layers": c.mtp_num_hidden_layers,
    })
}

fn quant_summary(q: &QuantScheme) -> Value {
    match q {
        QuantScheme::None => json!("none"),
        QuantScheme::Fp8 { block, not_converted } => json!({
            "method": "fp8 e4m3, weight_scale_inv block scales (value = f32(w) * scale)",
            "block": block,
            "modules_to_not_convert": not_converted.len(),
        }),
        QuantScheme::Mlx { global, overrides } => json!({
            "method": "MLX affine (value = scale * q + bias per group)",
            "global": global.map(|p| json!({"bits": p.bits, "group_size": p.group})),
            "per_path_overrides": overrides.len(),
        }),
    }
}

/// The human-readable form of the report.
fn render(r: &Value) -> Result<String> {
    let mut o = String::new();
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let c = &r["config"];
    writeln!(o, "checkpoint   {}", s(&r["checkpoint"]))?;
    writeln!(
        o,
        "files        {} file(s){}, {} tensors, {:.1} MiB",
        r["files"].as_array().map_or(0, |a| a.len()),
        if r["index"].is_null() { "" } else { " via model.safetensors.index.json" },
        r["tensor_count"],
        r["total_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64
    )?;
    if let Some(g) = r.get("gguf") {
        writeln!(
            o,
            "gguf         v{}, alignment {}, {} metadata keys",
            g["version"],
            g["alignment"],
            g["metadata"].as_object().map_or(0, |m| m.len())
        )?;
        let t = &g["tokenizer"];
        writeln!(
            o,
            "tokenizer    model {}, pre {}, tokens {}, chat template {}",
            s(&t["model"]),
            s(&t["pre"]),
            s(&t["tokens"]),
            t["chat_template"]
        )?;
    }
    if c.get("model_type").is_none() {
        writeln!(o, "config       not derived (see the tensor gate below)")?;
    } else {
        writeln!(o, "model_type   {} ({})", s(&c["model_type"]), s(&c["arch"]))?;
        writeln!(
            o,
            "layers       {}  {} (A = attention, d = DeltaNet), hidden {}",
            c["num_hidden_layers"],
            s(&c["layer_pattern"]),
            c["hidden_size"]
        )?;
        let at = &c["attention"];
        writeln!(
            o,
            "attention    {} q heads, {} kv heads, head_dim {}, rotary {} dims, theta {}",
            at["heads"], at["kv_heads"], at["head_dim"], at["rotary_dims"], at["rope_theta"]
        )?;
        let dn = &c["deltanet"];
        writeln!(
            o,
            "deltanet     {} key heads x {}, {} value heads x {}, conv {}",
            dn["key_heads"], dn["key_head_dim"], dn["value_heads"], dn["value_head_dim"], dn["conv_kernel"]
        )?;
        let m = &c["moe"];
        if m["layers"].as_u64().unwrap_or(0) > 0 {
            writeln!(
                o,
                "moe          {} layers: {} experts, top-{}, width {}, shared width {}, renormalise {}",
                m["layers"], m["experts"], m["top_k"], m["expert_width"], m["shared_width"], m["renormalise"]
            )?;
        }
        if c["dense_layers"].as_u64().unwrap_or(0) > 0 {
            writeln!(o, "dense mlp    {} layers, width {}", c["dense_layers"], c["intermediate_size"])?;
        }
        writeln!(o, "vocab        {}, tied embeddings: {}", c["vocab_size"], c["tie_word_embeddings"])?;
    }
    writeln!(o)?;
    let d = &r["dialect"];
    if let Some(e) = d.get("error") {
        writeln!(o, "dialect      undetermined: {}", s(e))?;
    } else {
        writeln!(o, "dialect      {}", s(&d["name"]))?;
        writeln!(o, "  because    {}", s(&d["norms_because"]))?;
        writeln!(o, "prefix       `{}`", s(&d["trunk_prefix"]))?;
        writeln!(o, "norms        {}", s(&d["norms"]))?;
        let q = match &d["quantization"] {
            Value::Object(m) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}: {}", s(v)))
                .collect::<Vec<_>>()
                .join("; "),
            other => s(other),
        };
        writeln!(o, "quantization {q}")?;
    }
    if let Some(cv) = r.get("conventions") {
        for (k, v) in cv.as_object().into_iter().flatten() {
            writeln!(o, "{:12} {}", k, s(v))?;
        }
        writeln!(o, "mtp          {}", s(&r["mtp"]["note"]))?;
        for (k, v) in r["ignored"].as_object().into_iter().flatten() {
            writeln!(o, "ignored      {v} {k} tensor(s)")?;
        }
        writeln!(o, "bytes by category")?;
        for (k, v) in r["bytes_by_category"].as_object().into_iter().flatten() {
            writeln!(o, "  {:16} {:10.2} MiB", k, v.as_f64().unwrap_or(0.0) / (1u64 << 20) as f64)?;
        }
    }
    let g = &r["gate"];
    if g["ok"].as_bool() == Some(true) {
        writeln!(o, "tensor gate  OK: every tensor accounted for; the model loads")?;
    } else {
        writeln!(o, "tensor gate  FAILED: {}", s(&g["summary"]))?;
        for key in ["missing", "misshaped", "invalid", "unexpected"] {
            let items = g[key].as_array().cloned().unwrap_or_default();
            for it in items.iter().take(20) {
                writeln!(o, "  {key:10} {}", s(it))?;
            }
            if items.len() > 20 {
                writeln!(o, "  {key:10} ... and {} more", items.len() - 20)?;
            }
        }
    }
    writeln!(o)?;
    writeln!(o, "tensors")?;
    let tensors = r["tensors"].as_array().cloned().unwrap_or_default();
    let width = tensors.iter().map(|t| t["name"].as_str().map_or(0, str::len)).max().unwrap_or(0);
    for t in &tensors {
        let shape: Vec<String> = t["shape"].as_array().into_iter().flatten().map(|d| d.to_string()).collect();
        let use_ = match &t["use"] {
            Value::Object(u) => format!("{} ({})", s(&u["storage"]), s(&u["category"])),
            Value::Null => String::new(),
            other => s(other),
        };
        writeln!(o, "  {:width$}  {:8} [{}]  {}", s(&t["name"]), s(&t["dtype"]), shape.join(", "), use_)?;
    }
    Ok(o)
}
