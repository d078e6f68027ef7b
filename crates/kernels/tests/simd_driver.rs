//! The matmul driver (`linear::matmul` → `simd::gemm`) against the reference
//! product (`linear::reference_matmul`): every encoding, one and several
//! tokens (per-token and many-token kernels), one and two threads, and the
//! f32-activation override.
//!
//! Quantized weights see int8 activations on the fast path, so the bound is
//! the activation quantization error: `|fast - ref| <= tol * Σ|w||x|` with
//! `tol` one int8 step (1/127 of the block's largest |x|, per element, at
//! most); float and FP8 weights differ only in summation order.

mod common;

use common::Rng;
use qmoe_core::dtype::DType;
use qmoe_kernels::linear::{matmul, reference_matmul, MatRef};
use qmoe_kernels::simd::gemm::with_f32_activations;

/// `Σ |w| |x|` per (token, row) from the reference's own dequantised rows.
fn magnitudes(w: &MatRef, x: &[f32], t: usize) -> Vec<f32> {
    let mut row = vec![0.0; w.cols];
    let mut out = vec![0.0; t * w.rows];
    for r in 0..w.rows {
        w.row_to_f32(r, &mut row);
        for tt in 0..t {
            out[tt * w.rows + r] = row.iter().zip(&x[tt * w.cols..]).map(|(a, b)| (a * b).abs()).sum();
        }
    }
    out
}

fn check(name: &str, w: &MatRef, rng: &mut Rng, tol: f32) {
    // 1 and 3: per-token kernels; 4 and more: the many-token ones (groups of
    // four, so 5 and 9 leave a remainder).
    for t in [1usize, 3, 4, 5, 9] {
        let x = rng.vec(t * w.cols, 1.5);
        let mut want = vec![0.0; t * w.rows];
        reference_matmul(w, &x, &mut want, t);
        let mag = magnitudes(w, &x, t);
        for threads in [1usize, 2] {
            qmoe_kernels::threads::set(threads);
            let mut got = vec![f32::NAN; t * w.rows];
            matmul(w, &x, &mut got, t);
            for i in 0..got.len() {
                assert!(
                    (got[i] - want[i]).abs() <= tol * mag[i] + 1e-6,
                    "{name} t{t} threads {threads} [{i}]: {} vs {}",
                    got[i],
                    want[i]
                );
            }
            let mut exact = vec![f32::NAN; t * w.rows];
            with_f32_activations(|| matmul(w, &x, &mut exact, t));
            for i in 0..got.len() {
                assert!((exact[i] - want[i]).abs() <= 1e-5 * mag[i] + 1e-6, "{name} f32 activations t{t} [{i}]");
            }
        }
        qmoe_kernels::threads::set(0);
    }
}

#[test]
fn affine_every_bits_and_group() {
    let mut rng = Rng(5);
    for bits in [2u32, 3, 4, 5, 6, 8] {
        for group in [32usize, 64, 128] {
            let (rows, cols) = (37, 256);
            let words: Vec<u8> = (0..rows * cols * bits as usize / 8).map(|_| rng.next_u64() as u8).collect();
            let scales: Vec<u8> = rng.vec(rows * cols / group, 0.05).iter().flat_map(|v| v.to_le_bytes()).collect();
            let biases: Vec<u8> = rng.vec(rows * cols / group, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect();
            let w = MatRef::affine(rows, cols, &words, bits, group, &scales, &biases, DType::F32).unwrap();
            check(&format!("affine {bits}-bit g{group}"), &w, &mut rng, 1.0 / 127.0);
        }
    }
}

#[test]
fn float_and_ggml_types() {
    let mut rng = Rng(6);
    let (rows, cols) = (41, 512);
    let f: Vec<u8> = rng.vec(rows * cols, 1.0).iter().flat_map(|v| v.to_le_bytes()).collect();
    check("f32", &MatRef::new(DType::F32, rows, cols, &f), &mut rng, 1e-5);
    for ty in [qmoe_core::GgmlType::Q8_0, qmoe_core::GgmlType::Q4K, qmoe_core::GgmlType::Q6K, qmoe_core::GgmlType::Q4_0]
    {
        let Some(quantize) = qmoe_kernels::ggml::quantizer(ty) else { continue };
        let vals = rng.vec(rows * cols, 1.0);
        let mut bytes = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
        quantize(&vals, &mut bytes);
        let w = MatRef::ggml(ty, rows, cols, &bytes).unwrap();
        check(&format!("{ty}"), &w, &mut rng, 1.0 / 127.0);
    }
}

/// The driver runs a large product as several row tasks over two threads,
/// and the AVX2 many-token kernels then rearrange the quantized input once
/// per thread (named by the driver) rather than once per task. Its result
/// must equal the kernel called directly on the same quantized input (which
/// rearranges per call), bit for bit, also when a second input is written
/// over the first at the same address (a stale copy would be reused there).
#[test]
fn many_token_products_split_into_tasks_equal_one_kernel_call() {
    use qmoe_core::GgmlType;
    use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
    use qmoe_kernels::simd::{ggml_dot, level, ActKind};

    let mut rng = Rng(17);
    // 700 rows of 512 columns: 200-380 KB of weights, so several tasks; 19
    // tokens: groups of 8, 8 and 3.
    let (rows, cols, t) = (700, 512, 19);
    let mut x = vec![0.0f32; t * cols];
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::IQ4XS, GgmlType::Q8_0, GgmlType::Q4_0] {
        let Some(quantize) = qmoe_kernels::ggml::quantizer(ty) else { continue };
        let vals = rng.vec(rows * cols, 1.0);
        let mut bytes = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
        quantize(&vals, &mut bytes);
        let w = MatRef::ggml(ty, rows, cols, &bytes).unwrap();
        qmoe_kernels::threads::set(2);
        for round in 0..2 {
            x.copy_from_slice(&rng.vec(t * cols, 1.5));
            let mut got = vec![f32::NAN; t * rows];
            matmul(&w, &x, &mut got, t);
            let mut want = vec![f32::NAN; t * rows];
            match ggml_dot::act_kind(ty) {
                Some(ActKind::Q8K) => {
                    let mut xq = vec![BlockQ8K::default(); t * cols / 256];
                    quantize_q8k(&x, &mut xq);
                    ggml_dot::multi::gemm_q8k(level(), ty, &bytes, rows, &xq, t, &mut want, rows);
                }
                _ => {
                    let mut xq = vec![BlockQ8x32::default(); t * cols / 32];
                    quantize_q8x32(&x, &mut xq);
                    ggml_dot::multi::gemm_q8x32(level(), ty, &bytes, rows, &xq, t, &mut want, rows);
                }
            }
            for i in 0..got.len() {
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "{ty} round {round} [{i}]: {} vs {}", got[i], want[i]);
            }
        }
        qmoe_kernels::threads::set(0);
    }
}

/// As above for MLX affine 4- and 8-bit weights, with one input shared by
/// Q8_0, Q4_K, Q6_K and both affine products in one `matmul_many` call: the
/// driver names the input once (per activation form), and each kernel keeps
/// its own rearranged layout of it per thread (a copy in another kernel's
/// layout, such as Q6_K's against Q4_K's at the AVX-512 level, must not be
/// taken for its own). Each product must equal its kernel called directly,
/// bit for bit.
#[test]
fn one_input_shared_by_kernels_of_different_layouts() {
    use qmoe_core::GgmlType;
    use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
    use qmoe_kernels::simd::gemm::{matmul_many, Product};
    use qmoe_kernels::simd::{affine_multi, ggml_dot, level};

    let mut rng = Rng(23);
    // 600 rows of 512 columns (several tasks each); 19 tokens: 8, 8, 3.
    let (rows, cols, t, group) = (600, 512, 19, 64);
    let types = [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
    let ggml_bytes: Vec<Vec<u8>> = types
        .iter()
        .map(|&ty| {
            let quantize = qmoe_kernels::ggml::quantizer(ty).expect("quantizer");
            let mut bytes = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
            quantize(&rng.vec(rows * cols, 1.0), &mut bytes);
            bytes
        })
        .collect();
    let words: Vec<Vec<u8>> =
        [4usize, 8].map(|bits| (0..rows * cols * bits / 8).map(|_| rng.next_u64() as u8).collect()).into();
    let scales: Vec<u8> = rng.vec(rows * cols / group, 0.05).iter().flat_map(|v| v.to_le_bytes()).collect();
    let biases: Vec<u8> = rng.vec(rows * cols / group, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut mats: Vec<MatRef> =
        types.iter().zip(&ggml_bytes).map(|(&ty, b)| MatRef::ggml(ty, rows, cols, b).unwrap()).collect();
    mats.extend([
        MatRef::affine(rows, cols, &words[0], 4, group, &scales, &biases, DType::F32).unwrap(),
        MatRef::affine(rows, cols, &words[1], 8, group, &scales, &biases, DType::F32).unwrap(),
    ]);
    qmoe_kernels::threads::set(2);
    for round in 0..2 {
        let x = rng.vec(t * cols, 1.5);
        let mut got = vec![vec![f32::NAN; t * rows]; mats.len()];
        let mut products: Vec<Product> =
            mats.iter().zip(got.iter_mut()).map(|(w, y)| Product::new(*w, &x, y.as_mut_slice(), t)).collect();
        matmul_many(&mut products);
        let mut xq = vec![BlockQ8x32::default(); t * cols / 32];
        quantize_q8x32(&x, &mut xq);
        let mut xk = vec![BlockQ8K::default(); t * cols / 256];
        quantize_q8k(&x, &mut xk);
        for (k, w) in mats.iter().enumerate() {
            let mut want = vec![f32::NAN; t * rows];
            match types.get(k) {
                Some(&GgmlType::Q8_0) => {
                    ggml_dot::multi::gemm_q8x32(level(), types[k], &ggml_bytes[k], rows, &xq, t, &mut want, rows)
                }
                Some(&ty) => ggml_dot::multi::gemm_q8k(level(), ty, &ggml_bytes[k], rows, &xk, t, &mut want, rows),
                None => affine_multi::gemm_affine(level(), w, 0..rows, &xq, t, &mut want, rows),
            }
            for i in 0..want.len() {
                let g = got[k][i];
                assert_eq!(g.to_bits(), want[i].to_bits(), "product {k} round {round} [{i}]: {g} vs {}", want[i]);
            }
        }
    }
    qmoe_kernels::threads::set(0);
}

/// One token: products on two inputs, each input shared by Q8_0 and Q4_K
/// products of several row tasks, in one `matmul_many` call, twice with new
/// contents at the same addresses. The driver names each input, and the
/// AVX-512 gemv kernels keep their layout of a named input per thread for
/// its later tasks (a layout of the other input, or of the first round's
/// contents, must not be taken). Each product must equal its kernel called
/// directly on an unnamed input, bit for bit.
#[test]
fn one_token_products_on_named_inputs_equal_the_gemv() {
    use qmoe_core::GgmlType;
    use qmoe_kernels::simd::act::{quantize_q8k, quantize_q8x32, BlockQ8K, BlockQ8x32};
    use qmoe_kernels::simd::gemm::{matmul_many, Product};
    use qmoe_kernels::simd::{ggml_dot, level};

    let mut rng = Rng(29);
    // 1000 rows of 2048 columns: 1.1 MB (Q4_K) and 2.2 MB (Q8_0), two and
    // three tasks of at most 1 MiB.
    let (rows, cols) = (1000, 2048);
    let types = [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q8_0, GgmlType::Q4K];
    let bytes: Vec<Vec<u8>> = types
        .iter()
        .map(|&ty| {
            let quantize = qmoe_kernels::ggml::quantizer(ty).expect("quantizer");
            let mut b = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
            quantize(&rng.vec(rows * cols, 1.0), &mut b);
            b
        })
        .collect();
    let mats: Vec<MatRef> = types.iter().zip(&bytes).map(|(&ty, b)| MatRef::ggml(ty, rows, cols, b).unwrap()).collect();
    let mut inputs = [vec![0.0f32; cols], vec![0.0f32; cols]];
    qmoe_kernels::threads::set(2);
    for round in 0..2 {
        for x in inputs.iter_mut() {
            x.copy_from_slice(&rng.vec(cols, 1.5));
        }
        // Products 0, 1 read input 0; 2, 3 input 1; in the order 0, 2, 1, 3.
        let which = [0usize, 1, 0, 1];
        let mut got = vec![vec![f32::NAN; rows]; mats.len()];
        {
            let mut outs: Vec<(usize, &mut Vec<f32>)> = got.iter_mut().enumerate().collect();
            outs.sort_by_key(|(k, _)| (k % 2, *k));
            let mut products: Vec<Product> =
                outs.into_iter().map(|(k, y)| Product::new(mats[k], &inputs[which[k]], y.as_mut_slice(), 1)).collect();
            matmul_many(&mut products);
        }
        for (k, &ty) in types.iter().enumerate() {
            let x = &inputs[which[k]];
            let mut want = vec![f32::NAN; rows];
            if ty == GgmlType::Q8_0 {
                let mut xq = vec![BlockQ8x32::default(); cols / 32];
                quantize_q8x32(x, &mut xq);
                ggml_dot::gemv_q8x32(level(), ty, &bytes[k], &xq, &mut want);
            } else {
                let mut xk = vec![BlockQ8K::default(); cols / 256];
                quantize_q8k(x, &mut xk);
                ggml_dot::gemv_q8k(level(), ty, &bytes[k], &xk, &mut want);
            }
            for i in 0..rows {
                let g = got[k][i];
                assert_eq!(g.to_bits(), want[i].to_bits(), "{ty} product {k} round {round} [{i}]: {g} vs {}", want[i]);
            }
        }
    }
    qmoe_kernels::threads::set(0);
}

/// A call whose rows make fewer tasks than threads (a router) is cut along
/// tokens (45: runs of 23 and 22), or with too few tokens (1, 3) along
/// rows: two threads must give the one-thread result bit for bit, for the
/// f32 kernels and for the single- and many-token int8 kernels.
#[test]
fn few_row_products_split_along_tokens_equal_one_thread() {
    for t in [1, 3, 45] {
        few_row_products_on_two_threads(t);
    }
}

fn few_row_products_on_two_threads(t: usize) {
    let mut rng = Rng(23);
    // 41 rows of 512: one row task.
    let (rows, cols) = (41, 512);
    let f: Vec<u8> = rng.vec(rows * cols, 1.0).iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut mats = vec![("f32".to_string(), MatRef::new(DType::F32, rows, cols, &f))];
    let mut quantized = Vec::new();
    for ty in [qmoe_core::GgmlType::Q4K, qmoe_core::GgmlType::Q8_0] {
        let quantize = qmoe_kernels::ggml::quantizer(ty).expect("quantizer");
        let mut bytes = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
        quantize(&rng.vec(rows * cols, 1.0), &mut bytes);
        quantized.push((ty, bytes));
    }
    for (ty, bytes) in &quantized {
        mats.push((format!("{ty}"), MatRef::ggml(*ty, rows, cols, bytes).unwrap()));
    }
    let (bits, group) = (4u32, 64usize);
    let words: Vec<u8> = (0..rows * cols * bits as usize / 8).map(|_| rng.next_u64() as u8).collect();
    let scales: Vec<u8> = rng.vec(rows * cols / group, 0.05).iter().flat_map(|v| v.to_le_bytes()).collect();
    let biases: Vec<u8> = rng.vec(rows * cols / group, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect();
    mats.push((
        "affine 4-bit".into(),
        MatRef::affine(rows, cols, &words, bits, group, &scales, &biases, DType::F32).unwrap(),
    ));
    for (name, w) in &mats {
        let x = rng.vec(t * cols, 1.5);
        let run = |threads: usize| {
            qmoe_kernels::threads::set(threads);
            let mut y = vec![f32::NAN; t * rows];
            matmul(w, &x, &mut y, t);
            y
        };
        let (one, two) = (run(1), run(2));
        qmoe_kernels::threads::set(0);
        for i in 0..one.len() {
            assert_eq!(one[i].to_bits(), two[i].to_bits(), "{name} t{t} [{i}]: {} vs {}", one[i], two[i]);
        }
    }
}

/// A prefill's MoE quantizes its input once and gathers the blocks by
/// expert (`QuantBuf`, `Product::quantized`): each product must equal the
/// same product on the gathered f32 rows, bit for bit, for products of
/// five tokens (many-token kernels), two (per-token) and the rest, two of
/// them (gate and up) on each gathered slice, on two threads.
#[test]
fn gathered_quantized_inputs_equal_gathered_f32_rows() {
    use qmoe_kernels::simd::gemm::{int8_input, matmul_many, Product, QuantBuf};

    let mut rng = Rng(29);
    let (rows, cols, t, slots) = (300, 512, 40, 90);
    let (bits, group) = (4u32, 64usize);
    let words: Vec<u8> = (0..rows * cols * bits as usize / 8).map(|_| rng.next_u64() as u8).collect();
    let scales: Vec<u8> = rng.vec(rows * cols / group, 0.05).iter().flat_map(|v| v.to_le_bytes()).collect();
    let biases: Vec<u8> = rng.vec(rows * cols / group, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut ggml = Vec::new();
    for ty in [qmoe_core::GgmlType::Q4K, qmoe_core::GgmlType::Q6K, qmoe_core::GgmlType::Q8_0] {
        let quantize = qmoe_kernels::ggml::quantizer(ty).expect("quantizer");
        let mut bytes = vec![0u8; 2 * rows * ty.row_bytes(cols).unwrap()];
        quantize(&rng.vec(2 * rows * cols, 1.0), &mut bytes);
        ggml.push((ty, bytes));
    }
    // Pairs of matrices (an expert's gate and up) of one form each.
    let mut pairs: Vec<[MatRef; 2]> = ggml
        .iter()
        .map(|(ty, b)| {
            let half = b.len() / 2;
            [MatRef::ggml(*ty, rows, cols, &b[..half]).unwrap(), MatRef::ggml(*ty, rows, cols, &b[half..]).unwrap()]
        })
        .collect();
    let affine = MatRef::affine(rows, cols, &words, bits, group, &scales, &biases, DType::F32).unwrap();
    pairs.push([affine, affine]);

    let x = rng.vec(t * cols, 1.5);
    let order: Vec<usize> = (0..slots).map(|_| (rng.next_u64() % t as u64) as usize).collect();
    let xs: Vec<f32> = order.iter().flat_map(|&r| x[r * cols..(r + 1) * cols].iter().copied()).collect();
    let runs = [0..5, 5..7, 7..slots];
    qmoe_kernels::threads::set(2);
    for [gate, up] in &pairs {
        let form = int8_input(&gate.enc, 5).expect("an int8 form");
        assert_eq!(with_f32_activations(|| int8_input(&gate.enc, 5)), None);
        let (mut xq, mut xqs) = (QuantBuf::default(), QuantBuf::default());
        let routed = xqs.gather(xq.quantize(form, &x), cols, slots, &|i| order[i]);
        let mut want = vec![vec![f32::NAN; slots * rows]; 2];
        let mut got = vec![vec![f32::NAN; slots * rows]; 2];
        for (out, quantized) in [(&mut want, false), (&mut got, true)] {
            let [wg, wu] = out.as_mut_slice() else { unreachable!() };
            let (mut g_rest, mut u_rest) = (wg.as_mut_slice(), wu.as_mut_slice());
            let mut products = Vec::new();
            for run in runs.clone() {
                let n = run.len();
                let (g, gr) = std::mem::take(&mut g_rest).split_at_mut(n * rows);
                let (u, ur) = std::mem::take(&mut u_rest).split_at_mut(n * rows);
                (g_rest, u_rest) = (gr, ur);
                if quantized {
                    let xe = routed.rows(run, cols);
                    products.push(Product::quantized(*gate, xe, g, n));
                    products.push(Product::quantized(*up, xe, u, n));
                } else {
                    let xe = &xs[run.start * cols..run.end * cols];
                    products.push(Product::new(*gate, xe, g, n));
                    products.push(Product::new(*up, xe, u, n));
                }
            }
            matmul_many(&mut products);
        }
        for (k, (w, g)) in want.iter().zip(&got).enumerate() {
            for i in 0..w.len() {
                assert_eq!(g[i].to_bits(), w[i].to_bits(), "{form:?} product {k} [{i}]: {} vs {}", g[i], w[i]);
            }
        }
    }
    qmoe_kernels::threads::set(0);
}

/// A product handed activations in a form its kernel does not take panics
/// with the reason, instead of reading them as another form.
#[test]
#[should_panic(expected = "another form than the product's")]
fn quantized_input_of_the_wrong_form_is_refused() {
    use qmoe_kernels::simd::gemm::{matmul_many, Product, QuantBuf};
    let (rows, cols, t) = (8, 256, 4);
    let f = vec![0u8; rows * cols * 4];
    let w = MatRef::new(DType::F32, rows, cols, &f);
    let x = vec![0.5f32; t * cols];
    let mut buf = QuantBuf::default();
    let xq = buf.quantize(qmoe_kernels::simd::ActKind::Q8K, &x);
    let mut y = vec![0.0; t * rows];
    matmul_many(&mut [Product::quantized(w, xq, &mut y, t)]);
}
