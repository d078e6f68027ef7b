//! Depthwise causal 1-D convolution followed by SiLU: the short conv that
//! mixes each channel of the GDN projection `m = [q | k | v]` over the last
//! `K` tokens (spec 2.5.3).
//!
//! Per channel `c` and token `t`:
//! `out[t][c] = silu( sum_{j=0}^{K-1} w[c][j] * m[t - (K-1) + j][c] )`,
//! where rows before the current call come from the conv state (spec 3):
//! the last `K-1` input rows, oldest first, zeros at sequence start. `w[c][K-1]`
//! multiplies the current token. No bias.
//!
//! Invariant that makes prefill and decode agree bit for bit: each output is
//! the same K products summed in the same order (j ascending) whether its
//! inputs come from the state or from this call, so one call with T tokens,
//! T calls with one token, and any chunking give identical outputs and states.
//! Accumulation is f32 (HF runs this conv in the activation dtype).

/// Convolves `n_tokens` rows, applies SiLU, and advances the conv state.
///
/// * `x`: `[n_tokens, channels]`, this call's raw input rows.
/// * `weight`: `[channels, kernel]`, `w[c][j]`; `j = kernel - 1` multiplies the
///   current token (HF `conv1d.weight[c, 0, j]`).
/// * `state`: `[kernel - 1, channels]`, the previous `kernel - 1` input rows,
///   oldest first (zeros at sequence start). On return it holds the last
///   `kernel - 1` rows of `[state; x]`, which works for any `n_tokens`,
///   including fewer than `kernel - 1`.
/// * `out`: `[n_tokens, channels]`, overwritten with `silu(conv)`.
///
/// # Panics
/// If `kernel == 0` or any buffer has the wrong length (caller contract).
pub fn causal_conv1d_silu(
    x: &[f32],
    weight: &[f32],
    state: &mut [f32],
    n_tokens: usize,
    channels: usize,
    kernel: usize,
    out: &mut [f32],
) {
    assert!(kernel > 0, "causal_conv1d_silu: kernel must be > 0");
    let hist = kernel - 1;
    assert!(x.len() == n_tokens * channels, "causal_conv1d_silu: x length");
    assert!(out.len() == n_tokens * channels, "causal_conv1d_silu: out length");
    assert!(weight.len() == channels * kernel, "causal_conv1d_silu: weight length");
    assert!(state.len() == hist * channels, "causal_conv1d_silu: state length");

    for t in 0..n_tokens {
        let out_row = &mut out[t * channels..][..channels];
        out_row.fill(0.0);
        for j in 0..kernel {
            // Input row at relative time t - (K-1) + j: from the state when
            // that is before this call, from x otherwise.
            let src = if t + j < hist {
                &state[(t + j) * channels..][..channels]
            } else {
                &x[(t + j - hist) * channels..][..channels]
            };
            for c in 0..channels {
                out_row[c] += weight[c * kernel + j] * src[c];
            }
        }
        for o in out_row.iter_mut() {
            *o = silu(*o);
        }
    }

    advance_state(x, state, n_tokens, channels, kernel);
}

/// Sets `state` (`[kernel - 1, channels]`) to the last `kernel - 1` rows of
/// `[state; x]`, for any number of new rows, fewer than `kernel - 1` included.
pub(crate) fn advance_state(x: &[f32], state: &mut [f32], n_tokens: usize, channels: usize, kernel: usize) {
    let hist = kernel - 1;
    if hist == 0 {
        return;
    }
    if n_tokens >= hist {
        state.copy_from_slice(&x[(n_tokens - hist) * channels..]);
    } else {
        // Keep the newest hist - n_tokens old rows, then append all of x.
        let keep = hist - n_tokens;
        state.copy_within(n_tokens * channels.., 0);
        state[keep * channels..].copy_from_slice(x);
    }
}

/// `x * sigmoid(x)`, written so that large negative `x` gives -0, not NaN.
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
