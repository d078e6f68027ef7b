//! The safetensors header: parsing and validation of untrusted bytes.
//!
//! File layout: `u64` little-endian header length `n`, then `n` bytes of UTF-8
//! JSON, then the data buffer. The JSON maps tensor names to
//! `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data
//! buffer) and may hold `__metadata__`, a string-to-string map.
//!
//! Everything here works on a borrowed byte slice and is total: any input gives
//! a `Header` or a `FormatError` naming the file (and tensor), never a panic.
//! Allocation is bounded by the header length, which is capped at
//! [`MAX_HEADER_LEN`]. The format's rules enforced here, beyond well-formedness:
//! offsets lie inside the buffer, are not reversed, byte counts equal
//! `numel * dtype.size()`, and the tensors cover the buffer exactly (no holes,
//! no overlaps, no trailing bytes), as the format specification requires.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use qmoe_core::DType;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::error::{FormatError, Result};

/// Largest header accepted (same bound as the reference implementation).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Key of the free-form string map in a safetensors header.
pub const METADATA_KEY: &str = "__metadata__";

/// One tensor as described by the header, with absolute file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Offset of the first byte in the whole file (8 + header length + begin).
    pub start: usize,
    /// Byte count (= numel * dtype size).
    pub len: usize,
}

/// A validated header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// The `n` of the file layout (JSON bytes, without the 8-byte prefix).
    pub header_len: usize,
    /// Tensors in the order the header lists them.
    pub tensors: Vec<HeaderEntry>,
    /// `__metadata__`; non-string values (outside the format) are kept as JSON text.
    pub metadata: BTreeMap<String, String>,
}

/// The safetensors dtype string for a `DType`.
pub fn dtype_to_safetensors(dtype: DType) -> &'static str {
    dtype.name()
}

/// The `DType` for a safetensors dtype string, if qmoe reads it.
pub fn dtype_from_safetensors(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F8_E4M3" => DType::F8E4M3,
        "U8" => DType::U8,
        "I8" => DType::I8,
        "U32" => DType::U32,
        "I32" => DType::I32,
        "I64" => DType::I64,
        _ => return None,
    })
}

/// Top-level JSON object entries, in file order, duplicates kept (so they can
/// be reported rather than silently collapsed as a map would).
struct RawEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for RawEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawEntries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(RawEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// "a string", "an object", ...: the JSON kind of a value, for messages that
/// say what was found where something else was expected.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parse and validate the header of a whole safetensors file held in `file`.
/// `path` is only used in error messages.
pub fn parse_header(file: &[u8], path: &Path) -> Result<Header> {
    let file_len = file.len() as u64;
    let Some(prefix) = file.get(..8) else {
        return Err(FormatError::FileTooShort { path: path.into(), len: file_len });
    };
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(prefix);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge { path: path.into(), header_len: n, limit: MAX_HEADER_LEN });
    }
    if n > file_len - 8 {
        return Err(FormatError::HeaderBeyondFile { path: path.into(), header_len: n, file_len });
    }
    // Both fit in usize: n <= file_len - 8 and the file is in memory.
    let n = n as usize;
    let json = &file[8..8 + n];
    let buffer_start = 8 + n;
    let buffer_len = (file.len() - buffer_start) as u64;

    let text = std::str::from_utf8(json)
        .map_err(|e| FormatError::HeaderNotUtf8 { path: path.into(), valid_up_to: e.valid_up_to() })?;
    let raw: RawEntries = serde_json::from_str(text).map_err(|e| match e.classify() {
        // The only data error possible here is our visitor's "expected an object".
        serde_json::error::Category::Data => {
            let found = match serde_json::from_str::<Value>(text) {
                Ok(v) => json_kind(&v).to_string(),
                Err(_) => e.to_string(),
            };
            FormatError::HeaderNotObject { path: path.into(), found }
        }
        _ => FormatError::HeaderJson { path: path.into(), message: e.to_string() },
    })?;

    let mut seen = HashSet::with_capacity(raw.0.len());
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(raw.0.len());
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(raw.0.len()); // (begin, end, index)
    for (name, value) in raw.0 {
        if !seen.insert(name.clone()) {
            return Err(FormatError::DuplicateInHeader { path: path.into(), tensor: name });
        }
        if name == METADATA_KEY {
            metadata = parse_metadata(value, path)?;
            continue;
        }
        let entry = parse_entry(&name, &value, buffer_len, path)?;
        ranges.push((entry.begin, entry.end, tensors.len()));
        tensors.push(HeaderEntry {
            name,
            dtype: entry.dtype,
            shape: entry.shape,
            start: buffer_start + entry.begin as usize,
            len: (entry.end - entry.begin) as usize,
        });
    }

    // Coverage: sorted by (begin, end), each tensor must start where the last ended.
    ranges.sort_unstable();
    let mut cursor = 0u64;
    let mut prev: Option<usize> = None;
    for &(begin, end, i) in &ranges {
        if begin < cursor {
            let other = prev.map(|p| tensors[p].name.clone()).unwrap_or_default();
            return Err(FormatError::OffsetsOverlap {
                path: path.into(),
                tensor: tensors[i].name.clone(),
                start: begin,
                end,
                other,
                other_end: cursor,
            });
        }
        if begin > cursor {
            return Err(FormatError::OffsetsGap {
                path: path.into(),
                gap_start: cursor,
                gap_end: begin,
                next: tensors[i].name.clone(),
            });
        }
        cursor = end;
        prev = Some(i);
    }
    if cursor != buffer_len {
        return Err(FormatError::BufferNotCovered { path: path.into(), covered: cursor, buffer_len });
    }

    Ok(Header { header_len: n, tensors, metadata })
}

fn parse_metadata(value: Value, path: &Path) -> Result<BTreeMap<String, String>> {
    match value {
        Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()),
        Value::Null => Ok(BTreeMap::new()),
        other => Err(FormatError::BadMetadata {
            path: path.into(),
            reason: format!("must be an object of strings, found {}", json_kind(&other)),
        }),
    }
}

struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

fn parse_entry(name: &str, value: &Value, buffer_len: u64, path: &Path) -> Result<Entry> {
    let bad = |reason: String| FormatError::BadTensorEntry { path: path.into(), tensor: name.to_string(), reason };
    let Value::Object(obj) = value else {
        return Err(bad(format!(
            "entry must be an object with dtype, shape, data_offsets; found {}",
            json_kind(value)
        )));
    };
    let dtype_str = match obj.get("dtype") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(bad(format!("`dtype` must be a string, found {}", json_kind(other)))),
        None => return Err(bad("missing `dtype`".into())),
    };
    let shape_raw: Vec<u64> = match obj.get("shape") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|d| d.as_u64().ok_or_else(|| bad(format!("`shape` entries must be non-negative integers, found {d}"))))
            .collect::<Result<_>>()?,
        Some(other) => return Err(bad(format!("`shape` must be an array, found {}", json_kind(other)))),
        None => return Err(bad("missing `shape`".into())),
    };
    let (begin, end) = match obj.get("data_offsets") {
        Some(Value::Array(items)) if items.len() == 2 => match (items[0].as_u64(), items[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => {
                return Err(bad(format!(
                    "`data_offsets` must be two non-negative integers, found {}",
                    Value::Array(items.clone())
                )))
            }
        },
        Some(Value::Array(items)) => {
            return Err(bad(format!("`data_offsets` must have 2 entries, found {}", items.len())))
        }
        Some(other) => return Err(bad(format!("`data_offsets` must be an array, found {}", json_kind(other)))),
        None => return Err(bad("missing `data_offsets`".into())),
    };
    let dtype = dtype_from_safetensors(dtype_str).ok_or_else(|| FormatError::UnknownDType {
        path: path.into(),
        tensor: name.to_string(),
        dtype: dtype_str.to_string(),
    })?;

    // Element and byte counts in u64 with overflow checks, then usize (which may
    // be narrower on 32-bit targets).
    let overflow =
        || FormatError::ShapeOverflow { path: path.into(), tensor: name.to_string(), dtype, shape: shape_raw.clone() };
    let numel = shape_raw.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)?;
    let nbytes = numel.checked_mul(dtype.size() as u64).ok_or_else(overflow)?;
    if usize::try_from(nbytes).is_err() {
        return Err(overflow());
    }
    let shape: Vec<usize> =
        shape_raw.iter().map(|&d| usize::try_from(d).map_err(|_| overflow())).collect::<Result<_>>()?;

    if begin > end {
        return Err(FormatError::OffsetsReversed { path: path.into(), tensor: name.to_string(), start: begin, end });
    }
    if end > buffer_len {
        return Err(FormatError::OffsetsOutOfRange {
            path: path.into(),
            tensor: name.to_string(),
            start: begin,
            end,
            buffer_len,
        });
    }
    if end - begin != nbytes {
        return Err(FormatError::ByteCountMismatch {
            path: path.into(),
            tensor: name.to_string(),
            dtype,
            shape,
            expected: nbytes,
            found: end - begin,
        });
    }
    Ok(Entry { dtype, shape, begin, end })
}
