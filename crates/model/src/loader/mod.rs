//! From an opened checkpoint and its config to typed [`Weights`].
//!
//! The loader decides every dialect question once and records the answer in
//! [`Conventions`] (so `qmoe inspect` can show it). Then the tensor gate: it
//! walks the exact set of tensors the config implies, checks each name,
//! shape, dtype and quantization, and lists everything it could not account
//! for. One problem anywhere and nothing is returned: no model loads half-way.

mod gate;
mod mtp;
mod source;

use std::collections::{BTreeMap, BTreeSet};

use qmoe_formats::Checkpoint;
use qmoe_kernels::gdn::HeadMap;

pub use gate::{GateReport, Problem};
pub use source::{Category, TensorUse};

use crate::config::{Config, LayerKind, MlpKind};
use crate::error::{ModelError, Result};
use crate::names::{self, attn, gdn, mlp, moe};
use crate::quant::QuantScheme;
use crate::weights::*;
use source::Source;

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

/// The checkpoint-wide decisions, made before any tensor is read.
#[derive(Clone, Debug)]
pub struct Dialect {
    pub trunk_prefix: &'static str,
    pub norms: NormStorage,
    /// The evidence for `norms`.
    pub norms_reason: String,
    pub quant: QuantScheme,
}

impl Dialect {
    /// A one-line name for people.
    pub fn name(&self) -> &'static str {
        match (&self.quant, self.norms) {
            (QuantScheme::Fp8 { .. }, _) => "HF FP8 (E4M3, block-scaled)",
            (QuantScheme::Mlx { .. }, _) => "MLX affine-quantized (sanitized)",
            (QuantScheme::None, NormStorage::Effective) => "MLX sanitized (float)",
            (QuantScheme::None, NormStorage::ZeroCentred) => "HF safetensors (raw)",
        }
    }
}

/// How the MTP head was read.
#[derive(Clone, Debug)]
pub struct MtpConventions {
    /// `mtp.` or a nested spelling (see [`names::MTP_PREFIXES`]).
    pub prefix: &'static str,
    pub layers: usize,
    /// Where the block count came from (config or tensors).
    pub layers_from: &'static str,
}

/// Why MTP norms are always read as zero-centred `w` in safetensors
/// checkpoints, whatever the trunk's convention (spec 2.2): HF stores `w`,
/// and mlx-lm drops `mtp.*` before its `+1` pass, so MLX builds that keep the
/// head carry the raw HF values.
pub const MTP_NORMS: &str = "MTP norms stored as w (HF raw; mlx-lm never shifts mtp.*): applied as 1 + w";

/// Every convention the loader applied, with the evidence for it.
#[derive(Clone, Debug)]
pub struct Conventions {
    pub dialect: Dialect,
    /// `None` when the head is tied to the embeddings.
    pub lm_head: Option<String>,
    pub experts: Option<ExpertLayout>,
    pub gdn_proj: GdnProjLayout,
    /// Ignored tensors by group (`vision`, `activation_scale`): count.
    pub ignored: BTreeMap<String, usize>,
    /// Whether the checkpoint has MTP tensors (they are then loaded, or the gate fails).
    pub mtp_present: bool,
    /// The MTP head as loaded: `None` when the checkpoint has none.
    pub mtp: Option<MtpConventions>,
    /// Every tensor the model reads (weights and their scales), by name.
    pub tensors: BTreeMap<String, Option<TensorUse>>,
}

impl Conventions {
    /// Bytes of weights (with scales) by category.
    pub fn bytes_by_category(&self) -> BTreeMap<Category, usize> {
        let mut out = BTreeMap::new();
        for u in self.tensors.values().flatten() {
            *out.entry(u.category).or_insert(0) += u.bytes;
        }
        out
    }
}

/// Trunk prefix, norm convention and quantization scheme.
pub fn detect_dialect(ckpt: &Checkpoint, cfg: &Config) -> Result<Dialect> {
    let dir = ckpt.dir().to_path_buf();
    let trunk_prefix =
        names::TRUNK_PREFIXES.iter().find(|p| ckpt.contains(&format!("{p}{}", names::EMBED))).copied().ok_or_else(
            || ModelError::MissingTensor {
                dir: dir.clone(),
                name: format!("{{model.,model.language_model.,language_model.model.}}{}", names::EMBED),
                what: "the token embeddings".into(),
            },
        )?;
    let quant =
        QuantScheme::from_config(cfg.quantization.as_ref()).map_err(|what| ModelError::Unsupported { dir, what })?;
    let (norms, norms_reason) = detect_norm_storage(ckpt, cfg, trunk_prefix)?;
    Ok(Dialect { trunk_prefix, norms, norms_reason, quant })
}

pub fn load_weights(ckpt: &Checkpoint, cfg: &Config) -> Result<(Weights, Conventions)> {
    let dir = ckpt.dir().to_path_buf();
    let dialect = detect_dialect(ckpt, cfg)?;
    let source = Source {
        ckpt,
        prefix: dialect.trunk_prefix,
        scheme: dialect.quant.clone(),
        used: BTreeMap::new(),
        problems: Vec::new(),
    };
    let mut l = Loader { s: source, cfg, norms: dialect.norms };

    let built = l.build();
    let mtp = l.mtp();
    let (ignored, mtp_present, unexpected) = leftovers(ckpt, &l.s.used);
    let mtp_failed = matches!(mtp, Some((None, _)));
    if !l.s.problems.is_empty() || !unexpected.is_empty() || built.is_none() || mtp_failed {
        return Err(ModelError::Gate(Box::new(GateReport { dir, problems: l.s.problems, unexpected, ignored })));
    }
    let (mut weights, experts, gdn_proj) = built.expect("no problems recorded");
    let mtp = mtp.map(|(m, info)| {
        weights.mtp = m;
        info
    });
    let conventions = Conventions {
        lm_head: if cfg.tie_word_embeddings {
            None
        } else {
            names::LM_HEAD_NAMES.iter().find(|n| ckpt.contains(n)).map(|s| s.to_string())
        },
        dialect,
        experts,
        gdn_proj,
        ignored,
        mtp_present,
        mtp,
        tensors: l.s.used,
    };
    Ok((weights, conventions))
}

/// Spec 2.2 / 7: the conv1d layout tells HF raw (`[C,1,K]`, norms stored as
/// `w`) from MLX sanitized (`[C,K,1]`, norms stored as `1+w`). MTP or other
/// tensors never take part in the decision (spec 8.1).
fn detect_norm_storage(ckpt: &Checkpoint, cfg: &Config, prefix: &str) -> Result<(NormStorage, String)> {
    let (c, k) = (cfg.conv_dim(), cfg.linear_conv_kernel_dim);
    let dir = ckpt.dir().to_path_buf();
    let i = cfg.layer_types.iter().position(|t| *t == LayerKind::LinearAttention).ok_or_else(|| {
        ModelError::Unsupported {
            dir: dir.clone(),
            what: "config has no linear_attention layer to decide the norm convention from".into(),
        }
    })?;
    let name = format!("{prefix}{}", names::layer(i, gdn::CONV));
    let t = ckpt.get(&name).ok_or_else(|| ModelError::MissingTensor {
        dir,
        name: name.clone(),
        what: "the GDN causal conv (also decides the norm convention)".into(),
    })?;
    if t.shape == [c, 1, k] {
        Ok((
            NormStorage::ZeroCentred,
            format!("`{name}` is [C,1,K] = {:?} (HF layout): norms stored as w, applied as 1 + w", t.shape),
        ))
    } else if t.shape == [c, k, 1] {
        Ok((
            NormStorage::Effective,
            format!("`{name}` is [C,K,1] = {:?} (MLX sanitized): norms already stored as 1 + w", t.shape),
        ))
    } else {
        Err(ModelError::Shape { file: t.file.to_path_buf(), name, expected: vec![c, 1, k], found: t.shape.clone() })
    }
}

/// Sorts what the model did not read into ignorable groups and unexpected
/// names (an MTP tensor the head did not read is unexpected, not ignored).
fn leftovers(
    ckpt: &Checkpoint,
    used: &BTreeMap<String, Option<TensorUse>>,
) -> (BTreeMap<String, usize>, bool, Vec<String>) {
    let mut ignored = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mtp = ckpt.names().any(|n| names::MTP_PREFIXES.iter().any(|p| n.starts_with(p)));
    for name in ckpt.names().filter(|n| !used.contains_key(*n)) {
        let group = if names::IGNORED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            Some("vision")
        } else if names::IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            Some("activation_scale")
        } else if names::LM_HEAD_NAMES.contains(&name) {
            // A tied checkpoint may still carry a copy of the head.
            Some("tied lm_head copy")
        } else {
            None
        };
        match group {
            Some(g) => *ignored.entry(g.to_string()).or_insert(0) += 1,
            None => unexpected.push(name.to_string()),
        }
    }
    (ignored, mtp, unexpected)
}

struct Loader<'a> {
    s: Source<'a>,
    cfg: &'a Config,
    norms: NormStorage,
}

type Built = (Weights, Option<ExpertLayout>, GdnProjLayout);

impl<'a> Loader<'a> {
    /// Reads everything; `None` if anything failed (problems are recorded).
    /// Each builder evaluates all of its tensors before bailing out, so the
    /// gate sees every problem, not just the first.
    fn build(&mut self) -> Option<Built> {
        let (cfg, h) = (self.cfg, self.cfg.hidden_size);
        let embed = self.s.linear(names::EMBED, cfg.vocab_size, h, Category::Embedding);
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            match names::LM_HEAD_NAMES.iter().find(|n| self.s.ckpt.contains(n)) {
                Some(n) => Some(self.s.linear_abs(n, cfg.vocab_size, h, Category::Head)),
                None => {
                    self.s.problems.push(Problem::Missing {
                        name: names::LM_HEAD_NAMES[0].into(),
                        what: "the LM head (tie_word_embeddings is false)".into(),
                    });
                    Some(None)
                }
            }
        };
        let final_norm = self.norm(names::FINAL_NORM, h);

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut experts = None;
        let mut gdn_layout = GdnProjLayout::Separate;
        for i in 0..cfg.num_hidden_layers {
            let input_norm = self.norm(&names::layer(i, names::INPUT_NORM), h);
            let post_attn_norm = self.norm(&names::layer(i, names::POST_ATTN_NORM), h);
            let mixer = match cfg.layer_types[i] {
                LayerKind::FullAttention => self.attention(i).map(Mixer::Attention),
                LayerKind::LinearAttention => self.gdn(i).map(|g| {
                    if matches!(g.proj, GdnProj::FusedGrouped { .. }) {
                        gdn_layout = GdnProjLayout::FusedGrouped;
                    }
                    Mixer::Gdn(g)
                }),
            };
            let mlp = match cfg.mlp_kinds[i] {
                MlpKind::Dense => self.dense_mlp(i).map(Mlp::Dense),
                MlpKind::Moe => self.moe(i).map(|(m, layout)| {
                    experts = Some(layout);
                    Mlp::Moe(m)
                }),
            };
            // Keep walking the remaining layers even if this one failed.
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
        Some((Weights { embed: embed?, lm_head, final_norm: final_norm?, layers, mtp: None }, experts, gdn_layout))
    }

    /// A zero-centred norm, returned as its effective multiplier.
    fn norm(&mut self, rel: &str, n: usize) -> Option<Vec<f32>> {
        let mut w = self.s.vector(rel, n, Category::Norms)?;
        if self.norms == NormStorage::ZeroCentred {
            w.iter_mut().for_each(|v| *v += 1.0);
        }
        Some(w)
    }

    fn attention(&mut self, i: usize) -> Option<Attention> {
        let c = self.cfg;
        let (h, nh, nkv, hd) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let cat = Category::Attention;
        let q_proj = self.s.linear(&names::layer(i, attn::Q), nh * 2 * hd, h, cat);
        let k_proj = self.s.linear(&names::layer(i, attn::K), nkv * hd, h, cat);
        let v_proj = self.s.linear(&names::layer(i, attn::V), nkv * hd, h, cat);
        let o_proj = self.s.linear(&names::layer(i, attn::O), h, nh * hd, cat);
        let q_norm = self.norm(&names::layer(i, attn::Q_NORM), hd);
        let k_norm = self.norm(&names::layer(i, attn::K_NORM), hd);
        Some(Attention {
            q_proj: q_proj?,
            k_proj: k_proj?,
            v_proj: v_proj?,
            o_proj: o_proj?,
            q_norm: q_norm?,
            k_norm: k_norm?,
        })
    }

    fn gdn(&mut self, i: usize) -> Option<Gdn> {
        let c = self.cfg;
        let (h, hv, dv) = (c.hidden_size, c.linear_num_value_heads, c.linear_value_head_dim);
        let (kd, vd, cd) = (c.key_dim(), c.value_dim(), c.conv_dim());
        let cat = Category::DeltaNet;
        let proj = if self.s.has(&names::layer(i, gdn::QKVZ)) {
            let qkvz = self.s.linear(&names::layer(i, gdn::QKVZ), 2 * kd + 2 * vd, h, cat);
            let ba = self.s.linear(&names::layer(i, gdn::BA), 2 * hv, h, cat);
            GdnProj::FusedGrouped { qkvz: qkvz?, ba: ba? }
        } else {
            let qkv = self.s.linear(&names::layer(i, gdn::QKV), cd, h, cat);
            let z = self.s.linear(&names::layer(i, gdn::Z), vd, h, cat);
            let b = self.s.linear(&names::layer(i, gdn::B), hv, h, cat);
            let a = self.s.linear(&names::layer(i, gdn::A), hv, h, cat);
            GdnProj::Separate { qkv: qkv?, z: z?, b: b?, a: a? }
        };
        let conv = self.s.conv(&names::layer(i, gdn::CONV), cd, c.linear_conv_kernel_dim);
        let a_log = self.s.vector(&names::layer(i, gdn::A_LOG), hv, cat);
        let dt_bias = self.s.vector(&names::layer(i, gdn::DT_BIAS), hv, cat);
        let norm = self.s.vector(&names::layer(i, gdn::NORM), dv, cat);
        let out_proj = self.s.linear(&names::layer(i, gdn::OUT), h, vd, cat);
        Some(Gdn {
            proj,
            conv: conv?,
            a_neg_exp: a_log?.iter().map(|a| -a.exp()).collect(),
            dt_bias: dt_bias?,
            norm: norm?,
            out_proj: out_proj?,
            head_map: HeadMap::Grouped,
        })
    }

    fn dense_mlp(&mut self, i: usize) -> Option<SwiGlu> {
        let (h, f) = (self.cfg.hidden_size, self.cfg.intermediate_size.unwrap_or(0));
        let cat = Category::DenseMlp;
        let gate = self.s.linear(&names::layer(i, mlp::GATE), f, h, cat);
        let up = self.s.linear(&names::layer(i, mlp::UP), f, h, cat);
        let down = self.s.linear(&names::layer(i, mlp::DOWN), h, f, cat);
        Some(SwiGlu { gate: gate?, up: up?, down: down? })
    }

    fn moe(&mut self, i: usize) -> Option<(Moe, ExpertLayout)> {
        let c = self.cfg;
        let (h, e, is) = (c.hidden_size, c.num_experts, c.shared_expert_intermediate_size);
        let router = self.s.linear(&names::layer(i, moe::ROUTER), e, h, Category::Router);
        let (experts, layout) = if self.s.has(&names::layer(i, moe::FUSED_GATE_UP)) {
            (self.fused_experts(i), ExpertLayout::Fused)
        } else if self.s.has(&names::layer(i, moe::SWITCH_GATE)) {
            (self.switch_experts(i), ExpertLayout::SwitchMlp)
        } else {
            (self.per_expert(i), ExpertLayout::PerExpert)
        };
        let cat = Category::SharedExpert;
        let sg = self.s.linear(&names::layer(i, moe::SHARED_GATE_PROJ), is, h, cat);
        let su = self.s.linear(&names::layer(i, moe::SHARED_UP), is, h, cat);
        let sd = self.s.linear(&names::layer(i, moe::SHARED_DOWN), h, is, cat);
        let shared_gate = self.s.linear(&names::layer(i, moe::SHARED_EXPERT_GATE), 1, h, Category::Router);
        let shared = SwiGlu { gate: sg?, up: su?, down: sd? };
        Some((Moe { router: router?, experts: experts?, shared, shared_gate: shared_gate? }, layout))
    }

    fn split(&mut self, i: usize, gate_up: Mat, up: Option<Mat>, down: Mat) -> Option<Vec<SwiGlu>> {
        let (e, inter, h) = (self.cfg.num_experts, self.cfg.moe_intermediate_size, self.cfg.hidden_size);
        match split_experts(&gate_up, up.as_ref(), &down, e, inter, h) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.s.problems.push(Problem::Invalid { name: self.s.full(&names::layer(i, "mlp.experts")), reason });
                None
            }
        }
    }

    /// HF fused: `gate_up_proj [E, 2I, H]` (gate rows first), `down_proj [E, H, I]`.
    fn fused_experts(&mut self, i: usize) -> Option<Vec<SwiGlu>> {
        let (e, inter, h) = (self.cfg.num_experts, self.cfg.moe_intermediate_size, self.cfg.hidden_size);
        let gu = self.s.stacked(&names::layer(i, moe::FUSED_GATE_UP), e, 2 * inter, h, Category::Experts);
        let dn = self.s.stacked(&names::layer(i, moe::FUSED_DOWN), e, h, inter, Category::Experts);
        self.split(i, gu?, None, dn?)
    }

    /// MLX stacks `[E, I, H]`, `[E, I, H]`, `[E, H, I]` (float or affine).
    fn switch_experts(&mut self, i: usize) -> Option<Vec<SwiGlu>> {
        let (e, inter, h) = (self.cfg.num_experts, self.cfg.moe_intermediate_size, self.cfg.hidden_size);
        let g = self.s.stacked(&names::layer(i, moe::SWITCH_GATE), e, inter, h, Category::Experts);
        let u = self.s.stacked(&names::layer(i, moe::SWITCH_UP), e, inter, h, Category::Experts);
        let d = self.s.stacked(&names::layer(i, moe::SWITCH_DOWN), e, h, inter, Category::Experts);
        let (g, u, d) = (g?, u?, d?);
        self.split(i, g, Some(u), d)
    }

    /// Per-expert tensors; the indices must be exactly `0..E` with all three
    /// projections each (spec 8.7), never silently short.
    fn per_expert(&mut self, i: usize) -> Option<Vec<SwiGlu>> {
        let (h, e, inter) = (self.cfg.hidden_size, self.cfg.num_experts, self.cfg.moe_intermediate_size);
        let layer_prefix = self.s.full(&names::layer(i, moe::PER_EXPERT_PREFIX));
        let mut found: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for name in self.s.ckpt.names() {
            let Some(rest) = name.strip_prefix(&layer_prefix) else { continue };
            let Some((idx, tail)) = rest.split_once('.') else { continue };
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
            self.s.problems.push(Problem::Missing {
                name: self.s.full(&names::layer(i, moe::FUSED_GATE_UP)),
                what: "the routed experts (no fused, MLX switch_mlp or per-expert tensors found)".into(),
            });
            return None;
        }
        let mut complete = true;
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            let have = found.get(proj).cloned().unwrap_or_default();
            let missing: Vec<usize> = (0..e).filter(|x| !have.contains(x)).collect();
            let extra: Vec<usize> = have.iter().copied().filter(|&x| x >= e).collect();
            if !missing.is_empty() || !extra.is_empty() {
                complete = false;
                self.s.problems.push(Problem::Invalid {
                    name: format!("{layer_prefix}{{e}}.{proj}.weight"),
                    reason: format!("layer {i}: per-expert `{proj}` indices must be exactly 0..{e}; missing {missing:?}, unexpected {extra:?}"),
                });
            }
        }
        if !complete {
            return None;
        }
        let cat = Category::Experts;
        let experts: Vec<Option<SwiGlu>> = (0..e)
            .map(|x| {
                let gate = self.s.linear(&names::layer(i, &moe::expert(x, "gate")), inter, h, cat);
                let up = self.s.linear(&names::layer(i, &moe::expert(x, "up")), inter, h, cat);
                let down = self.s.linear(&names::layer(i, &moe::expert(x, "down")), h, inter, cat);
                Some(SwiGlu { gate: gate?, up: up?, down: down? })
            })
            .collect();
        experts.into_iter().collect()
    }
}
