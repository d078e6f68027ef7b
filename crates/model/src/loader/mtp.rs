//! The MTP head of a safetensors checkpoint (spec 4.8), read by the same
//! primitives as the trunk.
//!
//! * Where: the first of [`names::MTP_PREFIXES`] any tensor starts with; no
//!   such tensor means no head (MLX conversions and text-only exports drop it
//!   while their config still says `mtp_num_hidden_layers: 1`).
//! * How many blocks: `mtp_num_hidden_layers`, or when the config does not
//!   carry it (Qwen3-Next) the `layers.{j}` indices present; a config that
//!   disagrees with the tensors is an error, never a guess.
//! * Each block is gated full attention plus the trunk's MLP kind (MoE with
//!   shared expert for qwen3_5_moe / qwen3_next, dense for qwen3_5).
//! * Norms are zero-centred in every safetensors dialect ([`MTP_NORMS`]).
//!
//! Anything missing or mis-shaped is a gate problem naming the tensor: a head
//! is loaded whole or the checkpoint is refused, never half-loaded.

use std::collections::BTreeSet;

use super::source::Category;
use super::{Loader, MtpConventions, NormStorage, Problem};
use crate::config::Arch;
use crate::names::{self, mtp};
use crate::weights::{Layer, Mixer, Mlp, Mtp};

impl<'a> Loader<'a> {
    /// `None` when the checkpoint has no MTP tensors; otherwise the head
    /// (`None` inside if any problem was recorded) and how it was read.
    pub(super) fn mtp(&mut self) -> Option<(Option<Mtp>, MtpConventions)> {
        let ckpt = self.s.ckpt;
        let prefix = names::MTP_PREFIXES.iter().copied().find(|p| ckpt.names().any(|n| n.starts_with(p)))?;
        let blocks: BTreeSet<usize> = ckpt
            .names()
            .filter_map(|n| n.strip_prefix(prefix)?.strip_prefix(mtp::LAYERS)?.split('.').next()?.parse().ok())
            .collect();
        let found = blocks.iter().next_back().map_or(0, |&j| j + 1);
        let (n, layers_from) = match self.cfg.mtp_num_hidden_layers {
            0 => (found.max(1), "the mtp layers.{j} tensors (the config has no mtp_num_hidden_layers)"),
            n => (n, "mtp_num_hidden_layers"),
        };
        if found > n || blocks.len() != found {
            self.s.problems.push(Problem::Invalid {
                name: format!("{prefix}{}{{j}}.*", mtp::LAYERS),
                reason: format!("the config implies MTP blocks 0..{n} but the checkpoint has blocks {blocks:?}"),
            });
        }
        let info = MtpConventions { prefix, layers: n, layers_from };

        // Read the head with the MTP prefix in place of the trunk's and its
        // own norm convention; restore both afterwards.
        let (trunk_prefix, trunk_norms) = (self.s.prefix, self.norms);
        self.s.prefix = prefix;
        self.norms = NormStorage::ZeroCentred;
        let head = self.mtp_head(n);
        self.s.prefix = trunk_prefix;
        self.norms = trunk_norms;

        // Byte accounting: everything under the prefix is the MTP head.
        for (name, u) in self.s.used.iter_mut() {
            if let (true, Some(u)) = (name.starts_with(prefix), u.as_mut()) {
                u.category = Category::Mtp;
            }
        }
        Some((head, info))
    }

    fn mtp_head(&mut self, n: usize) -> Option<Mtp> {
        let h = self.cfg.hidden_size;
        let fc = self.s.linear(mtp::FC, h, 2 * h, Category::Mtp);
        let norm_e = self.norm(mtp::PRE_FC_NORM_EMBEDDING, h);
        let norm_h = self.norm(mtp::PRE_FC_NORM_HIDDEN, h);
        let norm = self.norm(mtp::NORM, h);
        let layers: Vec<Option<Layer>> = (0..n).map(|j| self.mtp_block(j)).collect();
        Some(Mtp {
            fc: fc?,
            pre_fc_norm_embedding: norm_e?,
            pre_fc_norm_hidden: norm_h?,
            norm: norm?,
            layers: layers.into_iter().collect::<Option<Vec<_>>>()?,
        })
    }

    /// Block `j` (`layers.{j}.*` under the MTP prefix): attention + MLP.
    fn mtp_block(&mut self, j: usize) -> Option<Layer> {
        let h = self.cfg.hidden_size;
        let input_norm = self.norm(&names::layer(j, names::INPUT_NORM), h);
        let post_attn_norm = self.norm(&names::layer(j, names::POST_ATTN_NORM), h);
        let mixer = self.attention(j).map(Mixer::Attention);
        let mlp = match self.cfg.arch {
            Arch::Qwen35 => self.dense_mlp(j).map(Mlp::Dense),
            Arch::Qwen35Moe | Arch::Qwen3Next => self.moe(j).map(|(m, _)| Mlp::Moe(m)),
        };
        Some(Layer { input_norm: input_norm?, post_attn_norm: post_attn_norm?, mixer: mixer?, mlp: mlp? })
    }
}
