//! The fused GDN input preparation (`gdn_prep`) against the unfused steps it
//! replaces: conv + SiLU, split into heads, l2-norm (q scaled), gates.

mod common;

use common::Rng;
use qmoe_kernels::act::{sigmoid, softplus};
use qmoe_kernels::conv::causal_conv1d_silu;
use qmoe_kernels::gdn::{l2_normalize, GdnShape};
use qmoe_kernels::gdn_prep::{exp8, gdn_prep, PrepOut, PrepWeights};
use qmoe_kernels::simd::{available, Level};

const KERNEL: usize = 4;

struct Case {
    shape: GdnShape,
    conv: Vec<f32>,
    a_neg_exp: Vec<f32>,
    dt_bias: Vec<f32>,
}

impl Case {
    fn new(hk: usize, hv: usize, dk: usize, dv: usize, rng: &mut Rng) -> Case {
        let shape = GdnShape { n_k_heads: hk, n_v_heads: hv, head_k_dim: dk, head_v_dim: dv };
        let channels = 2 * hk * dk + hv * dv;
        Case {
            shape,
            conv: rng.vec(channels * KERNEL, 0.8),
            a_neg_exp: rng.vec(hv, 1.0).iter().map(|v| -v.abs() - 0.1).collect(),
            dt_bias: rng.vec(hv, 1.0),
        }
    }
    fn channels(&self) -> usize {
        2 * self.kd() + self.vd()
    }
    fn kd(&self) -> usize {
        self.shape.n_k_heads * self.shape.head_k_dim
    }
    fn vd(&self) -> usize {
        self.shape.n_v_heads * self.shape.head_v_dim
    }
}

/// q, k, v, beta, g of one call.
#[derive(Debug, PartialEq)]
struct Prepared([Vec<f32>; 5]);

fn fused(level: Level, c: &Case, mixed: &[f32], b: &[f32], a: &[f32], state: &mut [f32], t: usize) -> Prepared {
    let (kd, vd, hv) = (c.kd(), c.vd(), c.shape.n_v_heads);
    let mut o = [vec![0.0; t * kd], vec![0.0; t * kd], vec![0.0; t * vd], vec![0.0; t * hv], vec![0.0; t * hv]];
    let [q, k, v, beta, g] = &mut o;
    let w = PrepWeights { conv: &c.conv, kernel: KERNEL, a_neg_exp: &c.a_neg_exp, dt_bias: &c.dt_bias };
    gdn_prep(level, w, c.shape, mixed, b, a, state, t, PrepOut { q, k, v, beta, g });
    Prepared(o)
}

/// The steps the GDN layer ran before the fusion, as separate passes.
fn unfused(c: &Case, mixed: &[f32], b: &[f32], a: &[f32], state: &mut [f32], t: usize) -> Prepared {
    let (kd, vd, hv, dk) = (c.kd(), c.vd(), c.shape.n_v_heads, c.shape.head_k_dim);
    let cd = c.channels();
    let mut conv_out = vec![0.0; t * cd];
    causal_conv1d_silu(mixed, &c.conv, state, t, cd, KERNEL, &mut conv_out);
    let (mut q, mut k, mut v) = (vec![0.0; t * kd], vec![0.0; t * kd], vec![0.0; t * vd]);
    for ti in 0..t {
        let row = &conv_out[ti * cd..(ti + 1) * cd];
        q[ti * kd..(ti + 1) * kd].copy_from_slice(&row[..kd]);
        k[ti * kd..(ti + 1) * kd].copy_from_slice(&row[kd..2 * kd]);
        v[ti * vd..(ti + 1) * vd].copy_from_slice(&row[2 * kd..]);
    }
    let q_scale = 1.0 / (dk as f32).sqrt();
    for head in q.chunks_exact_mut(dk) {
        l2_normalize(head, 1e-6);
        head.iter_mut().for_each(|e| *e *= q_scale);
    }
    for head in k.chunks_exact_mut(dk) {
        l2_normalize(head, 1e-6);
    }
    let beta: Vec<f32> = b.iter().map(|&x| sigmoid(x)).collect();
    let g: Vec<f32> = (0..t * hv).map(|i| c.a_neg_exp[i % hv] * softplus(a[i] + c.dt_bias[i % hv])).collect();
    Prepared([q, k, v, beta, g])
}

/// Random projections for `t` tokens: mixed, b, a.
fn inputs(c: &Case, t: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hv = c.shape.n_v_heads;
    (rng.vec(t * c.channels(), 3.0), rng.vec(t * hv, 4.0), rng.vec(t * hv, 4.0))
}

fn cases(rng: &mut Rng) -> Vec<Case> {
    vec![
        Case::new(2, 4, 16, 8, rng),
        Case::new(1, 1, 8, 24, rng),
        Case::new(2, 2, 12, 6, rng), // widths not a multiple of 8: the twin runs
        Case::new(2, 8, 128, 128, rng),
    ]
}

/// Calls of these token counts continue one sequence.
const SPLITS: [&[usize]; 4] = [&[1, 1, 1, 1, 1], &[3, 1, 2], &[2, 1, 7], &[17]];

#[test]
fn scalar_twin_equals_the_unfused_steps_bit_for_bit() {
    let mut rng = Rng(11);
    for c in cases(&mut rng) {
        for split in SPLITS {
            let mut s_fused = rng.vec((KERNEL - 1) * c.channels(), 2.0);
            let mut s_ref = s_fused.clone();
            for &t in split {
                let (m, b, a) = inputs(&c, t, &mut rng);
                let got = fused(Level::Scalar, &c, &m, &b, &a, &mut s_fused, t);
                let want = unfused(&c, &m, &b, &a, &mut s_ref, t);
                assert_eq!(got, want, "shape {:?}, split {split:?}", c.shape);
                assert_eq!(s_fused, s_ref, "conv state, shape {:?}", c.shape);
            }
        }
    }
}

#[test]
fn every_level_matches_the_scalar_twin() {
    let mut rng = Rng(12);
    for threads in [1, 2] {
        qmoe_kernels::threads::set(threads);
        for c in cases(&mut rng) {
            for split in SPLITS {
                let s0 = rng.vec((KERNEL - 1) * c.channels(), 2.0);
                let calls: Vec<_> = split.iter().map(|&t| (t, inputs(&c, t, &mut rng))).collect();
                let mut s_twin = s0.clone();
                let want: Vec<_> =
                    calls.iter().map(|(t, (m, b, a))| fused(Level::Scalar, &c, m, b, a, &mut s_twin, *t)).collect();
                for level in available() {
                    let mut s = s0.clone();
                    for (i, (t, (m, b, a))) in calls.iter().enumerate() {
                        let got = fused(level, &c, m, b, a, &mut s, *t);
                        for (name, (g, w)) in ["q", "k", "v", "beta", "g"].iter().zip(got.0.iter().zip(&want[i].0)) {
                            for (j, (&x, &y)) in g.iter().zip(w).enumerate() {
                                let tol = 1e-6 + 4e-6 * y.abs();
                                assert!(
                                    (x - y).abs() <= tol,
                                    "{level:?} {name}[{j}] = {x} vs twin {y}, shape {:?}, call {i} of {split:?}",
                                    c.shape
                                );
                            }
                        }
                    }
                    assert_eq!(s, s_twin, "{level:?}: the conv state is a copy of inputs");
                }
            }
        }
    }
    qmoe_kernels::threads::set(0);
}

#[test]
fn one_call_or_many_gives_identical_results_at_every_level() {
    let mut rng = Rng(13);
    for c in cases(&mut rng) {
        let t = 11;
        let s0 = rng.vec((KERNEL - 1) * c.channels(), 2.0);
        let (m, b, a) = inputs(&c, t, &mut rng);
        for level in available() {
            let mut s_all = s0.clone();
            let all = fused(level, &c, &m, &b, &a, &mut s_all, t);
            let mut s_one = s0.clone();
            let (cd, hv) = (c.channels(), c.shape.n_v_heads);
            let mut pieces: Vec<Prepared> = Vec::new();
            for (lo, hi) in [(0, 1), (1, 4), (4, 5), (5, 11)] {
                let n = hi - lo;
                pieces.push(fused(
                    level,
                    &c,
                    &m[lo * cd..hi * cd],
                    &b[lo * hv..hi * hv],
                    &a[lo * hv..hi * hv],
                    &mut s_one,
                    n,
                ));
            }
            for (i, whole) in all.0.iter().enumerate() {
                let joined: Vec<f32> = pieces.iter().flat_map(|p| p.0[i].iter().copied()).collect();
                assert_eq!(whole, &joined, "{level:?}: output {i}, shape {:?}", c.shape);
            }
            assert_eq!(s_all, s_one, "{level:?}: conv state");
        }
    }
}

#[test]
fn fast_exp_is_within_two_ulp_of_the_exact_value() {
    let mut rng = Rng(14);
    let mut xs: Vec<f32> = (0..4000).map(|_| rng.uniform() * 87.0).collect();
    xs.extend([0.0, -0.0, 1.0, -1.0, 0.5, 87.0, -87.0, 88.0, 1e-8, -1e-8, 0.346_573_6, -0.346_573_6]);
    for level in available() {
        for x8 in xs.chunks_exact(8) {
            let x: [f32; 8] = x8.try_into().unwrap();
            for (&xi, got) in x.iter().zip(exp8(level, x)) {
                let exact = (xi as f64).exp();
                let ulp = (exact as f32).abs() * f32::EPSILON;
                assert!(
                    ((got as f64) - exact).abs() <= 2.0 * ulp as f64,
                    "{level:?}: exp({xi}) = {got}, exact {exact}"
                );
            }
        }
    }
}
