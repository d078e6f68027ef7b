//! Typed model weights.
//!
//! Matrices stay in the checkpoint's bytes ([`Mat`] holds an mmap handle, no
//! copy). Only small per-channel vectors (norm multipliers, conv taps, decay
//! parameters) are widened to f32 at load, because that is where the
//! dialect conventions are applied exactly once (`1 + w`, `-exp(A_log)`).

use qmoe_core::DType;
use qmoe_formats::TensorData;
use qmoe_kernels::linear::MatRef;

/// A weight matrix `[rows, cols]` (HF `[out, in]`) borrowed from the mmap.
#[derive(Clone, Debug)]
pub struct Mat {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: TensorData,
}

impl Mat {
    pub fn view(&self) -> MatRef<'_> {
        MatRef::new(self.dtype, self.rows, self.cols, self.data.bytes())
    }

    pub fn bytes(&self) -> usize {
        self.rows * self.cols * self.dtype.size()
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
}

impl Weights {
    pub fn head(&self) -> &Mat {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
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
}

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
