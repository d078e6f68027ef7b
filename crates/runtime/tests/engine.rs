//! Session invariants: prefix reuse across turns computes only the new
//! tokens and gives exactly what a fresh session computes on the whole text.

use std::path::{Path, PathBuf};

use qmoe_model::Model;
use qmoe_runtime::{Sampler, SamplerConfig, Session, StopReason};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn greedy() -> Sampler {
    Sampler::new(SamplerConfig::greedy())
}

fn generate(session: &mut Session, prompt: &[u32], n: usize) -> (Vec<u32>, qmoe_runtime::Stats) {
    let mut out = Vec::new();
    let stats = session
        .generate(prompt, n, &[], &mut greedy(), |id| {
            out.push(id);
            Ok(true)
        })
        .unwrap();
    (out, stats)
}

#[test]
fn second_turn_reuses_the_cached_prefix() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let turn1: Vec<u32> = (0..30).map(|i| (i * 13 + 5) % 500).collect();
    let mut session = Session::new(&model, 256);
    let (reply, s1) = generate(&mut session, &turn1, 8);
    assert_eq!((s1.prompt_tokens, s1.reused_tokens, s1.generated_tokens), (30, 0, 8));
    assert_eq!(s1.stop, StopReason::MaxTokens);

    // Next turn: everything so far plus new tokens.
    let mut turn2 = turn1.clone();
    turn2.extend(&reply);
    turn2.extend([7, 8, 9, 10]);
    let (reply2, s2) = generate(&mut session, &turn2, 8);
    // The last reply token was sampled but never fed, so it is recomputed.
    assert_eq!(s2.reused_tokens, 30 + 7);
    assert_eq!(s2.prompt_tokens, turn2.len() - s2.reused_tokens);

    let mut fresh = Session::new(&model, 256);
    let (want, _) = generate(&mut fresh, &turn2, 8);
    assert_eq!(reply2, want);
}

#[test]
fn diverging_prompt_rewinds_to_a_snapshot() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let history: Vec<u32> = (0..24).map(|i| (i * 7 + 1) % 500).collect();
    let mut session = Session::new(&model, 256);
    session.feed(&history, false).unwrap();
    session.checkpoint();
    let mut a = history.clone();
    a.extend([100, 101, 102]);
    generate(&mut session, &a, 4);

    // Same history, different continuation: GDN state cannot be truncated,
    // so the session must restore the snapshot taken after `history`.
    let mut b = history.clone();
    b.extend([200, 201]);
    let (got, stats) = generate(&mut session, &b, 6);
    assert_eq!(stats.reused_tokens, history.len());
    let (want, _) = generate(&mut Session::new(&model, 256), &b, 6);
    assert_eq!(got, want);
}

#[test]
fn stop_token_ends_generation_and_is_not_emitted() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let prompt = [3u32, 4, 5];
    let (free, _) = generate(&mut Session::new(&model, 64), &prompt, 5);
    let stop = [free[2]];
    let mut out = Vec::new();
    let stats = Session::new(&model, 64)
        .generate(&prompt, 5, &stop, &mut greedy(), |id| {
            out.push(id);
            Ok(true)
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::StopToken);
    assert!(!out.contains(&stop[0]));
    assert_eq!(&out[..], &free[..out.len()]);
}
