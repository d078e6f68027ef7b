//! Per-sequence state of the hybrid stack.
//!
//! Full-attention layers keep a KV cache that grows with the sequence; GDN
//! layers keep a fixed-size conv window and an f32 recurrent state. A
//! [`Snapshot`] holds only the GDN states and the position: restoring it
//! truncates the KV caches back to that position, so going back to a prefix
//! costs O(GDN state), not O(context).

use crate::config::{Config, LayerKind};
use crate::error::{ModelError, Result};

#[derive(Clone, Debug)]
pub enum LayerCache {
    /// `k`, `v`: `[pos][n_kv_heads][head_dim]` after k-norm and RoPE.
    Attention { k: Vec<f32>, v: Vec<f32> },
    /// `conv`: `[K-1, conv_dim]` last pre-conv rows, oldest first;
    /// `ssm`: `[Hv, Dk, Dv]` f32 recurrent state.
    Gdn { conv: Vec<f32>, ssm: Vec<f32> },
}

/// Positions of KV room a new cache reserves up front (see [`Cache::new`]).
pub const KV_RESERVE: usize = 4096;

#[derive(Clone, Debug)]
pub struct Cache {
    /// Tokens already processed (the next token's position).
    pub pos: usize,
    pub layers: Vec<LayerCache>,
    kv_row: usize,
    max_tokens: usize,
}

/// Saved GDN state at `pos` (see the module docs).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pos: usize,
    gdn: Vec<Option<(Vec<f32>, Vec<f32>)>>,
}

impl Snapshot {
    pub fn pos(&self) -> usize {
        self.pos
    }
}

/// `len` zeros whose pages are mapped writable now.
///
/// `vec![0.0; len]` takes fresh zero pages from the kernel, mapped on first
/// touch. The recurrent step reads a state before it writes it, so each
/// 4 KiB page of a new state was first mapped read-only to the shared zero
/// page and then copied on the write, with a TLB shootdown to every other
/// core each time: 15k such faults for a 35B-A3B shape's 63 MB of states,
/// inside the first forward (`perf`: 4% of a 64-token decode, in the
/// recurrent kernel). A write per page here maps each once, outside it.
fn written_zeros(len: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; len];
    // One f32 per 4 KiB page; `black_box` keeps the stores (the allocator
    // hands out zeroed memory, so a known 0.0 store could be dropped).
    for page in v.chunks_mut(1024) {
        page[0] = std::hint::black_box(0.0);
    }
    v
}

impl Cache {
    /// An empty cache for `config`, accepting up to `max_tokens` positions.
    /// The KV caches start with room for `min(max_tokens, KV_RESERVE)`
    /// positions, so short sequences never reallocate while decoding and
    /// long ones do so rarely (doubling), without a 262k-token reservation.
    pub fn new(config: &Config, max_tokens: usize) -> Cache {
        let kv_row = config.num_key_value_heads * config.head_dim;
        let conv_len = (config.linear_conv_kernel_dim - 1) * config.conv_dim();
        let ssm_len = config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim;
        let layers = config
            .layer_types
            .iter()
            .map(|t| match t {
                LayerKind::FullAttention => {
                    let n = max_tokens.min(KV_RESERVE) * kv_row;
                    LayerCache::Attention { k: Vec::with_capacity(n), v: Vec::with_capacity(n) }
                }
                LayerKind::LinearAttention => {
                    LayerCache::Gdn { conv: written_zeros(conv_len), ssm: written_zeros(ssm_len) }
                }
            })
            .collect();
        Cache { pos: 0, layers, kv_row, max_tokens }
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Back to an empty sequence (keeps allocations).
    pub fn reset(&mut self) {
        self.pos = 0;
        for l in &mut self.layers {
            match l {
                LayerCache::Attention { k, v } => {
                    k.clear();
                    v.clear();
                }
                LayerCache::Gdn { conv, ssm } => {
                    conv.fill(0.0);
                    ssm.fill(0.0);
                }
            }
        }
    }

    /// Checks that `n` more tokens fit.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        if self.pos + n > self.max_tokens {
            return Err(ModelError::ContextFull { pos: self.pos + n, limit: self.max_tokens });
        }
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        let gdn = self
            .layers
            .iter()
            .map(|l| match l {
                LayerCache::Gdn { conv, ssm } => Some((conv.clone(), ssm.clone())),
                LayerCache::Attention { .. } => None,
            })
            .collect();
        Snapshot { pos: self.pos, gdn }
    }

    /// Returns to the state at `snap`. The cache must have advanced from that
    /// snapshot along the same tokens (the KV rows below `snap.pos` are kept).
    pub fn restore(&mut self, snap: &Snapshot) {
        assert!(snap.pos <= self.pos, "restore: snapshot is ahead of the cache");
        for (l, s) in self.layers.iter_mut().zip(&snap.gdn) {
            match (l, s) {
                (LayerCache::Attention { k, v }, None) => {
                    k.truncate(snap.pos * self.kv_row);
                    v.truncate(snap.pos * self.kv_row);
                }
                (LayerCache::Gdn { conv, ssm }, Some((c, s))) => {
                    conv.copy_from_slice(c);
                    ssm.copy_from_slice(s);
                }
                _ => unreachable!("snapshot taken from a cache of another model"),
            }
        }
        self.pos = snap.pos;
    }

    /// Bytes held by the caches now.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Attention { k, v } => (k.len() + v.len()) * 4,
                LayerCache::Gdn { conv, ssm } => (conv.len() + ssm.len()) * 4,
            })
            .sum()
    }
}
