//! The one table of checkpoint tensor names.
//!
//! Names here are relative to the *trunk prefix* (`model.`,
//! `model.language_model.`, `language_model.model.`), which the loader detects
//! once per checkpoint. Every dialect-specific spelling lives in this file.

/// Trunk prefixes, most specific first: HF VL wrapper, MLX sanitized qwen3_5*,
/// then text-only exports / qwen3_next / MLX qwen3_next.
pub const TRUNK_PREFIXES: [&str; 3] = ["model.language_model.", "language_model.model.", "model."];

/// Where an untied LM head may live (HF, MLX qwen3_5*).
pub const LM_HEAD_NAMES: [&str; 2] = ["lm_head.weight", "language_model.lm_head.weight"];

pub const EMBED: &str = "embed_tokens.weight";
pub const FINAL_NORM: &str = "norm.weight";

/// Prefixes of tensors that belong to parts qmoe does not run for text
/// (the vision tower). They are recognised and reported, never an error.
pub const IGNORED_PREFIXES: [&str; 4] = ["model.visual.", "visual.", "vision_tower.", "model.vision_tower."];

/// Where the MTP head lives: HF and third-party MLX builds use the bare
/// `mtp.` (outside the trunk), some exports nest it as the trunk does.
/// Names below are relative to this prefix.
pub const MTP_PREFIXES: [&str; 4] = ["mtp.", "model.mtp.", "language_model.mtp.", "model.language_model.mtp."];

/// MTP head tensors outside its decoder blocks (spec 4.8); its blocks are
/// `layers.{j}.*` with the trunk's names.
pub mod mtp {
    /// `[H, 2H]`: `fc · [embedding ; hidden]`.
    pub const FC: &str = "fc.weight";
    pub const PRE_FC_NORM_EMBEDDING: &str = "pre_fc_norm_embedding.weight";
    pub const PRE_FC_NORM_HIDDEN: &str = "pre_fc_norm_hidden.weight";
    pub const NORM: &str = "norm.weight";
    pub const LAYERS: &str = "layers.";
}

/// Suffixes of tensors that carry nothing qmoe needs (dynamic-activation FP8
/// releases store unused activation scales).
pub const IGNORED_SUFFIXES: [&str; 1] = [".activation_scale"];

/// `layers.{i}.{rest}`.
pub fn layer(i: usize, rest: &str) -> String {
    format!("layers.{i}.{rest}")
}

pub const INPUT_NORM: &str = "input_layernorm.weight";
pub const POST_ATTN_NORM: &str = "post_attention_layernorm.weight";

pub mod attn {
    pub const Q: &str = "self_attn.q_proj.weight";
    pub const K: &str = "self_attn.k_proj.weight";
    pub const V: &str = "self_attn.v_proj.weight";
    pub const O: &str = "self_attn.o_proj.weight";
    pub const Q_NORM: &str = "self_attn.q_norm.weight";
    pub const K_NORM: &str = "self_attn.k_norm.weight";
}

pub mod gdn {
    /// qwen3_5*: separate projections.
    pub const QKV: &str = "linear_attn.in_proj_qkv.weight";
    pub const Z: &str = "linear_attn.in_proj_z.weight";
    pub const B: &str = "linear_attn.in_proj_b.weight";
    pub const A: &str = "linear_attn.in_proj_a.weight";
    /// qwen3_next: fused, grouped per key head.
    pub const QKVZ: &str = "linear_attn.in_proj_qkvz.weight";
    pub const BA: &str = "linear_attn.in_proj_ba.weight";
    pub const CONV: &str = "linear_attn.conv1d.weight";
    pub const DT_BIAS: &str = "linear_attn.dt_bias";
    pub const A_LOG: &str = "linear_attn.A_log";
    pub const NORM: &str = "linear_attn.norm.weight";
    pub const OUT: &str = "linear_attn.out_proj.weight";
}

pub mod mlp {
    pub const GATE: &str = "mlp.gate_proj.weight";
    pub const UP: &str = "mlp.up_proj.weight";
    pub const DOWN: &str = "mlp.down_proj.weight";
}

pub mod moe {
    pub const ROUTER: &str = "mlp.gate.weight";
    /// HF fused experts `[E, 2I, H]` (gate rows first) and `[E, H, I]`; no `.weight`.
    pub const FUSED_GATE_UP: &str = "mlp.experts.gate_up_proj";
    pub const FUSED_DOWN: &str = "mlp.experts.down_proj";
    /// MLX stacks: `[E, I, H]`, `[E, I, H]`, `[E, H, I]`.
    pub const SWITCH_GATE: &str = "mlp.switch_mlp.gate_proj.weight";
    pub const SWITCH_UP: &str = "mlp.switch_mlp.up_proj.weight";
    pub const SWITCH_DOWN: &str = "mlp.switch_mlp.down_proj.weight";
    pub const SHARED_GATE_PROJ: &str = "mlp.shared_expert.gate_proj.weight";
    pub const SHARED_UP: &str = "mlp.shared_expert.up_proj.weight";
    pub const SHARED_DOWN: &str = "mlp.shared_expert.down_proj.weight";
    pub const SHARED_EXPERT_GATE: &str = "mlp.shared_expert_gate.weight";

    /// Per-expert HF layout: `mlp.experts.{e}.{proj}_proj.weight`.
    pub fn expert(e: usize, proj: &str) -> String {
        format!("mlp.experts.{e}.{proj}_proj.weight")
    }
    pub const PER_EXPERT_PREFIX: &str = "mlp.experts.";
}
