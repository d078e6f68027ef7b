//! Gated DeltaNet reference tests.
//!
//! * the recurrent kernel against a straightforward f64 recurrence;
//! * the chunked kernel against the recurrent one over a grid of lengths
//!   (crossing chunk boundaries), chunk sizes, head ratios, key/value widths,
//!   head maps and incoming states — outputs and final states;
//! * Tiled on permuted inputs == Grouped (spec 5.4);
//! * strong decay (g = -30) and no decay (g = 0) stay finite and agree;
//! * several consecutive chunked calls == one call;
//! * the gate and l2-norm helpers against their formulas.

use qmoe_kernels::gdn::{gates, gdn_chunked, gdn_recurrent, l2_normalize, GdnScratch, GdnShape, HeadMap};

mod common;
use common::Rng;

/// How the log-decays are drawn.
#[derive(Clone, Copy, Debug)]
enum Decay {
    /// Through `gates()` from random projections and weights (realistic).
    Gates,
    /// g = -30 everywhere: the state is wiped every token.
    Strong,
    /// g = 0 everywhere: no forgetting.
    None,
    /// Each entry -30, 0 or realistic at random.
    Mixed,
}

/// One call's inputs, already normalised as the model would pass them.
struct Inputs {
    q: Vec<f32>,    // [T, Hk, Dk]
    k: Vec<f32>,    // [T, Hk, Dk]
    v: Vec<f32>,    // [T, Hv, Dv]
    beta: Vec<f32>, // [T, Hv]
    g: Vec<f32>,    // [T, Hv]
}

fn make_inputs(rng: &mut Rng, s: GdnShape, t: usize, decay: Decay) -> Inputs {
    let (hk, hv, dk, dv) = (s.n_k_heads, s.n_v_heads, s.head_k_dim, s.head_v_dim);
    let mut q = rng.vec(t * hk * dk, 1.0);
    let mut k = rng.vec(t * hk * dk, 1.0);
    let q_scale = 1.0 / (dk as f32).sqrt();
    for head in q.chunks_exact_mut(dk) {
        l2_normalize(head, 1e-6);
        head.iter_mut().for_each(|x| *x *= q_scale);
    }
    for head in k.chunks_exact_mut(dk) {
        l2_normalize(head, 1e-6);
    }
    let v = rng.vec(t * hv * dv, 1.0);
    let a = rng.vec(t * hv, 3.0);
    let b = rng.vec(t * hv, 3.0);
    let a_log = rng.vec(hv, 1.0);
    let dt_bias = rng.vec(hv, 1.0);
    let mut beta = vec![0.0; t * hv];
    let mut g = vec![0.0; t * hv];
    gates(&a, &b, &a_log, &dt_bias, &mut beta, &mut g);
    match decay {
        Decay::Gates => {}
        Decay::Strong => g.fill(-30.0),
        Decay::None => g.fill(0.0),
        Decay::Mixed => {
            for x in g.iter_mut() {
                match rng.next_u64() % 3 {
                    0 => *x = -30.0,
                    1 => *x = 0.0,
                    _ => {}
                }
            }
        }
    }
    Inputs { q, k, v, beta, g }
}

fn key_head(map: HeadMap, h: usize, s: GdnShape) -> usize {
    match map {
        HeadMap::Grouped => h / (s.n_v_heads / s.n_k_heads),
        HeadMap::Tiled => h % s.n_k_heads,
    }
}

/// The spec 2.5.6 recurrence, written plainly in f64. Returns the outputs;
/// `state` is advanced.
fn recurrent_f64(x: &Inputs, state: &mut [f64], s: GdnShape, map: HeadMap) -> Vec<f64> {
    let (hk, hv, dk, dv) = (s.n_k_heads, s.n_v_heads, s.head_k_dim, s.head_v_dim);
    let t_len = x.beta.len() / hv;
    let mut out = vec![0.0f64; t_len * hv * dv];
    for t in 0..t_len {
        for h in 0..hv {
            let kh = key_head(map, h, s);
            let q = |i: usize| x.q[(t * hk + kh) * dk + i] as f64;
            let k = |i: usize| x.k[(t * hk + kh) * dk + i] as f64;
            let st = |i: usize, j: usize| h * dk * dv + i * dv + j;
            let alpha = (x.g[t * hv + h] as f64).exp();
            let beta = x.beta[t * hv + h] as f64;
            for i in 0..dk {
                for j in 0..dv {
                    state[st(i, j)] *= alpha;
                }
            }
            for j in 0..dv {
                let mut p = 0.0;
                for i in 0..dk {
                    p += k(i) * state[st(i, j)];
                }
                let delta = beta * (x.v[(t * hv + h) * dv + j] as f64 - p);
                for i in 0..dk {
                    state[st(i, j)] += k(i) * delta;
                }
            }
            for j in 0..dv {
                let mut o = 0.0;
                for i in 0..dk {
                    o += q(i) * state[st(i, j)];
                }
                out[(t * hv + h) * dv + j] = o;
            }
        }
    }
    out
}

fn run_recurrent(x: &Inputs, state: &mut [f32], s: GdnShape, map: HeadMap) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.v.len()];
    gdn_recurrent(&x.q, &x.k, &x.v, &x.beta, &x.g, state, s, map, &mut out);
    out
}

fn run_chunked(x: &Inputs, state: &mut [f32], s: GdnShape, map: HeadMap, chunk: usize) -> Vec<f32> {
    let mut scratch = GdnScratch::new(s, chunk);
    let mut out = vec![f32::NAN; x.v.len()];
    gdn_chunked(&x.q, &x.k, &x.v, &x.beta, &x.g, state, s, map, chunk, &mut scratch, &mut out);
    out
}

fn max_abs(a: &[f32]) -> f64 {
    a.iter().map(|x| x.abs() as f64).fold(0.0, f64::max)
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

const HEADS: [(usize, usize); 4] = [(1, 1), (2, 4), (2, 6), (3, 3)];
const DIMS: [(usize, usize); 3] = [(16, 24), (16, 16), (24, 8)];
const LENGTHS: [usize; 7] = [1, 5, 63, 64, 65, 130, 200];
const MAPS: [HeadMap; 2] = [HeadMap::Grouped, HeadMap::Tiled];

/// Whether the AVX2 chunk kernel blocks this shape (else the driver runs
/// the reference's arithmetic at every level).
fn blocked(s: GdnShape) -> bool {
    s.head_k_dim.is_multiple_of(8) && s.head_v_dim.is_multiple_of(8)
}

/// Blocked AVX2 chunk kernel vs its scalar twin: relative to the larger of 1
/// and the output (state) magnitude; only the summation order differs.
const TWIN_TOL: f64 = 1e-5;

/// The parallel chunked result (`out`, `st`) at `level` against the scalar
/// twin's: bit for bit where the level runs the twin's arithmetic, within
/// [`TWIN_TOL`] where it runs the blocked AVX2 kernel.
fn assert_twin(
    level: qmoe_kernels::simd::Level,
    s: GdnShape,
    out: &[f32],
    out_ref: &[f32],
    st: &[f32],
    st_ref: &[f32],
    what: &str,
) {
    if level.runs_avx2() && blocked(s) {
        let d_out = max_diff(out, out_ref) / max_abs(out_ref).max(1.0);
        let d_st = max_diff(st, st_ref) / max_abs(st_ref).max(1.0);
        assert!(d_out <= TWIN_TOL && d_st <= TWIN_TOL, "{what}: out {d_out:e} state {d_st:e}");
    } else {
        assert_eq!(out, out_ref, "{what}: outputs");
        assert_eq!(st, st_ref, "{what}: state");
    }
}

/// Tolerance for chunked vs recurrent, relative to the larger of 1 and the
/// output (or state) magnitude: both are f32 with different summation orders.
const TOL: f64 = 1e-5;

#[test]
fn recurrent_matches_f64() {
    let mut rng = Rng(31);
    let mut worst = 0.0f64;
    for (hk, hv) in HEADS {
        for (dk, dv) in DIMS {
            let s = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv };
            for map in MAPS {
                for decay in [Decay::Gates, Decay::Mixed] {
                    let x = make_inputs(&mut rng, s, 70, decay);
                    let state0 = rng.vec(s.state_len(), 0.5);
                    let mut st32 = state0.clone();
                    let mut st64: Vec<f64> = state0.iter().map(|&v| v as f64).collect();
                    let out = run_recurrent(&x, &mut st32, s, map);
                    let expected = recurrent_f64(&x, &mut st64, s, map);
                    let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    let d_out = out.iter().zip(&expected).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                    let d_st = st32.iter().zip(&st64).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                    worst = worst.max(d_out / scale).max(d_st);
                    assert!(
                        d_out <= TOL * scale && d_st <= TOL,
                        "{s:?} {map:?} {decay:?}: out {d_out:e} state {d_st:e}"
                    );
                }
            }
        }
    }
    eprintln!("recurrent vs f64: max diff {worst:.3e}");
}

#[test]
fn chunked_matches_recurrent_grid() {
    let mut rng = Rng(32);
    let (mut worst_out, mut worst_state, mut cases) = (0.0f64, 0.0f64, 0);
    let (mut out_mag, mut state_mag) = (0.0f64, 0.0f64);
    for (hk, hv) in HEADS {
        for (dk, dv) in DIMS {
            let s = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv };
            for t in LENGTHS {
                for chunk in [16usize, 64] {
                    for map in MAPS {
                        for zero_state in [true, false] {
                            let x = make_inputs(&mut rng, s, t, Decay::Gates);
                            let state0 =
                                if zero_state { vec![0.0; s.state_len()] } else { rng.vec(s.state_len(), 0.5) };
                            let (mut st_r, mut st_c) = (state0.clone(), state0.clone());
                            let out_r = run_recurrent(&x, &mut st_r, s, map);
                            let out_c = run_chunked(&x, &mut st_c, s, map, chunk);
                            let d_out = max_diff(&out_r, &out_c) / max_abs(&out_r).max(1.0);
                            let d_st = max_diff(&st_r, &st_c) / max_abs(&st_r).max(1.0);
                            out_mag = out_mag.max(max_abs(&out_r));
                            state_mag = state_mag.max(max_abs(&st_r));
                            worst_out = worst_out.max(d_out);
                            worst_state = worst_state.max(d_st);
                            cases += 1;
                            assert!(
                                d_out <= TOL && d_st <= TOL,
                                "{s:?} T {t} chunk {chunk} {map:?} zero_state {zero_state}: out {d_out:e} state {d_st:e}"
                            );
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "chunked vs recurrent over {cases} cases: max scaled diff out {worst_out:.3e}, state {worst_state:.3e} \
         (largest |out| {out_mag:.3}, |state| {state_mag:.3})"
    );
}

#[test]
fn extreme_decays_stay_finite_and_agree() {
    let mut rng = Rng(33);
    let mut worst = 0.0f64;
    for decay in [Decay::Strong, Decay::None, Decay::Mixed] {
        for (hk, hv) in [(2usize, 4usize), (3, 3)] {
            let s = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: 16, head_v_dim: 24 };
            for chunk in [16usize, 64] {
                for t in [1usize, 65, 200] {
                    let x = make_inputs(&mut rng, s, t, decay);
                    let state0 = rng.vec(s.state_len(), 0.5);
                    let (mut st_r, mut st_c) = (state0.clone(), state0.clone());
                    let out_r = run_recurrent(&x, &mut st_r, s, HeadMap::Grouped);
                    let out_c = run_chunked(&x, &mut st_c, s, HeadMap::Grouped, chunk);
                    assert!(out_r.iter().chain(&out_c).chain(&st_r).chain(&st_c).all(|v| v.is_finite()), "{decay:?}");
                    let d = (max_diff(&out_r, &out_c) / max_abs(&out_r).max(1.0))
                        .max(max_diff(&st_r, &st_c) / max_abs(&st_r).max(1.0));
                    worst = worst.max(d);
                    assert!(d <= TOL, "{decay:?} {s:?} chunk {chunk} T {t}: {d:e}");
                }
            }
        }
    }
    eprintln!("extreme decays, chunked vs recurrent: max scaled diff {worst:.3e}");
}

#[test]
fn strong_decay_forgets_the_incoming_state() {
    // With g = -30 the old state is scaled by ~1e-13: outputs are those of a
    // fresh start up to that factor.
    let mut rng = Rng(34);
    let s = GdnShape { n_k_heads: 2, n_v_heads: 4, head_k_dim: 16, head_v_dim: 16 };
    let x = make_inputs(&mut rng, s, 20, Decay::Strong);
    let mut st_warm = rng.vec(s.state_len(), 0.5);
    let mut st_cold = vec![0.0; s.state_len()];
    let a = run_chunked(&x, &mut st_warm, s, HeadMap::Grouped, 16);
    let b = run_chunked(&x, &mut st_cold, s, HeadMap::Grouped, 16);
    assert!(max_diff(&a, &b) < 1e-9);
}

/// Reorders every value-head-indexed row of `data` (`[T, Hv, width]`) from
/// grouped order (`h = g*r + j`) to tiled order (`n = j*Hk + g`).
fn grouped_to_tiled(data: &[f32], s: GdnShape, width: usize) -> Vec<f32> {
    let (hk, hv, r) = (s.n_k_heads, s.n_v_heads, s.ratio());
    let mut out = vec![0.0; data.len()];
    for (src, dst) in data.chunks_exact(hv * width).zip(out.chunks_exact_mut(hv * width)) {
        for g in 0..hk {
            for j in 0..r {
                let (h, n) = (g * r + j, j * hk + g);
                dst[n * width..][..width].copy_from_slice(&src[h * width..][..width]);
            }
        }
    }
    out
}

#[test]
fn tiled_on_permuted_heads_equals_grouped() {
    let mut rng = Rng(35);
    for (hk, hv) in [(2usize, 4usize), (2, 6), (3, 6), (3, 3)] {
        let s = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: 16, head_v_dim: 24 };
        let (dk, dv) = (s.head_k_dim, s.head_v_dim);
        let x = make_inputs(&mut rng, s, 70, Decay::Gates);
        let state0 = rng.vec(s.state_len(), 0.5);
        // q and k are per key head: untouched. v, beta, g, state are per value head.
        let xt = Inputs {
            q: x.q.clone(),
            k: x.k.clone(),
            v: grouped_to_tiled(&x.v, s, dv),
            beta: grouped_to_tiled(&x.beta, s, 1),
            g: grouped_to_tiled(&x.g, s, 1),
        };
        let state0_t = grouped_to_tiled(&state0, s, dk * dv);

        let (mut sg, mut st) = (state0.clone(), state0_t.clone());
        let og = run_recurrent(&x, &mut sg, s, HeadMap::Grouped);
        let ot = run_recurrent(&xt, &mut st, s, HeadMap::Tiled);
        assert_eq!(grouped_to_tiled(&og, s, dv), ot, "recurrent {s:?}");
        assert_eq!(grouped_to_tiled(&sg, s, dk * dv), st, "recurrent state {s:?}");

        let (mut sg, mut st) = (state0.clone(), state0_t.clone());
        let og = run_chunked(&x, &mut sg, s, HeadMap::Grouped, 16);
        let ot = run_chunked(&xt, &mut st, s, HeadMap::Tiled, 16);
        assert_eq!(grouped_to_tiled(&og, s, dv), ot, "chunked {s:?}");
        assert_eq!(grouped_to_tiled(&sg, s, dk * dv), st, "chunked state {s:?}");
    }
}

#[test]
fn head_maps_differ_when_ratio_above_one() {
    // Guard against a HeadMap that silently ignores its variant.
    let mut rng = Rng(36);
    let s = GdnShape { n_k_heads: 2, n_v_heads: 4, head_k_dim: 8, head_v_dim: 8 };
    let x = make_inputs(&mut rng, s, 3, Decay::Gates);
    let a = run_recurrent(&x, &mut vec![0.0; s.state_len()], s, HeadMap::Grouped);
    let b = run_recurrent(&x, &mut vec![0.0; s.state_len()], s, HeadMap::Tiled);
    assert!(max_diff(&a, &b) > 1e-3);
}

/// Slices token range `from..to` out of every tensor.
fn token_range(x: &Inputs, s: GdnShape, from: usize, to: usize) -> Inputs {
    let (kd, vd, hv) = (s.key_dim(), s.value_dim(), s.n_v_heads);
    Inputs {
        q: x.q[from * kd..to * kd].to_vec(),
        k: x.k[from * kd..to * kd].to_vec(),
        v: x.v[from * vd..to * vd].to_vec(),
        beta: x.beta[from * hv..to * hv].to_vec(),
        g: x.g[from * hv..to * hv].to_vec(),
    }
}

#[test]
fn consecutive_chunked_calls_equal_one_call() {
    let mut rng = Rng(37);
    let s = GdnShape { n_k_heads: 2, n_v_heads: 6, head_k_dim: 16, head_v_dim: 24 };
    let t = 200;
    let x = make_inputs(&mut rng, s, t, Decay::Gates);
    let state0 = rng.vec(s.state_len(), 0.5);
    let chunk = 16;
    let mut st_one = state0.clone();
    let out_one = run_chunked(&x, &mut st_one, s, HeadMap::Grouped, chunk);

    // Splits on chunk boundaries do the very same arithmetic: bit-identical.
    // Other splits move the chunk boundaries: equal to rounding.
    for (splits, exact) in [(&[64usize, 16, 120][..], true), (&[1, 37, 100, 62][..], false), (&[5; 40][..], false)] {
        let mut scratch = GdnScratch::new(s, chunk);
        let mut st = state0.clone();
        let mut out = vec![0.0f32; x.v.len()];
        let mut at = 0;
        for &n in splits {
            let part = token_range(&x, s, at, at + n);
            let vd = s.value_dim();
            let o = &mut out[at * vd..(at + n) * vd];
            gdn_chunked(
                &part.q,
                &part.k,
                &part.v,
                &part.beta,
                &part.g,
                &mut st,
                s,
                HeadMap::Grouped,
                chunk,
                &mut scratch,
                o,
            );
            at += n;
        }
        assert_eq!(at, t);
        if exact {
            assert_eq!(out, out_one, "{splits:?}");
            assert_eq!(st, st_one, "{splits:?}");
        } else {
            let d = (max_diff(&out, &out_one) / max_abs(&out_one).max(1.0))
                .max(max_diff(&st, &st_one) / max_abs(&st_one).max(1.0));
            assert!(d <= TOL, "{splits:?}: {d:e}");
        }
    }
}

#[test]
fn scratch_for_a_larger_chunk_serves_a_smaller_one() {
    let mut rng = Rng(38);
    let s = GdnShape { n_k_heads: 1, n_v_heads: 2, head_k_dim: 8, head_v_dim: 12 };
    let x = make_inputs(&mut rng, s, 50, Decay::Gates);
    let mut st_a = vec![0.0; s.state_len()];
    let a = run_chunked(&x, &mut st_a, s, HeadMap::Grouped, 16);
    let mut scratch = GdnScratch::new(s, 64);
    let mut st_b = vec![0.0; s.state_len()];
    let mut b = vec![0.0; x.v.len()];
    gdn_chunked(&x.q, &x.k, &x.v, &x.beta, &x.g, &mut st_b, s, HeadMap::Grouped, 16, &mut scratch, &mut b);
    assert_eq!(a, b);
    assert_eq!(st_a, st_b);
}

#[test]
fn zero_tokens_is_a_no_op() {
    let s = GdnShape { n_k_heads: 2, n_v_heads: 4, head_k_dim: 8, head_v_dim: 8 };
    let state0: Vec<f32> = (0..s.state_len()).map(|i| i as f32).collect();
    let mut st = state0.clone();
    gdn_recurrent(&[], &[], &[], &[], &[], &mut st, s, HeadMap::Grouped, &mut []);
    let mut scratch = GdnScratch::new(s, 16);
    gdn_chunked(&[], &[], &[], &[], &[], &mut st, s, HeadMap::Grouped, 16, &mut scratch, &mut []);
    assert_eq!(st, state0);
}

#[test]
fn gates_follow_the_formula() {
    let mut rng = Rng(39);
    let hv = 5;
    let t = 7;
    let mut a = rng.vec(t * hv, 10.0);
    let mut b = rng.vec(t * hv, 10.0);
    // Edge values: softplus threshold region, deep negative, saturated sigmoid.
    a[..4].copy_from_slice(&[25.0, 19.5, -100.0, 0.0]);
    b[..4].copy_from_slice(&[100.0, -100.0, 0.0, 1e-3]);
    let a_log = rng.vec(hv, 1.0);
    let mut dt_bias = rng.vec(hv, 1.0);
    dt_bias[0] = 0.0;
    let (mut beta, mut g) = (vec![0.0; t * hv], vec![0.0; t * hv]);
    gates(&a, &b, &a_log, &dt_bias, &mut beta, &mut g);
    for i in 0..t * hv {
        let h = i % hv;
        let x = a[i] as f64 + dt_bias[h] as f64;
        let sp = if x > 20.0 { x } else { x.exp().ln_1p() };
        let g_ref = -(a_log[h] as f64).exp() * sp;
        let beta_ref = 1.0 / (1.0 + (-(b[i] as f64)).exp());
        assert!(g[i].is_finite() && g[i] <= 0.0);
        assert!((g[i] as f64 - g_ref).abs() <= 1e-6 * g_ref.abs().max(1e-30) * 4.0, "g[{i}] {} vs {g_ref}", g[i]);
        assert!((beta[i] as f64 - beta_ref).abs() <= 1e-7, "beta[{i}]");
    }
    // Above the threshold softplus is the identity.
    assert_eq!(g[0], -a_log[0].exp() * 25.0);
    assert_eq!(beta[0], 1.0);
    assert!(beta[1] >= 0.0 && beta[1] < 1e-40);
}

#[test]
fn l2_normalize_follows_the_formula() {
    let mut rng = Rng(40);
    let x = rng.vec(128, 3.0);
    let mut y = x.clone();
    l2_normalize(&mut y, 1e-6);
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let inv = 1.0 / (ss + 1e-6).sqrt();
    for (a, b) in y.iter().zip(&x) {
        assert!((*a as f64 - *b as f64 * inv).abs() < 1e-7);
    }
    // The eps sits inside the square root: a zero vector stays zero, a tiny one shrinks.
    let mut z = vec![0.0f32; 8];
    l2_normalize(&mut z, 1e-6);
    assert!(z.iter().all(|&v| v == 0.0));
    let mut tiny = vec![1e-4f32; 4];
    l2_normalize(&mut tiny, 1e-6);
    let expected = 1e-4 / (4e-8f64 + 1e-6).sqrt();
    assert!((tiny[0] as f64 - expected).abs() < 1e-6);
}

/// The fast drivers (heads over the pool, per-level instantiation) against
/// the reference kernels: the parallel chunked form must agree with the
/// reference (its scalar twin) bit for bit at `Level::Scalar` and for shapes
/// the blocked AVX2 kernel leaves to the twin, and to [`TWIN_TOL`] otherwise,
/// at any number of scratches; the fused recurrent step reorders the decay, so it
/// is held to the f64 recurrence like the reference.
#[test]
fn parallel_drivers_match_the_reference_kernels() {
    use qmoe_kernels::simd::gdn::gdn_chunked_parallel;
    let mut rng = Rng(33);
    let mut worst = 0.0f64;
    for level in qmoe_kernels::simd::available() {
        for (hk, hv) in HEADS {
            for (dk, dv) in DIMS {
                let s = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv };
                for map in MAPS {
                    for t in [1usize, 5, 70] {
                        let x = make_inputs(&mut rng, s, t, Decay::Mixed);
                        let state0 = rng.vec(s.state_len(), 0.5);

                        let mut st_ref = state0.clone();
                        let out_ref = run_chunked(&x, &mut st_ref, s, map, 16);
                        for n_scratch in [1usize, 2, 5] {
                            let mut scratches: Vec<_> = (0..n_scratch).map(|_| GdnScratch::new(s, 16)).collect();
                            let mut st = state0.clone();
                            let mut out = vec![f32::NAN; x.v.len()];
                            gdn_chunked_parallel(
                                level,
                                &x.q,
                                &x.k,
                                &x.v,
                                &x.beta,
                                &x.g,
                                &mut st,
                                s,
                                map,
                                16,
                                &mut scratches,
                                &mut out,
                            );
                            let what = format!("{level:?} {s:?} {map:?} t{t} scratches {n_scratch}");
                            assert_twin(level, s, &out, &out_ref, &st, &st_ref, &what);
                        }

                        let what = format!("{level:?} {s:?} {map:?} t{t}");
                        worst = worst.max(check_recurrent_parallel(level, &x, &state0, s, map, &what));
                    }
                }
            }
        }
    }
    eprintln!("fused recurrent vs f64: max diff {worst:.3e}");
}

/// The pool-parallel recurrence at `level` from `state0` against the f64
/// recurrence, outputs (relative to their largest) and final state held to
/// [`TOL`]; returns the larger relative difference.
fn check_recurrent_parallel(
    level: qmoe_kernels::simd::Level,
    x: &Inputs,
    state0: &[f32],
    s: GdnShape,
    map: HeadMap,
    what: &str,
) -> f64 {
    let mut st = state0.to_vec();
    let mut out = vec![f32::NAN; x.v.len()];
    qmoe_kernels::simd::gdn::gdn_recurrent_parallel(level, &x.q, &x.k, &x.v, &x.beta, &x.g, &mut st, s, map, &mut out);
    let mut st64: Vec<f64> = state0.iter().map(|&v| v as f64).collect();
    let expected = recurrent_f64(x, &mut st64, s, map);
    let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let d_out = out.iter().zip(&expected).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    let d_st = st.iter().zip(&st64).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(d_out <= TOL * scale && d_st <= TOL, "{what}: out {d_out:e} state {d_st:e}");
    (d_out / scale).max(d_st)
}

/// The recurrent step on value heads as wide as the released ones (128)
/// and on the other widths the AVX-512 step keeps in registers (multiples
/// of 16 up to 128), and one it leaves to the fused form (136), at every
/// level, against the f64 recurrence, over several tokens (the state
/// carried from step to step).
#[test]
fn recurrent_step_on_wide_value_heads() {
    let mut rng = Rng(61);
    for level in qmoe_kernels::simd::available() {
        for (dk, dv) in [(128usize, 128usize), (8, 48), (24, 112), (16, 16), (8, 136)] {
            let s = GdnShape { n_k_heads: 2, n_v_heads: 4, head_k_dim: dk, head_v_dim: dv };
            for map in MAPS {
                let x = make_inputs(&mut rng, s, 9, Decay::Mixed);
                let state0 = rng.vec(s.state_len(), 0.5);
                check_recurrent_parallel(level, &x, &state0, s, map, &format!("{level:?} {s:?} {map:?}"));
            }
        }
    }
}

/// The blocked AVX2 chunk kernel against its scalar twin on widths it blocks
/// (and odd ones it must leave to the twin), the model's chunk of 64 and
/// shorter ones, lengths on both sides of the chunk boundaries, every decay
/// regime, and consecutive calls (the state carried between them).
#[test]
fn blocked_chunk_kernel_matches_the_twin() {
    use qmoe_kernels::gdn::GdnScratch;
    use qmoe_kernels::simd::gdn::gdn_chunked_parallel;
    const WIDE: [(usize, usize); 5] = [(128, 128), (64, 32), (8, 8), (40, 24), (12, 20)];
    let mut rng = Rng(57);
    let mut worst = 0.0f64;
    for level in qmoe_kernels::simd::available() {
        for (hk, hv) in [(2usize, 4usize), (1, 3)] {
            for (dk, dv) in WIDE {
                let s = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv };
                for (chunk, lengths) in [(64usize, &[1usize, 7, 63, 64, 65, 129][..]), (13, &[1, 12, 13, 27][..])] {
                    for &t in lengths {
                        for decay in [Decay::Gates, Decay::Mixed, Decay::None, Decay::Strong] {
                            let map = MAPS[t % 2];
                            let x = make_inputs(&mut rng, s, t, decay);
                            let state0 = rng.vec(s.state_len(), 0.5);
                            let mut st_ref = state0.clone();
                            let out_ref = run_chunked(&x, &mut st_ref, s, map, chunk);
                            let mut scratches: Vec<_> = (0..2).map(|_| GdnScratch::new(s, chunk)).collect();
                            let mut st = state0.clone();
                            let mut out = vec![f32::NAN; x.v.len()];
                            // Two calls split mid-chunk, as successive prefill batches.
                            let cut = t / 3;
                            for (from, to) in [(0, cut), (cut, t)] {
                                let xs = token_range(&x, s, from, to);
                                gdn_chunked_parallel(
                                    level,
                                    &xs.q,
                                    &xs.k,
                                    &xs.v,
                                    &xs.beta,
                                    &xs.g,
                                    &mut st,
                                    s,
                                    map,
                                    chunk,
                                    &mut scratches,
                                    &mut out[from * hv * dv..to * hv * dv],
                                );
                            }
                            // The split reference: the twin over the same two calls.
                            let mut st_split = state0.clone();
                            let mut out_split = run_chunked(&token_range(&x, s, 0, cut), &mut st_split, s, map, chunk);
                            out_split.extend(run_chunked(&token_range(&x, s, cut, t), &mut st_split, s, map, chunk));
                            let what = format!("{level:?} {s:?} chunk {chunk} t{t} {decay:?}");
                            assert_twin(level, s, &out, &out_split, &st, &st_split, &what);
                            // And the split run stays near the one-call reference.
                            let d = max_diff(&out, &out_ref) / max_abs(&out_ref).max(1.0);
                            worst = worst.max(d);
                            assert!(d <= TOL, "{what}: vs one call {d:e}");
                        }
                    }
                }
            }
        }
    }
    eprintln!("blocked chunk kernel vs one-call twin: max rel diff {worst:.3e}");
}
