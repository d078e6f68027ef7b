//! Causal conv + SiLU reference tests: against an f64 implementation of the
//! spec 2.5.3 formula, and the streaming invariance (one call == one token at
//! a time == arbitrary chunks, for outputs and carried state alike).

use qmoe_kernels::conv::causal_conv1d_silu;

mod common;
use common::Rng;

/// f64 reference: returns (out [T, C], new state [K-1, C]).
fn conv_f64(x: &[f32], w: &[f32], state: &[f32], t: usize, c: usize, k: usize) -> (Vec<f64>, Vec<f32>) {
    let hist = k - 1;
    // The full input sequence [state; x]: `hist + t` rows.
    let seq: Vec<f32> = state.iter().chain(x).cloned().collect();
    let mut out = vec![0.0f64; t * c];
    for ti in 0..t {
        for ch in 0..c {
            let mut acc = 0.0f64;
            for j in 0..k {
                // Input at time ti - (K-1) + j = row ti + j of seq.
                acc += w[ch * k + j] as f64 * seq[(ti + j) * c + ch] as f64;
            }
            out[ti * c + ch] = acc / (1.0 + (-acc).exp());
        }
    }
    let new_state = seq[t * c..].to_vec();
    assert_eq!(new_state.len(), hist * c);
    (out, new_state)
}

#[test]
fn matches_f64_reference() {
    let mut rng = Rng(21);
    let mut worst = 0.0f64;
    for &c in &[1usize, 5, 37] {
        for &k in &[1usize, 2, 4] {
            for &t in &[1usize, 2, 3, 10] {
                for zero_state in [true, false] {
                    let x = rng.vec(t * c, 2.0);
                    let w = rng.vec(c * k, 2.0);
                    let state0 = if zero_state { vec![0.0; (k - 1) * c] } else { rng.vec((k - 1) * c, 2.0) };
                    let (expected, expected_state) = conv_f64(&x, &w, &state0, t, c, k);
                    let mut state = state0.clone();
                    let mut out = vec![f32::NAN; t * c];
                    causal_conv1d_silu(&x, &w, &mut state, t, c, k, &mut out);
                    let d = out.iter().zip(&expected).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                    worst = worst.max(d);
                    assert!(d < 3e-6, "C {c} K {k} T {t}: max diff {d}");
                    assert_eq!(state, expected_state, "C {c} K {k} T {t}: state");
                }
            }
        }
    }
    eprintln!("conv vs f64: max abs diff {worst:.3e}");
}

/// Runs `x` through the kernel in pieces of the given sizes, carrying state.
fn run_in_pieces(x: &[f32], w: &[f32], state0: &[f32], c: usize, k: usize, pieces: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let t: usize = pieces.iter().sum();
    let mut state = state0.to_vec();
    let mut out = vec![0.0f32; t * c];
    let mut at = 0;
    for &n in pieces {
        causal_conv1d_silu(&x[at * c..(at + n) * c], w, &mut state, n, c, k, &mut out[at * c..(at + n) * c]);
        at += n;
    }
    (out, state)
}

#[test]
fn one_call_equals_single_tokens_and_chunks() {
    let mut rng = Rng(22);
    for &k in &[1usize, 2, 4, 5] {
        let (c, t) = (13usize, 17usize);
        let x = rng.vec(t * c, 2.0);
        let w = rng.vec(c * k, 2.0);
        let state0 = rng.vec((k - 1) * c, 2.0);
        let whole = run_in_pieces(&x, &w, &state0, c, k, &[t]);
        let singles = run_in_pieces(&x, &w, &state0, c, k, &[1; 17]);
        assert_eq!(whole, singles, "K {k}: single tokens");
        for pieces in [&[3usize, 1, 2, 5, 6][..], &[2, 2, 2, 11], &[16, 1], &[1, 15, 1], &[0, 4, 0, 13]] {
            let chunked = run_in_pieces(&x, &w, &state0, c, k, pieces);
            assert_eq!(whole, chunked, "K {k}: pieces {pieces:?}");
        }
    }
}

#[test]
fn fewer_tokens_than_history() {
    // K = 4 keeps 3 rows; feeding 1 or 2 tokens must shift old rows, not drop them.
    let mut rng = Rng(23);
    let (c, k) = (6usize, 4usize);
    let w = rng.vec(c * k, 2.0);
    let state0 = rng.vec((k - 1) * c, 2.0);
    for t in [0usize, 1, 2] {
        let x = rng.vec(t * c, 2.0);
        let (expected, expected_state) = conv_f64(&x, &w, &state0, t, c, k);
        let mut state = state0.clone();
        let mut out = vec![0.0f32; t * c];
        causal_conv1d_silu(&x, &w, &mut state, t, c, k, &mut out);
        assert_eq!(state, expected_state, "T {t}");
        for (a, b) in out.iter().zip(&expected) {
            assert!((*a as f64 - b).abs() < 3e-6);
        }
    }
}

#[test]
fn sequence_start_reads_zeros() {
    // With a zero state, the first output uses only the current token.
    let (c, k) = (3usize, 4usize);
    let x = [1.0f32, -2.0, 0.5];
    let w: Vec<f32> = (0..c * k).map(|i| i as f32 * 0.1).collect();
    let mut state = vec![0.0f32; (k - 1) * c];
    let mut out = [0.0f32; 3];
    causal_conv1d_silu(&x, &w, &mut state, 1, c, k, &mut out);
    for ch in 0..c {
        let z = w[ch * k + k - 1] * x[ch];
        let expected = z / (1.0 + (-z).exp());
        assert!((out[ch] - expected).abs() < 1e-7);
    }
    assert_eq!(&state[2 * c..], &x);
    assert!(state[..2 * c].iter().all(|&s| s == 0.0));
}
