//! RoPE reference tests: against the formula of spec 2.4 evaluated in f64,
//! and the properties any rotation must have (identity at position 0, norms
//! kept, pass-through untouched, dot products depending only on the offset).

use qmoe_kernels::rope::{rotate_neox, RopeTable};

mod common;
use common::Rng;

const POSITIONS: [usize; 9] = [0, 1, 2, 7, 1000, 4097, 65535, 262_143, 262_144];

/// The spec formula in f64, using the table's f32 frequencies (the ones the
/// kernel documents it uses).
fn rope_f64(table: &RopeTable, head: &[f32], pos: usize) -> Vec<f64> {
    let rd = table.rotary_dims();
    let half = rd / 2;
    let mut out: Vec<f64> = head.iter().map(|&x| x as f64).collect();
    for i in 0..half {
        let theta = pos as f64 * table.inv_freq()[i] as f64;
        let (u0, u1) = (head[i] as f64, head[i + half] as f64);
        out[i] = u0 * theta.cos() - u1 * theta.sin();
        out[i + half] = u1 * theta.cos() + u0 * theta.sin();
    }
    out
}

#[test]
fn inv_freq_is_theta_power_rounded_once() {
    for &(rd, theta) in &[(64usize, 1e7f64), (64, 5e6), (8, 1e4), (128, 1e6)] {
        let table = RopeTable::new(rd, theta);
        assert_eq!(table.inv_freq().len(), rd / 2);
        assert_eq!(table.inv_freq()[0], 1.0);
        for (i, &f) in table.inv_freq().iter().enumerate() {
            let exact = theta.powf(-(2.0 * i as f64) / rd as f64);
            // One rounding to f32: relative error <= 2^-24.
            assert!(((f as f64 - exact) / exact).abs() <= 6.0e-8, "rd {rd} theta {theta} i {i}");
        }
    }
}

#[test]
fn matches_direct_formula() {
    let mut rng = Rng(1);
    for &(rd, hd, theta) in &[(64usize, 256usize, 1e7f64), (64, 64, 1e7), (8, 12, 1e4), (16, 16, 5e6)] {
        let table = RopeTable::new(rd, theta);
        for &pos in &POSITIONS {
            let head = rng.vec(hd, 1.0);
            let expected = rope_f64(&table, &head, pos);
            let mut got = head.clone();
            table.apply_neox(&mut got, pos);
            for (d, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                // f32 rounding of cos/sin and of two products and a sum.
                assert!((g as f64 - e).abs() <= 4e-7, "rd {rd} hd {hd} pos {pos} dim {d}: {g} vs {e}");
            }
        }
    }
}

#[test]
fn exact_frequencies_differ_only_by_frequency_rounding() {
    // Against the exact f64 frequencies, the only extra error is the f32
    // rounding of each frequency (relative 2^-24), which grows with the
    // position: |angle error| <= pos * inv_freq * 2^-24.
    let mut rng = Rng(2);
    let (rd, theta) = (64usize, 1e7f64);
    let table = RopeTable::new(rd, theta);
    for &pos in &POSITIONS {
        let head = rng.vec(rd, 1.0);
        let mut got = head.clone();
        table.apply_neox(&mut got, pos);
        for i in 0..rd / 2 {
            let inv = theta.powf(-(2.0 * i as f64) / rd as f64);
            let ang = pos as f64 * inv;
            let (u0, u1) = (head[i] as f64, head[i + rd / 2] as f64);
            let e0 = u0 * ang.cos() - u1 * ang.sin();
            let e1 = u1 * ang.cos() + u0 * ang.sin();
            let bound = 4e-7 + ang * 2f64.powi(-24) * u0.hypot(u1);
            assert!(
                (got[i] as f64 - e0).abs() <= bound && (got[i + rd / 2] as f64 - e1).abs() <= bound,
                "pos {pos} slot {i}"
            );
        }
    }
}

#[test]
fn position_zero_is_identity() {
    let mut rng = Rng(3);
    let table = RopeTable::new(64, 1e7);
    let head = rng.vec(256, 1.0);
    let mut got = head.clone();
    table.apply_neox(&mut got, 0);
    assert_eq!(got, head);
}

#[test]
fn preserves_norms_and_passes_through() {
    let mut rng = Rng(4);
    let (rd, hd) = (64usize, 256usize);
    let table = RopeTable::new(rd, 1e7);
    for &pos in &POSITIONS {
        let head = rng.vec(hd, 1.0);
        let mut got = head.clone();
        table.apply_neox(&mut got, pos);
        // Entries past rotary_dims are untouched, bit for bit.
        assert_eq!(&got[rd..], &head[rd..]);
        // Each rotated pair keeps its length.
        for i in 0..rd / 2 {
            let before = (head[i] as f64).hypot(head[i + rd / 2] as f64);
            let after = (got[i] as f64).hypot(got[i + rd / 2] as f64);
            assert!((before - after).abs() <= 3e-7, "pos {pos} pair {i}");
        }
    }
}

#[test]
fn cached_cos_sin_is_bit_identical() {
    let mut rng = Rng(5);
    let table = RopeTable::new(64, 1e7);
    let (mut cos, mut sin) = (vec![0.0f32; 32], vec![0.0f32; 32]);
    for &pos in &POSITIONS {
        let head = rng.vec(256, 1.0);
        let mut a = head.clone();
        table.apply_neox(&mut a, pos);
        table.fill_cos_sin(pos, &mut cos, &mut sin);
        let mut b = head.clone();
        rotate_neox(&mut b, &cos, &sin);
        assert_eq!(a, b, "pos {pos}");
    }
}

#[test]
fn dot_product_depends_only_on_offset_even_far_out() {
    // <R(p+d) q, R(p) k> must equal <R(d) q, R(0) k>. With f32 angles this
    // breaks down near 262144 (the angle's ulp is 2^-5 rad); with the f64
    // angle it holds to f32 rounding.
    let mut rng = Rng(6);
    let table = RopeTable::new(64, 1e7);
    let q = rng.vec(64, 1.0);
    let k = rng.vec(64, 1.0);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum::<f64>();
    for d in [0usize, 1, 5, 100] {
        let (mut q0, mut k0) = (q.clone(), k.clone());
        table.apply_neox(&mut q0, d);
        table.apply_neox(&mut k0, 0);
        let near = dot(&q0, &k0);
        for p in [1000usize, 100_000, 262_144 - 100] {
            let (mut qp, mut kp) = (q.clone(), k.clone());
            table.apply_neox(&mut qp, p + d);
            table.apply_neox(&mut kp, p);
            let far = dot(&qp, &kp);
            assert!((far - near).abs() < 2e-5, "d {d} p {p}: {far} vs {near}");
        }
    }
}
