//! Gated DeltaNet (spec 2.5): projections, causal conv + SiLU, l2-normalised
//! q/k, decay and write gates, the delta rule over an f32 state, and the
//! gated RMSNorm before the output projection.
//!
//! A call with several tokens runs the chunked algorithm (prefill); a single
//! token runs the recurrence (decode). Both continue from the cached state.

use qmoe_kernels::gdn::{GdnScratch, GdnShape};
use qmoe_kernels::gdn_prep::{gdn_prep, PrepOut, PrepWeights};
use qmoe_kernels::linear::matmul;
use qmoe_kernels::norm::rms_norm_gated_inplace;
use qmoe_kernels::simd::gdn::{gdn_chunked_parallel, gdn_recurrent_parallel};
use qmoe_kernels::simd::gemm::{matmul_many, Product};

use crate::config::Config;
use crate::scratch::{take, GdnBuffers};
use crate::weights::{Gdn, GdnProj, Mat};

/// Tokens per chunk in the chunked prefill (HF and llama.cpp use 64).
pub const CHUNK: usize = 64;

/// `x`: `[T, H]` normed input; `y`: `[T, H]` output.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    w: &Gdn,
    cfg: &Config,
    x: &[f32],
    n_tokens: usize,
    conv_state: &mut [f32],
    ssm_state: &mut [f32],
    s: &mut GdnBuffers,
    y: &mut [f32],
) {
    let t = n_tokens;
    let (hk, hv, dk, dv) =
        (cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim);
    let (kd, vd, cd) = (cfg.key_dim(), cfg.value_dim(), cfg.conv_dim());

    // Projections into mixed [T, q|k|v], z [T, Hv*Dv], b and a [T, Hv].
    let mixed = take(&mut s.mixed, t * cd);
    let z = take(&mut s.z, t * vd);
    let b = take(&mut s.b, t * hv);
    let a = take(&mut s.a, t * hv);
    // All input projections of the layer in one kernel call: one activation
    // quantization and one pool dispatch instead of one per matrix.
    fn product<'a>(m: &'a Mat, x: &'a [f32], y: &'a mut [f32], t: usize) -> Product<'a> {
        Product::new(m.view(), x, y, t)
    }
    match &w.proj {
        GdnProj::Separate { qkv, z: wz, b: wb, a: wa } => {
            matmul_many(&mut [
                product(qkv, x, mixed, t),
                product(wz, x, z, t),
                product(wb, x, b, t),
                product(wa, x, a, t),
            ]);
        }
        GdnProj::FusedGrouped { qkvz, ba } => {
            let fused = take(&mut s.fused, t * (2 * kd + 2 * vd));
            let bab = take(&mut s.ba, t * 2 * hv);
            matmul_many(&mut [product(qkvz, x, fused, t), product(ba, x, bab, t)]);
            ungroup_qkvz(cfg, fused, t, mixed, z);
            ungroup_ba(cfg, bab, t, b, a);
        }
        GdnProj::SplitGroupedBa { qkv, z: wz, ba } => {
            let bab = take(&mut s.ba, t * 2 * hv);
            matmul_many(&mut [product(qkv, x, mixed, t), product(wz, x, z, t), product(ba, x, bab, t)]);
            ungroup_ba(cfg, bab, t, b, a);
        }
    }

    // Conv + SiLU, per-head q/k/v with l2-normed q and k, and the gates, in
    // one pass over the projections.
    let shape = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv };
    let q = take(&mut s.q, t * kd);
    let k = take(&mut s.k, t * kd);
    let v = take(&mut s.v, t * vd);
    let beta = take(&mut s.beta, t * hv);
    let g = take(&mut s.g, t * hv);
    let level = qmoe_kernels::simd::level();
    let prep =
        PrepWeights { conv: &w.conv, kernel: cfg.linear_conv_kernel_dim, a_neg_exp: &w.a_neg_exp, dt_bias: &w.dt_bias };
    gdn_prep(
        level,
        prep,
        shape,
        mixed,
        b,
        a,
        conv_state,
        t,
        PrepOut { q: &mut *q, k: &mut *k, v: &mut *v, beta: &mut *beta, g: &mut *g },
    );

    let out = take(&mut s.out, t * vd);
    if t == 1 {
        gdn_recurrent_parallel(level, q, k, v, beta, g, ssm_state, shape, w.head_map, out);
    } else {
        // One chunk scratch per worker thread (heads are split over them).
        let n = qmoe_kernels::threads::get().min(hv);
        if s.chunk.len() != n || s.chunk[0].shape() != shape {
            s.chunk = (0..n).map(|_| GdnScratch::new(shape, CHUNK)).collect();
        }
        gdn_chunked_parallel(level, q, k, v, beta, g, ssm_state, shape, w.head_map, CHUNK, &mut s.chunk, out);
    }

    rms_norm_gated_inplace(out, z, &w.norm, cfg.rms_norm_eps);
    matmul(&w.out_proj.view(), out, y, t);
}

/// Qwen3-Next fused outputs are grouped per key head g (spec 2.5.2):
/// `qkvz` rows `[q_g (Dk) | k_g (Dk) | v_g (r*Dv) | z_g (r*Dv)]`. Scatter
/// them into the separate layout `mixed = [q | k | v]`, `z`.
fn ungroup_qkvz(cfg: &Config, fused: &[f32], t: usize, mixed: &mut [f32], z: &mut [f32]) {
    let (hk, dk, dv) = (cfg.linear_num_key_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim);
    let r = cfg.linear_num_value_heads / hk;
    let (kd, vd, cd) = (cfg.key_dim(), cfg.value_dim(), cfg.conv_dim());
    let group = 2 * dk + 2 * r * dv;
    for ti in 0..t {
        let row = &fused[ti * (2 * kd + 2 * vd)..(ti + 1) * (2 * kd + 2 * vd)];
        let m = &mut mixed[ti * cd..(ti + 1) * cd];
        let zr = &mut z[ti * vd..(ti + 1) * vd];
        for gi in 0..hk {
            let grp = &row[gi * group..(gi + 1) * group];
            m[gi * dk..(gi + 1) * dk].copy_from_slice(&grp[..dk]);
            m[kd + gi * dk..kd + (gi + 1) * dk].copy_from_slice(&grp[dk..2 * dk]);
            let vs = 2 * kd + gi * r * dv;
            m[vs..vs + r * dv].copy_from_slice(&grp[2 * dk..2 * dk + r * dv]);
            zr[gi * r * dv..(gi + 1) * r * dv].copy_from_slice(&grp[2 * dk + r * dv..]);
        }
    }
}

/// `ba` rows are grouped per key head: `[b_g (r) | a_g (r)]`.
fn ungroup_ba(cfg: &Config, ba: &[f32], t: usize, b: &mut [f32], a: &mut [f32]) {
    let (hk, hv) = (cfg.linear_num_key_heads, cfg.linear_num_value_heads);
    let r = hv / hk;
    for ti in 0..t {
        for gi in 0..hk {
            let bar = &ba[ti * 2 * hv + gi * 2 * r..ti * 2 * hv + (gi + 1) * 2 * r];
            b[ti * hv + gi * r..ti * hv + (gi + 1) * r].copy_from_slice(&bar[..r]);
            a[ti * hv + gi * r..ti * hv + (gi + 1) * r].copy_from_slice(&bar[r..]);
        }
    }
}
