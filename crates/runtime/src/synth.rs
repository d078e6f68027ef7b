//! Random-weight checkpoints with the exact layer shapes of a released model
//! (Qwen3.6-35B-A3B by default, with fewer experts), for benchmarks on
//! machines that hold no real weights and, with smaller overrides, for tests.
//!
//! Formats ([`SynthFormat`]):
//! * HF bf16 wrapper checkpoint: `config.json` (`qwen3_5_moe` with
//!   `text_config`), `model.language_model.*` names, fused experts
//!   (`mlp.experts.gate_up_proj [E, 2I, H]`), conv `[C, 1, K]`, zero-centred
//!   norms stored as `w`; sharded safetensors with `model.safetensors.index.json`.
//! * MLX 4-bit (or 8-bit): `language_model.model.*` names, `switch_mlp` stacks, conv
//!   `[C, K, 1]`, norms stored as `1 + w`, every matrix affine 4-bit (8-bit) group 64
//!   except the router `mlp.gate` and `mlp.shared_expert_gate` (8-bit group 64,
//!   listed as per-path overrides as mlx-lm writes them), quantized by
//!   [`quantize_affine_row`] (plain min/max, see there).
//! * GGUF: the bf16 checkpoint written to a temporary folder inside the output,
//!   loaded, and exported by [`crate::export::export_gguf`] (with the tokenizer's
//!   `tokenizer.*` metadata when the vocabulary can hold it); the folder is removed.
//!
//! The tokenizer-side files of a model folder (`models/demo` from the CLI) are
//! copied beside the weights so `qmoe run` works on the result.
//!
//! Invariants:
//! * Streaming: one shard (the embeddings, one layer, or the head) is in memory
//!   at a time; values are generated row by row straight into the shard's bytes.
//! * Deterministic: every value is a function of (seed, logical tensor, block)
//!   only, so the same seed gives the same pre-rounding values in every format
//!   (the HF fused `gate_up_proj` and the MLX stacks draw expert `e`'s gate
//!   from the same stream).
//! * Finite through any depth: values are uniform with variance `1/fan_in`, so
//!   a projection of a normalised input has unit-variance outputs, and the
//!   projections that write into the residual stream (`o_proj`, `out_proj`,
//!   expert and shared `down_proj`) are scaled by a further `1/sqrt(2 * layers)`
//!   (GPT-2's residual scaling): the stream grows by O(1/layers) per branch.
//!   [`check_finite`] runs a few tokens through the written model to prove it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qmoe_core::DType;
use qmoe_formats::{write_safetensors, TensorToWrite, INDEX_FILE};
use qmoe_model::{Logits, Model, Scratch};
use serde_json::{json, Value};

use crate::error::{Result, RuntimeError};
use crate::export::{export_gguf, ExportType};

/// The tokenizer-side files copied next to the weights so `qmoe run` works.
pub const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"];

/// Folder (inside the output) that holds the bf16 source of a GGUF synth.
const GGUF_STAGING_DIR: &str = ".synth-bf16";

/// MLX affine parameters used for the 4-bit format (mlx-lm's defaults).
const MLX_GROUP: usize = 64;
/// mlx-lm's MoE recipe keeps the router gates at 8 bits.
const MLX_GATE_BITS: u32 = 8;

/// Hyper-parameters of the synthetic model (HF `text_config` names).
#[derive(Clone, Debug, PartialEq)]
pub struct SynthShape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// Every `full_attention_interval`-th layer is gated attention, the rest GDN.
    pub full_attention_interval: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub linear_num_key_heads: usize,
    pub linear_num_value_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub linear_conv_kernel_dim: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub shared_expert_intermediate_size: usize,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl SynthShape {
    /// Qwen3.6-35B-A3B (spec 1.4/1.5) with `num_experts` routed experts per
    /// layer instead of 256 (top-k stays 8, or `num_experts` if fewer).
    pub fn qwen36_35b_a3b(num_experts: usize) -> SynthShape {
        SynthShape {
            vocab_size: 248320,
            hidden_size: 2048,
            num_hidden_layers: 40,
            full_attention_interval: 4,
            num_attention_heads: 16,
            num_key_value_heads: 2,
            head_dim: 256,
            linear_num_key_heads: 16,
            linear_num_value_heads: 32,
            linear_key_head_dim: 128,
            linear_value_head_dim: 128,
            linear_conv_kernel_dim: 4,
            num_experts,
            num_experts_per_tok: num_experts.min(8),
            moe_intermediate_size: 512,
            shared_expert_intermediate_size: 512,
            rope_theta: 1e7,
            partial_rotary_factor: 0.25,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
        }
    }

    pub fn is_full_attention(&self, layer: usize) -> bool {
        (layer + 1).is_multiple_of(self.full_attention_interval)
    }

    fn key_dim(&self) -> usize {
        self.linear_num_key_heads * self.linear_key_head_dim
    }

    fn value_dim(&self) -> usize {
        self.linear_num_value_heads * self.linear_value_head_dim
    }

    fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    /// Refuses shapes the formats cannot hold (MLX groups and packing need
    /// every input width to be a multiple of 64) or the config parser rejects.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(RuntimeError::Export(format!("synthetic model: {what}")));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("full_attention_interval", self.full_attention_interval),
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("shared_expert_intermediate_size", self.shared_expert_intermediate_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be > 0"));
        }
        if self.num_experts_per_tok > self.num_experts {
            return bad(format!("top-k {} is more than the {} experts", self.num_experts_per_tok, self.num_experts));
        }
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("moe_intermediate_size", self.moe_intermediate_size),
            ("shared_expert_intermediate_size", self.shared_expert_intermediate_size),
        ] {
            if v % MLX_GROUP != 0 {
                return bad(format!("{name} = {v} must be a multiple of {MLX_GROUP} (the MLX group size)"));
            }
        }
        // The loader tells HF from MLX norms by a GDN conv, so one layer must be GDN.
        if self.full_attention_interval == 1 {
            return bad("full_attention_interval 1 leaves no Gated DeltaNet layer".into());
        }
        Ok(())
    }

    /// `config.json` of the HF `qwen3_5_moe` wrapper (text fields under
    /// `text_config`; no vision tower, no MTP head). `quantization` is added
    /// under both `quantization` and `quantization_config`, as mlx-lm writes it.
    pub fn config_json(&self, seed: u64, quantization: Option<Value>) -> Value {
        let layer_types: Vec<&str> = (0..self.num_hidden_layers)
            .map(|i| if self.is_full_attention(i) { "full_attention" } else { "linear_attention" })
            .collect();
        let text = json!({
            "attention_bias": false,
            "attn_output_gate": true,
            "bos_token_id": 248044,
            "dtype": "bfloat16",
            "eos_token_id": 248044,
            "full_attention_interval": self.full_attention_interval,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "layer_types": layer_types,
            "linear_conv_kernel_dim": self.linear_conv_kernel_dim,
            "linear_key_head_dim": self.linear_key_head_dim,
            "linear_num_key_heads": self.linear_num_key_heads,
            "linear_num_value_heads": self.linear_num_value_heads,
            "linear_value_head_dim": self.linear_value_head_dim,
            "mamba_ssm_dtype": "float32",
            "max_position_embeddings": 262144,
            "model_type": "qwen3_5_moe_text",
            "moe_intermediate_size": self.moe_intermediate_size,
            "mtp_num_hidden_layers": 0,
            "num_attention_heads": self.num_attention_heads,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "partial_rotary_factor": self.partial_rotary_factor,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {
                "mrope_interleaved": true,
                "mrope_section": [11, 11, 10],
                "partial_rotary_factor": self.partial_rotary_factor,
                "rope_theta": self.rope_theta,
                "rope_type": "default"
            },
            "shared_expert_intermediate_size": self.shared_expert_intermediate_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "vocab_size": self.vocab_size
        });
        let mut top = json!({
            "architectures": ["Qwen3_5MoeForConditionalGeneration"],
            "model_type": "qwen3_5_moe",
            "text_config": text,
            "tie_word_embeddings": self.tie_word_embeddings,
            "qmoe_synthetic": {
                "note": "random weights written by `qmoe synth`; shapes only, no meaning",
                "seed": seed
            }
        });
        if let Some(q) = quantization {
            top["quantization"] = q.clone();
            top["quantization_config"] = q;
        }
        top
    }
}

/// Output format of [`synth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthFormat {
    Bf16,
    /// MLX affine `bits`-bit (2, 3, 4, 5, 6 or 8), group 64 (router gates 8-bit).
    Mlx {
        bits: u32,
    },
    /// GGUF through the exporter, in the given type.
    Gguf(ExportType),
}

impl SynthFormat {
    /// `bf16`, `mlx4`, `mlx8` (also `mlx2`, `mlx3`, `mlx5`, `mlx6`), `gguf-q4_k_m`, `gguf-q8_0` (and
    /// the other export types as `gguf-<type>`).
    pub fn parse(s: &str) -> Option<SynthFormat> {
        let s = s.to_ascii_lowercase();
        if s == "bf16" {
            return Some(SynthFormat::Bf16);
        }
        if let Some(bits) = s.strip_prefix("mlx") {
            return match bits.parse() {
                Ok(bits @ (2 | 3 | 4 | 5 | 6 | 8)) => Some(SynthFormat::Mlx { bits }),
                _ => None,
            };
        }
        ExportType::parse(s.strip_prefix("gguf-")?).map(SynthFormat::Gguf)
    }
}

#[derive(Clone, Debug)]
pub struct SynthParams {
    pub shape: SynthShape,
    pub format: SynthFormat,
    pub seed: u64,
    /// A model folder whose [`TOKENIZER_FILES`] are copied next to the weights
    /// (and, for GGUF, written into its `tokenizer.*` metadata).
    pub tokenizer_from: Option<PathBuf>,
}

/// What [`synth`] wrote.
#[derive(Clone, Debug, Default)]
pub struct SynthStats {
    /// Weight files (safetensors shards or the .gguf).
    pub files: Vec<PathBuf>,
    /// Tensors in the written weight files.
    pub tensors: usize,
    /// Bytes of tensor data in the written weight files.
    pub bytes: u64,
    /// Tokenizer files copied.
    pub tokenizer_files: Vec<&'static str>,
    /// Things a user should know (e.g. a GGUF written without a tokenizer).
    pub notes: Vec<String>,
}

/// Writes the checkpoint into `out` (created if needed). `progress` gets a
/// short line per finished step (shard, export). Existing files of the same
/// names are overwritten.
pub fn synth(p: &SynthParams, out: &Path, progress: &mut dyn FnMut(&str)) -> Result<SynthStats> {
    p.shape.validate()?;
    create_dir(out)?;
    let mut stats = match p.format {
        SynthFormat::Bf16 => write_safetensors_checkpoint(&p.shape, Dialect::Hf, p.seed, out, progress)?,
        SynthFormat::Mlx { bits } => {
            write_safetensors_checkpoint(&p.shape, Dialect::Mlx { bits }, p.seed, out, progress)?
        }
        SynthFormat::Gguf(ty) => {
            let staging = out.join(GGUF_STAGING_DIR);
            create_dir(&staging)?;
            write_safetensors_checkpoint(&p.shape, Dialect::Hf, p.seed, &staging, progress)?;
            let model = Model::load(&staging)?;
            let mut notes = Vec::new();
            // A GGUF is self-contained: its tokenizer lives in the metadata. A
            // vocabulary smaller than the tokenizer's (test sizes) cannot hold it.
            let tokenizer = match &p.tokenizer_from {
                Some(dir) => crate::gguf_tokenizer_metadata(dir, p.shape.vocab_size).unwrap_or_else(|e| {
                    notes.push(format!("the GGUF carries no tokenizer metadata: {e}"));
                    Vec::new()
                }),
                None => Vec::new(),
            };
            let file = out.join("model.gguf");
            let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "synth".into());
            progress(&format!("exporting {} as GGUF {ty:?}", staging.display()));
            let stats = export_gguf(&model, ty, tokenizer, &name, &file)?;
            drop(model);
            std::fs::remove_dir_all(&staging).map_err(|source| RuntimeError::Io { path: staging.clone(), source })?;
            SynthStats { files: vec![file], tensors: stats.tensors, bytes: stats.bytes, notes, ..Default::default() }
        }
    };
    if let Some(dir) = &p.tokenizer_from {
        stats.tokenizer_files = copy_tokenizer_files(dir, out)?;
        if stats.tokenizer_files.is_empty() {
            stats.notes.push(format!("{} has no tokenizer files; none copied", dir.display()));
        }
    }
    Ok(stats)
}

/// Copies the tokenizer-side files that exist in `from` into `out`; returns their names.
pub fn copy_tokenizer_files(from: &Path, out: &Path) -> Result<Vec<&'static str>> {
    let mut copied = Vec::new();
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|source| RuntimeError::Io { path: src.clone(), source })?;
            copied.push(f);
        }
    }
    Ok(copied)
}

/// Loads the model at `path`, runs `n_tokens` seeded random ids through it
/// (one prefill, every position's logits) and returns the largest |logit|;
/// an error if any logit is not finite.
pub fn check_finite(path: &Path, n_tokens: usize, seed: u64) -> Result<f32> {
    let model = Model::load(path)?;
    let v = model.config.vocab_size;
    let mut rng = Rng::new(seed ^ 0xC4EC_u64);
    let ids: Vec<u32> = (0..n_tokens.max(1)).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let mut cache = model.new_cache(ids.len());
    let mut scratch = Scratch::default();
    let logits = model.forward(&ids, &mut cache, &mut scratch, Logits::All)?;
    let mut max = 0.0f32;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_finite() {
            return Err(RuntimeError::Generation(format!(
                "{}: logit {} of position {} is {l} (weights too large for this depth?)",
                path.display(),
                i % v,
                i / v
            )));
        }
        max = max.max(l.abs());
    }
    Ok(max)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io { path: dir.to_path_buf(), source })
}

// ---- plan: which tensors, with which values, stored how ----------------------

/// Checkpoint naming and storage conventions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// HF raw: `model.language_model.*`, fused experts, conv `[C,1,K]`, norms `w`.
    Hf,
    /// MLX sanitized, its matrices `bits`-bit: `language_model.model.*`, `switch_mlp`, conv `[C,K,1]`,
    /// norms `1+w`.
    Mlx { bits: u32 },
}

impl Dialect {
    fn trunk(self) -> &'static str {
        match self {
            Dialect::Hf => "model.language_model.",
            Dialect::Mlx { .. } => "language_model.model.",
        }
    }

    fn lm_head(self) -> &'static str {
        match self {
            Dialect::Hf => "lm_head.weight",
            Dialect::Mlx { .. } => "language_model.lm_head.weight",
        }
    }

    /// Storage of a weight matrix (`gate`: the 8-bit router gates in MLX).
    fn matrix(self, gate: bool) -> Store {
        match self {
            Dialect::Hf => Store::Float(DType::BF16),
            Dialect::Mlx { bits } => Store::Affine { bits: if gate { MLX_GATE_BITS } else { bits }, group: MLX_GROUP },
        }
    }
}

/// How a logical tensor's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// Uniform with mean 0 and this standard deviation.
    Uniform(f32),
    /// Zero-centred RMSNorm weight as HF stores it: `w` near 0 (applied as `1 + w`).
    ZeroCentredNorm,
    /// Plain norm weight (GDN gated norm): near 1.
    PlainNorm,
    /// `A_log = ln(A)`, `A` uniform in [1, 16] (the HF initialiser's range, without 0).
    ALog,
    /// All ones (`dt_bias`, as HF initialises it).
    Ones,
}

/// `rows x cols` values from one random stream, identified by (key, block).
#[derive(Clone, Debug)]
struct Part {
    key: String,
    block: usize,
    rows: usize,
    cols: usize,
    init: Init,
}

#[derive(Clone, Copy, Debug)]
enum Store {
    Float(DType),
    /// MLX affine: `name` holds packed U32, plus `.scales` / `.biases` (BF16).
    Affine {
        bits: u32,
        group: usize,
    },
}

/// One checkpoint tensor: its rows are the parts' rows, in order.
#[derive(Clone, Debug)]
struct Planned {
    name: String,
    shape: Vec<usize>,
    parts: Vec<Part>,
    store: Store,
    /// Store `1 + w` (MLX-sanitized zero-centred norms).
    add_one: bool,
}

/// Planning helpers for one dialect.
struct Planner<'a> {
    s: &'a SynthShape,
    d: Dialect,
}

impl Planner<'_> {
    fn residual_scale(&self) -> f32 {
        1.0 / ((2 * self.s.num_hidden_layers) as f32).sqrt()
    }

    /// A `[rows, cols]` projection under the trunk (`rel` is the HF name
    /// relative to the trunk, also the seed key); `scale` multiplies the
    /// `1/sqrt(cols)` standard deviation.
    fn linear(&self, rel: &str, rows: usize, cols: usize, scale: f32, gate: bool) -> Planned {
        let std = scale / (cols as f32).sqrt();
        Planned {
            name: format!("{}{rel}", self.d.trunk()),
            shape: vec![rows, cols],
            parts: vec![Part { key: rel.into(), block: 0, rows, cols, init: Init::Uniform(std) }],
            store: self.d.matrix(gate),
            add_one: false,
        }
    }

    /// A 1-D float tensor under the trunk.
    fn vector(&self, rel: &str, n: usize, init: Init, dtype: DType) -> Planned {
        Planned {
            name: format!("{}{rel}", self.d.trunk()),
            shape: vec![n],
            parts: vec![Part { key: rel.into(), block: 0, rows: 1, cols: n, init }],
            store: Store::Float(dtype),
            add_one: matches!(self.d, Dialect::Mlx { .. }) && matches!(init, Init::ZeroCentredNorm),
        }
    }

    fn zc_norm(&self, rel: &str, n: usize) -> Planned {
        self.vector(rel, n, Init::ZeroCentredNorm, DType::BF16)
    }

    /// The embedding shard.
    fn embedding(&self) -> Vec<Planned> {
        let (v, h) = (self.s.vocab_size, self.s.hidden_size);
        // Unit-variance rows (std 1 = sqrt(h) / sqrt(h)): the first norm rescales them anyway.
        vec![self.linear("embed_tokens.weight", v, h, (h as f32).sqrt(), false)]
    }

    /// The last shard: final norm and (untied) LM head.
    fn head(&self) -> Vec<Planned> {
        let (v, h) = (self.s.vocab_size, self.s.hidden_size);
        let mut out = vec![self.zc_norm("norm.weight", h)];
        if !self.s.tie_word_embeddings {
            let mut head = self.linear("lm_head.weight", v, h, 1.0, false);
            head.name = self.d.lm_head().into();
            out.push(head);
        }
        out
    }

    fn layer(&self, i: usize) -> Vec<Planned> {
        let s = self.s;
        let h = s.hidden_size;
        let l = |rest: &str| format!("layers.{i}.{rest}");
        let r = self.residual_scale();
        let mut out =
            vec![self.zc_norm(&l("input_layernorm.weight"), h), self.zc_norm(&l("post_attention_layernorm.weight"), h)];
        if s.is_full_attention(i) {
            let (nh, nkv, hd) = (s.num_attention_heads, s.num_key_value_heads, s.head_dim);
            out.push(self.linear(&l("self_attn.q_proj.weight"), nh * 2 * hd, h, 1.0, false));
            out.push(self.linear(&l("self_attn.k_proj.weight"), nkv * hd, h, 1.0, false));
            out.push(self.linear(&l("self_attn.v_proj.weight"), nkv * hd, h, 1.0, false));
            out.push(self.linear(&l("self_attn.o_proj.weight"), h, nh * hd, r, false));
            out.push(self.zc_norm(&l("self_attn.q_norm.weight"), hd));
            out.push(self.zc_norm(&l("self_attn.k_norm.weight"), hd));
        } else {
            let (hv, dv, k, c, vd) = (
                s.linear_num_value_heads,
                s.linear_value_head_dim,
                s.linear_conv_kernel_dim,
                s.conv_dim(),
                s.value_dim(),
            );
            out.push(self.linear(&l("linear_attn.in_proj_qkv.weight"), c, h, 1.0, false));
            out.push(self.linear(&l("linear_attn.in_proj_z.weight"), vd, h, 1.0, false));
            out.push(self.linear(&l("linear_attn.in_proj_b.weight"), hv, h, 1.0, false));
            out.push(self.linear(&l("linear_attn.in_proj_a.weight"), hv, h, 1.0, false));
            // Depthwise conv taps: never quantized; HF [C,1,K], MLX [C,K,1] (same value order).
            let key = l("linear_attn.conv1d.weight");
            out.push(Planned {
                name: format!("{}{key}", self.d.trunk()),
                shape: if self.d == Dialect::Hf { vec![c, 1, k] } else { vec![c, k, 1] },
                parts: vec![Part { key, block: 0, rows: c, cols: k, init: Init::Uniform(1.0 / (k as f32).sqrt()) }],
                store: Store::Float(DType::BF16),
                add_one: false,
            });
            out.push(self.vector(&l("linear_attn.dt_bias"), hv, Init::Ones, DType::BF16));
            // The decay is computed in f32; keep its parameter in f32 too.
            out.push(self.vector(&l("linear_attn.A_log"), hv, Init::ALog, DType::F32));
            out.push(self.vector(&l("linear_attn.norm.weight"), dv, Init::PlainNorm, DType::BF16));
            out.push(self.linear(&l("linear_attn.out_proj.weight"), h, vd, r, false));
        }
        out.extend(self.moe(i));
        out
    }

    fn moe(&self, i: usize) -> Vec<Planned> {
        let s = self.s;
        let (h, e, inter, is) =
            (s.hidden_size, s.num_experts, s.moe_intermediate_size, s.shared_expert_intermediate_size);
        let l = |rest: &str| format!("layers.{i}.{rest}");
        let r = self.residual_scale();
        let up_std = 1.0 / (h as f32).sqrt();
        let down_std = r / (inter as f32).sqrt();
        // Expert e's gate/up/down come from streams keyed by expert, whatever the stacking.
        let part = |proj: &str, x: usize, rows: usize, cols: usize, std: f32| Part {
            key: l(&format!("mlp.experts.{proj}")),
            block: x,
            rows,
            cols,
            init: Init::Uniform(std),
        };
        let stack = |rel: &str, shape: Vec<usize>, parts: Vec<Part>| Planned {
            name: format!("{}{}", self.d.trunk(), l(rel)),
            shape,
            parts,
            store: self.d.matrix(false),
            add_one: false,
        };
        let mut out = vec![self.linear(&l("mlp.gate.weight"), e, h, 1.0, true)];
        match self.d {
            Dialect::Hf => {
                let gate_up =
                    (0..e).flat_map(|x| [part("gate", x, inter, h, up_std), part("up", x, inter, h, up_std)]).collect();
                out.push(stack("mlp.experts.gate_up_proj", vec![e, 2 * inter, h], gate_up));
                let down = (0..e).map(|x| part("down", x, h, inter, down_std)).collect();
                out.push(stack("mlp.experts.down_proj", vec![e, h, inter], down));
            }
            Dialect::Mlx { .. } => {
                for (proj, rows, cols, std) in
                    [("gate", inter, h, up_std), ("up", inter, h, up_std), ("down", h, inter, down_std)]
                {
                    let parts = (0..e).map(|x| part(proj, x, rows, cols, std)).collect();
                    out.push(stack(&format!("mlp.switch_mlp.{proj}_proj.weight"), vec![e, rows, cols], parts));
                }
            }
        }
        out.push(self.linear(&l("mlp.shared_expert.gate_proj.weight"), is, h, 1.0, false));
        out.push(self.linear(&l("mlp.shared_expert.up_proj.weight"), is, h, 1.0, false));
        out.push(self.linear(&l("mlp.shared_expert.down_proj.weight"), h, is, r, false));
        out.push(self.linear(&l("mlp.shared_expert_gate.weight"), 1, h, 1.0, true));
        out
    }

    /// The MLX `quantization` section: global `bits`-bit group 64, router gates 8-bit.
    fn mlx_quantization(&self, bits: u32) -> Value {
        let mut q = serde_json::Map::new();
        q.insert("group_size".into(), json!(MLX_GROUP));
        q.insert("bits".into(), json!(bits));
        q.insert("mode".into(), json!("affine"));
        for i in 0..self.s.num_hidden_layers {
            for m in ["mlp.gate", "mlp.shared_expert_gate"] {
                q.insert(
                    format!("{}layers.{i}.{m}", self.d.trunk()),
                    json!({"group_size": MLX_GROUP, "bits": MLX_GATE_BITS}),
                );
            }
        }
        Value::Object(q)
    }
}

fn write_safetensors_checkpoint(
    s: &SynthShape,
    d: Dialect,
    seed: u64,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<SynthStats> {
    let planner = Planner { s, d };
    let quant = match d {
        Dialect::Mlx { bits } => Some(planner.mlx_quantization(bits)),
        Dialect::Hf => None,
    };
    let config = serde_json::to_string_pretty(&s.config_json(seed, quant)).expect("a JSON value serialises");
    write_file(&out.join("config.json"), config.as_bytes())?;

    let n_shards = s.num_hidden_layers + 2;
    let shard_name = |k: usize| format!("model-{:05}-of-{n_shards:05}.safetensors", k + 1);
    let metadata: BTreeMap<String, String> =
        [("format".to_string(), if d == Dialect::Hf { "pt" } else { "mlx" }.to_string())].into_iter().collect();
    let mut weight_map = serde_json::Map::new();
    let mut stats = SynthStats::default();
    for k in 0..n_shards {
        let plan = match k {
            0 => planner.embedding(),
            k if k == n_shards - 1 => planner.head(),
            k => planner.layer(k - 1),
        };
        let tensors: Vec<Materialized> = plan.iter().flat_map(|p| materialize(p, seed)).collect();
        let views: Vec<TensorToWrite> = tensors
            .iter()
            .map(|t| TensorToWrite { name: &t.name, dtype: t.dtype, shape: &t.shape, bytes: &t.bytes })
            .collect();
        let name = shard_name(k);
        let path = out.join(&name);
        write_safetensors(&path, &views, &metadata)?;
        for t in &tensors {
            weight_map.insert(t.name.clone(), json!(name));
            stats.bytes += t.bytes.len() as u64;
        }
        stats.tensors += tensors.len();
        stats.files.push(path);
        progress(&format!("[{}/{n_shards}] {name}", k + 1));
    }
    let index = json!({ "metadata": { "total_size": stats.bytes }, "weight_map": weight_map });
    write_file(
        &out.join(INDEX_FILE),
        serde_json::to_string_pretty(&index).expect("a JSON value serialises").as_bytes(),
    )?;
    Ok(stats)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| RuntimeError::Io { path: path.to_path_buf(), source })
}

// ---- values -------------------------------------------------------------------

/// One safetensors tensor, ready to write.
struct Materialized {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Generates a planned tensor row by row into its stored form (one tensor,
/// or weight + scales + biases for affine).
fn materialize(p: &Planned, seed: u64) -> Vec<Materialized> {
    let cols = p.parts[0].cols;
    let rows: usize = p.parts.iter().map(|x| x.rows).sum();
    debug_assert_eq!(rows * cols, p.shape.iter().product::<usize>(), "{}", p.name);
    match p.store {
        Store::Float(dtype) => {
            let mut bytes = Vec::with_capacity(rows * cols * dtype.size());
            // Only F32 and BF16 are planned.
            for_each_row(p, seed, |row| match dtype {
                DType::F32 => row.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
                _ => row.iter().for_each(|v| bytes.extend_from_slice(&bf16_bits(*v).to_le_bytes())),
            });
            vec![Materialized { name: p.name.clone(), dtype, shape: p.shape.clone(), bytes }]
        }
        Store::Affine { bits, group } => {
            let packed = cols * bits as usize / 32;
            let groups = cols / group;
            let mut words = vec![0u8; rows * packed * 4];
            let mut scales = vec![0u8; rows * groups * 2];
            let mut biases = vec![0u8; rows * groups * 2];
            let mut r = 0;
            for_each_row(p, seed, |row| {
                quantize_affine_row(
                    row,
                    bits,
                    group,
                    &mut words[r * packed * 4..(r + 1) * packed * 4],
                    &mut scales[r * groups * 2..(r + 1) * groups * 2],
                    &mut biases[r * groups * 2..(r + 1) * groups * 2],
                );
                r += 1;
            });
            let lead = &p.shape[..p.shape.len() - 1];
            let with_last = |n: usize| lead.iter().copied().chain([n]).collect::<Vec<_>>();
            let module = p.name.strip_suffix(".weight").unwrap_or(&p.name);
            vec![
                Materialized { name: p.name.clone(), dtype: DType::U32, shape: with_last(packed), bytes: words },
                Materialized {
                    name: format!("{module}.scales"),
                    dtype: DType::BF16,
                    shape: with_last(groups),
                    bytes: scales,
                },
                Materialized {
                    name: format!("{module}.biases"),
                    dtype: DType::BF16,
                    shape: with_last(groups),
                    bytes: biases,
                },
            ]
        }
    }
}

/// Calls `f` with every row of `p`, in order (values after `add_one`).
fn for_each_row(p: &Planned, seed: u64, mut f: impl FnMut(&[f32])) {
    let mut row = vec![0.0f32; p.parts[0].cols];
    for part in &p.parts {
        let mut rng = Rng::for_block(seed, &part.key, part.block);
        for _ in 0..part.rows {
            fill(part.init, &mut rng, &mut row);
            if p.add_one {
                row.iter_mut().for_each(|v| *v += 1.0);
            }
            f(&row);
        }
    }
}

fn fill(init: Init, rng: &mut Rng, out: &mut [f32]) {
    match init {
        Init::Uniform(std) => {
            // Uniform on [-a, a] has variance a^2 / 3.
            let a = std * 3f32.sqrt();
            rng.fill_symmetric(out, a);
        }
        Init::ZeroCentredNorm => rng.fill_symmetric(out, 0.05),
        Init::PlainNorm => {
            rng.fill_symmetric(out, 0.05);
            out.iter_mut().for_each(|v| *v += 1.0);
        }
        Init::ALog => {
            rng.fill_symmetric(out, 1.0);
            // u in [-1, 1) -> A in [1, 16).
            out.iter_mut().for_each(|v| *v = (1.0 + 7.5 * (*v + 1.0)).ln());
        }
        Init::Ones => out.fill(1.0),
    }
}

/// Round-to-nearest-even f32 -> bf16 bits (NaN stays a quiet NaN).
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1));
    (rounded >> 16) as u16
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// MLX affine quantization of one row, the simplest min/max way: per group of
/// `group` values, `scale = (max - min) / (2^bits - 1)`, `bias = min`, both
/// rounded to bf16 (their stored type), then `q = round((w - bias) / scale)`
/// clamped to `0 ..= 2^bits - 1`, computed against the *rounded* scale and
/// bias so the stored triple decodes as close to `w` as it can. A constant
/// group gets scale 0 and decodes exactly to the (rounded) bias. (mlx's own
/// quantizer additionally nudges the grid so that 0 is exact; nothing here
/// depends on that.) Codes are packed LSB-first into little-endian u32 words:
/// element `i` occupies bits `[i*bits, (i+1)*bits)` of the row's bitstream
/// (spec 4.6). `words`, `scales`, `biases` must be zeroed on entry.
pub fn quantize_affine_row(
    row: &[f32],
    bits: u32,
    group: usize,
    words: &mut [u8],
    scales: &mut [u8],
    biases: &mut [u8],
) {
    let levels = ((1u32 << bits) - 1) as f32;
    for (g, vals) in row.chunks(group).enumerate() {
        let (lo, hi) = vals.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let s_bits = bf16_bits((hi - lo) / levels);
        let b_bits = bf16_bits(lo);
        scales[g * 2..g * 2 + 2].copy_from_slice(&s_bits.to_le_bytes());
        biases[g * 2..g * 2 + 2].copy_from_slice(&b_bits.to_le_bytes());
        let (s, b) = (bf16_value(s_bits), bf16_value(b_bits));
        for (j, &v) in vals.iter().enumerate() {
            let q = if s > 0.0 { ((v - b) / s).round().clamp(0.0, levels) as u32 } else { 0 };
            let bit = (g * group + j) * bits as usize;
            put_bits(words, bit, bits, q);
        }
    }
}

/// ORs the `bits`-bit value `q` into the LSB-first bitstream at bit `at`
/// (it may straddle a word and so a byte boundary).
fn put_bits(stream: &mut [u8], at: usize, bits: u32, q: u32) {
    let mut v = (q as u64) << (at % 8);
    let mut byte = at / 8;
    let mut left = bits as usize + at % 8;
    while left > 0 {
        stream[byte] |= v as u8;
        v >>= 8;
        byte += 1;
        left = left.saturating_sub(8);
    }
}

/// SplitMix64: tiny, fast, and good enough for weights nobody reads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream per (seed, tensor key, block).
    fn for_block(seed: u64, key: &str, block: usize) -> Rng {
        // FNV-1a of the key, mixed with the seed and block through one SplitMix step.
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut r =
            Rng(h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (block as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mixed = r.next_u64();
        Rng(mixed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform values on `[-a, a)`, two 24-bit draws per u64.
    fn fill_symmetric(&mut self, out: &mut [f32], a: f32) {
        const UNIT: f32 = 1.0 / (1u32 << 23) as f32;
        let mut pairs = out.chunks_exact_mut(2);
        for pair in &mut pairs {
            let x = self.next_u64();
            pair[0] = (((x >> 40) as u32) as f32 * UNIT - 1.0) * a;
            pair[1] = ((((x >> 8) & 0xFF_FFFF) as u32) as f32 * UNIT - 1.0) * a;
        }
        for v in pairs.into_remainder() {
            *v = ((((self.next_u64() >> 40) as u32) as f32) * UNIT - 1.0) * a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_row_round_trips_within_half_a_step() {
        let mut rng = Rng::new(7);
        let mut row = vec![0.0f32; 256];
        rng.fill_symmetric(&mut row, 0.3);
        row[64..128].fill(0.25); // a constant group
        for bits in [4u32, 8] {
            let (packed, groups) = (256 * bits as usize / 32, 256 / 64);
            let (mut w, mut s, mut b) = (vec![0u8; packed * 4], vec![0u8; groups * 2], vec![0u8; groups * 2]);
            quantize_affine_row(&row, bits, 64, &mut w, &mut s, &mut b);
            let dec = qmoe_kernels::quant::AffineRow {
                words: &w,
                scales: &s,
                biases: &b,
                scale_dtype: DType::BF16,
                bits,
                group_size: 64,
            };
            let mut out = vec![0.0f32; 256];
            dec.decode(0, &mut out);
            for (g, (x, y)) in row.chunks(64).zip(out.chunks(64)).enumerate() {
                let step = bf16_value(u16::from_le_bytes([s[2 * g], s[2 * g + 1]]));
                let err = x.iter().zip(y).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                // Half a step plus the bias's bf16 rounding.
                assert!(err <= 0.5 * step + 0.004, "bits {bits} group {g}: err {err} step {step}");
            }
        }
    }

    #[test]
    fn uniform_draws_have_the_asked_spread() {
        let mut rng = Rng::new(1);
        let mut v = vec![0.0f32; 1 << 16];
        fill(Init::Uniform(0.5), &mut rng, &mut v);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.01 && (var.sqrt() - 0.5).abs() < 0.01, "mean {mean} std {}", var.sqrt());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0); // tie -> even
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }
}
