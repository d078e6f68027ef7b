//! NumPy `.npy` files of little-endian f32 in C order (golden logits, `qmoe logits`).
//!
//! Layout (NPY format versions 1.0 / 2.0 / 3.0): magic `\x93NUMPY`, major and
//! minor version bytes, header length (`u16` LE in v1, `u32` LE in v2/v3), a
//! Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`
//! padded with spaces and ending in `\n` so that the data starts at a multiple
//! of 64 bytes, then the raw elements. We write v1.0 (v2.0 only if the header
//! would not fit a `u16`) and read v1-v3, refusing anything but `'<f4'`, C order.

use std::path::Path;

use crate::error::{FormatError, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
const ALIGN: usize = 64;

/// Write `data` with `shape` (C order) as a `'<f4'` .npy file.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if expected != Some(data.len()) {
        return Err(FormatError::NpyShapeMismatch {
            path: path.into(),
            shape: shape.to_vec(),
            expected: expected.unwrap_or(usize::MAX),
            found: data.len(),
        });
    }
    let dims = match shape {
        [] => String::new(),
        [d] => format!("{d},"),
        _ => shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Prefix = magic + 2 version bytes + length field (2 bytes in v1, 4 in v2).
    let padded = |prefix: usize| (prefix + dict.len() + 1).div_ceil(ALIGN) * ALIGN - prefix;
    let (major, prefix) = if padded(10) <= u16::MAX as usize { (1u8, 10) } else { (2u8, 12) };
    let header_len = padded(prefix);
    let total = prefix + header_len;
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out).map_err(|e| FormatError::io(path, e))
}

/// Read a `'<f4'` C-order .npy file: (shape, values).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    parse_npy_f32(&bytes, path)
}

/// As `read_npy_f32`, from bytes already in memory (`path` names them in errors).
pub fn parse_npy_f32(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |reason: String| FormatError::NpyHeader { path: path.into(), reason };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, prefix) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            let Some(b) = bytes.get(8..12) else {
                return Err(bad("file ends inside the header length".into()));
            };
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        _ => return Err(bad(format!("unsupported format version {major}.{minor}"))),
    };
    let Some(header) = bytes.get(prefix..prefix.saturating_add(header_len)) else {
        return Err(bad(format!("header length {header_len} runs past the end of the file ({} bytes)", bytes.len())));
    };
    let dict = parse_dict(header).map_err(bad)?;

    if dict.descr != "<f4" {
        return Err(FormatError::NpyUnsupported {
            path: path.into(),
            what: "dtype (descr)",
            found: format!("'{}'", dict.descr),
        });
    }
    if dict.fortran_order {
        return Err(FormatError::NpyUnsupported { path: path.into(), what: "fortran_order", found: "True".into() });
    }
    let data = &bytes[prefix + header_len..];
    let numel = dict.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let expected = numel.and_then(|n| n.checked_mul(4));
    if expected != Some(data.len()) {
        return Err(FormatError::NpyDataSize {
            path: path.into(),
            shape: dict.shape,
            expected: expected.map_or(u64::MAX, |e| e as u64),
            found: data.len() as u64,
        });
    }
    let values = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((dict.shape, values))
}

struct NpyDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parse the header dict literal. Only the subset numpy writes is accepted:
/// string keys; values that are strings, `True`/`False`, or tuples of integers.
fn parse_dict(header: &[u8]) -> std::result::Result<NpyDict, String> {
    let mut p = Lexer { s: header, i: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        p.skip_ws();
        match key.as_str() {
            "descr" => {
                if p.peek() == Some(b'[') {
                    return Err("structured dtypes (descr is a list) are not supported".into());
                }
                descr = Some(p.string()?)
            }
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected header key '{other}'")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("trailing characters after the header dict".into());
    }
    Ok(NpyDict {
        descr: descr.ok_or("header has no 'descr'")?,
        fortran_order: fortran.ok_or("header has no 'fortran_order'")?,
        shape: shape.ok_or("header has no 'shape'")?,
    })
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        self.skip_ws();
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("header dict: expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("header dict: expected a quoted string at byte {}", self.i)),
        };
        self.i += 1;
        let start = self.i;
        while let Some(c) = self.peek() {
            if c == q {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(s);
            }
            if c == b'\\' {
                return Err("header dict: escapes in strings are not supported".into());
            }
            self.i += 1;
        }
        Err("header dict: unterminated string".into())
    }
    fn boolean(&mut self) -> std::result::Result<bool, String> {
        let rest = &self.s[self.i..];
        if rest.starts_with(b"True") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"False") {
            self.i += 5;
            Ok(false)
        } else {
            Err(format!("header dict: expected True or False at byte {}", self.i))
        }
    }
    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if start == self.i {
                return Err(format!("header dict: expected a non-negative integer in 'shape' at byte {}", self.i));
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let d: usize = digits.parse().map_err(|_| format!("header dict: shape entry {digits} is too large"))?;
            dims.push(d);
            self.skip_ws();
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}
