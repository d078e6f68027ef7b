//! Preallocated activation buffers for the forward pass.
//!
//! Buffers grow to the largest batch seen and are then reused: a steady
//! decode loop performs no heap allocation. Shapes are given per field for a
//! call of `T` tokens.

#[derive(Default)]
pub struct Scratch {
    /// `[T, H]` residual stream.
    pub x: Vec<f32>,
    /// `[T, H]` normed input of a sub-layer.
    pub h: Vec<f32>,
    /// `[T, H]` sub-layer output.
    pub y: Vec<f32>,
    pub attn: AttnScratch,
    pub gdn: GdnBuffers,
    pub moe: MoeScratch,
    /// `[T or 1, V]`.
    pub logits: Vec<f32>,
}

#[derive(Default)]
pub struct AttnScratch {
    /// `[T, nh * 2 * hd]` fused query/gate projection.
    pub qg: Vec<f32>,
    /// `[T, nh, hd]`.
    pub q: Vec<f32>,
    /// `[T, nh * hd]` output gate.
    pub gate: Vec<f32>,
    /// `[T, nkv * hd]`.
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// `[T, nh, hd]`.
    pub out: Vec<f32>,
    /// `[threads, heads per KV head, n_ctx]` attention probabilities.
    pub scores: Vec<f32>,
}

#[derive(Default)]
pub struct GdnBuffers {
    /// `[T, 2*Hk*Dk + 2*Hv*Dv]` (fused layout) or unused.
    pub fused: Vec<f32>,
    /// `[T, 2*Hv]` (fused layout) or unused.
    pub ba: Vec<f32>,
    /// `[T, conv_dim]` pre-conv mix `[q | k | v]`.
    pub mixed: Vec<f32>,
    /// `[T, Hv * Dv]`.
    pub z: Vec<f32>,
    /// `[T, Hv]`.
    pub b: Vec<f32>,
    pub a: Vec<f32>,
    pub beta: Vec<f32>,
    pub g: Vec<f32>,
    /// `[T, Hk, Dk]`.
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    /// `[T, Hv, Dv]`.
    pub v: Vec<f32>,
    pub out: Vec<f32>,
    /// One chunked-prefill scratch per worker thread.
    pub chunk: Vec<qmoe_kernels::gdn::GdnScratch>,
}

#[derive(Default)]
pub struct MoeScratch {
    /// `[T, E]` router logits, then probabilities.
    pub probs: Vec<f32>,
    /// `[T, k]`: each token's chosen experts, best first.
    pub top: Vec<usize>,
    /// `[T*k, I]` routed experts' gate, up and activation.
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub act: Vec<f32>,
    /// `[T*k, H]` routed experts' outputs.
    pub out: Vec<f32>,
    /// `[T, Is]` shared expert (also used by dense MLP layers, `[T, F]`).
    pub sh_gate: Vec<f32>,
    pub sh_up: Vec<f32>,
    pub sh_act: Vec<f32>,
    /// `[T]` shared-expert gate logits.
    pub sh_scale: Vec<f32>,
    /// `[T*k, H]` inputs gathered by expert (prefill, f32 activations).
    pub xs: Vec<f32>,
    /// The input quantized once (prefill, int8 activations), and its blocks
    /// gathered by expert (`[T*k, H]`).
    pub xq: qmoe_kernels::simd::gemm::QuantBuf,
    pub xqs: qmoe_kernels::simd::gemm::QuantBuf,
    /// `(expert, token, weight)` of every routing choice, in token order.
    pub routes: Vec<(usize, usize, f32)>,
    /// `(token, weight)` sorted by expert; expert `e` owns
    /// `offsets[e]..offsets[e+1]` (also the rows of `xs`, `gate`, `up`, `act`, `out`).
    pub order: Vec<(usize, f32)>,
    pub offsets: Vec<usize>,
    pub fill: Vec<usize>,
    /// `[T, k]`: each token's slots in `order`, in increasing order.
    pub token_slots: Vec<usize>,
    /// Capacity kept for the products of one kernel call.
    pub products: Vec<qmoe_kernels::simd::gemm::Product<'static>>,
}

/// The first `n` elements of `v`, growing it if needed (never shrinks).
pub fn take(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}
