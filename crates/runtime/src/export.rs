//! Export a loaded model to GGUF the way llama.cpp's converter writes it
//! (spec 5): tensor names, metadata keys, and every transform — norms stored
//! as their effective `1 + w` (F32), `ssm_a = -exp(A_log)`, conv squeezed to
//! `[C, K]`, value heads reordered to the tiled order for qwen35*, Qwen3-Next's
//! fused `in_proj_qkvz` split into `attn_qkv` + `attn_gate` with `ssm_ba`
//! kept grouped.
//!
//! The MTP head, when the model has one, is written as llama.cpp's `nextn`
//! blocks after the main layers (`block_count` and `nextn_predict_layers`
//! count them, `attention.recurrent_layers` marks them as attention);
//! [`MtpExport::Skip`] (`--no-mtp`) leaves it out, as the converter's flag does.
//!
//! Any dialect qmoe loads can be exported: each weight row is decoded to f32
//! from its stored form and re-encoded in the target type. Memory stays near
//! one tensor: tensors are produced and written one at a time.

mod plan;

use std::io::IsTerminal;
use std::path::Path;

use qmoe_formats::gguf::{GgufValue, GgufWriter};
use qmoe_kernels::ggml::quantizer;
use qmoe_model::config::{Arch, LayerKind};
use qmoe_model::Model;

use crate::error::{Result, RuntimeError};

/// Target types of `qmoe convert --type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    BF16,
    Q8_0,
    /// Q4_K with Q6_K for the sensitive tensors (llama.cpp's Q4_K_M recipe).
    Q4KM,
    Q6K,
}

impl ExportType {
    pub fn parse(s: &str) -> Option<ExportType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => ExportType::F32,
            "f16" => ExportType::F16,
            "bf16" => ExportType::BF16,
            "q8_0" => ExportType::Q8_0,
            "q4_k_m" => ExportType::Q4KM,
            "q6_k" => ExportType::Q6K,
            _ => return None,
        })
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::Q8_0 => 7,
            ExportType::Q4KM => 15,
            ExportType::Q6K => 18,
            ExportType::BF16 => 32,
        }
    }
}

/// Whether the MTP head (when the model has one) is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtpExport {
    Include,
    /// `qmoe convert --no-mtp`.
    Skip,
}

#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub ty: ExportType,
    pub mtp: MtpExport,
}

impl ExportOptions {
    /// llama.cpp's converter default: the MTP head is written when present.
    pub fn new(ty: ExportType) -> ExportOptions {
        ExportOptions { ty, mtp: MtpExport::Include }
    }
}

pub struct ExportStats {
    pub tensors: usize,
    pub bytes: u64,
    pub by_type: std::collections::BTreeMap<String, usize>,
    /// MTP blocks written (0 without a head or with [`MtpExport::Skip`]).
    pub mtp_blocks: usize,
}

/// Writes `model` as GGUF to `out`, MTP head included when present.
/// `tokenizer_meta` is the `tokenizer.*` metadata (from the source's
/// tokenizer files), written as given.
pub fn export_gguf(
    model: &Model,
    ty: ExportType,
    tokenizer_meta: Vec<(String, GgufValue)>,
    name: &str,
    out: &Path,
) -> Result<ExportStats> {
    export_gguf_with(model, &ExportOptions::new(ty), tokenizer_meta, name, out)
}

/// [`export_gguf`] with every option.
pub fn export_gguf_with(
    model: &Model,
    opts: &ExportOptions,
    tokenizer_meta: Vec<(String, GgufValue)>,
    name: &str,
    out: &Path,
) -> Result<ExportStats> {
    let (cfg, ty) = (&model.config, opts.ty);
    let arch = match cfg.arch {
        Arch::Qwen35Moe => "qwen35moe",
        Arch::Qwen35 => "qwen35",
        Arch::Qwen3Next => "qwen3next",
    };
    let plan = plan::plan(model, opts, arch)?;
    let n_mtp = plan::mtp_blocks(model, opts);
    let io = |e: qmoe_formats::FormatError| RuntimeError::Export(format!("writing {}: {e}", out.display()));
    let mut w = GgufWriter::new(out, 32).map_err(io)?;
    for (k, v) in metadata(model, arch, ty, n_mtp, name) {
        w.add_metadata(k, v).map_err(io)?;
    }
    for (k, v) in tokenizer_meta {
        w.add_metadata(k, v).map_err(io)?;
    }
    for p in &plan {
        let ne: Vec<u64> = p.shape.iter().rev().map(|&d| d as u64).collect();
        w.add_tensor(p.name.clone(), p.ty, &ne).map_err(io)?;
    }
    w.write_header().map_err(io)?;

    let progress = std::io::stderr().is_terminal();
    let mut stats = ExportStats { tensors: plan.len(), bytes: 0, by_type: Default::default(), mtp_blocks: n_mtp };
    for (i, p) in plan.iter().enumerate() {
        if progress {
            eprint!("\r\x1b[2K[{}/{}] {} {}", i + 1, plan.len(), p.name, p.ty);
        }
        let bytes = encode(p);
        stats.bytes += bytes.len() as u64;
        *stats.by_type.entry(p.ty.name().to_string()).or_insert(0) += 1;
        w.write_tensor_data(&p.name, &bytes).map_err(io)?;
    }
    if progress {
        eprintln!();
    }
    w.finish().map_err(io)?;
    Ok(stats)
}

/// Decodes the source rows to f32 and encodes them in the planned type.
fn encode(p: &plan::Planned) -> Vec<u8> {
    let cols = *p.shape.last().unwrap_or(&1);
    let quant = quantizer(p.ty).expect("planned types all have a quantizer");
    let row_bytes = p.ty.row_bytes(cols).expect("planned rows are whole blocks");
    match &p.src {
        plan::Src::Floats(v) => {
            let mut out = vec![0u8; v.len() / cols * row_bytes];
            for (x, o) in v.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
                quant(x, o);
            }
            out
        }
        plan::Src::Rows { rows, col_perm } => {
            let mut out = vec![0u8; rows.len() * row_bytes];
            let mut buf = vec![0.0f32; cols];
            let mut permuted = vec![0.0f32; cols];
            for ((m, r), o) in rows.iter().zip(out.chunks_exact_mut(row_bytes)) {
                m.view().row_to_f32(*r, &mut buf);
                let x = match col_perm {
                    Some(perm) => {
                        for (dst, &src) in permuted.iter_mut().zip(perm) {
                            *dst = buf[src];
                        }
                        &permuted
                    }
                    None => &buf,
                };
                quant(x, o);
            }
            out
        }
    }
}

/// `n_mtp` nextn blocks follow the main layers: counted in `block_count`,
/// announced by `nextn_predict_layers`, and non-recurrent.
fn metadata(model: &Model, arch: &str, ty: ExportType, n_mtp: usize, name: &str) -> Vec<(String, GgufValue)> {
    let c = &model.config;
    let k = |s: &str| format!("{arch}.{s}");
    let mut m: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), arch.into()),
        ("general.name".into(), name.into()),
        ("general.file_type".into(), ty.file_type().into()),
        ("general.quantization_version".into(), 2u32.into()),
        (k("block_count"), ((c.num_hidden_layers + n_mtp) as u32).into()),
        (k("context_length"), (c.max_position_embeddings as u32).into()),
        (k("embedding_length"), (c.hidden_size as u32).into()),
        (k("attention.head_count"), (c.num_attention_heads as u32).into()),
        (k("attention.head_count_kv"), (c.num_key_value_heads as u32).into()),
        (k("attention.key_length"), (c.head_dim as u32).into()),
        (k("attention.value_length"), (c.head_dim as u32).into()),
        (k("attention.layer_norm_rms_epsilon"), c.rms_norm_eps.into()),
        (k("rope.freq_base"), (c.rope_theta as f32).into()),
        (k("rope.dimension_count"), (c.rotary_dims() as u32).into()),
        (k("ssm.conv_kernel"), (c.linear_conv_kernel_dim as u32).into()),
        (k("ssm.state_size"), (c.linear_key_head_dim as u32).into()),
        (k("ssm.group_count"), (c.linear_num_key_heads as u32).into()),
        (k("ssm.time_step_rank"), (c.linear_num_value_heads as u32).into()),
        (k("ssm.inner_size"), (c.value_dim() as u32).into()),
    ];
    if arch != "qwen3next" {
        m.push((k("rope.dimension_sections"), vec![11i32, 11, 10, 0].into()));
    }
    if let Some(f) = c.intermediate_size {
        m.push((k("feed_forward_length"), (f as u32).into()));
    }
    if c.num_experts > 0 {
        m.push((k("expert_count"), (c.num_experts as u32).into()));
        m.push((k("expert_used_count"), (c.num_experts_per_tok as u32).into()));
        m.push((k("expert_feed_forward_length"), (c.moe_intermediate_size as u32).into()));
        m.push((k("expert_shared_feed_forward_length"), (c.shared_expert_intermediate_size as u32).into()));
    }
    // The layer pattern: per layer (what llama.cpp reads first), and as an
    // interval when the layers follow one.
    if n_mtp > 0 {
        m.push((k("nextn_predict_layers"), (n_mtp as u32).into()));
    }
    let recurrent: Vec<bool> = c
        .layer_types
        .iter()
        .map(|t| *t == LayerKind::LinearAttention)
        .chain(std::iter::repeat_n(false, n_mtp))
        .collect();
    m.push((k("attention.recurrent_layers"), recurrent.into()));
    let n = c.layer_types.iter().position(|t| *t == LayerKind::FullAttention).map(|i| i + 1);
    if let Some(n) = n {
        let regular =
            c.layer_types.iter().enumerate().all(|(i, t)| (*t == LayerKind::FullAttention) == ((i + 1) % n == 0));
        if regular {
            m.push((k("full_attention_interval"), (n as u32).into()));
        }
    }
    m
}
