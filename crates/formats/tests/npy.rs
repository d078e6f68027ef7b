//! .npy read/write. The expected bytes below were produced by `numpy.save`
//! (numpy in the pinned reference venv), so writing is checked byte for byte.

mod common;

use common::{assert_mentions, err_msg, TempDir};
use qmoe_formats::npy::parse_npy_f32;
use qmoe_formats::{read_npy_f32, write_npy_f32, FormatError};

/// An .npy file as numpy lays it out: the header length field counts the dict,
/// its space padding and the final newline, so that the data starts at a multiple of 64.
fn numpy_bytes(version: u8, dict: &str, data: &[f32]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let padded = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header_len = padded - prefix;
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(padded - 1, b' ');
    out.push(b'\n');
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[test]
fn writes_what_numpy_writes() {
    let dir = TempDir::new("npyw");
    let cases: [(&[usize], Vec<f32>, &str); 3] = [
        (&[2, 3], vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5], "(2, 3)"),
        (&[], vec![1.5], "()"),
        (&[3], vec![1.0, -2.0, 3.0], "(3,)"),
    ];
    for (shape, data, tuple) in cases {
        let path = dir.join("a.npy");
        write_npy_f32(&path, shape, &data).unwrap();
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
        let expected = numpy_bytes(1, &dict, &data);
        // numpy writes header length 0x76 = 118 here: data starts at byte 128.
        assert_eq!(&expected[8..10], &[0x76, 0]);
        assert_eq!(std::fs::read(&path).unwrap(), expected, "{tuple}");
        let (s, d) = read_npy_f32(&path).unwrap();
        assert_eq!((s.as_slice(), d), (shape, data));
    }
}

#[test]
fn round_trips_large_and_empty_arrays() {
    let dir = TempDir::new("npyrt");
    let path = dir.join("logits.npy");
    let data: Vec<f32> = (0..7 * 1000).map(|i| (i as f32).sin()).collect();
    write_npy_f32(&path, &[7, 1000], &data).unwrap();
    assert_eq!(read_npy_f32(&path).unwrap(), (vec![7, 1000], data));
    write_npy_f32(&path, &[0, 5], &[]).unwrap();
    assert_eq!(read_npy_f32(&path).unwrap(), (vec![0, 5], vec![]));
    let msg = err_msg(write_npy_f32(&path, &[2, 2], &[1.0]));
    assert_mentions(&msg, &["logits.npy", "[2, 2]", "4 elements", "1 values"]);
}

#[test]
fn reads_version_2_and_3() {
    let p = std::path::Path::new("v.npy");
    // numpy.lib.format.write_array(..., version=(3, 0)) writes u32 header length 0x74.
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    for v in [2u8, 3] {
        let bytes = numpy_bytes(v, dict, &[1.0, 2.0]);
        assert_eq!(&bytes[8..12], &[0x74, 0, 0, 0]);
        assert_eq!(parse_npy_f32(&bytes, p).unwrap(), (vec![2], vec![1.0, 2.0]));
    }
}

#[test]
fn refuses_other_dtypes_and_orders_clearly() {
    let p = std::path::Path::new("golden.npy");
    let cases = [
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", "'<f8'"),
        ("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", "'>f4'"),
        ("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", "'<i4'"),
        ("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", "fortran_order"),
    ];
    for (dict, what) in cases {
        let e = parse_npy_f32(&numpy_bytes(1, dict, &[0.0, 0.0]), p).unwrap_err();
        assert!(matches!(e, FormatError::NpyUnsupported { .. }), "{e}");
        assert_mentions(&e.to_string(), &["golden.npy", what, "'<f4'"]);
    }
}

#[test]
fn refuses_malformed_files() {
    let p = std::path::Path::new("bad.npy");
    let ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    let mut wrong_version = numpy_bytes(1, ok_dict, &[1.0, 2.0]);
    wrong_version[6] = 9;
    let mut long_header = numpy_bytes(1, ok_dict, &[]);
    long_header[8] = 0xff;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "magic"),
        (b"PK\x03\x04 this is a zip".to_vec(), "magic"),
        (wrong_version, "version 9.0"),
        (long_header, "runs past the end"),
        (numpy_bytes(1, ok_dict, &[1.0]), "needs 8 data bytes"),
        (numpy_bytes(1, ok_dict, &[1.0, 2.0, 3.0]), "holds 12"),
        (numpy_bytes(1, "{'descr': '<f4', 'shape': (2,), }", &[1.0, 2.0]), "fortran_order"),
        (numpy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", &[]), "non-negative integer"),
        (
            numpy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", &[]),
            "too large",
        ),
        (
            numpy_bytes(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
                &[],
            ),
            "needs",
        ),
        (numpy_bytes(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", &[]), "structured"),
        (
            numpy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", &[0.0]),
            "unexpected header key",
        ),
        (numpy_bytes(1, "{'descr': '<f4' 'fortran_order': False}", &[]), "expected"),
    ];
    for (bytes, what) in cases {
        let msg = err_msg(parse_npy_f32(&bytes, p));
        assert_mentions(&msg, &["bad.npy", what]);
    }
    let dir = TempDir::new("npymissing");
    let missing = dir.join("absent.npy");
    assert_mentions(&err_msg(read_npy_f32(&missing)), &["absent.npy"]);
}
