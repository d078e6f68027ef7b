//! Typed model configuration, read from a Hugging Face / MLX `config.json`
//! (spec §1).
//!
//! Where fields are read: if the config has a `text_config` object (the
//! `qwen3_5` / `qwen3_5_moe` vision-language wrappers), every text field is read
//! from it, falling back to the top level for keys it lacks; flat configs
//! (`qwen3_next`, text-only exports) are read from the top level. `null` counts
//! as absent. Errors name the field as found (`text_config.hidden_size`) and the
//! file.
//!
//! Invariants of a `Config` returned by the parser (so the derived-dimension
//! methods below are plain arithmetic that cannot overflow or divide by zero):
//! * every size is > 0, and every derived product fits in `usize`;
//! * `num_hidden_layers` and `mtp_num_hidden_layers` are at most [`MAX_LAYERS`];
//! * `layer_types.len() == mlp_kinds.len() == num_hidden_layers`;
//! * `num_attention_heads % num_key_value_heads == 0`,
//!   `linear_num_value_heads % linear_num_key_heads == 0`;
//! * `head_dim` even, `rotary_dims()` even, in `1..=head_dim`;
//! * if any layer is MoE: `1 <= num_experts_per_tok <= num_experts` and both
//!   expert widths > 0; if any layer is dense: `intermediate_size` is `Some(> 0)`.
//!
//! Defaults (only where transformers and mlx-lm agree, or the value is
//! universal in released models): `head_dim` = hidden/heads, `rms_norm_eps`
//! 1e-6, `tie_word_embeddings` false, `max_position_embeddings` 32768,
//! `full_attention_interval` 4, `linear_conv_kernel_dim` 4,
//! `partial_rotary_factor` 0.25, `decoder_sparse_step` 1, `mlp_only_layers` [],
//! `norm_topk_prob` true, `mtp_num_hidden_layers` 0. Everything else that fixes
//! a tensor shape or the numerics is required: in particular the `linear_*` GDN
//! sizes (mlx-lm's defaults differ from transformers') and `rope_theta` for every
//! arch (transformers 5.23 defaults it to 1e4, mlx-lm to 1e5 or nothing, and
//! releases use 1e7 or 5e6: there is no safe default; real configs always set it).

use std::fmt;
use std::path::{Path, PathBuf};

use qmoe_formats::json_kind;
use serde_json::{Map, Value};

/// The `model_type` strings this crate accepts.
pub const SUPPORTED_MODEL_TYPES: &str = "qwen3_5_moe, qwen3_5_moe_text, qwen3_5, qwen3_5_text, qwen3_next";

/// Config files larger than this are refused (real ones are a few KB).
const MAX_CONFIG_LEN: u64 = 64 << 20;

/// Layer counts above this are refused before anything is allocated per layer
/// (released models have at most 94).
pub const MAX_LAYERS: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: a model config must be a JSON object, found {found}")]
    NotObject { path: PathBuf, found: String },
    #[error("{path}: unknown model_type `{found}` (supported: {SUPPORTED_MODEL_TYPES})")]
    UnknownModelType { path: PathBuf, found: String },
    /// `note` says why the field is needed where that is not obvious (may be empty).
    #[error("{path}: missing required field `{field}`{note}")]
    Missing { path: PathBuf, field: String, note: String },
    #[error("{path}: field `{field}` must be {expected}, found {found}")]
    WrongType { path: PathBuf, field: String, expected: &'static str, found: String },
    #[error("{path}: field `{field}`: {reason}")]
    Invalid { path: PathBuf, field: String, reason: String },
    #[error("{path}: field `{field}` = {value} is not supported: {reason}")]
    Unsupported { path: PathBuf, field: String, value: String, reason: String },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

/// Model family, from `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `qwen3_5_moe` / `qwen3_5_moe_text`: Qwen3.5 / Qwen3.6 MoE, every layer MoE.
    Qwen35Moe,
    /// `qwen3_5` / `qwen3_5_text`: Qwen3.5 / Qwen3.6 dense.
    Qwen35,
    /// `qwen3_next`: Qwen3-Next (fused `in_proj_qkvz` / `in_proj_ba`).
    Qwen3Next,
}

impl Arch {
    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        Some(match model_type {
            "qwen3_5_moe" | "qwen3_5_moe_text" => Arch::Qwen35Moe,
            "qwen3_5" | "qwen3_5_text" => Arch::Qwen35,
            "qwen3_next" => Arch::Qwen3Next,
            _ => return None,
        })
    }

    /// The canonical top-level `model_type`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen35Moe => "qwen3_5_moe",
            Arch::Qwen35 => "qwen3_5",
            Arch::Qwen3Next => "qwen3_next",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Token mixer of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// Gated DeltaNet (`linear_attn`).
    LinearAttention,
    /// Gated full attention (`self_attn`).
    FullAttention,
}

impl LayerKind {
    /// The `layer_types` spelling.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::LinearAttention => "linear_attention",
            LayerKind::FullAttention => "full_attention",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Channel mixer of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MlpKind {
    /// SwiGLU of width `intermediate_size`.
    Dense,
    /// Routed experts + shared expert (spec §2.7).
    Moe,
}

/// Text-model hyper-parameters, resolved and validated (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: Arch,
    /// `model_type` as found at the top level.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Dense MLP width; `None` when the config has none (qwen3_5_moe).
    pub intermediate_size: Option<usize>,
    pub rms_norm_eps: f32,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub max_position_embeddings: usize,
    /// One per layer: `layer_types` if present, else every `full_attention_interval`-th.
    pub layer_types: Vec<LayerKind>,
    /// One per layer (spec §1.3).
    pub mlp_kinds: Vec<MlpKind>,
    pub linear_conv_kernel_dim: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub linear_num_key_heads: usize,
    pub linear_num_value_heads: usize,
    /// 0 when no layer is MoE (and always for qwen3_5).
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub shared_expert_intermediate_size: usize,
    /// Renormalise the top-k routing weights. Always true for qwen3_5_moe
    /// (the field does not exist there; HF always renormalises).
    pub norm_topk_prob: bool,
    /// `mtp_num_hidden_layers`, else `num_nextn_predict_layers`, else 0.
    pub mtp_num_hidden_layers: usize,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (an int or a list); empty if absent.
    pub eos_token_ids: Vec<u32>,
    /// Raw `quantization_config` / `quantization` (top level first, then
    /// `text_config`), for the dialect detector.
    pub quantization: Option<Value>,
}

impl Config {
    /// Read `config.json`. `path` may also be the checkpoint directory.
    pub fn from_file(path: &Path) -> Result<Config> {
        let path = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let io = |source| ConfigError::Io { path: path.clone(), source };
        let len = std::fs::metadata(&path).map_err(io)?.len();
        if len > MAX_CONFIG_LEN {
            return Err(ConfigError::Json {
                path: path.clone(),
                message: format!("file is {len} bytes, over the {MAX_CONFIG_LEN}-byte limit for a config"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        Self::from_json_str(&text, &path)
    }

    /// Parse config text; `source` names it in errors.
    pub fn from_json_str(text: &str, source: &Path) -> Result<Config> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::Json { path: source.into(), message: e.to_string() })?;
        let Value::Object(top) = &json else {
            return Err(ConfigError::NotObject { path: source.into(), found: json_kind(&json).into() });
        };
        parse(top, source)
    }

    // ---- derived dimensions (spec §1.3) ----------------------------------------

    /// Rotated dims per attention head: `floor(head_dim * partial_rotary_factor)`.
    pub fn rotary_dims(&self) -> usize {
        rotary_dims(self.head_dim, self.partial_rotary_factor)
    }

    /// GDN key width `Hk * Dk`.
    pub fn key_dim(&self) -> usize {
        self.linear_num_key_heads * self.linear_key_head_dim
    }

    /// GDN value width `Hv * Dv`.
    pub fn value_dim(&self) -> usize {
        self.linear_num_value_heads * self.linear_value_head_dim
    }

    /// Channels of the GDN causal conv: `2 * key_dim + value_dim` (q, k, v).
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    /// `r = Hv / Hk`.
    pub fn v_heads_per_k_head(&self) -> usize {
        self.linear_num_value_heads / self.linear_num_key_heads
    }

    /// Rows of qwen3_next's fused `in_proj_qkvz`: `2 * key_dim + 2 * value_dim`.
    pub fn qkvz_dim(&self) -> usize {
        2 * self.key_dim() + 2 * self.value_dim()
    }

    /// Rows of qwen3_next's fused `in_proj_ba`: `2 * Hv`.
    pub fn ba_dim(&self) -> usize {
        2 * self.linear_num_value_heads
    }

    /// Rows of `q_proj`: query and output gate per head, `nh * 2 * hd`.
    pub fn q_proj_dim(&self) -> usize {
        self.num_attention_heads * 2 * self.head_dim
    }

    /// Rows of `k_proj` / `v_proj`: `nkv * hd`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Columns of `o_proj`: `nh * hd`.
    pub fn attn_out_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Query heads per KV head (GQA group size).
    pub fn q_heads_per_kv_head(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Attention logit scale `hd^-0.5`.
    pub fn attention_scale(&self) -> f32 {
        (self.head_dim as f64).powf(-0.5) as f32
    }

    /// GDN query scale `Dk^-0.5`.
    pub fn linear_q_scale(&self) -> f32 {
        (self.linear_key_head_dim as f64).powf(-0.5) as f32
    }

    /// Layer `i` is gated full attention (false for `i` out of range).
    pub fn is_full_attention(&self, i: usize) -> bool {
        self.layer_types.get(i) == Some(&LayerKind::FullAttention)
    }

    /// Layer `i` is Gated DeltaNet (false for `i` out of range).
    pub fn is_linear_attention(&self, i: usize) -> bool {
        self.layer_types.get(i) == Some(&LayerKind::LinearAttention)
    }

    /// Layer `i` has the sparse-MoE block (false for `i` out of range).
    pub fn is_moe(&self, i: usize) -> bool {
        self.mlp_kinds.get(i) == Some(&MlpKind::Moe)
    }

    pub fn n_full_attention_layers(&self) -> usize {
        self.layer_types.iter().filter(|k| **k == LayerKind::FullAttention).count()
    }

    pub fn n_linear_attention_layers(&self) -> usize {
        self.layer_types.iter().filter(|k| **k == LayerKind::LinearAttention).count()
    }

    pub fn n_moe_layers(&self) -> usize {
        self.mlp_kinds.iter().filter(|k| **k == MlpKind::Moe).count()
    }

    pub fn n_dense_layers(&self) -> usize {
        self.mlp_kinds.iter().filter(|k| **k == MlpKind::Dense).count()
    }

    /// The config declares an MTP draft head.
    pub fn has_mtp(&self) -> bool {
        self.mtp_num_hidden_layers > 0
    }
}

fn rotary_dims(head_dim: usize, factor: f64) -> usize {
    // Same as Python's int(head_dim * factor) for the validated range (0, 1].
    (head_dim as f64 * factor).floor() as usize
}

/// A value shown in an error: short JSON text.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// Field lookup: `text_config` first, then the top level.
struct Fields<'a> {
    path: &'a Path,
    text: Option<&'a Map<String, Value>>,
    top: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The value of `key` (null = absent) and its name as found.
    fn get(&self, key: &str) -> Option<(&'a Value, String)> {
        if let Some(v) = self.text.and_then(|t| t.get(key)).filter(|v| !v.is_null()) {
            return Some((v, format!("text_config.{key}")));
        }
        self.top.get(key).filter(|v| !v.is_null()).map(|v| (v, key.to_string()))
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::Missing { path: self.path.into(), field: key.to_string(), note: String::new() }
    }

    fn wrong(&self, field: &str, expected: &'static str, v: &Value) -> ConfigError {
        ConfigError::WrongType { path: self.path.into(), field: field.to_string(), expected, found: show(v) }
    }

    fn invalid(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.into(), field: field.to_string(), reason: reason.into() }
    }

    fn as_usize(&self, v: &Value, field: &str) -> Result<usize> {
        v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| self.wrong(field, "a non-negative integer", v))
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|(v, f)| self.as_usize(v, &f)).transpose()
    }

    /// A required size, > 0.
    fn size(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key)).and_then(|n| self.positive(key, n))
    }

    /// An optional size, > 0 when present.
    fn size_opt(&self, key: &str) -> Result<Option<usize>> {
        self.usize_opt(key)?.map(|n| self.positive(key, n)).transpose()
    }

    fn size_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.size_opt(key)?.unwrap_or(default))
    }

    fn positive(&self, key: &str, n: usize) -> Result<usize> {
        if n == 0 {
            let field = self.get(key).map_or(key.to_string(), |(_, f)| f);
            return Err(self.invalid(&field, "must be > 0"));
        }
        Ok(n)
    }

    fn f64_opt(&self, key: &str) -> Result<Option<(f64, String)>> {
        match self.get(key) {
            None => Ok(None),
            Some((v, f)) => v.as_f64().map(|x| Some((x, f.clone()))).ok_or_else(|| self.wrong(&f, "a number", v)),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::Bool(b), _)) => Ok(Some(*b)),
            Some((v, f)) => Err(self.wrong(&f, "true or false", v)),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<(&'a str, String)>> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::String(s), f)) => Ok(Some((s.as_str(), f))),
            Some((v, f)) => Err(self.wrong(&f, "a string", v)),
        }
    }

    fn object_opt(&self, key: &str) -> Result<Option<(&'a Map<String, Value>, String)>> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::Object(m), f)) => Ok(Some((m, f))),
            Some((v, f)) => Err(self.wrong(&f, "an object", v)),
        }
    }

    fn token_id(&self, v: &Value, field: &str) -> Result<u32> {
        v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| self.wrong(field, "a token id (u32)", v))
    }
}

fn parse(top: &Map<String, Value>, path: &Path) -> Result<Config> {
    let top_fields = Fields { path, text: None, top };
    let (model_type, _) = top_fields.str_opt("model_type")?.ok_or_else(|| top_fields.missing("model_type"))?;
    let arch = Arch::from_model_type(model_type)
        .ok_or_else(|| ConfigError::UnknownModelType { path: path.into(), found: model_type.to_string() })?;
    let text = match top.get("text_config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(v) => return Err(top_fields.wrong("text_config", "an object", v)),
    };
    let f = Fields { path, text, top };
    if let Some(Value::String(inner)) = text.and_then(|t| t.get("model_type")) {
        if Arch::from_model_type(inner) != Some(arch) {
            return Err(f.invalid(
                "text_config.model_type",
                format!("`{inner}` does not belong to the top-level model_type `{model_type}`"),
            ));
        }
    }

    // Unsupported variants first: they make the rest meaningless.
    if let Some((act, field)) = f.str_opt("hidden_act")? {
        if act != "silu" {
            return Err(ConfigError::Unsupported {
                path: path.into(),
                field,
                value: format!("\"{act}\""),
                reason: "only silu is implemented (every released model uses it)".into(),
            });
        }
    }
    if f.bool_opt("attention_bias")? == Some(true) {
        let field = f.get("attention_bias").map(|(_, n)| n).unwrap_or_default();
        return Err(ConfigError::Unsupported {
            path: path.into(),
            field,
            value: "true".into(),
            reason: "attention projections with biases are not implemented".into(),
        });
    }

    let vocab_size = f.size("vocab_size")?;
    let hidden_size = f.size("hidden_size")?;
    let num_hidden_layers = f.size("num_hidden_layers")?;
    if num_hidden_layers > MAX_LAYERS {
        return Err(f.invalid(
            &field_name(&f, "num_hidden_layers"),
            format!("{num_hidden_layers} is over the sanity limit of {MAX_LAYERS}"),
        ));
    }
    let num_attention_heads = f.size("num_attention_heads")?;
    let num_key_value_heads = f.size("num_key_value_heads")?;
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(f.invalid(
            &field_name(&f, "num_key_value_heads"),
            format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
        ));
    }
    let head_dim = match f.size_opt("head_dim")? {
        Some(hd) => hd,
        None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
        None => {
            return Err(f.invalid(
                "head_dim",
                format!(
                "absent, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            ),
            ))
        }
    };
    if head_dim % 2 != 0 {
        return Err(f.invalid(
            &field_name(&f, "head_dim"),
            format!("{head_dim} is odd; rotate-half RoPE needs an even head_dim"),
        ));
    }
    let intermediate_size = f.size_opt("intermediate_size")?;
    let rms_norm_eps = match f.f64_opt("rms_norm_eps")? {
        None => 1e-6,
        Some((eps, _)) if eps.is_finite() && eps > 0.0 && (eps as f32) > 0.0 => eps,
        Some((eps, field)) => return Err(f.invalid(&field, format!("{eps} must be a positive finite number"))),
    } as f32;
    let tie_word_embeddings = f.bool_opt("tie_word_embeddings")?.unwrap_or(false);
    let max_position_embeddings = f.size_or("max_position_embeddings", 32768)?;

    let (rope_theta, partial_rotary_factor) = parse_rope(&f)?;
    let rd = rotary_dims(head_dim, partial_rotary_factor);
    if rd == 0 || rd % 2 == 1 || rd > head_dim {
        return Err(f.invalid(
            "partial_rotary_factor",
            format!(
                "rotary dims floor({head_dim} * {partial_rotary_factor}) = {rd} must be even and in 2..={head_dim}"
            ),
        ));
    }

    let layer_types = parse_layer_types(&f, num_hidden_layers)?;

    let linear_conv_kernel_dim = f.size_or("linear_conv_kernel_dim", 4)?;
    let linear_key_head_dim = f.size("linear_key_head_dim")?;
    let linear_value_head_dim = f.size("linear_value_head_dim")?;
    let linear_num_key_heads = f.size("linear_num_key_heads")?;
    let linear_num_value_heads = f.size("linear_num_value_heads")?;
    if linear_num_value_heads % linear_num_key_heads != 0 {
        return Err(f.invalid(
            &field_name(&f, "linear_num_value_heads"),
            format!("{linear_num_value_heads} is not a multiple of linear_num_key_heads = {linear_num_key_heads}"),
        ));
    }

    // MLP schedule (spec §1.3).
    let (mlp_kinds, num_experts) = match arch {
        Arch::Qwen35 => (vec![MlpKind::Dense; num_hidden_layers], 0),
        Arch::Qwen35Moe => (vec![MlpKind::Moe; num_hidden_layers], f.size("num_experts")?),
        Arch::Qwen3Next => {
            let num_experts = f.usize_opt("num_experts")?.ok_or_else(|| f.missing("num_experts"))?;
            let step = f.size_or("decoder_sparse_step", 1)?;
            let dense_only = parse_index_list(&f, "mlp_only_layers")?;
            let kinds = (0..num_hidden_layers)
                .map(|i| {
                    let moe = !dense_only.contains(&i) && num_experts > 0 && (i + 1) % step == 0;
                    if moe {
                        MlpKind::Moe
                    } else {
                        MlpKind::Dense
                    }
                })
                .collect();
            (kinds, num_experts)
        }
    };
    let any_moe = mlp_kinds.contains(&MlpKind::Moe);
    let any_dense = mlp_kinds.contains(&MlpKind::Dense);
    let (num_experts, num_experts_per_tok, moe_intermediate_size, shared_expert_intermediate_size) = if any_moe {
        let k = f.usize_opt("num_experts_per_tok")?.ok_or_else(|| f.missing("num_experts_per_tok"))?;
        if k == 0 || k > num_experts {
            return Err(f.invalid(
                &field_name(&f, "num_experts_per_tok"),
                format!("{k} must be in 1..=num_experts ({num_experts})"),
            ));
        }
        (num_experts, k, f.size("moe_intermediate_size")?, f.size("shared_expert_intermediate_size")?)
    } else {
        (0, 0, 0, 0)
    };
    if any_dense && intermediate_size.is_none() {
        let first = mlp_kinds.iter().position(|k| *k == MlpKind::Dense).unwrap_or(0);
        return Err(ConfigError::Missing {
            path: path.into(),
            field: "intermediate_size".into(),
            note: format!(" (layer {first} has a dense MLP)"),
        });
    }
    let norm_topk_prob = match arch {
        Arch::Qwen3Next => f.bool_opt("norm_topk_prob")?.unwrap_or(true),
        // qwen3_5_moe has no such field: HF always renormalises (spec pitfall 9).
        Arch::Qwen35Moe | Arch::Qwen35 => true,
    };

    let mtp_num_hidden_layers = match f.usize_opt("mtp_num_hidden_layers")? {
        Some(n) => n,
        None => f.usize_opt("num_nextn_predict_layers")?.unwrap_or(0),
    };
    if mtp_num_hidden_layers > MAX_LAYERS {
        return Err(f.invalid(
            "mtp_num_hidden_layers",
            format!("{mtp_num_hidden_layers} is over the sanity limit of {MAX_LAYERS}"),
        ));
    }

    let bos_token_id = f.get("bos_token_id").map(|(v, n)| f.token_id(v, &n)).transpose()?;
    let eos_token_ids = match f.get("eos_token_id") {
        None => Vec::new(),
        Some((Value::Array(items), n)) => {
            items.iter().enumerate().map(|(i, v)| f.token_id(v, &format!("{n}[{i}]"))).collect::<Result<_>>()?
        }
        Some((v, n)) => vec![f.token_id(v, &n)?],
    };

    let quantization = ["quantization_config", "quantization"]
        .iter()
        .find_map(|k| top.get(*k).filter(|v| !v.is_null()))
        .or_else(|| {
            ["quantization_config", "quantization"]
                .iter()
                .find_map(|k| text.and_then(|t| t.get(*k)).filter(|v| !v.is_null()))
        })
        .cloned();

    let cfg = Config {
        arch,
        model_type: model_type.to_string(),
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        intermediate_size,
        rms_norm_eps,
        tie_word_embeddings,
        rope_theta,
        partial_rotary_factor,
        max_position_embeddings,
        layer_types,
        mlp_kinds,
        linear_conv_kernel_dim,
        linear_key_head_dim,
        linear_value_head_dim,
        linear_num_key_heads,
        linear_num_value_heads,
        num_experts,
        num_experts_per_tok,
        moe_intermediate_size,
        shared_expert_intermediate_size,
        norm_topk_prob,
        mtp_num_hidden_layers,
        bos_token_id,
        eos_token_ids,
        quantization,
    };
    check_products(&cfg, &f)?;
    Ok(cfg)
}

/// The name a field is reported under (where it was found, or its bare key).
fn field_name(f: &Fields, key: &str) -> String {
    f.get(key).map_or(key.to_string(), |(_, n)| n)
}

/// RoPE base and partial factor (spec §1.2). Text-only MRoPE (`mrope_section`,
/// `mrope_interleaved`) is plain 1-D RoPE for text positions, so `rope_type`
/// `default` and `mrope` are accepted; scaled variants (yarn, linear, ...) are refused.
fn parse_rope(f: &Fields) -> Result<(f64, f64)> {
    let params = f.object_opt("rope_parameters")?;
    let scaling = f.object_opt("rope_scaling")?;
    for (obj, name) in [&params, &scaling].into_iter().flatten() {
        for key in ["rope_type", "type"] {
            let Some(v) = obj.get(key).filter(|v| !v.is_null()) else { continue };
            let field = format!("{name}.{key}");
            let Value::String(t) = v else {
                return Err(f.wrong(&field, "a string", v));
            };
            if t != "default" && t != "mrope" {
                return Err(ConfigError::Unsupported {
                    path: f.path.into(),
                    field,
                    value: format!("\"{t}\""),
                    reason: "only default RoPE (and text-only mrope) is implemented".into(),
                });
            }
        }
    }
    // Lookup order: rope_parameters.X, flat X, rope_scaling.X.
    let lookup = |key: &str| -> Result<Option<(f64, String)>> {
        if let Some((obj, name)) = &params {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                let field = format!("{name}.{key}");
                return v.as_f64().map(|x| Some((x, field.clone()))).ok_or_else(|| f.wrong(&field, "a number", v));
            }
        }
        if let Some(found) = f.f64_opt(key)? {
            return Ok(Some(found));
        }
        if let Some((obj, name)) = &scaling {
            if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                let field = format!("{name}.{key}");
                return v.as_f64().map(|x| Some((x, field.clone()))).ok_or_else(|| f.wrong(&field, "a number", v));
            }
        }
        Ok(None)
    };
    let rope_theta = match lookup("rope_theta")? {
        Some((theta, field)) if !(theta.is_finite() && theta > 1.0) => {
            return Err(f.invalid(&field, format!("{theta} must be a finite number > 1")))
        }
        Some((theta, _)) => theta,
        // No default: transformers 5.23 fills in 1e4, mlx-lm 1e5 (qwen3_5) or
        // nothing (qwen3_next), releases use 1e7 or 5e6. A guess would silently
        // change every attention layer.
        None => return Err(f.missing("rope_theta")),
    };
    let partial_rotary_factor = match lookup("partial_rotary_factor")? {
        Some((p, field)) if !(p > 0.0 && p <= 1.0) => return Err(f.invalid(&field, format!("{p} must be in (0, 1]"))),
        Some((p, _)) => p,
        None => 0.25,
    };
    Ok((rope_theta, partial_rotary_factor))
}

fn parse_layer_types(f: &Fields, n_layers: usize) -> Result<Vec<LayerKind>> {
    match f.get("layer_types") {
        Some((Value::Array(items), field)) => {
            if items.len() != n_layers {
                return Err(
                    f.invalid(&field, format!("has {} entries but num_hidden_layers is {n_layers}", items.len()))
                );
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some("linear_attention") => Ok(LayerKind::LinearAttention),
                    Some("full_attention") => Ok(LayerKind::FullAttention),
                    _ => Err(f.invalid(
                        &format!("{field}[{i}]"),
                        format!("{} is not \"linear_attention\" or \"full_attention\"", show(v)),
                    )),
                })
                .collect()
        }
        Some((v, field)) => Err(f.wrong(&field, "an array of layer kinds", v)),
        None => {
            let n = f.size_or("full_attention_interval", 4)?;
            Ok((0..n_layers)
                .map(|i| if (i + 1) % n == 0 { LayerKind::FullAttention } else { LayerKind::LinearAttention })
                .collect())
        }
    }
}

/// A list of layer indices (entries past the last layer have no effect, as in HF).
fn parse_index_list(f: &Fields, key: &str) -> Result<Vec<usize>> {
    match f.get(key) {
        None => Ok(Vec::new()),
        Some((Value::Array(items), field)) => {
            items.iter().enumerate().map(|(i, v)| f.as_usize(v, &format!("{field}[{i}]"))).collect()
        }
        Some((v, field)) => Err(f.wrong(&field, "an array of layer indices", v)),
    }
}

/// Every derived product the accessors compute must fit in `usize`.
fn check_products(c: &Config, f: &Fields) -> Result<()> {
    let mul = |a: usize, b: usize| a.checked_mul(b);
    let key = mul(c.linear_num_key_heads, c.linear_key_head_dim);
    let value = mul(c.linear_num_value_heads, c.linear_value_head_dim);
    let qkvz = key.and_then(|k| value.and_then(|v| k.checked_add(v)?.checked_mul(2)));
    if qkvz.is_none() {
        return Err(f.invalid("linear_num_value_heads", "GDN projection sizes overflow"));
    }
    let q = mul(c.num_attention_heads, c.head_dim).and_then(|x| x.checked_mul(2));
    if q.is_none() || mul(c.num_key_value_heads, c.head_dim).is_none() {
        return Err(f.invalid("head_dim", "attention projection sizes overflow"));
    }
    if mul(c.linear_num_value_heads, 2).is_none() {
        return Err(f.invalid("linear_num_value_heads", "overflows"));
    }
    Ok(())
}
