//! Gated full attention (spec 2.3): per-head interleaved query/gate
//! projection, zero-centred q/k norms, partial rotate-half RoPE, GQA,
//! sigmoid output gate.

use qmoe_kernels::act::sigmoid;
use qmoe_kernels::attention::AttnShape;
use qmoe_kernels::linear::matmul;
use qmoe_kernels::norm::rms_norm_inplace;
use qmoe_kernels::rope::RopeTable;
use qmoe_kernels::simd::attention::attend_parallel;
use qmoe_kernels::simd::gemm::{matmul_many, Product};

use crate::config::Config;
use crate::scratch::{take, AttnScratch};
use crate::weights::Attention;

/// `x`: `[T, H]` normed input; `y`: `[T, H]` output. `k_cache`/`v_cache`
/// hold `start_pos` rows and gain `T` more.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    w: &Attention,
    cfg: &Config,
    rope: &RopeTable,
    x: &[f32],
    n_tokens: usize,
    start_pos: usize,
    k_cache: &mut Vec<f32>,
    v_cache: &mut Vec<f32>,
    s: &mut AttnScratch,
    y: &mut [f32],
) {
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let t = n_tokens;

    // q (with gate), k and v in one kernel call sharing the quantized input.
    let qg = take(&mut s.qg, t * nh * 2 * hd);
    let k = take(&mut s.k, t * nkv * hd);
    let v = take(&mut s.v, t * nkv * hd);
    matmul_many(&mut [
        Product { w: w.q_proj.view(), x, y: &mut *qg, n_tokens: t },
        Product { w: w.k_proj.view(), x, y: &mut *k, n_tokens: t },
        Product { w: w.v_proj.view(), x, y: &mut *v, n_tokens: t },
    ]);

    // Split each head's [query | gate] block (shape [T, nh, 2*hd]).
    let q = take(&mut s.q, t * nh * hd);
    let gate = take(&mut s.gate, t * nh * hd);
    for (row, (qr, gr)) in qg.chunks_exact(2 * hd).zip(q.chunks_exact_mut(hd).zip(gate.chunks_exact_mut(hd))) {
        qr.copy_from_slice(&row[..hd]);
        gr.copy_from_slice(&row[hd..]);
    }

    // Norm before RoPE; the gate is neither normed nor rotated.
    rms_norm_inplace(q, &w.q_norm, cfg.rms_norm_eps);
    rms_norm_inplace(k, &w.k_norm, cfg.rms_norm_eps);
    for ti in 0..t {
        let pos = start_pos + ti;
        for head in q[ti * nh * hd..(ti + 1) * nh * hd].chunks_exact_mut(hd) {
            rope.apply_neox(head, pos);
        }
        for head in k[ti * nkv * hd..(ti + 1) * nkv * hd].chunks_exact_mut(hd) {
            rope.apply_neox(head, pos);
        }
    }
    k_cache.extend_from_slice(k);
    v_cache.extend_from_slice(v);

    let out = take(&mut s.out, t * nh * hd);
    let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
    let level = qmoe_kernels::simd::level();
    let scale = 1.0 / (hd as f32).sqrt();
    let room = k_cache.capacity() / (nkv * hd);
    attend_parallel(level, q, k_cache, v_cache, start_pos, t, shape, scale, room, &mut s.scores, out);

    for (o, &g) in out.iter_mut().zip(gate.iter()) {
        *o *= sigmoid(g);
    }
    matmul(&w.o_proj.view(), out, y, t);
}
