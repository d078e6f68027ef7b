//! Gated full attention (spec 2.3): per-head interleaved query/gate
//! projection, zero-centred q/k norms, partial rotate-half RoPE, GQA,
//! sigmoid output gate.

use qmoe_kernels::act::mul_sigmoid;
use qmoe_kernels::attention::AttnShape;
use qmoe_kernels::linear::matmul;
use qmoe_kernels::norm::rms_norm_inplace;
use qmoe_kernels::pool::for_chunk_pieces;
use qmoe_kernels::rope::{rotate_neox, RopeTable};
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
        Product::new(w.q_proj.view(), x, &mut *qg, t),
        Product::new(w.k_proj.view(), x, &mut *k, t),
        Product::new(w.v_proj.view(), x, &mut *v, t),
    ]);

    // Split each head's [query | gate] block (shape [T, nh, 2*hd]).
    let q = take(&mut s.q, t * nh * hd);
    let gate = take(&mut s.gate, t * nh * hd);
    let qg = &*qg;
    for (half, part) in [(0, &mut *q), (hd, &mut *gate)] {
        for_chunk_pieces(part, hd, TOKENS_A_PIECE * nh, &|a, heads| {
            for (head, row) in heads.chunks_exact_mut(hd).zip(qg[2 * a * hd..].chunks_exact(2 * hd)) {
                head.copy_from_slice(&row[half..half + hd]);
            }
        });
    }

    // Norm before RoPE; the gate is neither normed nor rotated.
    rms_norm_inplace(q, &w.q_norm, cfg.rms_norm_eps);
    rms_norm_inplace(k, &w.k_norm, cfg.rms_norm_eps);
    rope_tokens(rope, q, nh * hd, hd, start_pos);
    rope_tokens(rope, k, nkv * hd, hd, start_pos);
    k_cache.extend_from_slice(k);
    v_cache.extend_from_slice(v);

    let out = take(&mut s.out, t * nh * hd);
    let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
    let level = qmoe_kernels::simd::level();
    let scale = 1.0 / (hd as f32).sqrt();
    let room = k_cache.capacity() / (nkv * hd);
    attend_parallel(level, q, k_cache, v_cache, start_pos, t, shape, scale, room, &mut s.scores, out);

    let gate = &*gate;
    for_chunk_pieces(out, nh * hd, TOKENS_A_PIECE, &|a, out| {
        mul_sigmoid(out, &gate[a * nh * hd..][..out.len()]);
    });
    matmul(&w.o_proj.view(), out, y, t);
}

/// Tokens a pool piece for the per-token steps of a prefill (the split of
/// query and gate, RoPE, the output gate): on the calling thread alone they
/// took about 1% of a Q4_K_M prefill's samples, the other thread idle.
const TOKENS_A_PIECE: usize = 8;

/// RoPE on every head of `x` (`[T, row]`, heads of `hd`), token `ti` at
/// position `start + ti`: tokens in pool pieces, each token's `cos` and
/// `sin` computed once for all its heads (the values of
/// [`RopeTable::apply_neox`] per head, bit for bit).
fn rope_tokens(rope: &RopeTable, x: &mut [f32], row: usize, hd: usize, start: usize) {
    // Slots of the table on the stack (64 rotary dims in the released models).
    const MAX_SLOTS: usize = 128;
    let half = rope.rotary_dims() / 2;
    for_chunk_pieces(x, row, TOKENS_A_PIECE, &|a, rows| {
        let (mut cos, mut sin) = ([0f32; MAX_SLOTS], [0f32; MAX_SLOTS]);
        for (ti, heads) in (a..).zip(rows.chunks_exact_mut(row)) {
            if half <= MAX_SLOTS {
                let (c, s) = (&mut cos[..half], &mut sin[..half]);
                rope.fill_cos_sin(start + ti, c, s);
                heads.chunks_exact_mut(hd).for_each(|head| rotate_neox(head, c, s));
            } else {
                heads.chunks_exact_mut(hd).for_each(|head| rope.apply_neox(head, start + ti));
            }
        }
    });
}
