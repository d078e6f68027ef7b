//! GGUF metadata values.
//!
//! Arrays are stored typed (`Vec<u32>`, `Vec<String>`, ...) rather than as a
//! `Vec` of values: a 248k-entry token list costs one `String` per entry, the
//! element type of an empty array survives a round trip, and a typed getter can
//! hand out a plain slice (`&[String]`, `&[i32]`).

use std::fmt;

/// The `gguf_type` id of a value, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl GgufValueType {
    pub const ALL: [GgufValueType; 13] = [
        GgufValueType::U8,
        GgufValueType::I8,
        GgufValueType::U16,
        GgufValueType::I16,
        GgufValueType::U32,
        GgufValueType::I32,
        GgufValueType::F32,
        GgufValueType::Bool,
        GgufValueType::String,
        GgufValueType::Array,
        GgufValueType::U64,
        GgufValueType::I64,
        GgufValueType::F64,
    ];

    pub fn id(self) -> u32 {
        match self {
            GgufValueType::U8 => 0,
            GgufValueType::I8 => 1,
            GgufValueType::U16 => 2,
            GgufValueType::I16 => 3,
            GgufValueType::U32 => 4,
            GgufValueType::I32 => 5,
            GgufValueType::F32 => 6,
            GgufValueType::Bool => 7,
            GgufValueType::String => 8,
            GgufValueType::Array => 9,
            GgufValueType::U64 => 10,
            GgufValueType::I64 => 11,
            GgufValueType::F64 => 12,
        }
    }

    pub fn from_id(id: u32) -> Option<GgufValueType> {
        GgufValueType::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            GgufValueType::U8 => "u8",
            GgufValueType::I8 => "i8",
            GgufValueType::U16 => "u16",
            GgufValueType::I16 => "i16",
            GgufValueType::U32 => "u32",
            GgufValueType::I32 => "i32",
            GgufValueType::F32 => "f32",
            GgufValueType::Bool => "bool",
            GgufValueType::String => "string",
            GgufValueType::Array => "array",
            GgufValueType::U64 => "u64",
            GgufValueType::I64 => "i64",
            GgufValueType::F64 => "f64",
        }
    }

    /// Fewest bytes one value of this type takes in a file: its size for
    /// numbers, the length prefix for a string, type + length for an array.
    /// Bounds array lengths against the bytes left before allocating.
    pub fn min_encoded_len(self) -> u64 {
        match self {
            GgufValueType::U8 | GgufValueType::I8 | GgufValueType::Bool => 1,
            GgufValueType::U16 | GgufValueType::I16 => 2,
            GgufValueType::U32 | GgufValueType::I32 | GgufValueType::F32 => 4,
            GgufValueType::U64 | GgufValueType::I64 | GgufValueType::F64 | GgufValueType::String => 8,
            GgufValueType::Array => 12,
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An array value: elements of one type. Nested arrays may differ in type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// A short description for messages: `u32 7`, `string "gpt2"`,
    /// `array of 248320 string`. Long strings are cut.
    pub fn describe(&self) -> String {
        match self {
            GgufValue::String(s) if s.chars().count() > 40 => {
                format!("string {:?}...", s.chars().take(40).collect::<String>())
            }
            GgufValue::String(s) => format!("string {s:?}"),
            GgufValue::Array(a) => a.describe(),
            v => format!("{} {v}", v.value_type()),
        }
    }

    /// Any integer type holding a non-negative value, widened to `u64`.
    pub fn as_uint(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// `f32` or `f64`, widened to `f64`.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for GgufValue {
    /// Scalars print their value, strings their text, arrays a summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) => f.write_str(s),
            GgufValue::Array(a) => f.write_str(&a.describe()),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
        }
    }
}

impl GgufArray {
    pub fn elem_type(&self) -> GgufValueType {
        match self {
            GgufArray::U8(_) => GgufValueType::U8,
            GgufArray::I8(_) => GgufValueType::I8,
            GgufArray::U16(_) => GgufValueType::U16,
            GgufArray::I16(_) => GgufValueType::I16,
            GgufArray::U32(_) => GgufValueType::U32,
            GgufArray::I32(_) => GgufValueType::I32,
            GgufArray::F32(_) => GgufValueType::F32,
            GgufArray::Bool(_) => GgufValueType::Bool,
            GgufArray::String(_) => GgufValueType::String,
            GgufArray::Array(_) => GgufValueType::Array,
            GgufArray::U64(_) => GgufValueType::U64,
            GgufArray::I64(_) => GgufValueType::I64,
            GgufArray::F64(_) => GgufValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Arrays nested inside this one, counting itself (a flat array is 1).
    pub fn depth(&self) -> usize {
        match self {
            GgufArray::Array(v) => 1 + v.iter().map(GgufArray::depth).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// `array of 3 u32`.
    pub fn describe(&self) -> String {
        format!("array of {} {}", self.len(), self.elem_type())
    }

    /// Integer elements of any integer type, each non-negative, widened to
    /// `u64`; `None` for other element types or a negative element.
    pub fn to_uint_vec(&self) -> Option<Vec<u64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<u64>) -> Option<Vec<u64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            GgufArray::U8(v) => conv(v, |x| Some(x.into())),
            GgufArray::U16(v) => conv(v, |x| Some(x.into())),
            GgufArray::U32(v) => conv(v, |x| Some(x.into())),
            GgufArray::U64(v) => conv(v, Some),
            GgufArray::I8(v) => conv(v, |x| u64::try_from(x).ok()),
            GgufArray::I16(v) => conv(v, |x| u64::try_from(x).ok()),
            GgufArray::I32(v) => conv(v, |x| u64::try_from(x).ok()),
            GgufArray::I64(v) => conv(v, |x| u64::try_from(x).ok()),
            _ => None,
        }
    }
}

/// A Rust type a metadata value can be read as, strictly (no conversions):
/// `u32` reads only a `u32` value, `&[String]` only an array of strings.
/// Used by [`GgufFile::get_as`](super::GgufFile::get_as).
pub trait FromGgufValue<'a>: Sized {
    /// What was expected, for the error message (`u32`, `array of string`).
    const EXPECTED: &'static str;
    fn from_value(value: &'a GgufValue) -> Option<Self>;
}

macro_rules! typed {
    ($($Var:ident: $t:ty, $name:literal;)*) => {
        $(
            impl<'a> FromGgufValue<'a> for $t {
                const EXPECTED: &'static str = $name;
                fn from_value(value: &'a GgufValue) -> Option<Self> {
                    match value {
                        GgufValue::$Var(v) => Some(*v),
                        _ => None,
                    }
                }
            }

            impl<'a> FromGgufValue<'a> for &'a [$t] {
                const EXPECTED: &'static str = concat!("array of ", $name);
                fn from_value(value: &'a GgufValue) -> Option<Self> {
                    match value {
                        GgufValue::Array(GgufArray::$Var(v)) => Some(v.as_slice()),
                        _ => None,
                    }
                }
            }

            impl From<$t> for GgufValue {
                fn from(v: $t) -> GgufValue {
                    GgufValue::$Var(v)
                }
            }

            impl From<Vec<$t>> for GgufArray {
                fn from(v: Vec<$t>) -> GgufArray {
                    GgufArray::$Var(v)
                }
            }

            impl From<Vec<$t>> for GgufValue {
                fn from(v: Vec<$t>) -> GgufValue {
                    GgufValue::Array(GgufArray::$Var(v))
                }
            }
        )*
    };
}

typed! {
    U8: u8, "u8";
    I8: i8, "i8";
    U16: u16, "u16";
    I16: i16, "i16";
    U32: u32, "u32";
    I32: i32, "i32";
    F32: f32, "f32";
    Bool: bool, "bool";
    U64: u64, "u64";
    I64: i64, "i64";
    F64: f64, "f64";
}

impl<'a> FromGgufValue<'a> for &'a str {
    const EXPECTED: &'static str = "string";
    fn from_value(value: &'a GgufValue) -> Option<Self> {
        match value {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'a> FromGgufValue<'a> for &'a [String] {
    const EXPECTED: &'static str = "array of string";
    fn from_value(value: &'a GgufValue) -> Option<Self> {
        match value {
            GgufValue::Array(GgufArray::String(v)) => Some(v),
            _ => None,
        }
    }
}

impl<'a> FromGgufValue<'a> for &'a [GgufArray] {
    const EXPECTED: &'static str = "array of array";
    fn from_value(value: &'a GgufValue) -> Option<Self> {
        match value {
            GgufValue::Array(GgufArray::Array(v)) => Some(v),
            _ => None,
        }
    }
}

impl<'a> FromGgufValue<'a> for &'a GgufArray {
    const EXPECTED: &'static str = "array";
    fn from_value(value: &'a GgufValue) -> Option<Self> {
        match value {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl<'a> FromGgufValue<'a> for &'a GgufValue {
    const EXPECTED: &'static str = "any value";
    fn from_value(value: &'a GgufValue) -> Option<Self> {
        Some(value)
    }
}

impl From<String> for GgufValue {
    fn from(v: String) -> GgufValue {
        GgufValue::String(v)
    }
}

impl From<&str> for GgufValue {
    fn from(v: &str) -> GgufValue {
        GgufValue::String(v.to_string())
    }
}

impl From<GgufArray> for GgufValue {
    fn from(v: GgufArray) -> GgufValue {
        GgufValue::Array(v)
    }
}

impl From<Vec<String>> for GgufArray {
    fn from(v: Vec<String>) -> GgufArray {
        GgufArray::String(v)
    }
}

impl From<Vec<String>> for GgufValue {
    fn from(v: Vec<String>) -> GgufValue {
        GgufValue::Array(GgufArray::String(v))
    }
}

impl From<Vec<GgufArray>> for GgufValue {
    fn from(v: Vec<GgufArray>) -> GgufValue {
        GgufValue::Array(GgufArray::Array(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for t in GgufValueType::ALL {
            assert_eq!(GgufValueType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgufValueType::from_id(13), None);
    }

    #[test]
    fn describe_and_conversions() {
        assert_eq!(GgufValue::from(7u32).describe(), "u32 7");
        assert_eq!(GgufValue::from("gpt2").describe(), "string \"gpt2\"");
        assert_eq!(GgufValue::from(vec![1i32, 2]).describe(), "array of 2 i32");
        assert_eq!(GgufValue::I32(5).as_uint(), Some(5));
        assert_eq!(GgufValue::I32(-5).as_uint(), None);
        assert_eq!(GgufValue::F32(0.5).as_float(), Some(0.5));
        assert_eq!(GgufArray::I32(vec![11, 11, 10, 0]).to_uint_vec(), Some(vec![11, 11, 10, 0]));
        let nested = GgufArray::Array(vec![GgufArray::Array(vec![GgufArray::U8(vec![])])]);
        assert_eq!(nested.depth(), 3);
    }
}
