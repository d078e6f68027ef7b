//! From an opened checkpoint and its config to typed [`Weights`].
//!
//! The loader decides every dialect question once, records the answer in
//! [`Conventions`] (so `qmoe inspect` can show it), checks every shape
//! against the config, and refuses tensors it cannot account for: nothing is
//! loaded half-way or silently dropped.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use qmoe_core::DType;
use qmoe_formats::{Checkpoint, TensorInfo};

use crate::config::{Config, LayerKind, MlpKind};
use crate::error::{ModelError, Result};
use crate::names::{self, attn, gdn, mlp, moe};
use crate::weights::*;

/// How the checkpoint stores zero-centred RMSNorm weights (spec 2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormStorage {
    /// HF raw: stored `w`, the multiplier is `1 + w` (added in f32 at load).
    ZeroCentred,
    /// MLX sanitized / GGUF: `1 + w` already stored; used as is.
    Effective,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertLayout {
    /// `mlp.experts.gate_up_proj [E, 2I, H]` + `down_proj [E, H, I]`.
    Fused,
    /// `mlp.experts.{e}.{gate,up,down}_proj.weight`.
    PerExpert,
    /// MLX `mlp.switch_mlp.{gate,up,down}_proj.weight` stacks.
    SwitchMlp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GdnProjLayout {
    Separate,
    FusedGrouped,
}

/// Every convention the loader applied, with the evidence for it.
#[derive(Clone, Debug)]
pub struct Conventions {
    pub trunk_prefix: String,
    /// `None` when the head is tied to the embeddings.
    pub lm_head: Option<String>,
    pub norms: NormStorage,
    pub norms_reason: String,
    pub experts: Option<ExpertLayout>,
    pub gdn_proj: GdnProjLayout,
    /// Ignored tensors by group (`vision`, `mtp`, `activation_scale`): count.
    pub ignored: BTreeMap<String, usize>,
    pub mtp_present: bool,
    /// Bytes of weights by storage type.
    pub bytes_by_dtype: BTreeMap<String, usize>,
}

pub fn load_weights(ckpt: &Checkpoint, cfg: &Config) -> Result<(Weights, Conventions)> {
    let prefix = names::TRUNK_PREFIXES
        .iter()
        .find(|p| ckpt.get(&format!("{p}{}", names::EMBED)).is_some())
        .copied()
        .ok_or_else(|| ModelError::MissingTensor {
            dir: ckpt.dir().to_path_buf(),
            name: format!("{{model.,model.language_model.,language_model.model.}}{}", names::EMBED),
            what: "the token embeddings".into(),
        })?;
    let mut l = Loader { ckpt, cfg, prefix, used: HashSet::new() };
    let (norms, norms_reason) = l.detect_norm_storage()?;
    let h = cfg.hidden_size;

    let embed = l.mat(names::EMBED, cfg.vocab_size, h, "the token embeddings")?;
    let head_name = names::LM_HEAD_NAMES.iter().find(|n| ckpt.get(n).is_some()).map(|s| s.to_string());
    let lm_head = if cfg.tie_word_embeddings {
        // A tied checkpoint may still carry a copy of the head; it is not used.
        if let Some(n) = &head_name {
            l.used.insert(n.clone());
        }
        None
    } else {
        let name = head_name.clone().ok_or_else(|| ModelError::MissingTensor {
            dir: ckpt.dir().to_path_buf(),
            name: names::LM_HEAD_NAMES[0].into(),
            what: "the LM head (tie_word_embeddings is false)".into(),
        })?;
        Some(l.mat_abs(&name, cfg.vocab_size, h, "the LM head")?)
    };
    let final_norm = l.norm(names::FINAL_NORM, h, norms)?;

    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let mut expert_layout = None;
    let mut gdn_layout = GdnProjLayout::Separate;
    for i in 0..cfg.num_hidden_layers {
        let input_norm = l.norm(&names::layer(i, names::INPUT_NORM), h, norms)?;
        let post_attn_norm = l.norm(&names::layer(i, names::POST_ATTN_NORM), h, norms)?;
        let mixer = match cfg.layer_types[i] {
            LayerKind::FullAttention => Mixer::Attention(l.attention(i, norms)?),
            LayerKind::LinearAttention => {
                let g = l.gdn(i)?;
                if matches!(g.proj, GdnProj::FusedGrouped { .. }) {
                    gdn_layout = GdnProjLayout::FusedGrouped;
                }
                Mixer::Gdn(g)
            }
        };
        let mlp = match cfg.mlp_kinds[i] {
            MlpKind::Dense => Mlp::Dense(l.dense_mlp(i)?),
            MlpKind::Moe => {
                let (m, layout) = l.moe(i)?;
                expert_layout = Some(layout);
                Mlp::Moe(m)
            }
        };
        layers.push(Layer { input_norm, post_attn_norm, mixer, mlp });
    }

    let (ignored, mtp_present) = l.check_leftovers()?;
    let mut bytes_by_dtype = BTreeMap::new();
    for name in &l.used {
        if let Some(t) = ckpt.get(name) {
            *bytes_by_dtype.entry(t.dtype.name().to_string()).or_insert(0) += t.data.bytes().len();
        }
    }
    let conventions = Conventions {
        trunk_prefix: prefix.to_string(),
        lm_head: if cfg.tie_word_embeddings { None } else { head_name },
        norms,
        norms_reason,
        experts: expert_layout,
        gdn_proj: gdn_layout,
        ignored,
        mtp_present,
        bytes_by_dtype,
    };
    Ok((Weights { embed, lm_head, final_norm, layers }, conventions))
}

struct Loader<'a> {
    ckpt: &'a Checkpoint,
    cfg: &'a Config,
    prefix: &'static str,
    used: HashSet<String>,
}

impl<'a> Loader<'a> {
    fn dir(&self) -> &Path {
        self.ckpt.dir()
    }

    fn get_abs(&mut self, full: &str, what: &str) -> Result<&'a TensorInfo> {
        let t = self.ckpt.get(full).ok_or_else(|| ModelError::MissingTensor {
            dir: self.dir().to_path_buf(),
            name: full.to_string(),
            what: what.to_string(),
        })?;
        self.used.insert(full.to_string());
        Ok(t)
    }

    fn get(&mut self, rel: &str, what: &str) -> Result<&'a TensorInfo> {
        self.get_abs(&format!("{}{rel}", self.prefix), what)
    }

    fn has(&self, rel: &str) -> bool {
        self.ckpt.get(&format!("{}{rel}", self.prefix)).is_some()
    }

    fn mat(&mut self, rel: &str, rows: usize, cols: usize, what: &str) -> Result<Mat> {
        let full = format!("{}{rel}", self.prefix);
        self.mat_abs(&full, rows, cols, what)
    }

    fn mat_abs(&mut self, full: &str, rows: usize, cols: usize, what: &str) -> Result<Mat> {
        let t = self.get_abs(full, what)?;
        expect_shape(t, &[rows, cols])?;
        expect_float(t)?;
        Ok(Mat { dtype: t.dtype, rows, cols, data: t.data.clone() })
    }

    /// A 1-D float tensor of `n` values, widened to f32.
    fn vector(&mut self, rel: &str, n: usize, what: &str) -> Result<Vec<f32>> {
        let t = self.get(rel, what)?;
        expect_shape(t, &[n])?;
        expect_float(t)?;
        Ok(qmoe_core::dtype::to_f32_vec(t.dtype, t.data.bytes()))
    }

    /// A zero-centred norm, returned as its effective multiplier.
    fn norm(&mut self, rel: &str, n: usize, storage: NormStorage) -> Result<Vec<f32>> {
        let mut w = self.vector(rel, n, "an RMSNorm weight")?;
        if storage == NormStorage::ZeroCentred {
            w.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(w)
    }

    /// Spec 2.2 / 7: the conv1d layout tells HF raw (`[C,1,K]`, norms stored
    /// as `w`) from MLX sanitized (`[C,K,1]`, norms stored as `1+w`). MTP or
    /// other tensors never take part in the decision.
    fn detect_norm_storage(&self) -> Result<(NormStorage, String)> {
        let (c, k) = (self.cfg.conv_dim(), self.cfg.linear_conv_kernel_dim);
        let i = self
            .cfg
            .layer_types
            .iter()
            .position(|t| *t == LayerKind::LinearAttention)
            .ok_or_else(|| ModelError::Unsupported {
                dir: self.dir().to_path_buf(),
                what: "config has no linear_attention layer to decide the norm convention from".into(),
            })?;
        let name = format!("{}{}", self.prefix, names::layer(i, gdn::CONV));
        let t = self.ckpt.get(&name).ok_or_else(|| ModelError::MissingTensor {
            dir: self.dir().to_path_buf(),
            name: name.clone(),
            what: "the GDN causal conv (also decides the norm convention)".into(),
        })?;
        if t.shape == [c, 1, k] {
            Ok((NormStorage::ZeroCentred, format!("HF raw layout: `{name}` is [C,1,K] = {:?}; norms applied as 1 + w", t.shape)))
        } else if t.shape == [c, k, 1] {
            Ok((NormStorage::Effective, format!("MLX sanitized layout: `{name}` is [C,K,1] = {:?}; norms already stored as 1 + w", t.shape)))
        } else {
            Err(ModelError::Shape { file: t.file.to_path_buf(), name, expected: vec![c, 1, k], found: t.shape.clone() })
        }
    }

    fn attention(&mut self, i: usize, norms: NormStorage) -> Result<Attention> {
        let c = self.cfg;
        let (h, nh, nkv, hd) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let what = "a full-attention layer";
        Ok(Attention {
            q_proj: self.mat(&names::layer(i, attn::Q), nh * 2 * hd, h, what)?,
            k_proj: self.mat(&names::layer(i, attn::K), nkv * hd, h, what)?,
            v_proj: self.mat(&names::layer(i, attn::V), nkv * hd, h, what)?,
            o_proj: self.mat(&names::layer(i, attn::O), h, nh * hd, what)?,
            q_norm: self.norm(&names::layer(i, attn::Q_NORM), hd, norms)?,
            k_norm: self.norm(&names::layer(i, attn::K_NORM), hd, norms)?,
        })
    }

    fn gdn(&mut self, i: usize) -> Result<Gdn> {
        let c = self.cfg;
        let (h, hv, dv) = (c.hidden_size, c.linear_num_value_heads, c.linear_value_head_dim);
        let (kd, vd, cd, k) = (c.key_dim(), c.value_dim(), c.conv_dim(), c.linear_conv_kernel_dim);
        let what = "a Gated DeltaNet layer";
        let proj = if self.has(&names::layer(i, gdn::QKVZ)) {
            GdnProj::FusedGrouped {
                qkvz: self.mat(&names::layer(i, gdn::QKVZ), 2 * kd + 2 * vd, h, what)?,
                ba: self.mat(&names::layer(i, gdn::BA), 2 * hv, h, what)?,
            }
        } else {
            GdnProj::Separate {
                qkv: self.mat(&names::layer(i, gdn::QKV), cd, h, what)?,
                z: self.mat(&names::layer(i, gdn::Z), vd, h, what)?,
                b: self.mat(&names::layer(i, gdn::B), hv, h, what)?,
                a: self.mat(&names::layer(i, gdn::A), hv, h, what)?,
            }
        };
        let conv_t = self.get(&names::layer(i, gdn::CONV), what)?;
        if conv_t.shape != [cd, 1, k] && conv_t.shape != [cd, k, 1] {
            return Err(shape_err(conv_t, &[cd, 1, k]));
        }
        expect_float(conv_t)?;
        // [C,1,K] and [C,K,1] hold the same values in the same order: w[c][j].
        let conv = qmoe_core::dtype::to_f32_vec(conv_t.dtype, conv_t.data.bytes());
        let a_log = self.vector(&names::layer(i, gdn::A_LOG), hv, what)?;
        Ok(Gdn {
            proj,
            conv,
            a_neg_exp: a_log.iter().map(|a| -a.exp()).collect(),
            dt_bias: self.vector(&names::layer(i, gdn::DT_BIAS), hv, what)?,
            norm: self.vector(&names::layer(i, gdn::NORM), dv, what)?,
            out_proj: self.mat(&names::layer(i, gdn::OUT), h, vd, what)?,
        })
    }

    fn dense_mlp(&mut self, i: usize) -> Result<SwiGlu> {
        let (h, f) = (self.cfg.hidden_size, self.cfg.intermediate_size.unwrap_or(0));
        let what = "a dense MLP layer";
        Ok(SwiGlu {
            gate: self.mat(&names::layer(i, mlp::GATE), f, h, what)?,
            up: self.mat(&names::layer(i, mlp::UP), f, h, what)?,
            down: self.mat(&names::layer(i, mlp::DOWN), h, f, what)?,
        })
    }

    fn moe(&mut self, i: usize) -> Result<(Moe, ExpertLayout)> {
        let c = self.cfg;
        let (h, e, inter, is) = (c.hidden_size, c.num_experts, c.moe_intermediate_size, c.shared_expert_intermediate_size);
        let what = "a MoE layer";
        let router = self.mat(&names::layer(i, moe::ROUTER), e, h, what)?;
        let (experts, layout) = if self.has(&names::layer(i, moe::FUSED_GATE_UP)) {
            (self.fused_experts(i)?, ExpertLayout::Fused)
        } else if self.has(&names::layer(i, moe::SWITCH_GATE)) {
            (self.switch_experts(i)?, ExpertLayout::SwitchMlp)
        } else {
            (self.per_expert(i)?, ExpertLayout::PerExpert)
        };
        let shared = SwiGlu {
            gate: self.mat(&names::layer(i, moe::SHARED_GATE_PROJ), is, h, what)?,
            up: self.mat(&names::layer(i, moe::SHARED_UP), is, h, what)?,
            down: self.mat(&names::layer(i, moe::SHARED_DOWN), h, is, what)?,
        };
        let shared_gate = self.mat(&names::layer(i, moe::SHARED_EXPERT_GATE), 1, h, what)?;
        let _ = inter;
        Ok((Moe { router, experts, shared, shared_gate }, layout))
    }

    /// Views into `gate_up_proj [E, 2I, H]` (gate rows first) and `down_proj [E, H, I]`.
    fn fused_experts(&mut self, i: usize) -> Result<Vec<SwiGlu>> {
        let (h, e, inter) = (self.cfg.hidden_size, self.cfg.num_experts, self.cfg.moe_intermediate_size);
        let gu = self.get(&names::layer(i, moe::FUSED_GATE_UP), "the fused experts")?;
        expect_shape(gu, &[e, 2 * inter, h])?;
        expect_float(gu)?;
        let dn = self.get(&names::layer(i, moe::FUSED_DOWN), "the fused experts")?;
        expect_shape(dn, &[e, h, inter])?;
        expect_float(dn)?;
        let block = inter * h * gu.dtype.size();
        let dblock = h * inter * dn.dtype.size();
        (0..e)
            .map(|x| {
                Ok(SwiGlu {
                    gate: slice_mat(gu, 2 * x * block, inter, h)?,
                    up: slice_mat(gu, (2 * x + 1) * block, inter, h)?,
                    down: slice_mat(dn, x * dblock, h, inter)?,
                })
            })
            .collect()
    }

    /// Views into MLX `switch_mlp` stacks `[E, I, H]`, `[E, I, H]`, `[E, H, I]`.
    fn switch_experts(&mut self, i: usize) -> Result<Vec<SwiGlu>> {
        let (h, e, inter) = (self.cfg.hidden_size, self.cfg.num_experts, self.cfg.moe_intermediate_size);
        let what = "the MLX expert stacks";
        let g = self.get(&names::layer(i, moe::SWITCH_GATE), what)?;
        let u = self.get(&names::layer(i, moe::SWITCH_UP), what)?;
        let d = self.get(&names::layer(i, moe::SWITCH_DOWN), what)?;
        for (t, s) in [(g, [e, inter, h]), (u, [e, inter, h]), (d, [e, h, inter])] {
            expect_shape(t, &s)?;
            expect_float(t)?;
        }
        (0..e)
            .map(|x| {
                Ok(SwiGlu {
                    gate: slice_mat(g, x * inter * h * g.dtype.size(), inter, h)?,
                    up: slice_mat(u, x * inter * h * u.dtype.size(), inter, h)?,
                    down: slice_mat(d, x * h * inter * d.dtype.size(), h, inter)?,
                })
            })
            .collect()
    }

    /// Per-expert tensors; the indices must be exactly `0..E` with all three
    /// projections each (spec 8.7), never silently short.
    fn per_expert(&mut self, i: usize) -> Result<Vec<SwiGlu>> {
        let (h, e, inter) = (self.cfg.hidden_size, self.cfg.num_experts, self.cfg.moe_intermediate_size);
        let layer_prefix = format!("{}{}", self.prefix, names::layer(i, moe::PER_EXPERT_PREFIX));
        let mut found: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for name in self.ckpt.names() {
            let Some(rest) = name.strip_prefix(&layer_prefix) else { continue };
            let mut parts = rest.splitn(2, '.');
            let (Some(idx), Some(tail)) = (parts.next(), parts.next()) else { continue };
            let Ok(idx) = idx.parse::<usize>() else { continue };
            let proj = match tail {
                "gate_proj.weight" => "gate_proj",
                "up_proj.weight" => "up_proj",
                "down_proj.weight" => "down_proj",
                _ => continue,
            };
            found.entry(proj).or_default().insert(idx);
        }
        if found.is_empty() {
            return Err(ModelError::MissingTensor {
                dir: self.dir().to_path_buf(),
                name: format!("{}{}", self.prefix, names::layer(i, moe::FUSED_GATE_UP)),
                what: "the routed experts (no fused, MLX switch_mlp or per-expert tensors found)".into(),
            });
        }
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            let have = found.get(proj).cloned().unwrap_or_default();
            let missing: Vec<usize> = (0..e).filter(|x| !have.contains(x)).collect();
            let extra: Vec<usize> = have.iter().copied().filter(|&x| x >= e).collect();
            if !missing.is_empty() || !extra.is_empty() {
                return Err(ModelError::Unsupported {
                    dir: self.dir().to_path_buf(),
                    what: format!(
                        "layer {i}: per-expert `{proj}` indices must be exactly 0..{e}; missing {missing:?}, unexpected {extra:?}"
                    ),
                });
            }
        }
        (0..e)
            .map(|x| {
                let what = "a routed expert";
                Ok(SwiGlu {
                    gate: self.mat(&names::layer(i, &moe::expert(x, "gate")), inter, h, what)?,
                    up: self.mat(&names::layer(i, &moe::expert(x, "up")), inter, h, what)?,
                    down: self.mat(&names::layer(i, &moe::expert(x, "down")), h, inter, what)?,
                })
            })
            .collect()
    }

    /// Everything not consumed must be a known-ignorable tensor.
    fn check_leftovers(&self) -> Result<(BTreeMap<String, usize>, bool)> {
        let mut ignored = BTreeMap::new();
        let mut unexpected = Vec::new();
        let mut mtp = false;
        for name in self.ckpt.names() {
            if self.used.contains(name) {
                continue;
            }
            let group = if name.starts_with("mtp.") {
                mtp = true;
                Some("mtp")
            } else if names::IGNORED_PREFIXES.iter().any(|p| name.starts_with(p)) {
                Some("vision")
            } else if names::IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                Some("activation_scale")
            } else {
                None
            };
            match group {
                Some(g) => *ignored.entry(g.to_string()).or_insert(0) += 1,
                None => unexpected.push(name.to_string()),
            }
        }
        if !unexpected.is_empty() {
            return Err(ModelError::Unexpected {
                dir: self.dir().to_path_buf(),
                count: unexpected.len(),
                examples: unexpected.into_iter().take(20).collect(),
            });
        }
        Ok((ignored, mtp))
    }
}

fn shape_err(t: &TensorInfo, expected: &[usize]) -> ModelError {
    ModelError::Shape { file: t.file.to_path_buf(), name: t.name.clone(), expected: expected.to_vec(), found: t.shape.clone() }
}

fn expect_shape(t: &TensorInfo, expected: &[usize]) -> Result<()> {
    if t.shape != expected {
        return Err(shape_err(t, expected));
    }
    Ok(())
}

fn expect_float(t: &TensorInfo) -> Result<()> {
    if t.dtype.is_float() {
        return Ok(());
    }
    let why = match t.dtype {
        DType::F8E4M3 => "is FP8: block-scaled FP8 checkpoints are not supported yet",
        DType::U32 => "looks like a packed quantized weight: MLX quantized checkpoints are not supported yet",
        _ => "is not a float type a weight can have",
    };
    Err(ModelError::DType { file: t.file.to_path_buf(), name: t.name.clone(), dtype: t.dtype.name().into(), why: why.into() })
}

fn slice_mat(t: &TensorInfo, offset: usize, rows: usize, cols: usize) -> Result<Mat> {
    let data = t.data.slice(offset, rows * cols * t.dtype.size())?;
    Ok(Mat { dtype: t.dtype, rows, cols, data })
}
