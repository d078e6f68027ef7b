//! Safetensors checkpoints: one file, a directory of files, or a sharded
//! directory with `model.safetensors.index.json`.
//!
//! Every file is memory-mapped once; each `TensorInfo` holds a `TensorData`
//! handle into that mapping, so no tensor byte is copied at open. Names are the
//! names stored in the files (no prefix stripping or renaming happens here).
//!
//! Invariants of an open `Checkpoint`: every tensor name is unique across all
//! files; with an index, every tensor the index maps is present in exactly the
//! shard it is mapped to.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::Value;

use crate::error::{FormatError, Result};
use crate::header::parse_header;
use crate::tensor::{TensorData, TensorInfo};

/// Name of the shard index written by transformers / mlx-lm.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Index files larger than this are refused (real ones are a few MB).
const MAX_INDEX_LEN: u64 = 256 << 20;

/// One memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: Arc<Path>,
    tensors: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
    header_len: usize,
    file_len: u64,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if file_len < 8 {
            return Err(FormatError::FileTooShort { path: path.into(), len: file_len });
        }
        // SAFETY: the mapping is read-only and private to this process. Like every
        // mmap-based loader we rely on the checkpoint file not being truncated or
        // rewritten while it is open; all bounds were checked against the length
        // seen at open time.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Self::from_mmap(path, Arc::new(mmap))
    }

    /// Parse an already-mapped file (or an anonymous mapping holding one).
    pub fn from_mmap(path: &Path, mmap: Arc<Mmap>) -> Result<SafetensorsFile> {
        let header = parse_header(&mmap, path)?;
        let path: Arc<Path> = Arc::from(path);
        let mut tensors = Vec::with_capacity(header.tensors.len());
        for e in header.tensors {
            let data = TensorData::new(mmap.clone(), e.start, e.len)?;
            tensors.push(TensorInfo { name: e.name, dtype: e.dtype, shape: e.shape, data, file: path.clone() });
        }
        Ok(SafetensorsFile {
            path,
            tensors,
            metadata: header.metadata,
            header_len: header.header_len,
            file_len: mmap.len() as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors in header order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `__metadata__` of the header (empty if absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn header_len(&self) -> usize {
        self.header_len
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }
}

/// All tensors of a checkpoint, by name.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    index: Option<PathBuf>,
    files: Vec<Arc<Path>>,
    metadata: Vec<BTreeMap<String, String>>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Open a directory or a single safetensors file.
    ///
    /// * directory with `model.safetensors.index.json`: exactly the shards its
    ///   `weight_map` names (other `*.safetensors` files there are ignored);
    /// * other directory: every `*.safetensors` file in it, sorted by name;
    /// * a path ending in `.index.json`: that index, shards relative to its directory;
    /// * any other file: read as one safetensors file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_index(&index);
            }
            return Self::open_files(path, &list_safetensors(path)?);
        }
        if !meta.is_file() {
            return Err(FormatError::NotACheckpoint { path: path.into() });
        }
        let is_index = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".index.json"));
        if is_index {
            return Self::open_index(path);
        }
        let dir = parent_dir(path);
        Self::open_files(&dir, &[path.to_path_buf()])
    }

    fn open_files(dir: &Path, paths: &[PathBuf]) -> Result<Checkpoint> {
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            index: None,
            files: Vec::with_capacity(paths.len()),
            metadata: Vec::with_capacity(paths.len()),
            tensors: BTreeMap::new(),
        };
        for p in paths {
            ck.add_file(SafetensorsFile::open(p)?)?;
        }
        Ok(ck)
    }

    fn add_file(&mut self, file: SafetensorsFile) -> Result<()> {
        for t in file.tensors {
            if let Some(first) = self.tensors.get(&t.name) {
                return Err(FormatError::DuplicateTensor {
                    tensor: t.name.clone(),
                    first: first.file.to_path_buf(),
                    second: t.file.to_path_buf(),
                });
            }
            self.tensors.insert(t.name.clone(), t);
        }
        self.files.push(file.path);
        self.metadata.push(file.metadata);
        Ok(())
    }

    fn open_index(index: &Path) -> Result<Checkpoint> {
        let dir = parent_dir(index);
        let weight_map = read_weight_map(index)?;

        // Shards in name order, each with one tensor that names it (for errors).
        let mut shards: BTreeMap<&str, &str> = BTreeMap::new();
        for (tensor, shard) in &weight_map {
            check_shard_name(index, tensor, shard)?;
            shards.entry(shard.as_str()).or_insert(tensor.as_str());
        }

        let mut ck = Checkpoint {
            dir: dir.clone(),
            index: Some(index.to_path_buf()),
            files: Vec::with_capacity(shards.len()),
            metadata: Vec::with_capacity(shards.len()),
            tensors: BTreeMap::new(),
        };
        for (shard, tensor) in &shards {
            let p = dir.join(shard);
            if let Err(source) = std::fs::metadata(&p) {
                return Err(FormatError::MissingShard {
                    index: index.into(),
                    tensor: tensor.to_string(),
                    shard: shard.to_string(),
                    source,
                });
            }
            ck.add_file(SafetensorsFile::open(&p)?)?;
        }

        for (tensor, shard) in &weight_map {
            let want = dir.join(shard);
            let found = ck.tensors.get(tensor).map(|t| t.file.to_path_buf());
            if found.as_deref() != Some(want.as_path()) {
                return Err(FormatError::TensorNotInShard {
                    index: index.into(),
                    tensor: tensor.clone(),
                    shard: want,
                    found_in: found,
                });
            }
        }
        Ok(ck)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Like `get`, but a missing tensor is an error naming the checkpoint.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| FormatError::MissingTensor { dir: self.dir.clone(), tensor: name.to_string() })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// Tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> + '_ {
        self.tensors.values()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The files opened, in the order they were read (sorted by name).
    pub fn files(&self) -> &[Arc<Path>] {
        &self.files
    }

    /// `__metadata__` of one of `files()`.
    pub fn metadata(&self, file: &Path) -> Option<&BTreeMap<String, String>> {
        self.files.iter().position(|f| &**f == file).map(|i| &self.metadata[i])
    }

    /// The checkpoint directory (for a single file: the directory holding it).
    /// `config.json` and the tokenizer files are looked up here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard index used, if any.
    pub fn index(&self) -> Option<&Path> {
        self.index.as_deref()
    }

    /// Sum of all tensor byte counts.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.byte_len() as u64).sum()
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn list_safetensors(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| FormatError::io(dir, e))? {
        let entry = entry.map_err(|e| FormatError::io(dir, e))?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "safetensors") && p.is_file() {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(FormatError::NoSafetensors { dir: dir.into() });
    }
    out.sort();
    Ok(out)
}

fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |reason: String| FormatError::BadIndex { index: index.into(), reason };
    let len = std::fs::metadata(index).map_err(|e| FormatError::io(index, e))?.len();
    if len > MAX_INDEX_LEN {
        return Err(bad(format!("index is {len} bytes, over the {MAX_INDEX_LEN}-byte limit")));
    }
    let text = std::fs::read(index).map_err(|e| FormatError::io(index, e))?;
    let json: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let Some(map) = json.get("weight_map") else {
        return Err(bad("no `weight_map` object".into()));
    };
    let Value::Object(map) = map else {
        return Err(bad("`weight_map` must be an object of tensor name -> shard file".into()));
    };
    let mut out = BTreeMap::new();
    for (tensor, shard) in map {
        let Value::String(shard) = shard else {
            return Err(bad(format!("`weight_map` entry for tensor `{tensor}` must be a file name, found {shard}")));
        };
        out.insert(tensor.clone(), shard.clone());
    }
    if out.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(out)
}

/// Shard names must stay inside the checkpoint directory.
fn check_shard_name(index: &Path, tensor: &str, shard: &str) -> Result<()> {
    let p = Path::new(shard);
    let ok = !shard.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(FormatError::BadIndex {
            index: index.into(),
            reason: format!("tensor `{tensor}` is mapped to shard `{shard}`, which is not a file name inside the checkpoint directory"),
        })
    }
}
