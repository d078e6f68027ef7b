//! Export a loaded model to GGUF the way llama.cpp's converter writes it
//! (spec 5): tensor names, metadata keys, and every transform — norms stored
//! as their effective `1 + w` (F32), `ssm_a = -exp(A_log)`, conv squeezed to
//! `[C, K]`, value heads reordered to the tiled order for qwen35*, Qwen3-Next's
//! fused `in_proj_qkvz` split into `attn_qkv` + `attn_gate` with `ssm_ba`
//! kept grouped.
//!
//! Any dialect qmoe loads can be exported: each weight row is decoded to f32
//! from its stored form and re-encoded in the target type. Memory stays near
//! one tensor: tensors are produced and written one at a time.

use std::io::IsTerminal;
use std::path::Path;

use qmoe_core::GgmlType;
use qmoe_formats::gguf::{GgufValue, GgufWriter};
use qmoe_kernels::gdn::HeadMap;
use qmoe_kernels::ggml::quantizer;
use qmoe_model::config::{Arch, LayerKind};
use qmoe_model::weights::{GdnProj, Mat, Mixer, Mlp, SwiGlu};
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

/// What a weight is, for the per-tensor type choice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Embedding,
    Output,
    AttnV,
    FfnDown,
    Other,
}

/// llama.cpp's Q4_K_M spends more bits on the first and last eighth of the
/// layers and every third layer in between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer >= n_layers / 8 && (layer - n_layers / 8) % 3 == 2)
}

fn choose_type(t: ExportType, role: Role, layer: usize, n_layers: usize, cols: usize) -> GgmlType {
    let want = match t {
        ExportType::F32 => GgmlType::F32,
        ExportType::F16 => GgmlType::F16,
        ExportType::BF16 => GgmlType::BF16,
        ExportType::Q8_0 => GgmlType::Q8_0,
        ExportType::Q6K => GgmlType::Q6K,
        ExportType::Q4KM => match role {
            Role::Output => GgmlType::Q6K,
            Role::AttnV | Role::FfnDown if use_more_bits(layer, n_layers) => GgmlType::Q6K,
            _ => GgmlType::Q4K,
        },
    };
    // Rows that are not whole blocks fall back, as llama.cpp's quantizer does.
    if cols % want.block_size() == 0 {
        want
    } else if cols % 32 == 0 {
        GgmlType::Q8_0
    } else if t == ExportType::F32 {
        GgmlType::F32
    } else {
        GgmlType::F16
    }
}

/// How one output tensor's values are produced.
enum Src<'m> {
    /// Each output row is a row of a model matrix; `cols` optionally permuted
    /// (`col_perm[new] = old`).
    Rows { rows: Vec<(&'m Mat, usize)>, col_perm: Option<Vec<usize>> },
    /// Small f32 tensors computed at plan time (norms, gates, conv).
    Floats(Vec<f32>),
}

struct Planned<'m> {
    name: String,
    ty: GgmlType,
    /// Row-major shape; GGUF `ne` is its reverse.
    shape: Vec<usize>,
    src: Src<'m>,
}

pub struct ExportStats {
    pub tensors: usize,
    pub bytes: u64,
    pub by_type: std::collections::BTreeMap<String, usize>,
}

/// Writes `model` as GGUF to `out`. `tokenizer_meta` is the `tokenizer.*`
/// metadata (from the source's tokenizer files), written as given.
pub fn export_gguf(model: &Model, ty: ExportType, tokenizer_meta: Vec<(String, GgufValue)>, name: &str, out: &Path) -> Result<ExportStats> {
    let cfg = &model.config;
    let arch = match cfg.arch {
        Arch::Qwen35Moe => "qwen35moe",
        Arch::Qwen35 => "qwen35",
        Arch::Qwen3Next => "qwen3next",
    };
    let plan = plan(model, ty, arch)?;
    let io = |e: qmoe_formats::FormatError| RuntimeError::Export(format!("writing {}: {e}", out.display()));
    let mut w = GgufWriter::new(out, 32).map_err(io)?;
    for (k, v) in metadata(model, arch, ty, name) {
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
    let mut stats = ExportStats { tensors: plan.len(), bytes: 0, by_type: Default::default() };
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
fn encode(p: &Planned) -> Vec<u8> {
    let cols = *p.shape.last().unwrap_or(&1);
    let quant = quantizer(p.ty).expect("planned types all have a quantizer");
    let row_bytes = p.ty.row_bytes(cols).expect("planned rows are whole blocks");
    match &p.src {
        Src::Floats(v) => {
            let mut out = vec![0u8; v.len() / cols * row_bytes];
            for (x, o) in v.chunks_exact(cols).zip(out.chunks_exact_mut(row_bytes)) {
                quant(x, o);
            }
            out
        }
        Src::Rows { rows, col_perm } => {
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

fn metadata(model: &Model, arch: &str, ty: ExportType, name: &str) -> Vec<(String, GgufValue)> {
    let c = &model.config;
    let k = |s: &str| format!("{arch}.{s}");
    let mut m: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), arch.into()),
        ("general.name".into(), name.into()),
        ("general.file_type".into(), ty.file_type().into()),
        ("general.quantization_version".into(), 2u32.into()),
        (k("block_count"), (c.num_hidden_layers as u32).into()),
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
    let recurrent: Vec<bool> = c.layer_types.iter().map(|t| *t == LayerKind::LinearAttention).collect();
    m.push((k("attention.recurrent_layers"), recurrent.into()));
    let n = c.layer_types.iter().position(|t| *t == LayerKind::FullAttention).map(|i| i + 1);
    if let Some(n) = n {
        let regular = c.layer_types.iter().enumerate().all(|(i, t)| (*t == LayerKind::FullAttention) == ((i + 1) % n == 0));
        if regular {
            m.push((k("full_attention_interval"), (n as u32).into()));
        }
    }
    m
}

/// Grouped value head `old(n)` that lands at tiled position `n` (spec 5.4).
fn tiled_from_grouped(n: usize, hk: usize, r: usize) -> usize {
    (n % hk) * r + n / hk
}

fn plan<'m>(model: &'m Model, ty: ExportType, arch: &str) -> Result<Vec<Planned<'m>>> {
    let c = &model.config;
    let w = &model.weights;
    let nl = c.num_hidden_layers;
    let (h, hk, hv, dk, dv) = (c.hidden_size, c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim);
    let r = hv / hk;
    let (kd, vd) = (c.key_dim(), c.value_dim());
    let mut out = Vec::new();
    let all_rows = |m: &'m Mat| (0..m.rows).map(move |i| (m, i)).collect::<Vec<_>>();
    let mat = |out: &mut Vec<Planned<'m>>, name: String, role: Role, layer: usize, rows: Vec<(&'m Mat, usize)>, cols: usize, col_perm: Option<Vec<usize>>| {
        let t = choose_type(ty, role, layer, nl, cols);
        let n = rows.len();
        out.push(Planned { name, ty: t, shape: vec![n, cols], src: Src::Rows { rows, col_perm } });
    };
    let floats = |out: &mut Vec<Planned<'m>>, name: String, shape: Vec<usize>, v: Vec<f32>| {
        out.push(Planned { name, ty: GgmlType::F32, shape, src: Src::Floats(v) });
    };

    mat(&mut out, "token_embd.weight".into(), Role::Embedding, 0, all_rows(&w.embed), h, None);
    if let Some(head) = &w.lm_head {
        mat(&mut out, "output.weight".into(), Role::Output, nl, all_rows(head), h, None);
    }
    floats(&mut out, "output_norm.weight".into(), vec![h], w.final_norm.clone());

    for (i, layer) in w.layers.iter().enumerate() {
        let b = |s: &str| format!("blk.{i}.{s}");
        floats(&mut out, b("attn_norm.weight"), vec![h], layer.input_norm.clone());
        floats(&mut out, b("post_attention_norm.weight"), vec![h], layer.post_attn_norm.clone());
        match &layer.mixer {
            Mixer::Attention(a) => {
                mat(&mut out, b("attn_q.weight"), Role::Other, i, all_rows(&a.q_proj), h, None);
                mat(&mut out, b("attn_k.weight"), Role::Other, i, all_rows(&a.k_proj), h, None);
                mat(&mut out, b("attn_v.weight"), Role::AttnV, i, all_rows(&a.v_proj), h, None);
                mat(&mut out, b("attn_output.weight"), Role::Other, i, all_rows(&a.o_proj), a.o_proj.cols, None);
                floats(&mut out, b("attn_q_norm.weight"), vec![c.head_dim], a.q_norm.clone());
                floats(&mut out, b("attn_k_norm.weight"), vec![c.head_dim], a.k_norm.clone());
            }
            Mixer::Gdn(g) => {
                // Value-head order: qwen35* files are tiled, qwen3next grouped.
                let tile = arch != "qwen3next" && g.head_map == HeadMap::Grouped;
                if arch == "qwen3next" && g.head_map == HeadMap::Tiled {
                    return Err(RuntimeError::Export("cannot export tiled value heads as qwen3next".into()));
                }
                let head = |n: usize| if tile { tiled_from_grouped(n, hk, r) } else { n };
                // Channel order of [q | k | v] after the value-head reorder.
                let chan = |ch: usize| if ch < 2 * kd { ch } else { 2 * kd + head((ch - 2 * kd) / dv) * dv + (ch - 2 * kd) % dv };
                let (qkv_rows, z_rows): (Vec<(&Mat, usize)>, Vec<(&Mat, usize)>) = match &g.proj {
                    GdnProj::Separate { qkv, z, .. } | GdnProj::SplitGroupedBa { qkv, z, .. } => (
                        (0..2 * kd + vd).map(|ch| (qkv, chan(ch))).collect(),
                        (0..vd).map(|ch| (z, head(ch / dv) * dv + ch % dv)).collect(),
                    ),
                    GdnProj::FusedGrouped { qkvz, .. } => {
                        // Un-group [q_g | k_g | v_g (r*Dv) | z_g (r*Dv)] per key head g.
                        let group = 2 * dk + 2 * r * dv;
                        let qkv = (0..2 * kd + vd)
                            .map(|ch| {
                                let row = if ch < kd {
                                    (ch / dk) * group + ch % dk
                                } else if ch < 2 * kd {
                                    ((ch - kd) / dk) * group + dk + (ch - kd) % dk
                                } else {
                                    let (vh, d) = ((ch - 2 * kd) / dv, (ch - 2 * kd) % dv);
                                    let vh = head(vh);
                                    (vh / r) * group + 2 * dk + (vh % r) * dv + d
                                };
                                (qkvz, row)
                            })
                            .collect();
                        let z = (0..vd)
                            .map(|ch| {
                                let (vh, d) = (head(ch / dv), ch % dv);
                                (qkvz, (vh / r) * group + 2 * dk + r * dv + (vh % r) * dv + d)
                            })
                            .collect();
                        (qkv, z)
                    }
                };
                mat(&mut out, b("attn_qkv.weight"), Role::Other, i, qkv_rows, h, None);
                mat(&mut out, b("attn_gate.weight"), Role::Other, i, z_rows, h, None);
                match &g.proj {
                    GdnProj::Separate { b: wb, a: wa, .. } if arch != "qwen3next" => {
                        mat(&mut out, b("ssm_beta.weight"), Role::Other, i, (0..hv).map(|n| (wb, head(n))).collect(), h, None);
                        mat(&mut out, b("ssm_alpha.weight"), Role::Other, i, (0..hv).map(|n| (wa, head(n))).collect(), h, None);
                    }
                    GdnProj::Separate { b: wb, a: wa, .. } => {
                        // qwen3next keeps [b_g (r) | a_g (r)] grouped per key head.
                        let rows = (0..2 * hv).map(|x| {
                            let (g, j) = (x / (2 * r), x % (2 * r));
                            if j < r { (wb, g * r + j) } else { (wa, g * r + j - r) }
                        });
                        mat(&mut out, b("ssm_ba.weight"), Role::Other, i, rows.collect(), h, None);
                    }
                    GdnProj::SplitGroupedBa { ba, .. } | GdnProj::FusedGrouped { ba, .. } => {
                        if arch != "qwen3next" {
                            return Err(RuntimeError::Export(format!("layer {i}: grouped ssm_ba only exists in qwen3next")));
                        }
                        mat(&mut out, b("ssm_ba.weight"), Role::Other, i, all_rows(ba), h, None);
                    }
                }
                let k = c.linear_conv_kernel_dim;
                let conv: Vec<f32> = (0..2 * kd + vd).flat_map(|ch| g.conv[chan(ch) * k..(chan(ch) + 1) * k].to_vec()).collect();
                floats(&mut out, b("ssm_conv1d.weight"), vec![2 * kd + vd, k], conv);
                floats(&mut out, b("ssm_dt.bias"), vec![hv], (0..hv).map(|n| g.dt_bias[head(n)]).collect());
                floats(&mut out, b("ssm_a"), vec![hv], (0..hv).map(|n| g.a_neg_exp[head(n)]).collect());
                floats(&mut out, b("ssm_norm.weight"), vec![dv], g.norm.clone());
                let col_perm: Option<Vec<usize>> = tile.then(|| (0..vd).map(|ch| head(ch / dv) * dv + ch % dv).collect());
                mat(&mut out, b("ssm_out.weight"), Role::Other, i, all_rows(&g.out_proj), vd, col_perm);
            }
        }
        match &layer.mlp {
            Mlp::Dense(d) => {
                mat(&mut out, b("ffn_gate.weight"), Role::Other, i, all_rows(&d.gate), h, None);
                mat(&mut out, b("ffn_up.weight"), Role::Other, i, all_rows(&d.up), h, None);
                mat(&mut out, b("ffn_down.weight"), Role::FfnDown, i, all_rows(&d.down), d.down.cols, None);
            }
            Mlp::Moe(m) => {
                let router: Vec<f32> = rows_f32(&m.router);
                floats(&mut out, b("ffn_gate_inp.weight"), vec![c.num_experts, h], router);
                let stack = |f: fn(&SwiGlu) -> &Mat| m.experts.iter().flat_map(|e| all_rows(f(e))).collect::<Vec<_>>();
                let inter = c.moe_intermediate_size;
                let (t_gate, t_down) = (choose_type(ty, Role::Other, i, nl, h), choose_type(ty, Role::FfnDown, i, nl, inter));
                let e = c.num_experts;
                out.push(Planned { name: b("ffn_gate_exps.weight"), ty: t_gate, shape: vec![e, inter, h], src: Src::Rows { rows: stack(|x| &x.gate), col_perm: None } });
                out.push(Planned { name: b("ffn_up_exps.weight"), ty: t_gate, shape: vec![e, inter, h], src: Src::Rows { rows: stack(|x| &x.up), col_perm: None } });
                out.push(Planned { name: b("ffn_down_exps.weight"), ty: t_down, shape: vec![e, h, inter], src: Src::Rows { rows: stack(|x| &x.down), col_perm: None } });
                mat(&mut out, b("ffn_gate_shexp.weight"), Role::Other, i, all_rows(&m.shared.gate), h, None);
                mat(&mut out, b("ffn_up_shexp.weight"), Role::Other, i, all_rows(&m.shared.up), h, None);
                mat(&mut out, b("ffn_down_shexp.weight"), Role::FfnDown, i, all_rows(&m.shared.down), m.shared.down.cols, None);
                floats(&mut out, b("ffn_gate_inp_shexp.weight"), vec![h], rows_f32(&m.shared_gate));
            }
        }
    }
    Ok(out)
}

/// A small matrix widened to f32 (router weights are stored F32 in GGUF).
fn rows_f32(m: &Mat) -> Vec<f32> {
    let mut v = vec![0.0; m.rows * m.cols];
    for (r, row) in v.chunks_exact_mut(m.cols).enumerate() {
        m.view().row_to_f32(r, row);
    }
    v
}
