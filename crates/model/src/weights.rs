//! Typed model weights.
//!
//! Matrices stay in the checkpoint's bytes ([`Mat`] holds an mmap handle, no
//! copy). Only small per-channel vectors (norm multipliers, conv taps, decay
//! parameters) are widened to f32 at load, because that is where the
//! dialect conventions are applied exactly once (`1 + w`, `-exp(A_log)`).

use qmoe_core::{DType, GgmlType};
use qmoe_formats::TensorData;
use qmoe_kernels::gdn::HeadMap;
use qmoe_kernels::linear::MatRef;

/// How a [`Mat`]'s bytes encode its values (the loader has validated every
/// length against the shape, so [`Mat::view`] cannot fail).
#[derive(Clone, Debug)]
pub enum Storage {
    Float(DType),
    /// FP8 E4M3 with `scales` `[ceil(rows/block[0]), ceil(cols/block[1])]`.
    Fp8 {
        scales: TensorData,
        scale_dtype: DType,
        block: [usize; 2],
    },
    /// MLX affine: packed u32 words, `scales`/`biases` `[rows, cols/group]`.
    Affine {
        bits: u32,
        group: usize,
        scales: TensorData,
        biases: TensorData,
        scale_dtype: DType,
    },
    /// A GGUF block-quantized type (Q8_0, Q4_K, ...): scales live inside the blocks.
    Ggml(GgmlType),
}

/// A weight matrix `[rows, cols]` (HF `[out, in]`) borrowed from the mmap.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: TensorData,
    pub storage: Storage,
}

impl Mat {
    pub fn view(&self) -> MatRef<'_> {
        let (rows, cols, bytes) = (self.rows, self.cols, self.data.bytes());
        match &self.storage {
            Storage::Float(dt) => MatRef::new(*dt, rows, cols, bytes),
            Storage::Fp8 { scales, scale_dtype, block } => {
                MatRef::fp8(rows, cols, bytes, scales.bytes(), *scale_dtype, block[0], block[1])
                    .expect("FP8 matrix validated at load")
            }
            Storage::Affine { bits, group, scales, biases, scale_dtype } => {
                MatRef::affine(rows, cols, bytes, *bits, *group, scales.bytes(), biases.bytes(), *scale_dtype)
                    .expect("affine matrix validated at load")
            }
            Storage::Ggml(ty) => MatRef::ggml(*ty, rows, cols, bytes).expect("ggml matrix validated at load"),
        }
    }

    /// Bytes of the weight and its scales.
    pub fn bytes(&self) -> usize {
        self.data.len()
            + match &self.storage {
                Storage::Float(_) | Storage::Ggml(_) => 0,
                Storage::Fp8 { scales, .. } => scales.len(),
                Storage::Affine { scales, biases, .. } => scales.len() + biases.len(),
            }
    }

    /// Rows `start .. start + n` as a matrix of their own (a view, no copy):
    /// how fused and stacked experts become per-expert matrices.
    pub fn rows(&self, start: usize, n: usize) -> Result<Mat, String> {
        let row_bytes = self.data.len() / self.rows;
        let data = self.data.slice(start * row_bytes, n * row_bytes).map_err(|e| e.to_string())?;
        let storage = match &self.storage {
            Storage::Float(dt) => Storage::Float(*dt),
            Storage::Ggml(ty) => Storage::Ggml(*ty),
            Storage::Affine { bits, group, scales, biases, scale_dtype } => {
                let sb = scales.len() / self.rows;
                Storage::Affine {
                    bits: *bits,
                    group: *group,
                    scales: scales.slice(start * sb, n * sb).map_err(|e| e.to_string())?,
                    biases: biases.slice(start * sb, n * sb).map_err(|e| e.to_string())?,
                    scale_dtype: *scale_dtype,
                }
            }
            Storage::Fp8 { .. } => return Err("FP8 weights cannot be split by rows (block scales straddle)".into()),
        };
        Ok(Mat { rows: n, cols: self.cols, data, storage })
    }

    /// A short description of the storage for `inspect`.
    pub fn describe(&self) -> String {
        match &self.storage {
            Storage::Float(dt) => dt.name().to_string(),
            Storage::Fp8 { block, scale_dtype, .. } => {
                format!("FP8 E4M3, {}x{} blocks, {scale_dtype} scales", block[0], block[1])
            }
            Storage::Affine { bits, group, .. } => format!("MLX affine {bits}-bit, group {group}"),
            Storage::Ggml(ty) => format!("GGUF {ty}"),
        }
    }
}

#[derive(Debug)]
pub struct Weights {
    /// `[V, H]`.
    pub embed: Mat,
    /// `[V, H]`; `None` when tied to `embed`.
    pub lm_head: Option<Mat>,
    /// `[H]`, effective multiplier.
    pub final_norm: Vec<f32>,
    pub layers: Vec<Layer>,
    /// The multi-token-prediction head (spec 4.8) when the checkpoint has one.
    /// Loaded and validated like the trunk; the forward pass does not run it.
    pub mtp: Option<Mtp>,
}

impl Weights {
    pub fn head(&self) -> &Mat {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// The MTP draft head (spec 4.8): `u = fc · [norm_e(embed(x_{t+1})) ; norm_h(h_t)]`,
/// then its decoder blocks, then `norm`; embeddings and LM head are the trunk's.
#[derive(Debug)]
pub struct Mtp {
    /// `[H, 2H]`: input columns `[embedding half | hidden half]` (GGUF `nextn.eh_proj`).
    pub fc: Mat,
    /// `[H]`, effective multipliers (GGUF `nextn.enorm`).
    pub pre_fc_norm_embedding: Vec<f32>,
    /// `[H]`, effective multipliers (GGUF `nextn.hnorm`).
    pub pre_fc_norm_hidden: Vec<f32>,
    /// `[H]`, effective multipliers of the norm before the shared LM head
    /// (GGUF `nextn.shared_head_norm`).
    pub norm: Vec<f32>,
    /// `mtp_num_hidden_layers` blocks, each gated full attention + the
    /// trunk's MLP kind (MoE with shared expert, or dense).
    pub layers: Vec<Layer>,
}

#[derive(Debug)]
pub struct Layer {
    /// `[H]`, effective multipliers.
    pub input_norm: Vec<f32>,
    pub post_attn_norm: Vec<f32>,
    pub mixer: Mixer,
    pub mlp: Mlp,
}

#[derive(Debug)]
pub enum Mixer {
    Attention(Attention),
    Gdn(Gdn),
}

/// Gated full attention (spec 2.3).
#[derive(Debug)]
pub struct Attention {
    /// `[nh * 2 * hd, H]`: per head `[query (hd) | gate (hd)]`.
    pub q_proj: Mat,
    /// `[nkv * hd, H]`.
    pub k_proj: Mat,
    pub v_proj: Mat,
    /// `[H, nh * hd]`.
    pub o_proj: Mat,
    /// `[hd]`, effective multipliers.
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
}

/// Gated DeltaNet (spec 2.5).
#[derive(Debug)]
pub struct Gdn {
    pub proj: GdnProj,
    /// `[conv_dim, K]`, tap `K-1` multiplies the current token.
    pub conv: Vec<f32>,
    /// `[Hv]`: `-exp(A_log)`, computed in f32 at load.
    pub a_neg_exp: Vec<f32>,
    /// `[Hv]`.
    pub dt_bias: Vec<f32>,
    /// `[Dv]`: plain (not zero-centred) gated-norm weight.
    pub norm: Vec<f32>,
    /// `[H, Hv * Dv]`.
    pub out_proj: Mat,
    /// Which key head each value head reads: grouped (HF, MLX, qwen3next
    /// GGUF) or tiled (qwen35* GGUF files, whose value heads were reordered).
    pub head_map: HeadMap,
}

#[derive(Debug)]
pub enum GdnProj {
    /// qwen3_5*: `in_proj_qkv [conv_dim, H]`, `in_proj_z [Hv*Dv, H]`,
    /// `in_proj_b`, `in_proj_a [Hv, H]`.
    Separate { qkv: Mat, z: Mat, b: Mat, a: Mat },
    /// qwen3_next: `in_proj_qkvz [2*Hk*Dk + 2*Hv*Dv, H]` and `in_proj_ba [2*Hv, H]`,
    /// both grouped per key head (spec 2.5.2); the outputs are un-grouped
    /// after the matmul, so the weights are used exactly as stored.
    FusedGrouped { qkvz: Mat, ba: Mat },
    /// qwen3next GGUF from the current llama.cpp converter: `attn_qkv` and
    /// `attn_gate` de-grouped (as `Separate`), `ssm_ba` still grouped per key head.
    SplitGroupedBa { qkv: Mat, z: Mat, ba: Mat },
}

/// One per layer, read on every token: the size gap between the variants
/// costs a few hundred bytes per layer, a `Box` would cost an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Mlp {
    Dense(SwiGlu),
    Moe(Moe),
}

/// `down · (silu(gate · x) ⊙ (up · x))`.
#[derive(Debug, Clone)]
pub struct SwiGlu {
    /// `[I, H]`.
    pub gate: Mat,
    pub up: Mat,
    /// `[H, I]`.
    pub down: Mat,
}

/// Per-expert views out of expert stacks (no copy). `gate_up` holds, per
/// expert, its gate rows followed by its up rows (HF fused / GGUF
/// `ffn_gate_up_exps`), unless `up` is a separate stack (MLX, GGUF
/// `ffn_up_exps`); `down` is `[n * hidden, inter]`.
pub fn split_experts(
    gate_up: &Mat,
    up: Option<&Mat>,
    down: &Mat,
    n: usize,
    inter: usize,
    hidden: usize,
) -> Result<Vec<SwiGlu>, String> {
    let per = if up.is_some() { inter } else { 2 * inter };
    (0..n)
        .map(|x| {
            Ok(SwiGlu {
                gate: gate_up.rows(x * per, inter)?,
                up: match up {
                    Some(u) => u.rows(x * inter, inter)?,
                    None => gate_up.rows(x * per + inter, inter)?,
                },
                down: down.rows(x * hidden, hidden)?,
            })
        })
        .collect()
}

/// Sparse MoE with a sigmoid-gated shared expert (spec 2.7).
#[derive(Debug)]
pub struct Moe {
    /// `[E, H]`.
    pub router: Mat,
    /// `E` experts; views into fused or per-expert tensors alike.
    pub experts: Vec<SwiGlu>,
    pub shared: SwiGlu,
    /// `[1, H]`.
    pub shared_gate: Mat,
}
