//! Reading GGUF v2/v3 files over a memory map.
//!
//! Invariants of an open [`GgufFile`]:
//! * metadata keys are unique and kept in file order; `general.alignment`, if
//!   present, is a `u32` power of two;
//! * tensor names are unique; every tensor has 0..=4 dims, each in `1..=i64::MAX`,
//!   with an element count that fits `i64`; its offset is a multiple of the
//!   alignment and its bytes lie inside the file without overlapping another
//!   tensor's;
//! * for a type in [`ggml_type_info`] the byte count is exactly
//!   `row_bytes(ne[0]) * ne[1] * ne[2] * ne[3]` (so `ne[0]` is a whole number of
//!   blocks); a type id unknown even to that table cannot be sized, and its
//!   tensor is given the bytes up to the next tensor (or the end of the file).
//!
//! Nothing is allocated on the strength of a count or length read from the
//! file before checking that the bytes left could hold it.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use qmoe_core::{DType, GgmlType};

use super::types::{ggml_type_info, type_name, GgmlTypeInfo};
use super::value::{FromGgufValue, GgufArray, GgufValue, GgufValueType};
use super::{
    align_up, ggml_ne_to_shape, GGUF_ALIGNMENT_KEY, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_ARRAY_DEPTH,
    GGUF_MAX_DIMS,
};
use crate::error::{FormatError, Result};
use crate::tensor::TensorData;

/// Magic, version, tensor count, kv count.
const FIXED_HEADER_LEN: u64 = 4 + 4 + 8 + 8;
/// Fewest bytes of one key/value: key length, empty key, type id, a 1-byte value.
const MIN_KV_LEN: u64 = 8 + 4 + 1;
/// Fewest bytes of one tensor info: name length, empty name, n_dims = 0, type, offset.
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 4 + 8;
/// Vectors sized from a header count start no larger than this; they grow as
/// entries are actually read.
const MAX_PREALLOC: usize = 4096;

/// One tensor of a GGUF file.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// The ggml type id as stored; see [`GgufTensor::ggml_type`].
    pub type_id: u32,
    /// Dims in ggml order, fastest-varying first (`{in, out}` for a weight).
    pub ne: Vec<u64>,
    /// Offset of the bytes from the start of the data section.
    pub offset: u64,
    /// The file the tensor comes from (for error messages).
    pub file: Arc<Path>,
    data: TensorData,
}

impl GgufTensor {
    /// The type as a qmoe decoder type; an error naming the tensor and the id
    /// for types qmoe cannot decode.
    pub fn ggml_type(&self) -> Result<GgmlType> {
        GgmlType::from_id(self.type_id).ok_or_else(|| FormatError::GgufUnsupportedType {
            path: self.file.to_path_buf(),
            tensor: self.name.clone(),
            type_id: self.type_id,
            type_name: type_name(self.type_id),
        })
    }

    /// Geometry of the type, decodable by qmoe or not; `None` for an id unknown to ggml as qmoe knows it.
    pub fn type_info(&self) -> Option<GgmlTypeInfo> {
        ggml_type_info(self.type_id)
    }

    /// `Q4_K`, `IQ2_XXS`, or `unknown ggml type 99`.
    pub fn type_name(&self) -> String {
        type_name(self.type_id)
    }

    /// Row-major shape (`ne` reversed): a weight with `ne = {in, out}` is `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        ggml_ne_to_shape(&self.ne)
    }

    /// Number of elements (checked at open to fit `i64`).
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Bytes of the tensor: exact for every type in [`ggml_type_info`]; for an
    /// id unknown to it, the bytes up to the next tensor (an upper bound).
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// The tensor's bytes (a handle into the file's mapping); an error for a
    /// type qmoe cannot decode, so such bytes are never misread.
    pub fn data(&self) -> Result<&TensorData> {
        self.ggml_type()?;
        Ok(&self.data)
    }

    pub fn bytes(&self) -> Result<&[u8]> {
        Ok(self.data()?.bytes())
    }

    /// Widen an F32/F16/BF16 tensor to a new f32 vector (norms, `ssm_a`,
    /// `ssm_dt.bias`); quantized tensors are an error.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let dtype = match self.ggml_type()? {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            _ => {
                return Err(FormatError::GgufNotFloat {
                    path: self.file.to_path_buf(),
                    tensor: self.name.clone(),
                    type_name: self.type_name(),
                })
            }
        };
        Ok(qmoe_core::dtype::to_f32_vec(dtype, self.data.bytes()))
    }
}

/// One memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: Arc<Path>,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<GgufTensor>,
    names: HashMap<String, usize>,
    alignment: u32,
    data_start: u64,
    file_len: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: the mapping is read-only and private to this process. Like every
        // mmap-based loader we rely on the file not being truncated or rewritten
        // while it is open; all bounds were checked against the length seen at open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Self::from_mmap(path, Arc::new(mmap))
    }

    /// Parse an already-mapped file (or an anonymous mapping holding one);
    /// `path` is used in messages only.
    pub fn from_mmap(path: &Path, mmap: Arc<Mmap>) -> Result<GgufFile> {
        let header = parse(&mmap, path)?;
        let path: Arc<Path> = Arc::from(path);
        let mut tensors = Vec::with_capacity(header.tensors.len());
        for t in header.tensors {
            let data = TensorData::new(mmap.clone(), t.start, t.len)?;
            tensors.push(GgufTensor {
                name: t.name,
                type_id: t.type_id,
                ne: t.ne,
                offset: t.offset,
                file: path.clone(),
                data,
            });
        }
        Ok(GgufFile {
            path,
            version: header.version,
            metadata: header.metadata,
            keys: header.keys,
            tensors,
            names: header.names,
            alignment: header.alignment,
            data_start: header.data_start,
            file_len: mmap.len() as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The value of `key` as `T`, with no conversion (a `u32` getter does not
    /// accept an `i32`); the error names the key, the expected and found types.
    pub fn get_as<'a, T: FromGgufValue<'a>>(&'a self, key: &str) -> Result<T> {
        self.get_opt(key)?
            .ok_or_else(|| FormatError::GgufMissingKey { path: self.path.to_path_buf(), key: key.to_string() })
    }

    /// Like [`get_as`](Self::get_as), but a missing key is `Ok(None)`; a
    /// present key of the wrong type is still an error.
    pub fn get_opt<'a, T: FromGgufValue<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        T::from_value(value).map(Some).ok_or_else(|| self.type_error(key, T::EXPECTED, value))
    }

    pub fn get_u8(&self, key: &str) -> Result<u8> {
        self.get_as(key)
    }
    pub fn get_i8(&self, key: &str) -> Result<i8> {
        self.get_as(key)
    }
    pub fn get_u16(&self, key: &str) -> Result<u16> {
        self.get_as(key)
    }
    pub fn get_i16(&self, key: &str) -> Result<i16> {
        self.get_as(key)
    }
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_as(key)
    }
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.get_as(key)
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_as(key)
    }
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get_as(key)
    }
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_as(key)
    }
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get_as(key)
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_as(key)
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get_as(key)
    }
    pub fn get_array(&self, key: &str) -> Result<&GgufArray> {
        self.get_as(key)
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.get_as(key)
    }
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.get_as(key)
    }
    pub fn get_u32_array(&self, key: &str) -> Result<&[u32]> {
        self.get_as(key)
    }
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.get_as(key)
    }
    pub fn get_bool_array(&self, key: &str) -> Result<&[bool]> {
        self.get_as(key)
    }

    /// Any integer type holding a non-negative value, as `u64`. For hyper-
    /// parameters whose integer type differs between converter versions.
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        let value: &GgufValue = self.get_as(key)?;
        value.as_uint().ok_or_else(|| self.type_error(key, "a non-negative integer", value))
    }

    /// `f32` or `f64`, as `f64`.
    pub fn get_float(&self, key: &str) -> Result<f64> {
        let value: &GgufValue = self.get_as(key)?;
        value.as_float().ok_or_else(|| self.type_error(key, "a float (f32 or f64)", value))
    }

    /// `general.architecture` (`qwen35`, `qwen35moe`, `qwen3next`, ...).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    fn type_error(&self, key: &str, expected: &'static str, value: &GgufValue) -> FormatError {
        FormatError::GgufKeyType {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
            found: value.describe(),
        }
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.names.get(name).map(|&i| &self.tensors[i])
    }

    /// Like [`tensor`](Self::tensor), but a missing tensor is an error naming the file.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensor> {
        self.tensor(name)
            .ok_or_else(|| FormatError::MissingTensor { dir: self.path.to_path_buf(), tensor: name.to_string() })
    }

    /// Sum of all tensor byte counts.
    pub fn total_tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.byte_len() as u64).sum()
    }
}

// ---- parsing ----------------------------------------------------------------

struct Parsed {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<ParsedTensor>,
    names: HashMap<String, usize>,
    alignment: u32,
    data_start: u64,
}

struct ParsedTensor {
    name: String,
    type_id: u32,
    ne: Vec<u64>,
    offset: u64,
    /// Absolute byte range in the file.
    start: usize,
    len: usize,
}

/// A read position in the file; `ctx` names the item being read (a key, a
/// tensor info) for the messages of short reads.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    ctx: String,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(FormatError::GgufTruncated {
                path: self.path.to_path_buf(),
                what: if self.ctx.is_empty() { what.to_string() } else { format!("{} of {}", what, self.ctx) },
                offset: self.pos as u64,
                need: n,
                file_len: self.buf.len() as u64,
            });
        }
        let n = n as usize; // <= remaining, so it fits
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u64` length and that many UTF-8 bytes. The length is checked against
    /// the bytes left before the string is allocated.
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let at = self.pos as u64;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(FormatError::GgufNotUtf8 {
                path: self.path.to_path_buf(),
                what: if self.ctx.is_empty() { what.to_string() } else { format!("{} of {}", what, self.ctx) },
                offset: at + e.valid_up_to() as u64,
            }),
        }
    }
}

/// Decode `n`-byte little-endian numbers.
fn le_vec<T, const N: usize>(bytes: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from_le(a)
        })
        .collect()
}

fn bad_value(cur: &Cursor, key: &str, reason: String) -> FormatError {
    FormatError::GgufBadValue { path: cur.path.to_path_buf(), key: key.to_string(), reason }
}

fn read_type(cur: &mut Cursor, key: &str, what: &str) -> Result<GgufValueType> {
    let id = cur.u32(what)?;
    GgufValueType::from_id(id)
        .ok_or_else(|| bad_value(cur, key, format!("{what} id {id} is not a GGUF value type (0..=12)")))
}

fn read_value(cur: &mut Cursor, key: &str, ty: GgufValueType) -> Result<GgufValue> {
    Ok(match ty {
        GgufValueType::U8 => GgufValue::U8(u8::from_le_bytes(cur.array("value")?)),
        GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(cur.array("value")?)),
        GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(cur.array("value")?)),
        GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(cur.array("value")?)),
        GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(cur.array("value")?)),
        GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(cur.array("value")?)),
        GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(cur.array("value")?)),
        GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(cur.array("value")?)),
        GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(cur.array("value")?)),
        GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(cur.array("value")?)),
        GgufValueType::Bool => {
            let [b] = cur.array("value")?;
            GgufValue::Bool(read_bool(cur, key, b, None)?)
        }
        GgufValueType::String => GgufValue::String(cur.string("string value")?),
        GgufValueType::Array => GgufValue::Array(read_array(cur, key, 1)?),
    })
}

fn read_bool(cur: &Cursor, key: &str, b: u8, index: Option<usize>) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad_value(
            cur,
            key,
            match index {
                Some(i) => format!("bool array element {i} is byte {b} (must be 0 or 1)"),
                None => format!("bool value is byte {b} (must be 0 or 1)"),
            },
        )),
    }
}

/// An array whose header starts at the cursor; `depth` counts this array and
/// the arrays around it.
fn read_array(cur: &mut Cursor, key: &str, depth: usize) -> Result<GgufArray> {
    if depth > GGUF_MAX_ARRAY_DEPTH {
        return Err(bad_value(cur, key, format!("arrays nested more than {GGUF_MAX_ARRAY_DEPTH} deep")));
    }
    let elem = read_type(cur, key, "array element type")?;
    let len = cur.u64("array length")?;
    let min = elem.min_encoded_len();
    let remaining = cur.remaining();
    let need = match len.checked_mul(min) {
        Some(n) if n <= remaining => n,
        _ => {
            return Err(bad_value(
                cur,
                key,
                format!(
                    "array of {len} {elem} elements needs at least {} bytes but only {remaining} remain in the file",
                    len.saturating_mul(min)
                ),
            ))
        }
    };
    // From here `len` elements fit in the bytes left, so `len` bounds what
    // is allocated by the file size (at most 3x it, for `String` headers).
    let n = len as usize;
    Ok(match elem {
        GgufValueType::U8 => GgufArray::U8(cur.take(need, "array")?.to_vec()),
        GgufValueType::I8 => GgufArray::I8(le_vec(cur.take(need, "array")?, i8::from_le_bytes)),
        GgufValueType::U16 => GgufArray::U16(le_vec(cur.take(need, "array")?, u16::from_le_bytes)),
        GgufValueType::I16 => GgufArray::I16(le_vec(cur.take(need, "array")?, i16::from_le_bytes)),
        GgufValueType::U32 => GgufArray::U32(le_vec(cur.take(need, "array")?, u32::from_le_bytes)),
        GgufValueType::I32 => GgufArray::I32(le_vec(cur.take(need, "array")?, i32::from_le_bytes)),
        GgufValueType::F32 => GgufArray::F32(le_vec(cur.take(need, "array")?, f32::from_le_bytes)),
        GgufValueType::U64 => GgufArray::U64(le_vec(cur.take(need, "array")?, u64::from_le_bytes)),
        GgufValueType::I64 => GgufArray::I64(le_vec(cur.take(need, "array")?, i64::from_le_bytes)),
        GgufValueType::F64 => GgufArray::F64(le_vec(cur.take(need, "array")?, f64::from_le_bytes)),
        GgufValueType::Bool => {
            let bytes = cur.take(need, "array")?;
            let mut v = Vec::with_capacity(n);
            for (i, &b) in bytes.iter().enumerate() {
                v.push(read_bool(cur, key, b, Some(i))?);
            }
            GgufArray::Bool(v)
        }
        GgufValueType::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(cur.string("string array element")?);
            }
            GgufArray::String(v)
        }
        GgufValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(cur, key, depth + 1)?);
            }
            GgufArray::Array(v)
        }
    })
}

fn parse(buf: &[u8], path: &Path) -> Result<Parsed> {
    let mut cur = Cursor { buf, pos: 0, path, ctx: String::new() };
    let p = || path.to_path_buf();

    // ---- fixed header
    let n = buf.len().min(4);
    if buf[..n] == *b"FUGG" {
        // The magic written as a big-endian u32 by some big-endian writers.
        return Err(FormatError::GgufBigEndian { path: p(), evidence: "the magic reads `FUGG`".into() });
    }
    if buf[..n] != GGUF_MAGIC[..n] {
        return Err(FormatError::GgufBadMagic { path: p(), found: buf[..n].to_vec() });
    }
    cur.take(4, "the magic")?;
    let version = cur.u32("the version")?;
    match version {
        2 | 3 => {}
        v if !(1..=3).contains(&v) && (1..=3).contains(&v.swap_bytes()) => {
            return Err(FormatError::GgufBigEndian {
                path: p(),
                evidence: format!("the version field reads {v:#010x}, version {} byte-swapped", v.swap_bytes()),
            })
        }
        v => return Err(FormatError::GgufVersion { path: p(), version: v }),
    }
    let tensor_count = cur.u64("the tensor count")?;
    let kv_count = cur.u64("the metadata count")?;
    debug_assert_eq!(cur.pos as u64, FIXED_HEADER_LEN);
    let remaining = cur.remaining();
    for (what, count, min) in
        [("metadata entries", kv_count, MIN_KV_LEN), ("tensor infos", tensor_count, MIN_TENSOR_INFO_LEN)]
    {
        let max = remaining / min;
        if count > max {
            return Err(FormatError::GgufCount { path: p(), what, count, remaining, max });
        }
    }

    // ---- metadata
    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity((kv_count as usize).min(MAX_PREALLOC));
    let mut keys = HashMap::with_capacity((kv_count as usize).min(MAX_PREALLOC));
    for i in 0..kv_count {
        cur.ctx = format!("metadata entry #{i}");
        let key = cur.string("key")?;
        if keys.contains_key(&key) {
            return Err(FormatError::GgufDuplicateKey { path: p(), key });
        }
        cur.ctx = format!("metadata key `{key}`");
        let ty = read_type(&mut cur, &key, "value type")?;
        let value = read_value(&mut cur, &key, ty)?;
        keys.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let alignment = match keys.get(GGUF_ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => *a,
        Some(GgufValue::U32(a)) => {
            return Err(FormatError::GgufBadAlignment { path: p(), reason: format!("is {a}, not a power of two") })
        }
        Some(v) => {
            return Err(FormatError::GgufBadAlignment {
                path: p(),
                reason: format!("is {}, expected a u32", v.describe()),
            })
        }
    };

    // ---- tensor infos
    struct Info {
        name: String,
        ne: Vec<u64>,
        type_id: u32,
        offset: u64,
    }
    let mut infos: Vec<Info> = Vec::with_capacity((tensor_count as usize).min(MAX_PREALLOC));
    let mut names: HashMap<String, usize> = HashMap::with_capacity((tensor_count as usize).min(MAX_PREALLOC));
    for i in 0..tensor_count {
        cur.ctx = format!("tensor info #{i}");
        let name = cur.string("name")?;
        if names.contains_key(&name) {
            return Err(FormatError::GgufDuplicateTensor { path: p(), tensor: name });
        }
        cur.ctx = format!("tensor `{name}`");
        let n_dims = cur.u32("n_dims")?;
        if n_dims as usize > GGUF_MAX_DIMS {
            return Err(FormatError::GgufBadTensor {
                path: p(),
                tensor: name,
                reason: format!("has {n_dims} dimensions; ggml allows at most {GGUF_MAX_DIMS}"),
            });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(cur.u64("dimension")?);
        }
        let type_id = cur.u32("ggml type")?;
        let offset = cur.u64("offset")?;
        names.insert(name.clone(), infos.len());
        infos.push(Info { name, ne, type_id, offset });
    }
    cur.ctx.clear();

    let header_end = cur.pos as u64;
    let file_len = buf.len() as u64;
    // header_end <= file_len, far below u64::MAX: cannot overflow.
    let data_start = align_up(header_end, alignment.into()).unwrap_or(u64::MAX);

    // ---- tensor sizes and placement
    let bad = |name: &str, reason: String| FormatError::GgufBadTensor { path: p(), tensor: name.to_string(), reason };
    // Byte count per tensor; `None` for a type id with unknown geometry.
    let mut sizes: Vec<Option<u64>> = Vec::with_capacity(infos.len());
    for t in &infos {
        for (j, &d) in t.ne.iter().enumerate() {
            if d == 0 {
                return Err(bad(&t.name, format!("ne[{j}] is 0 (ne = {:?})", t.ne)));
            }
            if d > i64::MAX as u64 {
                return Err(bad(&t.name, format!("ne[{j}] = {d} exceeds ggml's int64 range")));
            }
        }
        let numel = t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
        if numel.is_none() {
            return Err(bad(&t.name, format!("ne = {:?} overflows the element count", t.ne)));
        }
        if t.offset % u64::from(alignment) != 0 {
            return Err(bad(&t.name, format!("offset {} is not a multiple of the alignment {alignment}", t.offset)));
        }
        let size = match ggml_type_info(t.type_id) {
            None => None,
            Some(info) => {
                let ne0 = t.ne.first().copied().unwrap_or(1);
                let row = info.row_bytes(ne0).ok_or_else(|| {
                    bad(
                        &t.name,
                        format!(
                            "ne[0] = {ne0} is not a multiple of the {} block size {} or its byte count overflows",
                            info.name, info.block_size
                        ),
                    )
                })?;
                let size = t.ne.iter().skip(1).try_fold(row, |a, &d| a.checked_mul(d));
                Some(size.ok_or_else(|| {
                    bad(&t.name, format!("ne = {:?} of {} overflows the byte count", t.ne, info.name))
                })?)
            }
        };
        sizes.push(size);
    }

    // Visit tensors in offset order: unknown-size tensors extend to the next
    // tensor, and each must start at or after the furthest end seen so far.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| (infos[i].offset, i));
    let data_len = file_len.saturating_sub(data_start);
    let mut ends = vec![0u64; infos.len()];
    let mut furthest: Option<usize> = None;
    for (k, &i) in order.iter().enumerate() {
        let t = &infos[i];
        let end = match sizes[i] {
            Some(size) => t.offset.checked_add(size),
            None => {
                let next = order.get(k + 1).map_or(data_len, |&j| infos[j].offset);
                if next <= t.offset {
                    return Err(bad(
                        &t.name,
                        format!(
                            "has {} and so cannot be sized, and no data bytes lie between its offset {} and the next tensor or the end of the file",
                            type_name(t.type_id),
                            t.offset
                        ),
                    ));
                }
                Some(next)
            }
        };
        let in_file = end.and_then(|e| data_start.checked_add(e)).filter(|&e| e <= file_len);
        let Some(abs_end) = in_file else {
            return Err(bad(
                &t.name,
                format!(
                    "{} data bytes at offset {} (file byte {}) run past the end of the {file_len}-byte file",
                    sizes[i].map_or("its".to_string(), |s| s.to_string()),
                    t.offset,
                    data_start.saturating_add(t.offset),
                ),
            ));
        };
        let end = abs_end - data_start;
        if let Some(f) = furthest {
            if t.offset < ends[f] {
                return Err(FormatError::GgufTensorOverlap {
                    path: p(),
                    tensor: t.name.clone(),
                    start: t.offset,
                    end,
                    other: infos[f].name.clone(),
                    other_end: ends[f],
                });
            }
        }
        ends[i] = end;
        if furthest.is_none_or(|f| end > ends[f]) {
            furthest = Some(i);
        }
    }

    let mut tensors = Vec::with_capacity(infos.len());
    for (i, t) in infos.into_iter().enumerate() {
        // Both bounds are <= file_len, which is a `usize` (the buffer's length).
        let start = (data_start + t.offset) as usize;
        let len = (ends[i] - t.offset) as usize;
        tensors.push(ParsedTensor { name: t.name, type_id: t.type_id, ne: t.ne, offset: t.offset, start, len });
    }
    Ok(Parsed { version, metadata, keys, tensors, names, alignment, data_start })
}
