//! Causal softmax attention over a KV cache: the core of the gated full
//! attention layer (spec 2.3). Projections, q/k norms, RoPE and the sigmoid
//! output gate belong to the model; this module only does
//! `softmax(q K^T * scale + causal mask) V` with grouped-query heads.
//!
//! KV cache layout (owned by the caller, one pair per attention layer):
//! `k`, `v`: `[pos][n_kv_heads][head_dim]` f32, position-major so that
//! appending a step's rows is a plain extend at the end. Before calling
//! [`attend`] for tokens `start_pos..start_pos + n_tokens`, the caller has
//! already appended their K/V rows, so the cache holds at least
//! `n_ctx = start_pos + n_tokens` positions. (The spec's table writes the HF
//! order `[nkv, T, hd]`; the content is the same, only the axis order differs.)
//!
//! Numerics: dot products and the softmax are f32 (max subtracted before
//! `exp`), as in HF's fp32 softmax. The result does not depend on how tokens
//! are batched: query `i` reads the same cache rows in the same order whether
//! it arrives alone or with others, so prefill and decode agree bit for bit.

/// Head geometry of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads (`num_attention_heads`).
    pub n_heads: usize,
    /// Key/value heads (`num_key_value_heads`); divides `n_heads`.
    pub n_kv_heads: usize,
    /// Entries per head (`head_dim`).
    pub head_dim: usize,
}

impl AttnShape {
    /// Query heads that share one KV head (`n_heads / n_kv_heads`).
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Floats per token of `q` and of the output: `n_heads * head_dim`.
    pub fn q_row_len(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Floats per position of the K (or V) cache: `n_kv_heads * head_dim`.
    pub fn kv_row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// KV head read by query head `h` (repeat-interleave: `h / group`).
    pub fn kv_head(&self, h: usize) -> usize {
        h / self.group()
    }
}

/// Causal attention for `n_tokens` queries at absolute positions
/// `start_pos..start_pos + n_tokens`.
///
/// * `q`: `[n_tokens, n_heads, head_dim]` (already normed and rotated).
/// * `k_cache`, `v_cache`: `[>= n_ctx, n_kv_heads, head_dim]` with
///   `n_ctx = start_pos + n_tokens`; only the first `n_ctx` positions are read.
/// * `scale`: multiplies `q . k` (`head_dim^-0.5` for these models).
/// * `scores`: scratch, `[>= n_ctx]`; its contents on return are unspecified.
/// * `out`: `[n_tokens, n_heads, head_dim]`, overwritten.
///
/// Query `i` sees cache positions `0..=start_pos + i`; query head `h` uses KV
/// head `h / (n_heads / n_kv_heads)`.
///
/// # Panics
/// On caller-contract violations: `n_kv_heads == 0` or not dividing
/// `n_heads`, or any buffer of the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    start_pos: usize,
    n_tokens: usize,
    shape: AttnShape,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let AttnShape { n_heads, n_kv_heads, head_dim } = shape;
    assert!(
        n_kv_heads > 0 && n_heads % n_kv_heads == 0,
        "attend: n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})"
    );
    let n_ctx = start_pos + n_tokens;
    let q_row = shape.q_row_len();
    let kv_row = shape.kv_row_len();
    assert!(q.len() == n_tokens * q_row, "attend: q length");
    assert!(out.len() == n_tokens * q_row, "attend: out length");
    assert!(
        k_cache.len() >= n_ctx * kv_row && v_cache.len() >= n_ctx * kv_row,
        "attend: cache holds fewer than start_pos + n_tokens positions"
    );
    assert!(scores.len() >= n_ctx, "attend: scores scratch shorter than n_ctx");

    for i in 0..n_tokens {
        // Query i may look at positions 0..n_seen (inclusive of itself).
        let n_seen = start_pos + i + 1;
        let scores = &mut scores[..n_seen];
        for h in 0..n_heads {
            let kvh = shape.kv_head(h);
            let qh = &q[i * q_row + h * head_dim..][..head_dim];

            // scores[p] = scale * q . k_p, tracking the maximum.
            let mut max = f32::NEG_INFINITY;
            for (p, s) in scores.iter_mut().enumerate() {
                let kp = &k_cache[p * kv_row + kvh * head_dim..][..head_dim];
                let dot: f32 = qh.iter().zip(kp).map(|(a, b)| a * b).sum();
                *s = dot * scale;
                max = max.max(*s);
            }

            // Softmax numerators, max subtracted so exp never overflows.
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            // Normalise the probabilities first, as HF does (softmax, then @ V).
            let inv_sum = 1.0 / sum;
            for s in scores.iter_mut() {
                *s *= inv_sum;
            }

            // out = sum_p prob_p * v_p, accumulated one cache row at a time.
            let oh = &mut out[i * q_row + h * head_dim..][..head_dim];
            oh.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                let vp = &v_cache[p * kv_row + kvh * head_dim..][..head_dim];
                for (o, &x) in oh.iter_mut().zip(vp) {
                    *o += w * x;
                }
            }
        }
    }
}
