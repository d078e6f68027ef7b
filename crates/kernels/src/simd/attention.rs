//! Causal attention at speed: the reference [`crate::attention::attend`]
//! reorganised around the KV head.
//!
//! A unit of work is one query token and one KV head: the `r = n_heads /
//! n_kv_heads` query heads that share the KV head are scored together, so
//! each cached key and value row is read once for all of them (GQA sharing;
//! 8 query heads per KV head at the 35B-A3B shape). Units run on the pool;
//! the loops are instantiated per [`Level`] and use the eight-lane
//! [`crate::vecops::dot`], so they vectorise.

use super::Level;
use crate::attention::AttnShape;
use crate::pool::SharedMut;
use crate::vecops::{axpy, dot};

/// Same contract as [`crate::attention::attend`]; `scores` is grow-only
/// scratch owned by the caller, sized here for `max(n_ctx, ctx_capacity)`
/// positions, so a caller passing its KV cache's capacity sees it grow
/// with the cache, not token by token.
#[allow(clippy::too_many_arguments)]
pub fn attend_parallel(
    level: Level,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    start_pos: usize,
    n_tokens: usize,
    shape: AttnShape,
    scale: f32,
    ctx_capacity: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let AttnShape { n_heads, n_kv_heads, head_dim } = shape;
    assert!(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attend: n_kv_heads must divide n_heads");
    let n_ctx = start_pos + n_tokens;
    let (q_row, kv_row, r) = (shape.q_row_len(), shape.kv_row_len(), n_heads / n_kv_heads);
    assert!(q.len() == n_tokens * q_row && out.len() == n_tokens * q_row, "attend: q/out length");
    assert!(k_cache.len() >= n_ctx * kv_row && v_cache.len() >= n_ctx * kv_row, "attend: cache too short");

    let units = n_tokens * n_kv_heads;
    let groups = crate::threads::get().min(units).max(1);
    let per_group = r * n_ctx;
    let want = crate::threads::get().max(groups) * r * n_ctx.max(ctx_capacity);
    if scores.len() < want {
        scores.resize(want, 0.0);
    }
    let (sp, op) = (SharedMut::new(scores), SharedMut::new(out));
    let task = |gi: usize| {
        // SAFETY: group `gi` alone uses scores `[gi * per_group, +per_group)`
        // and units `u ≡ gi (mod groups)`, whose output rows (query token
        // `u / n_kv`, heads of KV head `u % n_kv`) no other unit writes.
        let sc = unsafe { std::slice::from_raw_parts_mut(sp.at(gi * per_group), per_group) };
        for u in (gi..units).step_by(groups) {
            let (i, kvh) = (u / n_kv_heads, u % n_kv_heads);
            let n_seen = start_pos + i + 1;
            let qs = &q[i * q_row + kvh * r * head_dim..][..r * head_dim];
            let os = unsafe { std::slice::from_raw_parts_mut(op.at(i * q_row + kvh * r * head_dim), r * head_dim) };
            let args = Unit { qs, k_cache, v_cache, kvh, head_dim, kv_row, r, n_seen, scale };
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Level::Avx2` is only reported when the CPU has AVX2 + FMA.
                Level::Avx2 => unsafe { unit_avx2(&args, sc, os) },
                _ => unit(&args, sc, os),
            }
        }
    };
    if groups == 1 || n_ctx * n_heads * head_dim * n_tokens < 1 << 15 {
        (0..groups).for_each(task);
    } else {
        crate::pool::run(groups, &task);
    }
}

struct Unit<'a> {
    /// `[r, head_dim]` the query heads sharing KV head `kvh`.
    qs: &'a [f32],
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    kvh: usize,
    head_dim: usize,
    kv_row: usize,
    r: usize,
    n_seen: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(u: &Unit, scores: &mut [f32], out: &mut [f32]) {
    unit(u, scores, out)
}

/// One query token, one KV head: scores `[r, n_seen]`, softmax, weighted V.
#[inline(always)]
fn unit(u: &Unit, scores: &mut [f32], out: &mut [f32]) {
    let (hd, n) = (u.head_dim, u.n_seen);
    let key = |p: usize| &u.k_cache[p * u.kv_row + u.kvh * hd..][..hd];
    let val = |p: usize| &u.v_cache[p * u.kv_row + u.kvh * hd..][..hd];
    for p in 0..n {
        let kp = key(p);
        for j in 0..u.r {
            scores[j * n + p] = dot(&u.qs[j * hd..][..hd], kp) * u.scale;
        }
    }
    for j in 0..u.r {
        let s = &mut scores[j * n..][..n];
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for v in s.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        s.iter_mut().for_each(|v| *v *= inv);
    }
    out.fill(0.0);
    for p in 0..n {
        let vp = val(p);
        for j in 0..u.r {
            axpy(scores[j * n + p], vp, &mut out[j * hd..][..hd]);
        }
    }
}
