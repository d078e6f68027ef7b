//! `qmoe inspect`: what a checkpoint is and how qmoe reads it. Prints even
//! when the model would not load, so the user sees why.

use std::path::PathBuf;

use std::fmt::Write;

use anyhow::{Context, Result};
use qmoe_formats::Checkpoint;
use qmoe_model::config::{LayerKind, MlpKind};
use qmoe_model::loader::{load_weights, ExpertLayout, GdnProjLayout, NormStorage};
use qmoe_model::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (config.json + safetensors).
    path: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let mut report = String::new();
    write_report(&a, &mut report)?;
    super::common::print_stdout(&report)
}

fn write_report(a: &Args, o: &mut String) -> Result<()> {
    let dir = if a.path.is_file() { a.path.parent().map(|p| p.to_path_buf()).unwrap_or_default() } else { a.path.clone() };
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(&dir).with_context(|| format!("opening {}", dir.display()))?;

    writeln!(o, "checkpoint   {}", dir.display())?;
    let files = ckpt.files();
    writeln!(o, 
        "files        {} safetensors file(s){}, {} tensors, {:.1} MiB",
        files.len(),
        if ckpt.index().is_some() { " via model.safetensors.index.json" } else { "" },
        ckpt.len(),
        ckpt.total_bytes() as f64 / (1 << 20) as f64
    )?;
    print_config(o, &cfg)?;

    writeln!(o)?;
    match load_weights(&ckpt, &cfg) {
        Ok((_, conv)) => {
            let dialect = match conv.norms {
                NormStorage::ZeroCentred => "HF safetensors (raw)",
                NormStorage::Effective => "MLX sanitized safetensors",
            };
            writeln!(o, "dialect      {dialect}")?;
            writeln!(o, "  because    {}", conv.norms_reason)?;
            writeln!(o, "prefix       `{}`", conv.trunk_prefix)?;
            writeln!(o, "lm head      {}", conv.lm_head.as_deref().map(|n| format!("`{n}`")).unwrap_or("tied to embed_tokens".into()))?;
            let experts = match conv.experts {
                Some(ExpertLayout::Fused) => "fused `experts.gate_up_proj [E,2I,H]` + `experts.down_proj [E,H,I]` (views, no copy)",
                Some(ExpertLayout::PerExpert) => "per-expert `experts.{e}.{gate,up,down}_proj` (indices 0..E checked)",
                Some(ExpertLayout::SwitchMlp) => "MLX `switch_mlp` stacks",
                None => "none (dense MLP)",
            };
            writeln!(o, "experts      {experts}")?;
            let gdn = match conv.gdn_proj {
                GdnProjLayout::Separate => "separate in_proj_qkv / in_proj_z / in_proj_b / in_proj_a",
                GdnProjLayout::FusedGrouped => "fused in_proj_qkvz / in_proj_ba, grouped per key head (un-grouped after the matmul)",
            };
            writeln!(o, "gdn proj     {gdn}")?;
            writeln!(o, "v heads      grouped: value head h reads key head h / (Hv/Hk)")?;
            writeln!(o, "mtp head     {}", if conv.mtp_present { "present (not used yet)" } else { "absent" })?;
            for (group, n) in &conv.ignored {
                writeln!(o, "ignored      {n} {group} tensor(s)")?;
            }
            for (dt, b) in &conv.bytes_by_dtype {
                writeln!(o, "weights      {dt}: {:.2} MiB", *b as f64 / (1 << 20) as f64)?;
            }
            writeln!(o, "status       loads OK")?;
        }
        Err(e) => writeln!(o, "status       does NOT load: {e}")?,
    }

    writeln!(o)?;
    writeln!(o, "tensors")?;
    let width = ckpt.names().map(str::len).max().unwrap_or(0);
    for t in ckpt.tensors() {
        writeln!(o, "  {:width$}  {:8} {:?}", t.name, t.dtype.name(), t.shape)?;
    }
    Ok(())
}

fn print_config(o: &mut String, c: &Config) -> std::fmt::Result {
    let full = c.layer_types.iter().filter(|t| **t == LayerKind::FullAttention).count();
    let moe = c.mlp_kinds.iter().filter(|m| **m == MlpKind::Moe).count();
    writeln!(o, "model_type   {} ({:?})", c.model_type, c.arch)?;
    writeln!(o, "hidden       {}  layers {} ({} full attention, {} Gated DeltaNet)", c.hidden_size, c.num_hidden_layers, full, c.num_hidden_layers - full)?;
    let pattern: String = c.layer_types.iter().map(|t| if *t == LayerKind::FullAttention { 'A' } else { 'd' }).collect();
    writeln!(o, "layer types  {pattern}  (A = attention, d = DeltaNet)")?;
    writeln!(o, 
        "attention    {} q heads, {} kv heads, head_dim {}, rotary {} dims, theta {}",
        c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rotary_dims(), c.rope_theta
    )?;
    writeln!(o, 
        "deltanet     {} key heads x {}, {} value heads x {}, conv {}",
        c.linear_num_key_heads, c.linear_key_head_dim, c.linear_num_value_heads, c.linear_value_head_dim, c.linear_conv_kernel_dim
    )?;
    if moe > 0 {
        writeln!(o, 
            "moe          {} layers: {} experts, top-{}, expert width {}, shared width {}, renormalise {}",
            moe, c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size, c.shared_expert_intermediate_size, c.norm_topk_prob
        )?;
    }
    if moe < c.num_hidden_layers {
        writeln!(o, "dense mlp    {} layers, width {}", c.num_hidden_layers - moe, c.intermediate_size.unwrap_or(0))?;
    }
    writeln!(o, "vocab        {}  tied embeddings: {}", c.vocab_size, c.tie_word_embeddings)?;
    Ok(())
}
