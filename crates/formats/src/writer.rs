//! Writing safetensors files (small test models, converted weights).
//!
//! Output follows the format exactly: header JSON padded with spaces to a
//! multiple of 8 bytes, tensors laid out back to back in the order given.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use qmoe_core::DType;
use serde_json::{json, Map, Value};

use crate::error::{FormatError, Result};
use crate::header::{dtype_to_safetensors, METADATA_KEY};

/// One tensor to write: little-endian element bytes in C order.
#[derive(Clone, Copy, Debug)]
pub struct TensorToWrite<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// Write `tensors` (in this order) and `metadata` to a new file at `path`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorToWrite<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bad = |t: &TensorToWrite, reason: String| FormatError::BadTensorToWrite {
        path: path.into(),
        tensor: t.name.to_string(),
        reason,
    };
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert(METADATA_KEY.to_string(), json!(metadata));
    }
    let mut names = HashSet::new();
    let mut offset = 0u64;
    for t in tensors {
        if t.name == METADATA_KEY || !names.insert(t.name) {
            return Err(bad(t, "name is reserved or used twice".into()));
        }
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(t.dtype.size()));
        if expected != Some(t.bytes.len()) {
            return Err(bad(t, format!("shape {:?} of {} does not match {} bytes", t.shape, t.dtype, t.bytes.len())));
        }
        let end = offset + t.bytes.len() as u64;
        header.insert(
            t.name.to_string(),
            json!({ "dtype": dtype_to_safetensors(t.dtype), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = Value::Object(header).to_string().into_bytes();
    let pad = (8 - json.len() % 8) % 8;
    json.resize(json.len() + pad, b' ');
    let file = std::fs::File::create(path).map_err(|e| FormatError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| FormatError::io(path, e);
    w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&json).map_err(io)?;
    for t in tensors {
        w.write_all(t.bytes).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}
