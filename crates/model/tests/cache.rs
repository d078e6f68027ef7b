//! Hybrid-cache invariants: snapshots restore bit-exactly, and only the
//! layers that need each kind of state hold it.

use std::path::{Path, PathBuf};

use qmoe_model::cache::LayerCache;
use qmoe_model::config::LayerKind;
use qmoe_model::{Logits, Model, Scratch};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

#[test]
fn snapshot_restore_is_bit_exact() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 % 500) as u32).collect();
    let mut cache = model.new_cache(64);
    let mut s = Scratch::default();
    model.forward(&ids[..20], &mut cache, &mut s, Logits::None).unwrap();
    let snap = cache.snapshot();
    let first = model.forward(&ids[20..], &mut cache, &mut s, Logits::All).unwrap().to_vec();
    // Wander off along other tokens, then come back.
    model.forward(&[5, 6, 7], &mut cache, &mut s, Logits::None).unwrap();
    cache.restore(&snap);
    assert_eq!(cache.pos, 20);
    let again = model.forward(&ids[20..], &mut cache, &mut s, Logits::All).unwrap().to_vec();
    assert_eq!(first, again);
}

#[test]
fn state_only_where_needed() {
    let model = Model::load(&fixture("moe_fused")).unwrap();
    let cfg = &model.config;
    let mut cache = model.new_cache(16);
    model.forward(&[1, 2, 3], &mut cache, &mut Scratch::default(), Logits::None).unwrap();
    for (i, (l, kind)) in cache.layers.iter().zip(&cfg.layer_types).enumerate() {
        match (l, kind) {
            (LayerCache::Attention { k, v }, LayerKind::FullAttention) => {
                assert_eq!(k.len(), 3 * cfg.num_key_value_heads * cfg.head_dim, "layer {i}");
                assert_eq!(v.len(), k.len());
            }
            (LayerCache::Gdn { conv, ssm }, LayerKind::LinearAttention) => {
                assert_eq!(conv.len(), (cfg.linear_conv_kernel_dim - 1) * cfg.conv_dim());
                assert_eq!(ssm.len(), cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim);
            }
            _ => panic!("layer {i}: cache kind does not match the layer type"),
        }
    }
}
