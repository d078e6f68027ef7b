//! Writing GGUF v3 files, one tensor at a time.
//!
//! The header (metadata and tensor infos with their offsets) comes before the
//! data, so every tensor is declared — name, type, dims — before the first
//! byte of data is written; then the data follow in declaration order. Only
//! the metadata and the declarations are held in memory, so an export needs
//! memory for one tensor at a time (the one the caller is passing in).
//!
//! Layout written: each tensor at the next multiple of the alignment, and the
//! data section padded to a multiple of the alignment after every tensor
//! (including the last), as llama.cpp's own writer does. `general.alignment`
//! is written only when the alignment is not the default 32.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use qmoe_core::GgmlType;

use super::value::{GgufArray, GgufValue};
use super::{
    align_up, GGML_MAX_NAME, GGUF_ALIGNMENT_KEY, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_ARRAY_DEPTH,
    GGUF_MAX_DIMS, GGUF_VERSION,
};
use crate::error::{FormatError, Result};

struct Declared {
    name: String,
    ty: GgmlType,
    ne: Vec<u64>,
    /// From the start of the data section.
    offset: u64,
    byte_len: u64,
}

/// A GGUF file being written. Use: [`new`](Self::new), then any number of
/// [`add_metadata`](Self::add_metadata) and [`add_tensor`](Self::add_tensor),
/// then [`write_tensor_data`](Self::write_tensor_data) for each declared
/// tensor in declaration order, then [`finish`](Self::finish).
///
/// A file whose writer is dropped before `finish` is incomplete: its declared
/// tensors run past its end, so readers refuse it.
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    alignment: u32,
    metadata: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<Declared>,
    names: HashMap<String, usize>,
    /// Declared length of the data section (padded after every tensor).
    data_len: u64,
    /// Bytes written to the file so far.
    pos: u64,
    header_written: bool,
    /// Index of the next tensor whose data is expected.
    next: usize,
    /// Set by an I/O error: the file is in an unknown state.
    broken: bool,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("alignment", &self.alignment)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("written", &self.next)
            .finish()
    }
}

impl GgufWriter {
    /// Create (or truncate) `path`. `alignment` must be a power of two; 32 is
    /// llama.cpp's default.
    pub fn new(path: &Path, alignment: u32) -> Result<GgufWriter> {
        if !alignment.is_power_of_two() {
            return Err(FormatError::GgufWrite {
                path: path.into(),
                reason: format!("alignment {alignment} is not a power of two"),
            });
        }
        let file = File::create(path).map_err(|e| FormatError::io(path, e))?;
        Ok(GgufWriter {
            path: path.into(),
            out: BufWriter::with_capacity(1 << 20, file),
            alignment,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashMap::new(),
            data_len: 0,
            pos: 0,
            header_written: false,
            next: 0,
            broken: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    fn err(&self, reason: String) -> FormatError {
        FormatError::GgufWrite { path: self.path.clone(), reason }
    }

    fn bad_tensor(&self, tensor: &str, reason: String) -> FormatError {
        FormatError::BadTensorToWrite { path: self.path.clone(), tensor: tensor.to_string(), reason }
    }

    fn check_open(&self, doing: &str) -> Result<()> {
        if self.broken {
            return Err(self.err(format!("cannot {doing}: an earlier write failed")));
        }
        if self.header_written {
            return Err(self.err(format!("cannot {doing} after the header was written (first tensor data)")));
        }
        Ok(())
    }

    /// Add one metadata entry (kept in this order). Anything convertible into a
    /// [`GgufValue`]: `7u32`, `"gpt2"`, `vec![1i32, 2]`, `Vec<String>`, ...
    /// `general.alignment` may be given only as the writer's own alignment (u32).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        self.check_open(&format!("add metadata `{key}`"))?;
        if self.keys.contains(&key) {
            return Err(self.err(format!("metadata key `{key}` added twice")));
        }
        if key == GGUF_ALIGNMENT_KEY && value != GgufValue::U32(self.alignment) {
            return Err(self.err(format!(
                "`{GGUF_ALIGNMENT_KEY}` given as {} but the writer aligns to {} (set it in GgufWriter::new)",
                value.describe(),
                self.alignment
            )));
        }
        if let GgufValue::Array(a) = &value {
            if a.depth() > GGUF_MAX_ARRAY_DEPTH {
                return Err(self.err(format!(
                    "metadata key `{key}`: arrays nested {} deep (readers accept at most {GGUF_MAX_ARRAY_DEPTH})",
                    a.depth()
                )));
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declare a tensor: `ne` in ggml order (fastest first; a weight `[out, in]`
    /// is `{in, out}`, see [`shape_to_ggml_ne`](super::shape_to_ggml_ne)).
    /// Returns its byte count, which [`write_tensor_data`](Self::write_tensor_data) will expect.
    pub fn add_tensor(&mut self, name: impl Into<String>, ty: GgmlType, ne: &[u64]) -> Result<u64> {
        let name = name.into();
        self.check_open(&format!("declare tensor `{name}`"))?;
        if name.len() >= GGML_MAX_NAME {
            return Err(self.bad_tensor(
                &name,
                format!("name is {} bytes; llama.cpp accepts at most {}", name.len(), GGML_MAX_NAME - 1),
            ));
        }
        if self.names.contains_key(&name) {
            return Err(self.bad_tensor(&name, "declared twice".into()));
        }
        if ne.is_empty() || ne.len() > GGUF_MAX_DIMS {
            return Err(self.bad_tensor(&name, format!("ne {ne:?} must have 1 to {GGUF_MAX_DIMS} dims")));
        }
        if ne.iter().any(|&d| d == 0 || d > i64::MAX as u64)
            || ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_none_or(|n| n > i64::MAX as u64)
        {
            return Err(self.bad_tensor(&name, format!("ne {ne:?} has a zero dim or overflows the element count")));
        }
        let block = ty.block_size() as u64;
        if !ne[0].is_multiple_of(block) {
            return Err(
                self.bad_tensor(&name, format!("ne[0] = {} is not a multiple of the {ty} block size {block}", ne[0]))
            );
        }
        let row = ne[0] / block * ty.type_size() as u64;
        let byte_len = ne[1..].iter().try_fold(row, |a, &d| a.checked_mul(d));
        let offset = self.data_len;
        let end = byte_len.and_then(|b| offset.checked_add(b)).and_then(|e| align_up(e, self.alignment.into()));
        let (Some(byte_len), Some(end)) = (byte_len, end) else {
            return Err(self.bad_tensor(&name, format!("ne {ne:?} of {ty} overflows the byte count")));
        };
        self.data_len = end;
        self.names.insert(name.clone(), self.tensors.len());
        self.tensors.push(Declared { name, ty, ne: ne.to_vec(), offset, byte_len });
        Ok(byte_len)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(e) = self.out.write_all(bytes) {
            self.broken = true;
            return Err(FormatError::io(&self.path, e));
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn put_string(&mut self, s: &str) -> Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn put_zeros(&mut self, n: u64) -> Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROS.len() as u64);
            self.put(&ZEROS[..k as usize])?;
            left -= k;
        }
        Ok(())
    }

    fn put_value(&mut self, v: &GgufValue) -> Result<()> {
        match v {
            GgufValue::U8(x) => self.put(&x.to_le_bytes()),
            GgufValue::I8(x) => self.put(&x.to_le_bytes()),
            GgufValue::U16(x) => self.put(&x.to_le_bytes()),
            GgufValue::I16(x) => self.put(&x.to_le_bytes()),
            GgufValue::U32(x) => self.put(&x.to_le_bytes()),
            GgufValue::I32(x) => self.put(&x.to_le_bytes()),
            GgufValue::F32(x) => self.put(&x.to_le_bytes()),
            GgufValue::Bool(x) => self.put(&[u8::from(*x)]),
            GgufValue::String(s) => self.put_string(s),
            GgufValue::Array(a) => self.put_array(a),
            GgufValue::U64(x) => self.put(&x.to_le_bytes()),
            GgufValue::I64(x) => self.put(&x.to_le_bytes()),
            GgufValue::F64(x) => self.put(&x.to_le_bytes()),
        }
    }

    fn put_array(&mut self, a: &GgufArray) -> Result<()> {
        self.put(&a.elem_type().id().to_le_bytes())?;
        self.put(&(a.len() as u64).to_le_bytes())?;
        macro_rules! each {
            ($v:expr) => {{
                for x in $v {
                    self.put(&x.to_le_bytes())?;
                }
                Ok(())
            }};
        }
        match a {
            GgufArray::U8(v) => self.put(v),
            GgufArray::I8(v) => each!(v),
            GgufArray::U16(v) => each!(v),
            GgufArray::I16(v) => each!(v),
            GgufArray::U32(v) => each!(v),
            GgufArray::I32(v) => each!(v),
            GgufArray::F32(v) => each!(v),
            GgufArray::U64(v) => each!(v),
            GgufArray::I64(v) => each!(v),
            GgufArray::F64(v) => each!(v),
            GgufArray::Bool(v) => each!(v.iter().map(|&b| u8::from(b))),
            GgufArray::String(v) => {
                for s in v {
                    self.put_string(s)?;
                }
                Ok(())
            }
            GgufArray::Array(v) => {
                for inner in v {
                    self.put_array(inner)?;
                }
                Ok(())
            }
        }
    }

    /// Write the header: metadata, tensor infos, padding. Called by the first
    /// [`write_tensor_data`](Self::write_tensor_data) or by [`finish`](Self::finish)
    /// if not called before; nothing can be added afterwards.
    pub fn write_header(&mut self) -> Result<()> {
        self.check_open("write the header")?;
        if self.alignment != GGUF_DEFAULT_ALIGNMENT && !self.keys.contains(GGUF_ALIGNMENT_KEY) {
            self.keys.insert(GGUF_ALIGNMENT_KEY.to_string());
            self.metadata.insert(0, (GGUF_ALIGNMENT_KEY.to_string(), GgufValue::U32(self.alignment)));
        }
        self.header_written = true;
        self.put(&GGUF_MAGIC)?;
        self.put(&GGUF_VERSION.to_le_bytes())?;
        self.put(&(self.tensors.len() as u64).to_le_bytes())?;
        self.put(&(self.metadata.len() as u64).to_le_bytes())?;
        let metadata = std::mem::take(&mut self.metadata);
        let result = metadata.iter().try_for_each(|(key, value)| {
            self.put_string(key)?;
            self.put(&value.value_type().id().to_le_bytes())?;
            self.put_value(value)
        });
        self.metadata = metadata;
        result?;
        let tensors = std::mem::take(&mut self.tensors);
        let result = tensors.iter().try_for_each(|t| {
            self.put_string(&t.name)?;
            self.put(&(t.ne.len() as u32).to_le_bytes())?;
            for d in &t.ne {
                self.put(&d.to_le_bytes())?;
            }
            self.put(&t.ty.id().to_le_bytes())?;
            self.put(&t.offset.to_le_bytes())
        });
        self.tensors = tensors;
        result?;
        self.pad()
    }

    /// Zeros up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<()> {
        let a = u64::from(self.alignment);
        self.put_zeros((a - self.pos % a) % a)
    }

    /// Write the bytes of the next declared tensor (declaration order), then
    /// pad. `bytes` must be exactly its byte count (blocks of its type, rows
    /// of `ne[0]` values, `ne[1..]` rows).
    pub fn write_tensor_data(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.broken {
            return Err(self.err(format!("cannot write tensor `{name}`: an earlier write failed")));
        }
        if !self.header_written {
            self.write_header()?;
        }
        let Some(t) = self.tensors.get(self.next) else {
            return Err(self.bad_tensor(
                name,
                match self.names.contains_key(name) {
                    true => "written twice (every declared tensor has been written)".into(),
                    false => "was not declared (every declared tensor has been written)".into(),
                },
            ));
        };
        if t.name != name {
            let reason = match self.names.get(name) {
                Some(&i) if i < self.next => "written twice".to_string(),
                Some(_) => format!("written out of order: tensor `{}` is declared before it", t.name),
                None => "was not declared before the header was written".to_string(),
            };
            return Err(self.bad_tensor(name, reason));
        }
        if bytes.len() as u64 != t.byte_len {
            return Err(self.bad_tensor(
                name,
                format!("{} bytes given, but {} with ne {:?} takes {}", bytes.len(), t.ty, t.ne, t.byte_len),
            ));
        }
        self.next += 1;
        self.put(bytes)?;
        self.pad()
    }

    /// Write the header if it has not been written, check every declared
    /// tensor was written, and flush.
    pub fn finish(mut self) -> Result<()> {
        if !self.header_written {
            self.write_header()?;
        }
        if let Some(t) = self.tensors.get(self.next) {
            return Err(self.err(format!(
                "finished after {} of {} tensors; `{}` and later were declared but not written",
                self.next,
                self.tensors.len(),
                t.name
            )));
        }
        if self.broken {
            return Err(self.err("cannot finish: an earlier write failed".into()));
        }
        self.out.flush().map_err(|e| FormatError::io(&self.path, e))
    }
}
