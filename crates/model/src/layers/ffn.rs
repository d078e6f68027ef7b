//! Feed-forward sub-layers: dense SwiGLU (spec 2.6) and the sparse MoE with
//! a sigmoid-gated shared expert (spec 2.7).

use qmoe_kernels::act::{sigmoid, softmax, swiglu, top_k};
use qmoe_kernels::linear::{matmul, matvec};

use crate::config::Config;
use crate::scratch::{take, MoeScratch};
use crate::weights::{Moe, SwiGlu};

/// `y = down · (silu(gate · x) ⊙ (up · x))` for `[T, H]` rows.
pub fn dense(w: &SwiGlu, x: &[f32], n_tokens: usize, s: &mut MoeScratch, y: &mut [f32]) {
    let t = n_tokens;
    let f = w.gate.rows;
    let gate = take(&mut s.sh_gate, t * f);
    matmul(&w.gate.view(), x, gate, t);
    let up = take(&mut s.sh_up, t * f);
    matmul(&w.up.view(), x, up, t);
    let act = take(&mut s.sh_act, t * f);
    swiglu(gate, up, act);
    matmul(&w.down.view(), act, y, t);
}

/// Softmax over all experts, top-k, renormalise (when `norm_topk_prob`),
/// weighted sum of the chosen experts, plus the gated shared expert.
pub fn moe(w: &Moe, cfg: &Config, x: &[f32], n_tokens: usize, s: &mut MoeScratch, y: &mut [f32]) {
    let (t, h, e, k) = (n_tokens, cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok);

    // Shared expert first: it writes all of y.
    dense(&w.shared, x, t, s, y);
    let sh_scale = take(&mut s.sh_scale, t);
    matmul(&w.shared_gate.view(), x, sh_scale, t);
    for (row, &g) in y.chunks_exact_mut(h).zip(sh_scale.iter()) {
        let gate = sigmoid(g);
        row.iter_mut().for_each(|v| *v *= gate);
    }

    // Router in f32: probabilities over all experts, ranked in f32.
    let probs = take(&mut s.probs, t * e);
    matmul(&w.router.view(), x, probs, t);
    if s.top.len() != k {
        s.top.resize(k, 0);
    }
    let inter = cfg.moe_intermediate_size;
    for ti in 0..t {
        let p = &mut probs[ti * e..(ti + 1) * e];
        softmax(p);
        top_k(p, k, &mut s.top);
        let norm = if cfg.norm_topk_prob { s.top.iter().map(|&i| p[i]).sum::<f32>() } else { 1.0 };
        let xr = &x[ti * h..(ti + 1) * h];
        for &ex in &s.top {
            let weight = p[ex] / norm;
            let expert = &w.experts[ex];
            let gate = take(&mut s.gate, inter);
            matvec(&expert.gate.view(), xr, gate);
            let up = take(&mut s.up, inter);
            matvec(&expert.up.view(), xr, up);
            let act = take(&mut s.act, inter);
            swiglu(gate, up, act);
            let out = take(&mut s.out, h);
            matvec(&expert.down.view(), act, out);
            for (yv, &o) in y[ti * h..(ti + 1) * h].iter_mut().zip(out.iter()) {
                *yv += weight * o;
            }
        }
    }
}
