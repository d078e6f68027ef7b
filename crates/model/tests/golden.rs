//! Golden fixtures: tiny random models written by the pinned reference
//! (`tools/reference/make_fixtures.py`, transformers in f32) with the logits
//! of every position. Each is run three equivalent ways (one prefill,
//! token-by-token decode, chunked prefill of several sizes) and must match.
//!
//! Tolerance: max |ours - reference| <= 1e-4 x logit scale (max |reference|).
//! Both sides compute in f32 from identical stored weights; what remains is
//! summation order (and chunked vs recurrent GDN).

mod common;

use common::{check, fixture, root};

/// f32 on both sides from identical stored weights.
const REL_TOL: f32 = 1e-4;

#[test]
fn qwen3_5_moe_fused_experts() {
    check(&fixture("moe_fused"), &fixture("moe_fused"), REL_TOL);
}

#[test]
fn qwen3_5_moe_per_expert_sharded() {
    check(&fixture("moe_per_expert"), &fixture("moe_per_expert"), REL_TOL);
}

#[test]
fn qwen3_next_fused_projections() {
    check(&fixture("next"), &fixture("next"), REL_TOL);
}

#[test]
fn qwen3_5_dense_tied() {
    check(&fixture("dense_tied"), &fixture("dense_tied"), REL_TOL);
}

#[test]
fn bundled_demo_model() {
    check(&root().join("models/demo"), &fixture("demo_golden"), REL_TOL);
}
