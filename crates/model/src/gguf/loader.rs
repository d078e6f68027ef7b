//! GGUF tensors to typed [`Weights`] (spec 5.3, 5.4).
//!
//! What the llama.cpp converter did, and how it is honoured here:
//! * zero-centred norms were stored as `1 + w` (F32): used as stored;
//! * `ssm_a` holds `-exp(A_log)`: used directly as the decay factor;
//! * `ssm_conv1d` was squeezed to ne `{K, C}`, i.e. row-major `[C, K]`;
//! * qwen35 / qwen35moe files reorder value heads to the tiled order, so
//!   value head `n` reads key head `n mod Hk` ([`HeadMap::Tiled`]); qwen3next
//!   files keep the grouped order;
//! * qwen3next: current files split `attn_qkv` / `attn_gate` but keep
//!   `ssm_ba` grouped per key head; legacy files hold the grouped `ssm_in`;
//! * experts are stacks `ffn_{gate,up,down}_exps` (or a fused
//!   `ffn_gate_up_exps`) split into per-expert views; weights stay in their
//!   ggml type and are decoded block by block inside the matmul;
//! * `nextn_predict_layers` MTP blocks follow the main layers and load into
//!   [`Weights::mtp`] (see [`Loader::mtp`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use qmoe_core::{DType, GgmlType};
use qmoe_formats::gguf::{GgufFile, GgufTensor};
use qmoe_kernels::gdn::HeadMap;
use qmoe_kernels::linear::MatRef;

use crate::config::{Arch, Config, LayerKind, MlpKind};
use crate::loader::{Category, GateReport, Problem, TensorUse};
use crate::weights::*;

/// What the GGUF loader decided, for `inspect`.
#[derive(Clone, Debug)]
pub struct GgufConventions {
    pub arch: String,
    pub head_map: HeadMap,
    pub gdn_proj: &'static str,
    pub experts: &'static str,
    pub tensors: BTreeMap<String, Option<TensorUse>>,
    pub ignored: BTreeMap<String, usize>,
    /// `nextn_predict_layers > 0`: the nextn blocks were loaded into [`Weights::mtp`].
    pub mtp_present: bool,
    pub mtp_layers: usize,
}

pub fn load_gguf_weights(file: &GgufFile, cfg: &Config, arch: &str) -> Result<(Weights, GgufConventions), GateReport> {
    let head_map = if arch == "qwen3next" { HeadMap::Grouped } else { HeadMap::Tiled };
    let mut l = Loader { file, cfg, head_map, used: BTreeMap::new(), problems: Vec::new(), gdn_proj: "", experts: "" };
    let built = l.build();
    let mtp = l.mtp();
    let mut ignored = BTreeMap::new();
    let mut unexpected = Vec::new();
    for t in file.tensors() {
        if l.used.contains_key(&t.name) {
            continue;
        }
        if t.name == "output.weight" && cfg.tie_word_embeddings {
            *ignored.entry("tied output copy".to_string()).or_insert(0) += 1;
        } else {
            // Blocks past the main layers that `nextn_predict_layers` does
            // not announce, or nextn tensors qmoe does not read
            // (`nextn.embed_tokens`, `nextn.shared_head_head`), land here.
            unexpected.push(t.name.clone());
        }
    }
    let dir = file.path().to_path_buf();
    match (built, mtp) {
        (Some(mut w), Ok(mtp)) if l.problems.is_empty() && unexpected.is_empty() => {
            let mtp_layers = mtp.as_ref().map_or(0, |m| m.layers.len());
            w.mtp = mtp;
            Ok((
                w,
                GgufConventions {
                    arch: arch.to_string(),
                    head_map,
                    gdn_proj: l.gdn_proj,
                    experts: l.experts,
                    tensors: l.used,
                    ignored,
                    mtp_present: mtp_layers > 0,
                    mtp_layers,
                },
            ))
        }
        _ => Err(GateReport { dir, problems: l.problems, unexpected, ignored }),
    }
}

struct Loader<'a> {
    file: &'a GgufFile,
    cfg: &'a Config,
    head_map: HeadMap,
    used: BTreeMap<String, Option<TensorUse>>,
    problems: Vec<Problem>,
    gdn_proj: &'static str,
    experts: &'static str,
}

fn blk(i: usize, rest: &str) -> String {
    format!("blk.{i}.{rest}")
}

impl<'a> Loader<'a> {
    fn path(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }

    fn take(&mut self, name: &str, what: &str) -> Option<&'a GgufTensor> {
        match self.file.tensor(name) {
            Some(t) => Some(t),
            None => {
                self.problems.push(Problem::Missing { name: name.to_string(), what: what.to_string() });
                None
            }
        }
    }

    fn invalid(&mut self, name: &str, reason: String) {
        self.problems.push(Problem::Invalid { name: name.to_string(), reason });
    }

    fn shape_ok(&mut self, t: &GgufTensor, expected: &[usize]) -> bool {
        let found = t.shape();
        if found == expected {
            return true;
        }
        self.problems.push(Problem::Shape {
            name: t.name.clone(),
            file: self.path(),
            expected: expected.to_vec(),
            found,
        });
        false
    }

    /// A weight `[n * rows, cols]` (a stack when `n > 1`) in any ggml type.
    fn matrix(&mut self, name: &str, n: usize, rows: usize, cols: usize, cat: Category) -> Option<Mat> {
        let t = self.take(name, cat.name())?;
        let shape: Vec<usize> = if n > 1 { vec![n, rows, cols] } else { vec![rows, cols] };
        // A [1, H] weight may be stored 1-D (ffn_gate_inp_shexp is ne {H}).
        let flat_ok = n == 1 && rows == 1 && t.shape() == [cols];
        if !flat_ok && !self.shape_ok(t, &shape) {
            return None;
        }
        let ty = match t.ggml_type() {
            Ok(ty) => ty,
            Err(e) => {
                self.invalid(name, e.to_string());
                return None;
            }
        };
        let data = t.data().ok()?.clone();
        let storage = match ty {
            GgmlType::F32 => Storage::Float(DType::F32),
            GgmlType::F16 => Storage::Float(DType::F16),
            GgmlType::BF16 => Storage::Float(DType::BF16),
            q => Storage::Ggml(q),
        };
        let m = Mat { rows: n * rows, cols, data, storage };
        let check = match &m.storage {
            Storage::Ggml(q) => MatRef::ggml(*q, m.rows, m.cols, m.data.bytes()).map(|_| ()).map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        if let Err(e) = check {
            self.invalid(name, e);
            return None;
        }
        self.used.insert(name.to_string(), Some(TensorUse { category: cat, storage: m.describe(), bytes: m.bytes() }));
        Some(m)
    }

    fn linear(&mut self, name: &str, rows: usize, cols: usize, cat: Category) -> Option<Mat> {
        self.matrix(name, 1, rows, cols, cat)
    }

    /// A float 1-D tensor as f32 (norms, `ssm_a`, `ssm_dt.bias`), or a
    /// float 2-D tensor flattened (`ssm_conv1d`).
    fn floats(&mut self, name: &str, shape: &[usize], cat: Category) -> Option<Vec<f32>> {
        let t = self.take(name, cat.name())?;
        if !self.shape_ok(t, shape) {
            return None;
        }
        match t.to_f32_vec() {
            Ok(v) => {
                self.used.insert(
                    name.to_string(),
                    Some(TensorUse { category: cat, storage: t.type_name(), bytes: t.byte_len() }),
                );
                Some(v)
            }
            Err(e) => {
                self.invalid(name, e.to_string());
                None
            }
        }
    }

    fn build(&mut self) -> Option<Weights> {
        let (cfg, h) = (self.cfg, self.cfg.hidden_size);
        let embed = self.linear("token_embd.weight", cfg.vocab_size, h, Category::Embedding);
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(self.linear("output.weight", cfg.vocab_size, h, Category::Head))
        };
        let final_norm = self.floats("output_norm.weight", &[h], Category::Norms);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let input_norm = self.floats(&blk(i, "attn_norm.weight"), &[h], Category::Norms);
            let post_attn_norm = self.floats(&blk(i, "post_attention_norm.weight"), &[h], Category::Norms);
            let mixer = match cfg.layer_types[i] {
                LayerKind::FullAttention => self.attention(i).map(Mixer::Attention),
                LayerKind::LinearAttention => self.gdn(i).map(Mixer::Gdn),
            };
            let mlp = match cfg.mlp_kinds[i] {
                MlpKind::Dense => self.dense(i).map(Mlp::Dense),
                MlpKind::Moe => self.moe(i).map(Mlp::Moe),
            };
            let layer = (|| {
                Some(Layer { input_norm: input_norm?, post_attn_norm: post_attn_norm?, mixer: mixer?, mlp: mlp? })
            })();
            layers.push(layer);
        }
        let layers = layers.into_iter().collect::<Option<Vec<_>>>()?;
        let lm_head = match lm_head {
            None => None,
            Some(m) => Some(m?),
        };
        Some(Weights { embed: embed?, lm_head, final_norm: final_norm?, layers, mtp: None })
    }

    /// The nextn (MTP) blocks `blk.{L+j}` after the `L` main layers, as the
    /// converter writes them (spec 5.3): each a full-attention block with the
    /// trunk's MLP kind; the first also holds `nextn.eh_proj` (the HF `fc`,
    /// ne `{2H, H}` = `[H, 2H]`, embedding half first), `nextn.enorm` (the
    /// embedding's norm), `nextn.hnorm` (the hidden state's) and
    /// `nextn.shared_head_norm`, all norms stored `1 + w`. `Ok(None)` when the
    /// file announces no nextn layers; `Err(())` when problems were recorded.
    fn mtp(&mut self) -> Result<Option<Mtp>, ()> {
        let (cfg, h, nl) = (self.cfg, self.cfg.hidden_size, self.cfg.num_hidden_layers);
        let n = cfg.mtp_num_hidden_layers;
        if n == 0 {
            return Ok(None);
        }
        let cat = Category::Mtp;
        let fc = self.linear(&blk(nl, "nextn.eh_proj.weight"), h, 2 * h, cat);
        let enorm = self.floats(&blk(nl, "nextn.enorm.weight"), &[h], cat);
        let hnorm = self.floats(&blk(nl, "nextn.hnorm.weight"), &[h], cat);
        let norm = self.floats(&blk(nl, "nextn.shared_head_norm.weight"), &[h], cat);
        let layers: Vec<Option<Layer>> = (nl..nl + n)
            .map(|i| {
                let input_norm = self.floats(&blk(i, "attn_norm.weight"), &[h], cat);
                let post_attn_norm = self.floats(&blk(i, "post_attention_norm.weight"), &[h], cat);
                let mixer = self.attention(i).map(Mixer::Attention);
                let mlp = match cfg.arch {
                    Arch::Qwen35 => self.dense(i).map(Mlp::Dense),
                    Arch::Qwen35Moe | Arch::Qwen3Next => self.moe(i).map(Mlp::Moe),
                };
                Some(Layer { input_norm: input_norm?, post_attn_norm: post_attn_norm?, mixer: mixer?, mlp: mlp? })
            })
            .collect();
        // Byte accounting: the whole block is the MTP head.
        for (name, u) in self.used.iter_mut() {
            let layer =
                name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|x| x.parse::<usize>().ok());
            if let (Some(i), Some(u)) = (layer, u.as_mut()) {
                if i >= nl {
                    u.category = cat;
                }
            }
        }
        let head = (|| {
            Some(Mtp {
                fc: fc?,
                pre_fc_norm_embedding: enorm?,
                pre_fc_norm_hidden: hnorm?,
                norm: norm?,
                layers: layers.into_iter().collect::<Option<Vec<_>>>()?,
            })
        })();
        head.map(Some).ok_or(())
    }

    fn attention(&mut self, i: usize) -> Option<Attention> {
        let c = self.cfg;
        let (h, nh, nkv, hd) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let cat = Category::Attention;
        let q = self.linear(&blk(i, "attn_q.weight"), nh * 2 * hd, h, cat);
        let k = self.linear(&blk(i, "attn_k.weight"), nkv * hd, h, cat);
        let v = self.linear(&blk(i, "attn_v.weight"), nkv * hd, h, cat);
        let o = self.linear(&blk(i, "attn_output.weight"), h, nh * hd, cat);
        let qn = self.floats(&blk(i, "attn_q_norm.weight"), &[hd], Category::Norms);
        let kn = self.floats(&blk(i, "attn_k_norm.weight"), &[hd], Category::Norms);
        Some(Attention { q_proj: q?, k_proj: k?, v_proj: v?, o_proj: o?, q_norm: qn?, k_norm: kn? })
    }

    fn gdn(&mut self, i: usize) -> Option<Gdn> {
        let c = self.cfg;
        let (h, hv, dv, k) =
            (c.hidden_size, c.linear_num_value_heads, c.linear_value_head_dim, c.linear_conv_kernel_dim);
        let (kd, vd, cd) = (c.key_dim(), c.value_dim(), c.conv_dim());
        let cat = Category::DeltaNet;
        let proj = if self.file.tensor(&blk(i, "ssm_in.weight")).is_some() {
            self.gdn_proj = "legacy fused ssm_in (grouped per key head) + ssm_ba, un-grouped after the matmul";
            let qkvz = self.linear(&blk(i, "ssm_in.weight"), 2 * kd + 2 * vd, h, cat);
            let ba = self.linear(&blk(i, "ssm_ba.weight"), 2 * hv, h, cat);
            GdnProj::FusedGrouped { qkvz: qkvz?, ba: ba? }
        } else if self.file.tensor(&blk(i, "ssm_ba.weight")).is_some() {
            self.gdn_proj = "attn_qkv + attn_gate, ssm_ba grouped per key head";
            let qkv = self.linear(&blk(i, "attn_qkv.weight"), cd, h, cat);
            let z = self.linear(&blk(i, "attn_gate.weight"), vd, h, cat);
            let ba = self.linear(&blk(i, "ssm_ba.weight"), 2 * hv, h, cat);
            GdnProj::SplitGroupedBa { qkv: qkv?, z: z?, ba: ba? }
        } else {
            self.gdn_proj = "attn_qkv + attn_gate + ssm_beta + ssm_alpha";
            let qkv = self.linear(&blk(i, "attn_qkv.weight"), cd, h, cat);
            let z = self.linear(&blk(i, "attn_gate.weight"), vd, h, cat);
            let b = self.linear(&blk(i, "ssm_beta.weight"), hv, h, cat);
            let a = self.linear(&blk(i, "ssm_alpha.weight"), hv, h, cat);
            GdnProj::Separate { qkv: qkv?, z: z?, b: b?, a: a? }
        };
        let conv = self.floats(&blk(i, "ssm_conv1d.weight"), &[cd, k], cat);
        let a_neg_exp = self.floats(&blk(i, "ssm_a"), &[hv], cat);
        let dt_bias = self.floats(&blk(i, "ssm_dt.bias"), &[hv], cat);
        let norm = self.floats(&blk(i, "ssm_norm.weight"), &[dv], Category::Norms);
        let out_proj = self.linear(&blk(i, "ssm_out.weight"), h, vd, cat);
        let a_neg_exp = a_neg_exp?;
        if let Some(bad) = a_neg_exp.iter().position(|&a| a.is_nan() || a > 0.0) {
            self.invalid(
                &blk(i, "ssm_a"),
                format!("must hold -exp(A_log) <= 0, found {} at head {bad}", a_neg_exp[bad]),
            );
            return None;
        }
        Some(Gdn {
            proj,
            conv: conv?,
            a_neg_exp,
            dt_bias: dt_bias?,
            norm: norm?,
            out_proj: out_proj?,
            head_map: self.head_map,
        })
    }

    fn dense(&mut self, i: usize) -> Option<SwiGlu> {
        let (h, f) = (self.cfg.hidden_size, self.cfg.intermediate_size.unwrap_or(0));
        let cat = Category::DenseMlp;
        let gate = self.linear(&blk(i, "ffn_gate.weight"), f, h, cat);
        let up = self.linear(&blk(i, "ffn_up.weight"), f, h, cat);
        let down = self.linear(&blk(i, "ffn_down.weight"), h, f, cat);
        Some(SwiGlu { gate: gate?, up: up?, down: down? })
    }

    fn moe(&mut self, i: usize) -> Option<Moe> {
        let c = self.cfg;
        let (h, e, inter, is) =
            (c.hidden_size, c.num_experts, c.moe_intermediate_size, c.shared_expert_intermediate_size);
        let router = self.linear(&blk(i, "ffn_gate_inp.weight"), e, h, Category::Router);
        let cat = Category::Experts;
        let (gate_up, up) = if self.file.tensor(&blk(i, "ffn_gate_up_exps.weight")).is_some() {
            self.experts = "fused ffn_gate_up_exps stack (gate rows first) + ffn_down_exps, per-expert views";
            (self.matrix(&blk(i, "ffn_gate_up_exps.weight"), e, 2 * inter, h, cat), None)
        } else {
            self.experts = "ffn_{gate,up,down}_exps stacks, per-expert views";
            let g = self.matrix(&blk(i, "ffn_gate_exps.weight"), e, inter, h, cat);
            let u = self.matrix(&blk(i, "ffn_up_exps.weight"), e, inter, h, cat);
            (g, Some(u))
        };
        let down = self.matrix(&blk(i, "ffn_down_exps.weight"), e, h, inter, cat);
        let sg = self.linear(&blk(i, "ffn_gate_shexp.weight"), is, h, Category::SharedExpert);
        let su = self.linear(&blk(i, "ffn_up_shexp.weight"), is, h, Category::SharedExpert);
        let sd = self.linear(&blk(i, "ffn_down_shexp.weight"), h, is, Category::SharedExpert);
        let shared_gate = self.linear(&blk(i, "ffn_gate_inp_shexp.weight"), 1, h, Category::Router);
        let (gate_up, down) = (gate_up?, down?);
        let up = match up {
            Some(u) => Some(u?),
            None => None,
        };
        let experts = split_experts(&gate_up, up.as_ref(), &down, e, inter, h);
        let experts = match experts {
            Ok(v) => v,
            Err(reason) => {
                self.invalid(&blk(i, "ffn_*_exps"), reason);
                return None;
            }
        };
        Some(Moe {
            router: router?,
            experts,
            shared: SwiGlu { gate: sg?, up: su?, down: sd? },
            shared_gate: shared_gate?,
        })
    }
}
