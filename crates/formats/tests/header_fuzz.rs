//! Property tests for the safetensors header parser: it never panics on any
//! input, everything it accepts satisfies the format's invariants, and it agrees
//! with the reference implementation (`safetensors` crate 0.8) on what is valid.
//!
//! Case counts (kept small so the suite stays fast, ~1 s in the test profile):
//!   random_bytes_never_panic          2000
//!   json_shaped_headers_never_panic   1000
//!   mutated_valid_files               3000
//!   structured_headers_vs_reference   3000
//! total 9000 cases per run.

mod common;

use std::path::Path;

use proptest::prelude::*;
use qmoe_formats::header::dtype_from_safetensors;
use qmoe_formats::{parse_header, FormatError, Header};
use serde_json::Value;

const PATH: &str = "fuzz.safetensors";

/// Check what the parser promises about an accepted file.
fn check_invariants(file: &[u8], h: &Header) {
    let data_start = 8 + h.header_len;
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for t in &h.tensors {
        assert!(t.start >= data_start && t.start + t.len <= file.len(), "{t:?} outside the buffer");
        let numel: usize = t.shape.iter().product();
        assert_eq!(t.len, numel * t.dtype.size(), "{t:?}");
        ranges.push((t.start, t.start + t.len));
    }
    ranges.sort();
    let mut cursor = data_start;
    for (s, e) in ranges {
        assert_eq!(s, cursor, "hole or overlap");
        cursor = e;
    }
    assert_eq!(cursor, file.len(), "buffer not covered");
}

/// `__metadata__` is absent or a map of strings (the only form the reference accepts).
fn metadata_is_plain(file: &[u8], header_len: usize) -> bool {
    let v: Value = match serde_json::from_slice(&file[8..8 + header_len]) {
        Ok(v) => v,
        Err(_) => return false,
    };
    match v.get("__metadata__") {
        None => true,
        Some(Value::Object(m)) => m.values().all(Value::is_string),
        Some(_) => false,
    }
}

/// Parse with both implementations; if ours accepts, so must the reference, with
/// the same tensors at the same offsets.
fn parse_and_compare(file: &[u8]) -> Result<Header, FormatError> {
    let ours = parse_header(file, Path::new(PATH));
    if let Ok(h) = &ours {
        check_invariants(file, h);
        if metadata_is_plain(file, h.header_len) {
            let reference = safetensors::SafeTensors::deserialize(file).unwrap_or_else(|e| {
                panic!("we accepted what the reference refuses ({e}): {:?}", String::from_utf8_lossy(file))
            });
            assert_eq!(reference.len(), h.tensors.len());
            for t in &h.tensors {
                let r = reference.tensor(&t.name).expect("tensor missing in reference");
                assert_eq!(r.shape(), t.shape.as_slice());
                assert_eq!(r.data().len(), t.len);
            }
        }
    }
    ours
}

fn valid_file(tensors: &[(String, &'static str, Vec<usize>)], meta: bool) -> Vec<u8> {
    let mut entries = Vec::new();
    if meta {
        entries.push(r#""__metadata__":{"format":"pt"}"#.to_string());
    }
    let mut off = 0usize;
    for (name, dtype, shape) in tensors {
        let size = dtype_from_safetensors(dtype).unwrap().size() * shape.iter().product::<usize>();
        entries
            .push(format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{off},{}]}}"#, off + size));
        off += size;
    }
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut data: Vec<u8> = (0..off).map(|i| i as u8).collect();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.append(&mut data);
    out
}

fn tensor_strategy() -> impl Strategy<Value = Vec<(String, &'static str, Vec<usize>)>> {
    let dtype = prop::sample::select(vec!["F32", "F16", "BF16", "F8_E4M3", "U8", "I8", "U32", "I32", "I64"]);
    prop::collection::vec((dtype, prop::collection::vec(0usize..5, 0..3)), 0..5)
        .prop_map(|v| v.into_iter().enumerate().map(|(i, (d, s))| (format!("layers.{i}.w"), d, s)).collect())
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Overwrite the length prefix with a value near the real one.
    Length(i64),
    /// Replace a digit run of the header with another number (offsets, shapes).
    Digit(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting =
        prop::sample::select(vec![0u8, b'"', b'{', b'}', b'[', b']', b',', b':', b'-', b'9', 0xff, b'\\']);
    prop_oneof![
        (any::<usize>(), interesting).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (-16i64..16).prop_map(Mutation::Length),
        (any::<usize>(), prop_oneof![0u64..64, Just(u64::MAX), Just(1 << 62)]).prop_map(|(i, v)| Mutation::Digit(i, v)),
    ]
}

fn apply(file: &mut Vec<u8>, m: &Mutation) {
    let n = file.len();
    match *m {
        Mutation::Set(i, b) if n > 0 => file[i % n] = b,
        Mutation::Flip(i, b) if n > 0 => file[i % n] ^= b,
        Mutation::Insert(i, b) => file.insert(i % (n + 1), b),
        Mutation::Delete(i) if n > 0 => {
            file.remove(i % n);
        }
        Mutation::Truncate(i) => file.truncate(i % (n + 1)),
        Mutation::Length(d) if n >= 8 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&file[..8]);
            let v = (u64::from_le_bytes(l) as i64).wrapping_add(d) as u64;
            file[..8].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Digit(i, v) => {
            let digits: Vec<usize> = (8..n).filter(|&j| file[j].is_ascii_digit()).collect();
            if let Some(&j) = digits.get(i % digits.len().max(1)) {
                let end = (j..n).find(|&k| !file[k].is_ascii_digit()).unwrap_or(n);
                file.splice(j..end, v.to_string().into_bytes());
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_and_compare(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn json_shaped_headers_never_panic(
        header in r#"[{}\[\]":, 0-9a-zA-Z_.\-]{0,120}"#,
        data in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let _ = parse_and_compare(&common::raw_file(&header, &data));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn mutated_valid_files(
        tensors in tensor_strategy(),
        meta in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut file = valid_file(&tensors, meta);
        prop_assert!(parse_and_compare(&file).is_ok());
        for m in &mutations {
            apply(&mut file, m);
        }
        let _ = parse_and_compare(&file);
    }
}

/// One header entry with possibly wrong fields.
fn entry_strategy() -> impl Strategy<Value = (&'static str, Vec<u64>, (u64, u64))> {
    let dtype = prop::sample::select(vec!["F32", "F16", "BF16", "F8_E4M3", "U8", "I64", "F64", "BOOL", "X"]);
    let dim = prop_oneof![8 => 0u64..4, 1 => Just(u64::MAX / 3), 1 => Just(1u64 << 32)];
    (dtype, prop::collection::vec(dim, 0..3), (0u64..40, 0u64..40))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn structured_headers_vs_reference(
        entries in prop::collection::vec(entry_strategy(), 0..4),
        data_len in prop::option::of(0usize..48),
        fix_offsets in any::<bool>(),
    ) {
        // Half the cases get consistent offsets (then only dtype/shape vary), and
        // then half of those a data buffer of exactly the right length.
        let mut parts = Vec::new();
        let mut off = 0u64;
        for (i, (dtype, shape, (b, e))) in entries.iter().enumerate() {
            let (b, e) = if fix_offsets {
                let size = dtype_from_safetensors(dtype).map_or(1, |d| d.size() as u64);
                let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).and_then(|n| n.checked_mul(size)).unwrap_or(1);
                let r = (off, off.saturating_add(n));
                off = r.1;
                r
            } else {
                (*b, *e)
            };
            parts.push(format!(r#""t{i}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{b},{e}]}}"#));
        }
        let data_len = data_len.unwrap_or(if fix_offsets && off < 4096 { off as usize } else { 8 });
        let file = common::raw_file(&format!("{{{}}}", parts.join(",")), &vec![7u8; data_len]);
        let ours = parse_and_compare(&file);
        let reference = safetensors::SafeTensors::deserialize(&file);
        let all_supported = entries.iter().all(|(d, _, _)| dtype_from_safetensors(d).is_some());
        if reference.is_ok() && all_supported {
            prop_assert!(ours.is_ok(), "reference accepts, we refuse: {}", ours.unwrap_err());
        }
        if let Err(e) = &ours {
            prop_assert!(e.to_string().contains(PATH), "error does not name the file: {e}");
        }
    }
}
