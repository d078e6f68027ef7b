//! What the exporter writes: one [`Planned`] tensor per GGUF tensor, with its
//! llama.cpp name, ggml type and where its values come from. Nothing is
//! decoded here; [`super::encode`] produces the bytes one tensor at a time.
//!
//! Block order is llama.cpp's: the main layers `blk.0 .. blk.{L-1}`, then the
//! MTP blocks `blk.{L+j}`, the first of which also carries the `nextn.*`
//! tensors (spec 5.3). Type choice follows `llama-quant.cpp` for Q4_K_M,
//! including its layer counting over all blocks (MTP ones included).

use qmoe_core::GgmlType;
use qmoe_kernels::gdn::HeadMap;
use qmoe_model::weights::{GdnProj, Layer, Mat, Mixer, Mlp, SwiGlu};
use qmoe_model::Model;

use super::{ExportOptions, ExportType, MtpExport};
use crate::error::{Result, RuntimeError};

/// What a weight is, for the per-tensor type choice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Embedding,
    Output,
    /// `attn_v` and, in the GDN layers, `attn_qkv`: llama.cpp's quantizer
    /// treats both as "attention V" (`category_is_attn_v`) and counts them
    /// together, one per block.
    AttnV,
    /// `ffn_down`, `ffn_down_exps`, `ffn_down_shexp`.
    FfnDown,
    Other,
}

/// llama.cpp's Q4_K_M spends more bits on the first and last eighth of the
/// blocks and every third block in between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    // Past the first two tests `layer >= n_layers / 8`.
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// `n_blocks` counts every exported block, MTP ones included: llama.cpp
/// sorts tensors by block and counts over `n_layer_all`.
fn choose_type(t: ExportType, role: Role, block: usize, n_blocks: usize, cols: usize) -> GgmlType {
    let want = match t {
        ExportType::F32 => GgmlType::F32,
        ExportType::F16 => GgmlType::F16,
        ExportType::BF16 => GgmlType::BF16,
        ExportType::Q8_0 => GgmlType::Q8_0,
        ExportType::Q6K => GgmlType::Q6K,
        ExportType::Q4KM => match role {
            Role::Output => GgmlType::Q6K,
            Role::AttnV | Role::FfnDown if use_more_bits(block, n_blocks) => GgmlType::Q6K,
            Role::Embedding | Role::AttnV | Role::FfnDown | Role::Other => GgmlType::Q4K,
        },
    };
    // Rows that are not whole blocks fall back, as llama.cpp's quantizer does.
    if cols.is_multiple_of(want.block_size()) {
        want
    } else if cols.is_multiple_of(32) {
        GgmlType::Q8_0
    } else if t == ExportType::F32 {
        GgmlType::F32
    } else {
        GgmlType::F16
    }
}

/// How one output tensor's values are produced.
pub(super) enum Src<'m> {
    /// Each output row is a row of a model matrix; `cols` optionally permuted
    /// (`col_perm[new] = old`).
    Rows { rows: Vec<(&'m Mat, usize)>, col_perm: Option<Vec<usize>> },
    /// Small f32 tensors computed at plan time (norms, gates, conv).
    Floats(Vec<f32>),
}

pub(super) struct Planned<'m> {
    pub name: String,
    pub ty: GgmlType,
    /// Row-major shape; GGUF `ne` is its reverse.
    pub shape: Vec<usize>,
    pub src: Src<'m>,
}

/// Grouped value head `old(n)` that lands at tiled position `n` (spec 5.4).
fn tiled_from_grouped(n: usize, hk: usize, r: usize) -> usize {
    (n % hk) * r + n / hk
}

/// The MTP blocks written: all of them, or none with `--no-mtp`.
pub(super) fn mtp_blocks(model: &Model, opts: &ExportOptions) -> usize {
    match (&model.weights.mtp, opts.mtp) {
        (Some(m), MtpExport::Include) => m.layers.len(),
        _ => 0,
    }
}

struct Planner<'m> {
    model: &'m Model,
    ty: ExportType,
    arch: &'m str,
    /// Main layers + exported MTP blocks.
    n_blocks: usize,
    out: Vec<Planned<'m>>,
}

/// Where each output row comes from: a source matrix and its row.
type RowSources<'a> = Vec<(&'a Mat, usize)>;

fn all_rows(m: &Mat) -> RowSources<'_> {
    (0..m.rows).map(|i| (m, i)).collect()
}

pub(super) fn plan<'m>(model: &'m Model, opts: &ExportOptions, arch: &'m str) -> Result<Vec<Planned<'m>>> {
    let (c, w) = (&model.config, &model.weights);
    let (h, nl) = (c.hidden_size, c.num_hidden_layers);
    let n_mtp = mtp_blocks(model, opts);
    let mut p = Planner { model, ty: opts.ty, arch, n_blocks: nl + n_mtp, out: Vec::new() };

    p.mat("token_embd.weight".into(), Role::Embedding, 0, all_rows(&w.embed), h, None);
    if let Some(head) = &w.lm_head {
        p.mat("output.weight".into(), Role::Output, nl, all_rows(head), h, None);
    }
    p.floats("output_norm.weight".into(), vec![h], w.final_norm.clone());
    for (i, layer) in w.layers.iter().enumerate() {
        p.block(i, layer)?;
    }
    if let (Some(m), true) = (&w.mtp, n_mtp > 0) {
        // The head's own tensors live in its first block; the converter keeps
        // `fc` as is (ne {2H, H}: embedding half first, as ggml_concat(e, h)).
        let b = |s: &str| format!("blk.{nl}.nextn.{s}");
        p.mat(b("eh_proj.weight"), Role::Other, nl, all_rows(&m.fc), 2 * h, None);
        p.floats(b("enorm.weight"), vec![h], m.pre_fc_norm_embedding.clone());
        p.floats(b("hnorm.weight"), vec![h], m.pre_fc_norm_hidden.clone());
        p.floats(b("shared_head_norm.weight"), vec![h], m.norm.clone());
        for (j, layer) in m.layers.iter().enumerate() {
            p.block(nl + j, layer)?;
        }
    }
    Ok(p.out)
}

impl<'m> Planner<'m> {
    fn mat(
        &mut self,
        name: String,
        role: Role,
        block: usize,
        rows: Vec<(&'m Mat, usize)>,
        cols: usize,
        col_perm: Option<Vec<usize>>,
    ) {
        let ty = choose_type(self.ty, role, block, self.n_blocks, cols);
        let n = rows.len();
        self.out.push(Planned { name, ty, shape: vec![n, cols], src: Src::Rows { rows, col_perm } });
    }

    fn floats(&mut self, name: String, shape: Vec<usize>, v: Vec<f32>) {
        self.out.push(Planned { name, ty: GgmlType::F32, shape, src: Src::Floats(v) });
    }

    /// One decoder block as `blk.{i}.*` (main layer or MTP block alike).
    fn block(&mut self, i: usize, layer: &'m Layer) -> Result<()> {
        let h = self.model.config.hidden_size;
        let b = |s: &str| format!("blk.{i}.{s}");
        self.floats(b("attn_norm.weight"), vec![h], layer.input_norm.clone());
        self.floats(b("post_attention_norm.weight"), vec![h], layer.post_attn_norm.clone());
        match &layer.mixer {
            Mixer::Attention(a) => {
                let hd = self.model.config.head_dim;
                self.mat(b("attn_q.weight"), Role::Other, i, all_rows(&a.q_proj), h, None);
                self.mat(b("attn_k.weight"), Role::Other, i, all_rows(&a.k_proj), h, None);
                self.mat(b("attn_v.weight"), Role::AttnV, i, all_rows(&a.v_proj), h, None);
                self.mat(b("attn_output.weight"), Role::Other, i, all_rows(&a.o_proj), a.o_proj.cols, None);
                self.floats(b("attn_q_norm.weight"), vec![hd], a.q_norm.clone());
                self.floats(b("attn_k_norm.weight"), vec![hd], a.k_norm.clone());
            }
            Mixer::Gdn(g) => self.gdn(i, g)?,
        }
        match &layer.mlp {
            Mlp::Dense(d) => {
                self.mat(b("ffn_gate.weight"), Role::Other, i, all_rows(&d.gate), h, None);
                self.mat(b("ffn_up.weight"), Role::Other, i, all_rows(&d.up), h, None);
                self.mat(b("ffn_down.weight"), Role::FfnDown, i, all_rows(&d.down), d.down.cols, None);
            }
            Mlp::Moe(m) => {
                let c = &self.model.config;
                let (e, inter) = (c.num_experts, c.moe_intermediate_size);
                self.floats(b("ffn_gate_inp.weight"), vec![e, h], rows_f32(&m.router));
                let stack = |f: fn(&SwiGlu) -> &Mat| m.experts.iter().flat_map(|x| all_rows(f(x))).collect::<Vec<_>>();
                let t_gate = choose_type(self.ty, Role::Other, i, self.n_blocks, h);
                let t_down = choose_type(self.ty, Role::FfnDown, i, self.n_blocks, inter);
                let stacked = |name: String, ty: GgmlType, shape: Vec<usize>, rows| Planned {
                    name,
                    ty,
                    shape,
                    src: Src::Rows { rows, col_perm: None },
                };
                self.out.push(stacked(b("ffn_gate_exps.weight"), t_gate, vec![e, inter, h], stack(|x| &x.gate)));
                self.out.push(stacked(b("ffn_up_exps.weight"), t_gate, vec![e, inter, h], stack(|x| &x.up)));
                self.out.push(stacked(b("ffn_down_exps.weight"), t_down, vec![e, h, inter], stack(|x| &x.down)));
                self.mat(b("ffn_gate_shexp.weight"), Role::Other, i, all_rows(&m.shared.gate), h, None);
                self.mat(b("ffn_up_shexp.weight"), Role::Other, i, all_rows(&m.shared.up), h, None);
                self.mat(
                    b("ffn_down_shexp.weight"),
                    Role::FfnDown,
                    i,
                    all_rows(&m.shared.down),
                    m.shared.down.cols,
                    None,
                );
                // ne {H, 1}, as the converter writes it (HF `[1, H]`).
                self.floats(b("ffn_gate_inp_shexp.weight"), vec![1, h], rows_f32(&m.shared_gate));
            }
        }
        Ok(())
    }

    fn gdn(&mut self, i: usize, g: &'m qmoe_model::weights::Gdn) -> Result<()> {
        let (c, arch) = (&self.model.config, self.arch);
        let (h, hk, hv, dk, dv) = (
            c.hidden_size,
            c.linear_num_key_heads,
            c.linear_num_value_heads,
            c.linear_key_head_dim,
            c.linear_value_head_dim,
        );
        let r = hv / hk;
        let (kd, vd) = (c.key_dim(), c.value_dim());
        let b = |s: &str| format!("blk.{i}.{s}");
        // Value-head order: qwen35* files are tiled, qwen3next grouped.
        let tile = arch != "qwen3next" && g.head_map == HeadMap::Grouped;
        if arch == "qwen3next" && g.head_map == HeadMap::Tiled {
            return Err(RuntimeError::Export("cannot export tiled value heads as qwen3next".into()));
        }
        let head = |n: usize| if tile { tiled_from_grouped(n, hk, r) } else { n };
        // Channel order of [q | k | v] after the value-head reorder.
        let chan =
            |ch: usize| if ch < 2 * kd { ch } else { 2 * kd + head((ch - 2 * kd) / dv) * dv + (ch - 2 * kd) % dv };
        let (qkv_rows, z_rows): (RowSources, RowSources) = match &g.proj {
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
        self.mat(b("attn_qkv.weight"), Role::AttnV, i, qkv_rows, h, None);
        self.mat(b("attn_gate.weight"), Role::Other, i, z_rows, h, None);
        match &g.proj {
            GdnProj::Separate { b: wb, a: wa, .. } if arch != "qwen3next" => {
                self.mat(b("ssm_beta.weight"), Role::Other, i, (0..hv).map(|n| (wb, head(n))).collect(), h, None);
                self.mat(b("ssm_alpha.weight"), Role::Other, i, (0..hv).map(|n| (wa, head(n))).collect(), h, None);
            }
            GdnProj::Separate { b: wb, a: wa, .. } => {
                // qwen3next keeps [b_g (r) | a_g (r)] grouped per key head.
                let rows = (0..2 * hv).map(|x| {
                    let (g, j) = (x / (2 * r), x % (2 * r));
                    if j < r {
                        (wb, g * r + j)
                    } else {
                        (wa, g * r + j - r)
                    }
                });
                self.mat(b("ssm_ba.weight"), Role::Other, i, rows.collect(), h, None);
            }
            GdnProj::SplitGroupedBa { ba, .. } | GdnProj::FusedGrouped { ba, .. } => {
                if arch != "qwen3next" {
                    return Err(RuntimeError::Export(format!("layer {i}: grouped ssm_ba only exists in qwen3next")));
                }
                self.mat(b("ssm_ba.weight"), Role::Other, i, all_rows(ba), h, None);
            }
        }
        let k = c.linear_conv_kernel_dim;
        let conv: Vec<f32> =
            (0..2 * kd + vd).flat_map(|ch| g.conv[chan(ch) * k..(chan(ch) + 1) * k].to_vec()).collect();
        self.floats(b("ssm_conv1d.weight"), vec![2 * kd + vd, k], conv);
        self.floats(b("ssm_dt.bias"), vec![hv], (0..hv).map(|n| g.dt_bias[head(n)]).collect());
        self.floats(b("ssm_a"), vec![hv], (0..hv).map(|n| g.a_neg_exp[head(n)]).collect());
        self.floats(b("ssm_norm.weight"), vec![dv], g.norm.clone());
        let col_perm: Option<Vec<usize>> = tile.then(|| (0..vd).map(|ch| head(ch / dv) * dv + ch % dv).collect());
        self.mat(b("ssm_out.weight"), Role::Other, i, all_rows(&g.out_proj), vd, col_perm);
        Ok(())
    }
}

/// A small matrix widened to f32 (router weights are stored F32 in GGUF).
fn rows_f32(m: &Mat) -> Vec<f32> {
    let mut v = vec![0.0; m.rows * m.cols];
    for (r, row) in v.chunks_exact_mut(m.cols).enumerate() {
        m.view().row_to_f32(r, row);
    }
    v
}
