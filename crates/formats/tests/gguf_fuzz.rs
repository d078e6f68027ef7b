//! Property tests for the GGUF reader: it never panics, never makes an
//! allocation out of proportion to the file, names the file in every error, and
//! everything it accepts satisfies the invariants it documents.
//!
//! Case counts (small so the suite stays fast, well under 1 s in the test profile):
//!   random_bytes_never_panic        1000
//!   random_after_valid_header       1000
//!   mutated_valid_files             3000
//!   valid_files_parse_exactly        500
//! total 5500 cases per run.

mod gguf_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gguf_common::{build, byte_len, parse, Raw, Spec, PATH};
use proptest::prelude::*;
use qmoe_formats::{FormatError, GgufArray, GgufFile, GgufValue};

// ---- allocation watch ---------------------------------------------------------

/// The system allocator, noting the largest single request made on this thread.
struct Watch;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`; `note` only reads and
// writes a const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

/// Parse, check that no single allocation exceeded a small multiple of the
/// file size, check the invariants of an accepted file and that an error names
/// the file.
fn parse_checked(bytes: &[u8]) -> Result<GgufFile, FormatError> {
    LARGEST.with(|l| l.set(0));
    let result = parse(bytes);
    let largest = LARGEST.with(|l| l.get());
    // Vec<String> headers are 3x the 8-byte length prefixes they come from;
    // the rest is hash tables and messages.
    let limit = 8 * bytes.len() + (64 << 10);
    assert!(largest <= limit, "allocated {largest} bytes for a {}-byte file", bytes.len());
    match &result {
        Ok(f) => check_invariants(bytes, f),
        Err(e) => assert!(e.to_string().contains(PATH), "error does not name the file: {e}"),
    }
    result
}

fn check_invariants(bytes: &[u8], f: &GgufFile) {
    assert!(matches!(f.version(), 2 | 3));
    assert!(f.alignment().is_power_of_two());
    let align = f.alignment() as u64;
    assert_eq!(f.data_start() % align, 0);
    let mut ranges = Vec::new();
    for t in f.tensors() {
        assert!(t.ne.len() <= 4 && t.ne.iter().all(|&d| d >= 1));
        assert!(t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= i64::MAX as u64));
        assert_eq!(t.offset % align, 0);
        if let Some(info) = t.type_info() {
            let row = info.row_bytes(t.ne.first().copied().unwrap_or(1)).expect("whole blocks");
            assert_eq!(t.byte_len() as u64, row * t.ne.iter().skip(1).product::<u64>());
        }
        let start = f.data_start() + t.offset;
        let end = start + t.byte_len() as u64;
        assert!(end <= bytes.len() as u64);
        if let Ok(d) = t.data() {
            assert_eq!(d.bytes(), &bytes[start as usize..end as usize]);
        }
        ranges.push((start, end));
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap {w:?}");
    }
    for (k, _) in f.metadata() {
        assert!(f.get(k).is_some());
    }
}

// ---- strategies ---------------------------------------------------------------

fn leaf_value() -> impl Strategy<Value = GgufValue> {
    prop_oneof![
        any::<u8>().prop_map(GgufValue::U8),
        any::<i8>().prop_map(GgufValue::I8),
        any::<u16>().prop_map(GgufValue::U16),
        any::<i16>().prop_map(GgufValue::I16),
        any::<u32>().prop_map(GgufValue::U32),
        any::<i32>().prop_map(GgufValue::I32),
        (-1e6f32..1e6).prop_map(GgufValue::F32),
        any::<bool>().prop_map(GgufValue::Bool),
        "[a-zĠ<|>_]{0,12}".prop_map(GgufValue::String),
        any::<u64>().prop_map(GgufValue::U64),
        any::<i64>().prop_map(GgufValue::I64),
        (-1e6f64..1e6).prop_map(GgufValue::F64),
    ]
}

fn array() -> impl Strategy<Value = GgufArray> {
    let flat = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..6).prop_map(GgufArray::U8),
        prop::collection::vec(any::<i32>(), 0..6).prop_map(GgufArray::I32),
        prop::collection::vec(any::<u64>(), 0..4).prop_map(GgufArray::U64),
        prop::collection::vec(any::<bool>(), 0..6).prop_map(GgufArray::Bool),
        prop::collection::vec("[a-z]{0,5}", 0..6).prop_map(GgufArray::String),
        prop::collection::vec(-1e3f32..1e3, 0..4).prop_map(GgufArray::F32),
    ];
    flat.prop_recursive(3, 12, 3, |inner| prop::collection::vec(inner, 0..3).prop_map(GgufArray::Array))
}

fn value() -> impl Strategy<Value = GgufValue> {
    prop_oneof![4 => leaf_value(), 1 => array().prop_map(GgufValue::Array)]
}

/// Tensors of small, whole-block shapes.
fn tensor() -> impl Strategy<Value = (u32, Vec<u64>)> {
    // (type id, block size): F32, F16, BF16, Q8_0, Q4_K, IQ2_XXS (sized, undecodable), I32.
    let ty = prop::sample::select(vec![(0u32, 1u64), (1, 1), (30, 1), (8, 32), (12, 256), (16, 256), (26, 1)]);
    (ty, 1u64..4, prop::collection::vec(1u64..4, 0..3))
        .prop_map(|((id, block), blocks, rest)| (id, std::iter::once(blocks * block).chain(rest).collect()))
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec![2u32, 3]),
        prop::option::of(prop::sample::select(vec![1u32, 8, 32, 64])),
        prop::collection::vec(value(), 0..6),
        prop::collection::vec(tensor(), 0..4),
    )
        .prop_map(|(version, alignment, values, tensors)| Spec {
            version,
            alignment,
            kvs: values.into_iter().enumerate().map(|(i, v)| (format!("k.{i}"), v)).collect(),
            tensors: tensors.into_iter().enumerate().map(|(i, (t, ne))| (format!("blk.{i}.w"), t, ne)).collect(),
        })
}

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Overwrite 8 bytes at a position with an interesting u64 (lengths, counts, dims, offsets).
    U64(usize, u64),
    /// Overwrite 4 bytes with an interesting u32 (type ids, n_dims, version).
    U32(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let u64s = prop_oneof![0u64..70, Just(u64::MAX), Just(1 << 62), Just(1 << 40), Just(i64::MAX as u64 + 1)];
    let u32s = prop_oneof![0u32..40, Just(u32::MAX), Just(99), Just(0x0300_0000)];
    prop_oneof![
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), u64s).prop_map(|(i, v)| Mutation::U64(i, v)),
        2 => (any::<usize>(), u32s).prop_map(|(i, v)| Mutation::U32(i, v)),
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
        Mutation::U64(i, v) if n >= 8 => {
            let at = i % (n - 7);
            file[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::U32(i, v) if n >= 4 => {
            let at = i % (n - 3);
            file[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ => {}
    }
}

// ---- properties -----------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_checked(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_after_valid_header(
        version in prop::sample::select(vec![2u32, 3]),
        n_tensors in prop_oneof![0u64..4, any::<u64>()],
        n_kv in prop_oneof![0u64..4, any::<u64>()],
        rest in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut r = Raw::header(version, n_tensors, n_kv);
        r.bytes(&rest);
        let _ = parse_checked(&r.buf);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn mutated_valid_files(spec in spec(), mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut file = build(&spec);
        prop_assert!(parse_checked(&file).is_ok());
        for m in &mutations {
            apply(&mut file, m);
        }
        let _ = parse_checked(&file);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn valid_files_parse_exactly(spec in spec()) {
        let f = parse_checked(&build(&spec)).unwrap();
        let mut want = spec.kvs.clone();
        if let Some(a) = spec.alignment {
            want.insert(0, ("general.alignment".to_string(), GgufValue::U32(a)));
        }
        prop_assert_eq!(f.metadata(), want.as_slice());
        prop_assert_eq!(f.version(), spec.version);
        prop_assert_eq!(f.tensors().len(), spec.tensors.len());
        for (t, (name, ty, ne)) in f.tensors().iter().zip(&spec.tensors) {
            prop_assert_eq!(&t.name, name);
            prop_assert_eq!(t.type_id, *ty);
            prop_assert_eq!(&t.ne, ne);
            prop_assert_eq!(t.byte_len() as u64, byte_len(*ty, ne));
        }
    }
}
