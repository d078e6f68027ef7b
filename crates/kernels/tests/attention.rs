//! Attention reference tests: against a per-element f64 implementation over
//! several head layouts (MHA, GQA 4/2, 6/2, 16/2), decode with one token, and
//! the batching invariance (one call with T tokens == T one-token calls).

use qmoe_kernels::attention::{attend, AttnShape};

mod common;
use common::Rng;

const SHAPES: [AttnShape; 5] = [
    AttnShape { n_heads: 4, n_kv_heads: 4, head_dim: 8 },
    AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 16 },
    AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 12 },
    AttnShape { n_heads: 3, n_kv_heads: 1, head_dim: 5 },
    AttnShape { n_heads: 16, n_kv_heads: 2, head_dim: 256 },
];

/// Straightforward f64 attention: every score, softmax and sum in f64.
fn attend_f64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start_pos: usize,
    n_tokens: usize,
    s: AttnShape,
    scale: f32,
) -> Vec<f64> {
    let hd = s.head_dim;
    let mut out = vec![0.0f64; n_tokens * s.n_heads * hd];
    for i in 0..n_tokens {
        for h in 0..s.n_heads {
            let kvh = h / (s.n_heads / s.n_kv_heads);
            let n_seen = start_pos + i + 1;
            let mut sc = vec![0.0f64; n_seen];
            for (p, x) in sc.iter_mut().enumerate() {
                let mut d = 0.0f64;
                for e in 0..hd {
                    d += q[(i * s.n_heads + h) * hd + e] as f64 * k[(p * s.n_kv_heads + kvh) * hd + e] as f64;
                }
                *x = d * scale as f64;
            }
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
            for (p, x) in sc.iter().enumerate() {
                let w = (x - m).exp() / z;
                for e in 0..hd {
                    out[(i * s.n_heads + h) * hd + e] += w * v[(p * s.n_kv_heads + kvh) * hd + e] as f64;
                }
            }
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

#[test]
fn matches_f64_reference() {
    let mut rng = Rng(11);
    let mut worst = 0.0f64;
    for s in SHAPES {
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        // (start_pos, n_tokens): prefill from 0, continued prefill, decode.
        for &(start, t) in &[(0usize, 1usize), (0, 9), (5, 4), (20, 1), (63, 2)] {
            let n_ctx = start + t;
            let q = rng.vec(t * s.q_row_len(), 1.0);
            let k = rng.vec(n_ctx * s.kv_row_len(), 1.0);
            let v = rng.vec(n_ctx * s.kv_row_len(), 1.0);
            let mut scores = vec![0.0f32; n_ctx];
            let mut out = vec![f32::NAN; t * s.q_row_len()];
            attend(&q, &k, &v, start, t, s, scale, &mut scores, &mut out);
            let d = max_abs_diff(&out, &attend_f64(&q, &k, &v, start, t, s, scale));
            worst = worst.max(d);
            assert!(d < 2e-6, "{s:?} start {start} T {t}: max diff {d}");
        }
    }
    eprintln!("attention vs f64: max abs diff {worst:.3e}");
}

#[test]
fn one_call_equals_token_by_token() {
    let mut rng = Rng(12);
    for s in SHAPES {
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let (start, t) = (3usize, 11usize);
        let n_ctx = start + t;
        let q = rng.vec(t * s.q_row_len(), 1.0);
        let k = rng.vec(n_ctx * s.kv_row_len(), 1.0);
        let v = rng.vec(n_ctx * s.kv_row_len(), 1.0);
        let mut scores = vec![0.0f32; n_ctx];

        let mut batched = vec![0.0f32; t * s.q_row_len()];
        attend(&q, &k, &v, start, t, s, scale, &mut scores, &mut batched);

        let mut single = vec![0.0f32; t * s.q_row_len()];
        for i in 0..t {
            // The cache as a decode step sees it: only positions up to this token.
            let n = start + i + 1;
            let row = s.q_row_len();
            attend(
                &q[i * row..][..row],
                &k[..n * s.kv_row_len()],
                &v[..n * s.kv_row_len()],
                start + i,
                1,
                s,
                scale,
                &mut scores,
                &mut single[i * row..][..row],
            );
        }
        assert_eq!(batched, single, "{s:?}");
    }
}

#[test]
fn never_reads_past_the_causal_horizon() {
    // Positions beyond n_ctx are NaN: a preallocated cache may hold anything there.
    let mut rng = Rng(13);
    let s = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 12 };
    let (start, t, cap) = (4usize, 3usize, 20usize);
    let n_ctx = start + t;
    let q = rng.vec(t * s.q_row_len(), 1.0);
    let mut k = rng.vec(cap * s.kv_row_len(), 1.0);
    let mut v = rng.vec(cap * s.kv_row_len(), 1.0);
    k[n_ctx * s.kv_row_len()..].fill(f32::NAN);
    v[n_ctx * s.kv_row_len()..].fill(f32::NAN);
    let mut scores = vec![0.0f32; cap];
    let mut out = vec![0.0f32; t * s.q_row_len()];
    attend(&q, &k, &v, start, t, s, 0.3, &mut scores, &mut out);
    assert!(out.iter().all(|x| x.is_finite()));
    let expected = attend_f64(&q, &k, &v, start, t, s, 0.3);
    assert!(max_abs_diff(&out, &expected) < 2e-6);
}

#[test]
fn large_scores_stay_finite() {
    // Scores around 1e4 would overflow exp() without the max subtraction.
    let mut rng = Rng(14);
    let s = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 16 };
    let (start, t) = (7usize, 2usize);
    let q: Vec<f32> = rng.vec(t * s.q_row_len(), 1.0).iter().map(|x| x * 100.0).collect();
    let k: Vec<f32> = rng.vec((start + t) * s.kv_row_len(), 1.0).iter().map(|x| x * 100.0).collect();
    let v = rng.vec((start + t) * s.kv_row_len(), 1.0);
    let mut scores = vec![0.0f32; start + t];
    let mut out = vec![0.0f32; t * s.q_row_len()];
    attend(&q, &k, &v, start, t, s, 1.0, &mut scores, &mut out);
    assert!(out.iter().all(|x| x.is_finite() && x.abs() <= 1.0 + 1e-6));
}

#[test]
#[should_panic(expected = "scores")]
fn short_scratch_is_a_contract_violation() {
    let s = AttnShape { n_heads: 2, n_kv_heads: 1, head_dim: 4 };
    let mut scores = vec![0.0f32; 2];
    let mut out = vec![0.0f32; 8];
    attend(&[0.0; 8], &[0.0; 12], &[0.0; 12], 2, 1, s, 1.0, &mut scores, &mut out);
}

/// The GQA-shared pooled version against the f64 reference at every SIMD
/// level, over more positions and threads than tasks.
#[test]
fn parallel_version_matches_f64_reference() {
    use qmoe_kernels::simd::attention::attend_parallel;
    let mut rng = Rng(12);
    let mut worst = 0.0f64;
    for level in qmoe_kernels::simd::available() {
        for s in SHAPES {
            let scale = 1.0 / (s.head_dim as f32).sqrt();
            for &(start, t) in &[(0usize, 1usize), (0, 9), (5, 4), (20, 1), (63, 2), (0, 70)] {
                let n_ctx = start + t;
                let q = rng.vec(t * s.q_row_len(), 1.0);
                let k = rng.vec(n_ctx * s.kv_row_len(), 1.0);
                let v = rng.vec(n_ctx * s.kv_row_len(), 1.0);
                let mut scores = Vec::new();
                let mut out = vec![f32::NAN; t * s.q_row_len()];
                attend_parallel(level, &q, &k, &v, start, t, s, scale, 0, &mut scores, &mut out);
                let d = max_abs_diff(&out, &attend_f64(&q, &k, &v, start, t, s, scale));
                worst = worst.max(d);
                assert!(d < 2e-6, "{level:?} {s:?} start {start} T {t}: max diff {d}");
            }
        }
    }
    eprintln!("pooled attention vs f64: max abs diff {worst:.3e}");
}

/// Shapes for the blocked AVX2 route: GQA ratios 1, 2, 3 and 8, head dims
/// 8 (one-vector column tiles only), 16, 24 (16-wide tiles plus an 8-wide
/// tail), 64, 128 and 256.
const BLOCKED_SHAPES: [AttnShape; 7] = [
    AttnShape { n_heads: 4, n_kv_heads: 4, head_dim: 64 },
    AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 128 },
    AttnShape { n_heads: 16, n_kv_heads: 2, head_dim: 256 },
    AttnShape { n_heads: 8, n_kv_heads: 1, head_dim: 24 },
    AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 16 },
    AttnShape { n_heads: 3, n_kv_heads: 1, head_dim: 8 },
    AttnShape { n_heads: 2, n_kv_heads: 2, head_dim: 64 },
];

/// (start_pos, n_tokens): decode at several horizons (tails of 1..8 past
/// whole vectors), prefill from 0, continued prefill, and more tokens than
/// one block and than the 16-position steps of the V sum.
const SPANS: [(usize, usize); 9] = [(0, 1), (6, 1), (40, 1), (0, 9), (0, 17), (5, 4), (13, 7), (30, 11), (3, 40)];

/// The blocked route with 1..=9 query tokens per unit against the f64
/// reference, with peaked softmaxes (queries of amplitude 3).
#[test]
#[cfg(target_arch = "x86_64")]
fn blocked_route_matches_f64_reference() {
    use qmoe_kernels::simd::attention::{attend_parallel_via, Route};
    use qmoe_kernels::simd::Level;
    if !qmoe_kernels::simd::available().contains(&Level::Avx2) {
        eprintln!("no AVX2: blocked route not tested");
        return;
    }
    let mut rng = Rng(21);
    let mut worst = 0.0f64;
    for s in BLOCKED_SHAPES {
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        for (start, t) in SPANS {
            let n_ctx = start + t;
            let q = rng.vec(t * s.q_row_len(), 3.0);
            let k = rng.vec(n_ctx * s.kv_row_len(), 1.0);
            let v = rng.vec(n_ctx * s.kv_row_len(), 1.0);
            let want = attend_f64(&q, &k, &v, start, t, s, scale);
            for tokens in 1..=9 {
                // Stale scratch may hold anything, NaN included.
                let mut scores = vec![f32::NAN; 4096];
                let mut out = vec![f32::NAN; t * s.q_row_len()];
                let route = Route::Blocked { tokens };
                attend_parallel_via(route, Level::Avx2, &q, &k, &v, start, t, s, scale, 0, &mut scores, &mut out);
                let d = max_abs_diff(&out, &want);
                worst = worst.max(d);
                assert!(d < 2e-6, "{s:?} start {start} T {t} block {tokens}: max diff {d}");
            }
        }
    }
    eprintln!("blocked attention vs f64: max abs diff {worst:.3e}");
}

/// `attend_parallel` at every level (blocked where AVX2 allows, per token
/// otherwise, including head dims that are not a multiple of 8) against
/// the f64 reference and against the scalar twin.
#[test]
fn every_level_matches_f64_and_the_scalar_twin() {
    use qmoe_kernels::simd::attention::attend_parallel;
    use qmoe_kernels::simd::Level;
    let odd =
        [AttnShape { n_heads: 16, n_kv_heads: 2, head_dim: 20 }, AttnShape { n_heads: 4, n_kv_heads: 1, head_dim: 7 }];
    let mut rng = Rng(22);
    for s in BLOCKED_SHAPES.into_iter().chain(odd) {
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        for (start, t) in SPANS {
            let n_ctx = start + t;
            let q = rng.vec(t * s.q_row_len(), 3.0);
            let k = rng.vec(n_ctx * s.kv_row_len(), 1.0);
            let v = rng.vec(n_ctx * s.kv_row_len(), 1.0);
            let want = attend_f64(&q, &k, &v, start, t, s, scale);
            let mut twin = vec![f32::NAN; t * s.q_row_len()];
            attend_parallel(Level::Scalar, &q, &k, &v, start, t, s, scale, 0, &mut Vec::new(), &mut twin);
            for level in qmoe_kernels::simd::available() {
                let mut out = vec![f32::NAN; t * s.q_row_len()];
                attend_parallel(level, &q, &k, &v, start, t, s, scale, 0, &mut Vec::new(), &mut out);
                let d = max_abs_diff(&out, &want);
                assert!(d < 2e-6, "{level:?} {s:?} start {start} T {t}: max diff {d}");
                let dt = out.iter().zip(&twin).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(dt < 2e-6, "{level:?} {s:?} start {start} T {t}: {dt} from the scalar twin");
            }
        }
    }
}

/// Prefill and decode agree bit for bit on the pooled kernel too: one call
/// with T tokens equals T one-token calls at every level (on the blocked
/// route, whatever the block size), the cache past each step's horizon NaN.
#[test]
fn pooled_one_call_equals_token_by_token() {
    use qmoe_kernels::simd::attention::attend_parallel;
    let mut rng = Rng(23);
    for s in BLOCKED_SHAPES {
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let (start, t) = (5usize, 21usize);
        let n_ctx = start + t;
        let row = s.q_row_len();
        let q = rng.vec(t * row, 3.0);
        let k = rng.vec(n_ctx * s.kv_row_len(), 1.0);
        let v = rng.vec(n_ctx * s.kv_row_len(), 1.0);
        for level in qmoe_kernels::simd::available() {
            let mut single = vec![0.0f32; t * row];
            let mut scores = Vec::new();
            for i in 0..t {
                let n = start + i + 1;
                let (mut kn, mut vn) = (k.clone(), v.clone());
                kn[n * s.kv_row_len()..].fill(f32::NAN);
                vn[n * s.kv_row_len()..].fill(f32::NAN);
                let o = &mut single[i * row..][..row];
                attend_parallel(level, &q[i * row..][..row], &kn, &vn, start + i, 1, s, scale, n_ctx, &mut scores, o);
            }
            assert!(single.iter().all(|x| x.is_finite()), "{level:?} {s:?}: read past the horizon");
            let mut batched = vec![0.0f32; t * row];
            attend_parallel(level, &q, &k, &v, start, t, s, scale, 0, &mut scores, &mut batched);
            assert_eq!(batched, single, "{level:?} {s:?}");
            #[cfg(target_arch = "x86_64")]
            if level.runs_avx2() {
                use qmoe_kernels::simd::attention::{attend_parallel_via, Route};
                for tokens in [1, 2, 3, 5, 8] {
                    let mut blk = vec![0.0f32; t * row];
                    let route = Route::Blocked { tokens };
                    attend_parallel_via(route, level, &q, &k, &v, start, t, s, scale, 0, &mut scores, &mut blk);
                    assert_eq!(blk, single, "{s:?} block {tokens}");
                }
            }
        }
    }
}

/// Scores around 1e4 (which would overflow `exp` without the max
/// subtraction, and sit far below the fast `exp`'s clamp) stay finite and
/// convex combinations of V on every route.
#[test]
fn pooled_large_scores_stay_finite() {
    use qmoe_kernels::simd::attention::attend_parallel;
    let mut rng = Rng(24);
    let s = AttnShape { n_heads: 16, n_kv_heads: 2, head_dim: 64 };
    let (start, t) = (9usize, 6usize);
    let q: Vec<f32> = rng.vec(t * s.q_row_len(), 100.0);
    let k: Vec<f32> = rng.vec((start + t) * s.kv_row_len(), 100.0);
    let v = rng.vec((start + t) * s.kv_row_len(), 1.0);
    let want = attend_f64(&q, &k, &v, start, t, s, 1.0);
    for level in qmoe_kernels::simd::available() {
        let mut out = vec![f32::NAN; t * s.q_row_len()];
        attend_parallel(level, &q, &k, &v, start, t, s, 1.0, 0, &mut Vec::new(), &mut out);
        assert!(out.iter().all(|x| x.is_finite() && x.abs() <= 1.0 + 1e-6), "{level:?}");
        assert!(max_abs_diff(&out, &want) < 2e-6, "{level:?}");
    }
}

/// The blocked route is AVX2-only and needs whole vectors per head.
#[test]
#[should_panic(expected = "blocked route")]
fn blocked_route_off_avx2_is_a_contract_violation() {
    use qmoe_kernels::simd::attention::{attend_parallel_via, Route};
    let s = AttnShape { n_heads: 2, n_kv_heads: 1, head_dim: 8 };
    let mut out = vec![0.0f32; 16];
    let route = Route::Blocked { tokens: 2 };
    let level = qmoe_kernels::simd::Level::Scalar;
    attend_parallel_via(route, level, &[0.0; 16], &[0.0; 16], &[0.0; 16], 0, 1, s, 1.0, 0, &mut Vec::new(), &mut out);
}
