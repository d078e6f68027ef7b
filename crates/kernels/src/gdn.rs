//! Gated DeltaNet core (spec 2.5.4 - 2.5.7): the q/k normalisation and gate
//! helpers, the exact per-token recurrence (decode), and the chunked form
//! (prefill) that computes the same thing a chunk of tokens at a time.
//!
//! Tensors, per call of `n_tokens` tokens (`Hk`/`Hv` key/value heads,
//! `Dk`/`Dv` their widths, `r = Hv / Hk`):
//! * `q`, `k`: `[n_tokens, Hk, Dk]`, l2-normalised; `q` also scaled by `Dk^-0.5`.
//! * `v`: `[n_tokens, Hv, Dv]`; `beta`, `g`: `[n_tokens, Hv]` (`g` = log-decay <= 0).
//! * `state`: `[Hv, Dk, Dv]` f32, HF order; zeros at sequence start.
//! * `out`: `[n_tokens, Hv, Dv]`.
//!
//! Which key head a value head reads is a property of the checkpoint, not of
//! the math ([`HeadMap`], spec 2.5.5 and 5.4).
//!
//! Numerics: the state and all products are f32 (HF keeps the SSM state in
//! fp32). The chunked form forms its within-chunk cumulative log-decay in f64
//! and only ever exponentiates differences `G_i - G_j` with `i >= j`, which are
//! <= 0, so no intermediate overflows however strong the decay. The two forms
//! agree to f32 rounding; they are not bit-identical.

use crate::vecops::{axpy, dot};

/// Head geometry of one GDN layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GdnShape {
    /// Key (and query) heads `Hk` (`linear_num_key_heads`).
    pub n_k_heads: usize,
    /// Value heads `Hv` (`linear_num_value_heads`), a multiple of `n_k_heads`.
    pub n_v_heads: usize,
    /// Key width `Dk` (`linear_key_head_dim`).
    pub head_k_dim: usize,
    /// Value width `Dv` (`linear_value_head_dim`); may differ from `Dk`.
    pub head_v_dim: usize,
}

impl GdnShape {
    /// Value heads per key head, `r = Hv / Hk`.
    pub fn ratio(&self) -> usize {
        self.n_v_heads / self.n_k_heads
    }

    /// Floats per token of `q` (and of `k`): `Hk * Dk`.
    pub fn key_dim(&self) -> usize {
        self.n_k_heads * self.head_k_dim
    }

    /// Floats per token of `v` and of the output: `Hv * Dv`.
    pub fn value_dim(&self) -> usize {
        self.n_v_heads * self.head_v_dim
    }

    /// Floats in the recurrent state: `Hv * Dk * Dv`.
    pub fn state_len(&self) -> usize {
        self.n_v_heads * self.head_k_dim * self.head_v_dim
    }

    /// Caller contract on the geometry itself.
    fn check(&self) {
        assert!(
            self.n_k_heads > 0 && self.n_v_heads.is_multiple_of(self.n_k_heads),
            "GdnShape: n_v_heads ({}) must be a non-zero multiple of n_k_heads ({})",
            self.n_v_heads,
            self.n_k_heads
        );
        assert!(self.head_k_dim > 0 && self.head_v_dim > 0, "GdnShape: zero head width");
    }
}

/// Order of the value heads relative to the key heads (spec 2.5.5, 5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadMap {
    /// Value head `h` reads key head `h / r`: HF, MLX, `qwen3next` GGUF.
    Grouped,
    /// Value head `h` reads key head `h % Hk`: `qwen35`/`qwen35moe` GGUF,
    /// whose value heads the converter reordered from `g*r + j` to `j*Hk + g`.
    Tiled,
}

impl HeadMap {
    /// Key head read by value head `h`.
    pub fn key_head(self, h: usize, shape: GdnShape) -> usize {
        match self {
            HeadMap::Grouped => h / shape.ratio(),
            HeadMap::Tiled => h % shape.n_k_heads,
        }
    }
}

/// `x <- x / sqrt(sum x^2 + eps)` over the whole slice (one head); the spec
/// uses `eps = 1e-6` inside the square root. `x`: `[D]`. The sum of squares
/// accumulates in f64.
pub fn l2_normalize(x: &mut [f32], eps: f32) {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let inv = (1.0 / (ss + eps as f64).sqrt()) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Per-token, per-value-head gates (spec 2.5.4), in f32:
/// `beta = sigmoid(b)`, `g = -exp(A_log) * softplus(a + dt_bias)`.
///
/// * `a`, `b`: `[n_tokens, Hv]` projections (`in_proj_a`, `in_proj_b`).
/// * `a_log`, `dt_bias`: `[Hv]` weights.
/// * `beta_out`, `g_out`: `[n_tokens, Hv]`, overwritten.
///
/// # Panics
/// If `a_log` is empty, lengths differ, or `a` is not a whole number of rows.
pub fn gates(a: &[f32], b: &[f32], a_log: &[f32], dt_bias: &[f32], beta_out: &mut [f32], g_out: &mut [f32]) {
    let hv = a_log.len();
    assert!(hv > 0 && dt_bias.len() == hv, "gates: a_log / dt_bias length");
    assert!(
        a.len().is_multiple_of(hv) && b.len() == a.len() && beta_out.len() == a.len() && g_out.len() == a.len(),
        "gates: lengths"
    );
    for (bv, be) in b.iter().zip(beta_out.iter_mut()) {
        *be = sigmoid(*bv);
    }
    for (row_a, row_g) in a.chunks_exact(hv).zip(g_out.chunks_exact_mut(hv)) {
        for h in 0..hv {
            row_g[h] = -a_log[h].exp() * softplus(row_a[h] + dt_bias[h]);
        }
    }
}

/// `1 / (1 + e^-x)`; saturates to 0 or 1 without NaN.
#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `ln(1 + e^x)`, returning `x` itself above 20 as PyTorch's `F.softplus`
/// (threshold 20) does; below, `ln_1p` keeps tiny results accurate.
#[inline]
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Checks every buffer against `shape` and returns `n_tokens`.
#[allow(clippy::too_many_arguments)]
fn check_args(
    fn_name: &str,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &[f32],
    shape: GdnShape,
    out: &[f32],
) -> usize {
    shape.check();
    let n_tokens = beta.len() / shape.n_v_heads;
    assert!(beta.len() == n_tokens * shape.n_v_heads, "{fn_name}: beta length");
    assert!(g.len() == beta.len(), "{fn_name}: g length");
    assert!(q.len() == n_tokens * shape.key_dim(), "{fn_name}: q length");
    assert!(k.len() == n_tokens * shape.key_dim(), "{fn_name}: k length");
    assert!(v.len() == n_tokens * shape.value_dim(), "{fn_name}: v length");
    assert!(out.len() == n_tokens * shape.value_dim(), "{fn_name}: out length");
    assert!(state.len() == shape.state_len(), "{fn_name}: state length");
    n_tokens
}

/// The exact recurrence of spec 2.5.6, one token at a time (decode, and the
/// reference the chunked form is tested against). `n_tokens` is
/// `beta.len() / Hv`.
///
/// * `q`: `[n_tokens, Hk, Dk]`, l2-normalised and scaled by `Dk^-0.5`.
/// * `k`: `[n_tokens, Hk, Dk]`, l2-normalised.
/// * `v`: `[n_tokens, Hv, Dv]`.
/// * `beta`: `[n_tokens, Hv]`; `g`: `[n_tokens, Hv]` log-decay (<= 0).
/// * `state`: `[Hv, Dk, Dv]`, read and advanced in place.
/// * `out`: `[n_tokens, Hv, Dv]`, overwritten.
///
/// Per token and value head `h` reading key head `kh`:
/// `S <- e^g S; p = k^T S; delta = beta (v - p); S <- S + k delta^T; o = q^T S`.
///
/// # Panics
/// On an invalid `shape` or any buffer of the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn gdn_recurrent(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &mut [f32],
    shape: GdnShape,
    map: HeadMap,
    out: &mut [f32],
) {
    let n_tokens = check_args("gdn_recurrent", q, k, v, beta, g, state, shape, out);
    let GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv } = shape;

    for t in 0..n_tokens {
        for h in 0..hv {
            let kh = map.key_head(h, shape);
            let q_t = &q[(t * hk + kh) * dk..][..dk]; // [Dk]
            let k_t = &k[(t * hk + kh) * dk..][..dk]; // [Dk]
            let v_t = &v[(t * hv + h) * dv..][..dv]; // [Dv]
            let beta_t = beta[t * hv + h];
            let alpha = g[t * hv + h].exp();
            let s = &mut state[h * dk * dv..][..dk * dv]; // [Dk, Dv]
                                                          // The output row doubles as the [Dv] buffer for p and delta:
                                                          // both are dead before the output is written.
            let o = &mut out[(t * hv + h) * dv..][..dv]; // [Dv]

            // Decay, then p = k^T S (o holds p).
            o.fill(0.0);
            for (s_row, &k_i) in s.chunks_exact_mut(dv).zip(k_t) {
                for (s_ij, o_j) in s_row.iter_mut().zip(o.iter_mut()) {
                    *s_ij *= alpha;
                    *o_j += k_i * *s_ij;
                }
            }
            // delta = beta (v - p) (o holds delta).
            for (o_j, &v_j) in o.iter_mut().zip(v_t) {
                *o_j = beta_t * (v_j - *o_j);
            }
            // Rank-1 update S += k delta^T.
            for (s_row, &k_i) in s.chunks_exact_mut(dv).zip(k_t) {
                for (s_ij, &d_j) in s_row.iter_mut().zip(o.iter()) {
                    *s_ij += k_i * d_j;
                }
            }
            // o = q^T S with the updated state.
            o.fill(0.0);
            for (s_row, &q_i) in s.chunks_exact(dv).zip(q_t) {
                for (o_j, &s_ij) in o.iter_mut().zip(s_row) {
                    *o_j += q_i * s_ij;
                }
            }
        }
    }
}

/// Scratch for [`gdn_chunked`], sized once for a shape and a maximum chunk
/// length so that the per-chunk loop never allocates.
#[derive(Debug, Clone)]
pub struct GdnScratch {
    shape: GdnShape,
    chunk: usize,
    /// `[chunk]`: cumulative log-decay `G_i` within the chunk (f64).
    g_cum: Vec<f64>,
    /// `[chunk, chunk]`: `Gamma[i][j] = exp(G_i - G_j)` for `j <= i`.
    decay: Vec<f32>,
    /// `[chunk]`: `exp(G_i)`, the decay from the chunk's incoming state to token i.
    decay_in: Vec<f32>,
    /// `[chunk]`: `exp(G_last - G_j)`, the decay from token j to the chunk's end.
    decay_out: Vec<f32>,
    /// `[chunk, chunk]`: strictly lower `L[i][j] = beta_i (k_i . k_j) Gamma[i][j]`.
    l: Vec<f32>,
    /// `[chunk, Dv]`: `U`, then `Vnew = U - W S0` in place.
    u: Vec<f32>,
    /// `[chunk, Dk]`: `W`.
    w: Vec<f32>,
    /// `[chunk, Dv]`: one head's outputs for the chunk.
    o: Vec<f32>,
}

impl GdnScratch {
    /// Preallocates for `shape` and chunks of at most `chunk` tokens.
    ///
    /// # Panics
    /// If `chunk == 0` or `shape` is invalid.
    pub fn new(shape: GdnShape, chunk: usize) -> Self {
        shape.check();
        assert!(chunk > 0, "GdnScratch: chunk must be > 0");
        Self {
            shape,
            chunk,
            g_cum: vec![0.0; chunk],
            decay: vec![0.0; chunk * chunk],
            decay_in: vec![0.0; chunk],
            decay_out: vec![0.0; chunk],
            l: vec![0.0; chunk * chunk],
            u: vec![0.0; chunk * shape.head_v_dim],
            w: vec![0.0; chunk * shape.head_k_dim],
            o: vec![0.0; chunk * shape.head_v_dim],
        }
    }

    /// The largest chunk this scratch serves.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The shape it was sized for.
    pub fn shape(&self) -> GdnShape {
        self.shape
    }

    /// Output row `i` (`[Dv]`) of the head [`chunk_head`] ran last.
    pub(crate) fn head_out(&self, i: usize) -> &[f32] {
        &self.o[i * self.shape.head_v_dim..][..self.shape.head_v_dim]
    }
}

/// The tensors of one chunked call with their geometry, as the per-head
/// chunk steps read them (layouts as for [`gdn_chunked`]).
#[derive(Clone, Copy)]
pub(crate) struct ChunkInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub beta: &'a [f32],
    pub g: &'a [f32],
    pub shape: GdnShape,
    pub map: HeadMap,
}

/// The work of one chunk step: value head `h`, tokens `start..start + n`.
#[derive(Clone, Copy)]
pub(crate) struct ChunkAt {
    pub h: usize,
    pub start: usize,
    pub n: usize,
}

/// `(start, n)` of each chunk of at most `chunk` (> 0) tokens covering `0..n_tokens`.
pub(crate) fn chunk_spans(n_tokens: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n_tokens).step_by(chunk).map(move |start| (start, chunk.min(n_tokens - start)))
}

/// The chunked form of spec 2.5.7 (prefill): same inputs, state and output as
/// [`gdn_recurrent`], equal to it up to f32 rounding. Tokens are taken in
/// chunks of `chunk` (64 in HF/llama.cpp); the last chunk may be shorter.
///
/// * `q`, `k`: `[n_tokens, Hk, Dk]`; `v`: `[n_tokens, Hv, Dv]`;
///   `beta`, `g`: `[n_tokens, Hv]`; `state`: `[Hv, Dk, Dv]` (advanced in
///   place); `out`: `[n_tokens, Hv, Dv]` (overwritten) — as for [`gdn_recurrent`].
/// * `scratch`: from [`GdnScratch::new`]`(shape, c)` with `c >= chunk`.
///
/// Per value head and chunk of `n` tokens with incoming state `S0`:
/// `G` = cumsum of `g`; `L` = strictly lower `beta_i (k_i.k_j) e^(G_i-G_j)`;
/// `U = (I+L)^-1 diag(beta) V`, `W = (I+L)^-1 diag(beta e^G) K` by forward
/// substitution; `Vnew = U - W S0`;
/// `O_i = e^(G_i) q_i^T S0 + sum_{j<=i} (q_i.k_j) e^(G_i-G_j) Vnew_j`;
/// `S = e^(G_n) S0 + sum_j e^(G_n-G_j) k_j Vnew_j^T`.
///
/// # Panics
/// On an invalid `shape`, any buffer of the wrong length, `chunk == 0`, or a
/// scratch built for another shape or a smaller chunk.
#[allow(clippy::too_many_arguments)]
pub fn gdn_chunked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    beta: &[f32],
    g: &[f32],
    state: &mut [f32],
    shape: GdnShape,
    map: HeadMap,
    chunk: usize,
    scratch: &mut GdnScratch,
    out: &mut [f32],
) {
    let n_tokens = check_args("gdn_chunked", q, k, v, beta, g, state, shape, out);
    assert!(chunk > 0, "gdn_chunked: chunk must be > 0");
    assert!(
        scratch.shape == shape && scratch.chunk >= chunk,
        "gdn_chunked: scratch built for {:?} / chunk {}, called with {:?} / chunk {}",
        scratch.shape,
        scratch.chunk,
        shape,
        chunk
    );
    let (hv, dk, dv) = (shape.n_v_heads, shape.head_k_dim, shape.head_v_dim);

    let x = ChunkInputs { q, k, v, beta, g, shape, map };
    for (start, n) in chunk_spans(n_tokens, chunk) {
        for h in 0..hv {
            let s0 = &mut state[h * dk * dv..][..dk * dv];
            chunk_head(&x, ChunkAt { h, start, n }, s0, scratch);
            for i in 0..n {
                out[((start + i) * hv + h) * dv..][..dv].copy_from_slice(&scratch.o[i * dv..][..dv]);
            }
        }
    }
}

/// The decay factors of one chunk of `n` tokens of one head, from its
/// log-decays `g[i * g_stride]` (`g_cum`: room for `n` f64): with the f64
/// cumulative log-decay `G_i`, `decay_in[i] = e^(G_i)`,
/// `decay_out[i] = e^(G_last - G_i)` and
/// `gamma[i * gamma_stride + j] = e^(G_i - G_j)` for `j <= i`. Every
/// exponent is `<= 0`. Shared by the reference and the blocked AVX2 kernel
/// so that both use the same decay values.
///
/// `gamma` is the running f64 product of the tokens' factors `e^(g_k)`,
/// `k = j + 1 ..= i`, down each column: `n` calls of `exp` instead of
/// `n (n + 1) / 2` (those took 0.8% of a Q4_K_M prefill's samples). Its
/// relative error, at most `n` f64 roundings (about `1e-14` for 64
/// tokens), is far below the f32 it is stored in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_decays(
    g: &[f32],
    g_stride: usize,
    n: usize,
    g_cum: &mut [f64],
    decay_in: &mut [f32],
    decay_out: &mut [f32],
    gamma: &mut [f32],
    gamma_stride: usize,
) {
    let mut acc = 0.0f64;
    for i in 0..n {
        acc += g[i * g_stride] as f64;
        g_cum[i] = acc;
    }
    for i in 0..n {
        decay_in[i] = g_cum[i].exp() as f32;
        decay_out[i] = (g_cum[n - 1] - g_cum[i]).exp() as f32;
    }
    // From here `g_cum` holds each token's own factor e^(g_i).
    for i in 0..n {
        g_cum[i] = (g[i * g_stride] as f64).exp();
    }
    for j in 0..n {
        gamma[j * gamma_stride + j] = 1.0;
        let mut p = 1.0f64;
        for i in j + 1..n {
            p *= g_cum[i];
            gamma[i * gamma_stride + j] = p as f32;
        }
    }
}

/// One value head `h` over tokens `start..start + n` (`n <= scratch.chunk`):
/// advances the head's state `s0` (`[Dk, Dv]`) and leaves the chunk's
/// outputs in `scratch.o` (`[n, Dv]`). `x` holds the full-call tensors of
/// [`gdn_chunked`]. Inlined into every caller so that the SIMD drivers
/// compile it for their instruction set.
#[inline(always)]
pub(crate) fn chunk_head(x: &ChunkInputs, at: ChunkAt, s0: &mut [f32], scratch: &mut GdnScratch) {
    let ChunkInputs { q, k, v, beta, g, shape, map } = *x;
    let ChunkAt { h, start, n } = at;
    let GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv } = shape;
    let c = scratch.chunk; // row stride of the [chunk, chunk] matrices
    let kh = map.key_head(h, shape);
    // Rows of chunk-local token i (absolute token start + i).
    let q_row = |i: usize| &q[((start + i) * hk + kh) * dk..][..dk]; // [Dk]
    let k_row = |i: usize| &k[((start + i) * hk + kh) * dk..][..dk]; // [Dk]
    let v_row = |i: usize| &v[((start + i) * hv + h) * dv..][..dv]; // [Dv]
    let beta_at = |i: usize| beta[(start + i) * hv + h];
    debug_assert_eq!(s0.len(), dk * dv);

    let GdnScratch { g_cum, decay, decay_in, decay_out, l, u, w, o, .. } = scratch;

    chunk_decays(&g[start * hv + h..], hv, n, g_cum, decay_in, decay_out, decay, c);

    // Strictly lower L[i][j] = beta_i (k_i . k_j) Gamma[i][j], j < i.
    for i in 0..n {
        let (k_i, beta_i) = (k_row(i), beta_at(i));
        for j in 0..i {
            l[i * c + j] = beta_i * dot(k_i, k_row(j)) * decay[i * c + j];
        }
    }

    // Forward substitution with the unit lower-triangular (I + L):
    // U_i = beta_i v_i          - sum_{j<i} L[i][j] U_j
    // W_i = beta_i e^(G_i) k_i  - sum_{j<i} L[i][j] W_j
    for i in 0..n {
        let beta_i = beta_at(i);
        let (u_done, u_rest) = u.split_at_mut(i * dv);
        let u_i = &mut u_rest[..dv];
        for (x, &v_j) in u_i.iter_mut().zip(v_row(i)) {
            *x = beta_i * v_j;
        }
        let (w_done, w_rest) = w.split_at_mut(i * dk);
        let w_i = &mut w_rest[..dk];
        let bk = beta_i * decay_in[i];
        for (x, &k_j) in w_i.iter_mut().zip(k_row(i)) {
            *x = bk * k_j;
        }
        for j in 0..i {
            let l_ij = l[i * c + j];
            axpy(-l_ij, &u_done[j * dv..][..dv], u_i);
            axpy(-l_ij, &w_done[j * dk..][..dk], w_i);
        }
    }

    // Vnew_i = U_i - W_i^T S0, in place in u.
    for i in 0..n {
        let u_i = &mut u[i * dv..][..dv];
        for (s_row, &w_ia) in s0.chunks_exact(dv).zip(&w[i * dk..][..dk]) {
            axpy(-w_ia, s_row, u_i);
        }
    }

    // O_i = e^(G_i) q_i^T S0 + sum_{j<=i} A[i][j] Vnew_j, with the intra-chunk
    // A[i][j] = (q_i . k_j) Gamma[i][j] (diagonal included) formed on the fly.
    for i in 0..n {
        let q_i = q_row(i);
        let o_i = &mut o[i * dv..][..dv];
        o_i.fill(0.0);
        for (s_row, &q_ia) in s0.chunks_exact(dv).zip(q_i) {
            axpy(q_ia, s_row, o_i);
        }
        let d_in = decay_in[i];
        for x in o_i.iter_mut() {
            *x *= d_in;
        }
        for j in 0..=i {
            let a_ij = dot(q_i, k_row(j)) * decay[i * c + j];
            axpy(a_ij, &u[j * dv..][..dv], o_i);
        }
    }

    // S <- e^(G_n) S0 + sum_j e^(G_n - G_j) k_j Vnew_j^T.
    let d_all = decay_in[n - 1];
    for x in s0.iter_mut() {
        *x *= d_all;
    }
    for j in 0..n {
        let k_j = k_row(j);
        let vnew_j = &u[j * dv..][..dv];
        let d_j = decay_out[j];
        for (s_row, &k_ja) in s0.chunks_exact_mut(dv).zip(k_j) {
            axpy(d_j * k_ja, vnew_j, s_row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_decays;

    /// The column products equal the direct `e^(G_i - G_j)` to f32 rounding,
    /// for mild and strong decays (down to about `e^-1000` over a chunk, far
    /// past f32's range), and the other outputs keep their definitions.
    #[test]
    fn gamma_products_equal_the_direct_exponentials() {
        let mut next = crate::act::uniform(0x5EED_0DD5);
        for (case, scale) in [0.01f32, 0.3, 30.0].into_iter().enumerate() {
            for n in [1, 7, 64] {
                let (stride, gs) = (3, 64);
                let g: Vec<f32> = (0..n * stride).map(|_| -scale * (next() + 1.0)).collect();
                let (mut g_cum, mut d_in, mut d_out) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                let mut gamma = vec![f32::NAN; n * gs];
                chunk_decays(&g, stride, n, &mut g_cum, &mut d_in, &mut d_out, &mut gamma, gs);
                let cum: Vec<f64> =
                    (0..n).scan(0.0f64, |a, i| Some(*a + g[i * stride] as f64).inspect(|v| *a = *v)).collect();
                for i in 0..n {
                    assert_eq!(d_in[i], cum[i].exp() as f32, "case {case} n {n} decay_in {i}");
                    assert_eq!(d_out[i], (cum[n - 1] - cum[i]).exp() as f32, "case {case} n {n} decay_out {i}");
                    for j in 0..=i {
                        let (got, want) = (gamma[i * gs + j], (cum[i] - cum[j]).exp() as f32);
                        let tol = 2.0 * f32::EPSILON * want + f32::MIN_POSITIVE;
                        assert!((got - want).abs() <= tol, "case {case} n {n} gamma[{i}][{j}]: {got} against {want}");
                    }
                }
            }
        }
    }
}
