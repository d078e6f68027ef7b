//! The whole stack, top to bottom (spec 2.0):
//!
//! ```text
//! x = embed_tokens[ids]
//! for each layer:  x += mixer(norm_in(x));  x += ffn(norm_post(x))
//! logits = head(norm(x))
//! ```
//! `mixer` is gated attention or Gated DeltaNet by `layer_types`; `ffn` is a
//! dense SwiGLU or the MoE. The model sees no files, threads or scheduling:
//! it reads its weights and writes into the caller's cache and scratch.

use std::path::{Path, PathBuf};

use qmoe_formats::gguf::GgufFile;
use qmoe_formats::Checkpoint;
use qmoe_kernels::linear::matmul;
use qmoe_kernels::norm::rms_norm;
use qmoe_kernels::pool::for_chunk_pieces;
use qmoe_kernels::rope::RopeTable;

use crate::cache::{Cache, LayerCache};
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::gguf::{config_from_gguf, load_gguf_weights, GgufConventions};
use crate::layers::{attention, ffn, gdn};
use crate::loader::{load_weights, Conventions};
use crate::scratch::{take, Scratch};
use crate::weights::{Mixer, Mlp, Weights};

/// Which positions' logits a forward call produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// `[T, V]`: every position (verification, `qmoe logits`).
    All,
    /// `[1, V]`: the last position only (generation).
    Last,
    /// None (prefilling a prefix whose logits nobody reads).
    None,
}

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    /// The file(s) the weights borrow from and what the loader decided.
    pub source: Source,
    rope: RopeTable,
}

/// Where a model came from.
pub enum Source {
    Safetensors { checkpoint: Checkpoint, conventions: Conventions },
    Gguf { file: GgufFile, conventions: GgufConventions },
}

impl Model {
    /// Opens a checkpoint: a directory with `config.json` + safetensors, or
    /// a `.gguf` file (or a directory holding exactly one). Nothing is copied.
    pub fn load(path: &Path) -> Result<Model> {
        if let Some(gguf) = gguf_path(path)? {
            return Self::load_gguf(&gguf);
        }
        let dir: PathBuf =
            if path.is_file() { path.parent().unwrap_or(Path::new(".")).to_path_buf() } else { path.to_path_buf() };
        let config = Config::from_file(&dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(&dir)?;
        Self::from_parts(config, checkpoint)
    }

    pub fn from_parts(config: Config, checkpoint: Checkpoint) -> Result<Model> {
        let (weights, conventions) = load_weights(&checkpoint, &config)?;
        let rope = RopeTable::new(config.rotary_dims(), config.rope_theta);
        Ok(Model { config, weights, source: Source::Safetensors { checkpoint, conventions }, rope })
    }

    pub fn load_gguf(path: &Path) -> Result<Model> {
        let file = GgufFile::open(path)?;
        let arch = file.architecture()?.to_string();
        let vocab =
            file.tensor("token_embd.weight").map(|t| t.shape()).and_then(|s| s.first().copied()).ok_or_else(|| {
                ModelError::MissingTensor {
                    dir: path.to_path_buf(),
                    name: "token_embd.weight".into(),
                    what: "the token embeddings".into(),
                }
            })?;
        let config = config_from_gguf(path, &|k| file.get(k), &|n| file.tensor(n).is_some(), vocab)?;
        let (weights, conventions) =
            load_gguf_weights(&file, &config, &arch).map_err(|g| ModelError::Gate(Box::new(g)))?;
        let rope = RopeTable::new(config.rotary_dims(), config.rope_theta);
        Ok(Model { config, weights, source: Source::Gguf { file, conventions }, rope })
    }

    /// The safetensors loader's conventions (`None` for GGUF).
    pub fn conventions(&self) -> Option<&Conventions> {
        match &self.source {
            Source::Safetensors { conventions, .. } => Some(conventions),
            Source::Gguf { .. } => None,
        }
    }

    /// A fresh cache for up to `max_tokens` positions.
    pub fn new_cache(&self, max_tokens: usize) -> Cache {
        Cache::new(&self.config, max_tokens)
    }

    /// Runs `ids` (positions `cache.pos ..`) through the model, advancing the
    /// cache. Returns the requested logits, `[T, V]` or `[1, V]`, borrowed
    /// from `scratch`.
    pub fn forward<'s>(
        &self,
        ids: &[u32],
        cache: &mut Cache,
        scratch: &'s mut Scratch,
        which: Logits,
    ) -> Result<&'s [f32]> {
        let cfg = &self.config;
        let (t, h, v) = (ids.len(), cfg.hidden_size, cfg.vocab_size);
        if t == 0 {
            return Ok(&scratch.logits[..0]);
        }
        for (pos, &id) in ids.iter().enumerate() {
            if id as usize >= v {
                return Err(ModelError::TokenOutOfRange { id, pos: cache.pos + pos, vocab: v });
            }
        }
        cache.reserve(t)?;
        let start = cache.pos;

        let x = take(&mut scratch.x, t * h);
        let embed = self.weights.embed.view();
        for (row, &id) in x.chunks_exact_mut(h).zip(ids) {
            embed.row_to_f32(id as usize, row);
        }

        for (layer, lc) in self.weights.layers.iter().zip(cache.layers.iter_mut()) {
            let hbuf = take(&mut scratch.h, t * h);
            let y = take(&mut scratch.y, t * h);
            rms_norm(x, &layer.input_norm, cfg.rms_norm_eps, hbuf);
            match (&layer.mixer, lc) {
                (Mixer::Attention(w), LayerCache::Attention { k, v }) => {
                    attention::forward(w, cfg, &self.rope, hbuf, t, start, k, v, &mut scratch.attn, y)
                }
                (Mixer::Gdn(w), LayerCache::Gdn { conv, ssm }) => {
                    gdn::forward(w, cfg, hbuf, t, conv, ssm, &mut scratch.gdn, y)
                }
                _ => unreachable!("cache built from the same config as the weights"),
            }
            add(x, y);
            rms_norm(x, &layer.post_attn_norm, cfg.rms_norm_eps, hbuf);
            match &layer.mlp {
                Mlp::Dense(w) => ffn::dense(w, hbuf, t, &mut scratch.moe, y),
                Mlp::Moe(w) => ffn::moe(w, cfg, hbuf, t, &mut scratch.moe, y),
            }
            add(x, y);
        }
        cache.pos += t;

        let rows = match which {
            Logits::All => 0..t,
            Logits::Last => t - 1..t,
            Logits::None => return Ok(&scratch.logits[..0]),
        };
        let n = rows.len();
        let hbuf = take(&mut scratch.h, n * h);
        rms_norm(&x[rows.start * h..rows.end * h], &self.weights.final_norm, cfg.rms_norm_eps, hbuf);
        let logits = take(&mut scratch.logits, n * v);
        matmul(&self.weights.head().view(), hbuf, logits, n);
        Ok(logits)
    }
}

/// The GGUF file `path` names: the path itself if it ends in `.gguf`, or
/// the only `.gguf` in a directory without `config.json`.
pub fn gguf_path(path: &Path) -> Result<Option<PathBuf>> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok(Some(path.to_path_buf()));
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return Ok(None);
    }
    let Ok(entries) = std::fs::read_dir(path) else { return Ok(None) };
    let ggufs: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "gguf")).collect();
    match ggufs.len() {
        0 => Ok(None),
        1 => Ok(ggufs.into_iter().next()),
        n => Err(ModelError::Unsupported {
            dir: path.to_path_buf(),
            what: format!("{n} .gguf files and no config.json: name the file to load"),
        }),
    }
}

/// `x += y`, in pool pieces for a prefill's rows.
fn add(x: &mut [f32], y: &[f32]) {
    // Pieces of at least 64K values: a decode step's one row stays here.
    for_chunk_pieces(x, 1, 64 << 10, &|a, x| {
        for (v, w) in x.iter_mut().zip(&y[a..]) {
            *v += w;
        }
    });
}
