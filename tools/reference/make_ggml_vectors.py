#!/usr/bin/env python3
"""Golden vectors for qmoe's ggml block decoders and reference quantizers
(crates/kernels/src/ggml.rs, tested by crates/kernels/tests/ggml.rs).

Environments (versions the committed vectors were made with):

  python3 -m venv /work/pygguf && /work/pygguf/bin/pip install gguf==0.19.0 numpy==2.4.6
  /work/pyggml: llama-cpp-python==0.3.36 built from source (pip install llama-cpp-python), numpy 2.4.6;
               its libggml-base is compiled -march=x86-64 (no FMA contraction), which the Rust
               quantizers match byte for byte

Stages:

  /work/pygguf/bin/python tools/reference/make_ggml_vectors.py gguf   # decoders + gguf-py quantizers
  /work/pyggml/bin/python tools/reference/make_ggml_vectors.py ggml   # llama.cpp quantize_row_*_ref
  ... gguf --verify / ggml --verify                                    # recompute, compare with committed

Written to crates/kernels/tests/data/ggml/:

  manifest.json                   what follows, with shapes and the producing library's version
  <TYPE>.bin / <TYPE>.f32         [ROWS, COLS] raw blocks and gguf.quants.dequantize of them
                                  (little-endian float32). Row 0: gguf.quants.quantize of Gaussian
                                  data where gguf-py can quantize the type, else random blocks;
                                  rows 1..: random bytes with the f16 scale fields replaced by
                                  finite values (row 2 spans f16 subnormals to ~10, both signs).
  quantize_<TYPE>.in.f32 / .bin   quantizer input rows and the reference's bytes for them

Deterministic: every array comes from a numpy Generator seeded by a fixed number.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates" / "kernels" / "tests" / "data" / "ggml"

ROWS, COLS = 4, 512

# name -> (ggml id, block_size, type_size, byte offsets of the block's f16 scale fields)
TYPES = {
    "F32": (0, 1, 4, []),
    "F16": (1, 1, 2, []),
    "BF16": (30, 1, 2, []),
    "Q4_0": (2, 32, 18, [0]),
    "Q4_1": (3, 32, 20, [0, 2]),
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q8_0": (8, 32, 34, [0]),
    "Q2_K": (10, 256, 84, [80, 82]),
    "Q3_K": (11, 256, 110, [108]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
    "IQ4_NL": (20, 32, 18, [0]),
    "IQ4_XS": (23, 256, 136, [0]),
}

# Quantizers qmoe implements, and which stage holds their golden.
GGUF_QUANTIZERS = ["F16", "BF16", "Q4_0", "Q8_0"]
GGML_QUANTIZERS = ["Q4_K", "Q6_K"]


def f16_scales(rng: np.random.Generator, n: int, wide: bool) -> np.ndarray:
    """n finite f16 scales: |s| in [1e-4, 1e-1], or [1e-7, 10] (f16 subnormals included) if wide."""
    lo, hi = (-7.0, 1.0) if wide else (-4.0, -1.0)
    mag = 10.0 ** rng.uniform(lo, hi, n)
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return (sign * mag).astype(np.float16)


def random_blocks(name: str, rng: np.random.Generator, n_blocks: int, wide: bool) -> np.ndarray:
    """n_blocks random blocks of a quantized type: random bytes, f16 fields set to sane scales."""
    _, _, ts, offs = TYPES[name]
    blocks = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    for off in offs:
        blocks[:, off:off + 2] = f16_scales(rng, n_blocks, wide).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def float_row(name: str, rng: np.random.Generator, wide: bool) -> np.ndarray:
    """One row of a float type's values: Gaussian, plus subnormals, signed zeros and ties if wide."""
    x = rng.standard_normal(COLS).astype(np.float32) * np.float32(10.0 ** rng.uniform(-3, 2))
    if wide:
        x[:8] = [0.0, -0.0, 1e-40, -3e-45, 6e-8, -5.9e-8, 65504.0, -1e30]
        # Values halfway between two bf16 / f16 neighbours.
        x[8:16] = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x40490FDB, 0x3F800001, 0x477FF000, 0x33800000, 0x387FC000],
                           dtype=np.uint32).view(np.float32)
    return x


def decode_rows(name: str, gguf, quants) -> np.ndarray:
    """[ROWS, row_bytes] uint8 rows of `name` (see the module doc for what each row is)."""
    qt = getattr(gguf.GGMLQuantizationType, name)
    _, bs, ts, _ = TYPES[name]
    rng = np.random.default_rng(0x6767 + TYPES[name][0])
    rows = []
    for r in range(ROWS):
        if bs == 1:
            x = float_row(name, rng, wide=(r == 2))
            rows.append(np.ascontiguousarray(quants.quantize(x, qt)).view(np.uint8).reshape(-1))
            continue
        if r == 0:
            x = rng.standard_normal(COLS).astype(np.float32) * np.float32(0.05)
            try:
                rows.append(quants.quantize(x, qt).reshape(-1))
                continue
            except NotImplementedError:
                pass
        rows.append(random_blocks(name, rng, COLS // bs, wide=(r == 2)).reshape(-1))
    out = np.stack(rows)
    assert out.shape == (ROWS, COLS // bs * ts), (name, out.shape)
    return out


def quantize_inputs(name: str) -> np.ndarray:
    """Quantizer input rows [n, 512] with the awkward cases up front:
    ties, zero blocks, a lone value, huge and tiny ranges, all-positive / all-negative blocks."""
    bs = TYPES[name][1]
    rng = np.random.default_rng(0x7171 + TYPES[name][0])
    rows = []
    special = np.zeros(COLS, dtype=np.float32)
    if bs == 32:
        b = special.reshape(-1, 32)
        b[0] = np.arange(-16, 16) + 0.5          # Q8_0: amax 15.5 -> id 127/15.5, ties under roundf
        b[0][-1] = 127.0
        b[0][:8] = np.arange(8) + 0.5            # amax 127 -> d = 1: exact x.5 ties
        b[1] = 0.0                               # all zero: d = 0
        b[2][5] = -3.25                          # a lone value
        b[3] = rng.standard_normal(32) * 1e4     # large
        b[4] = rng.standard_normal(32) * 1e-6    # tiny: f16 d subnormal
        b[5] = np.abs(rng.standard_normal(32)) + 1.0
        b[6] = -np.abs(rng.standard_normal(32)) - 1.0
        b[7] = rng.standard_normal(32) * 1e7     # Q8_0 d overflows f16
        b[8] = np.linspace(-8, 7, 32)            # Q4_0: d = 1 when max is -8
        b[8][0] = -8.0
        b[9, :16] = 1.0; b[9, 16:] = -1.0        # two magnitudes tie for max: first wins
        b[10] = rng.standard_normal(32).astype(np.float16).astype(np.float32)
        b[11:] = rng.standard_normal((b.shape[0] - 11, 32)) * 10.0 ** rng.uniform(-3, 1, (b.shape[0] - 11, 1))
    elif bs == 256:
        b = special.reshape(-1, 256)
        b[0, :32] = 0.0                          # one zero sub-block
        b[0, 32:] = rng.standard_normal(224)
        b[0, 224:] *= 1000.0                     # dwarfs the rest: their 6/8-bit scales round to 0
        b[1] = 0.0                               # all-zero super-block
        extra = np.zeros(COLS, dtype=np.float32).reshape(-1, 256)
        extra[0] = rng.standard_normal(256) * 1e-10  # tiny but above ggml's 1e-15 "all zero"
        extra[1] = rng.standard_normal(256) * 1e-3
        extra[1, 100] = 50.0                     # one outlier
        rows.append(extra.reshape(-1))
    else:
        special[:] = float_row(name, rng, wide=True)
    rows.insert(0, special)
    for k in range(5):
        scale = 10.0 ** rng.uniform(-3, 1)
        x = rng.standard_normal(COLS) * scale
        if k == 1:
            x = np.abs(x) + scale                # strictly positive: min > 0 clamps to 0
        if k == 2:
            x = rng.standard_t(3, COLS) * scale  # heavy tails
        if k == 3:
            x = np.round(x / scale * 4) / 4 * scale  # many exact ties
        rows.append(x.astype(np.float32))
    return np.stack(rows).astype(np.float32)


def write(path: Path, data: bytes, verify: bool, problems: list[str]) -> None:
    if verify:
        old = path.read_bytes() if path.exists() else None
        if old != data:
            problems.append(f"{path.relative_to(REPO)} differs")
    else:
        path.write_bytes(data)


def load_manifest() -> dict:
    p = OUT / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {"decode": [], "quantize": []}


def save_manifest(m: dict, verify: bool, problems: list[str]) -> None:
    m["quantize"].sort(key=lambda e: e["type"])
    text = json.dumps(m, indent=1) + "\n"
    write(OUT / "manifest.json", text.encode(), verify, problems)


def stage_gguf(verify: bool) -> list[str]:
    import gguf
    from gguf import quants

    problems: list[str] = []
    OUT.mkdir(parents=True, exist_ok=True)
    m = load_manifest()
    m["decode"] = []
    m["decode_reference"] = f"gguf {version('gguf')}, numpy {np.__version__}"
    for name, (tid, bs, ts, _) in TYPES.items():
        qt = getattr(gguf.GGMLQuantizationType, name)
        raw = decode_rows(name, gguf, quants)
        vals = quants.dequantize(raw, qt).astype(np.float32)
        assert vals.shape == (ROWS, COLS)
        if not np.isfinite(vals).all() and name not in ("F32", "F16", "BF16"):
            problems.append(f"{name}: non-finite dequantized values")
        write(OUT / f"{name}.bin", raw.tobytes(), verify, problems)
        write(OUT / f"{name}.f32", vals.astype("<f4").tobytes(), verify, problems)
        m["decode"].append({"type": name, "id": tid, "rows": ROWS, "cols": COLS,
                            "blocks": f"{name}.bin", "values": f"{name}.f32"})
    m["quantize"] = [e for e in m["quantize"] if e["type"] not in GGUF_QUANTIZERS]
    for name in GGUF_QUANTIZERS:
        qt = getattr(gguf.GGMLQuantizationType, name)
        x = quantize_inputs(name)
        with np.errstate(over="ignore"):
            q = np.ascontiguousarray(quants.quantize(x, qt)).view(np.uint8)
        write(OUT / f"quantize_{name}.in.f32", x.astype("<f4").tobytes(), verify, problems)
        write(OUT / f"quantize_{name}.bin", q.tobytes(), verify, problems)
        m["quantize"].append({"type": name, "rows": x.shape[0], "cols": x.shape[1],
                              "input": f"quantize_{name}.in.f32", "expected": f"quantize_{name}.bin",
                              "reference": f"gguf.quants.quantize ({m['decode_reference']})"})
    save_manifest(m, verify, problems)
    return problems


def version(dist: str) -> str:
    from importlib.metadata import version as v
    return v(dist)


def stage_ggml(verify: bool) -> list[str]:
    """llama.cpp's quantize_row_*_ref through the libggml that llama-cpp-python bundles:
    `ggml_quantize_chunk` without an importance matrix runs exactly those functions."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    ggml = None
    for lib in libs:
        try:
            cand = ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            cand.ggml_quantize_chunk
            ggml = cand
            break
        except (OSError, AttributeError):
            continue
    if ggml is None:
        raise SystemExit(f"no libggml with ggml_quantize_chunk under {lib_dir}")
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    if hasattr(ggml, "ggml_quantize_init"):
        ggml.ggml_quantize_init.argtypes = [ctypes.c_int]

    problems: list[str] = []
    m = load_manifest()
    m["quantize"] = [e for e in m["quantize"] if e["type"] not in GGML_QUANTIZERS]
    ref = f"llama.cpp quantize_row_*_ref via ggml_quantize_chunk (llama-cpp-python {version('llama_cpp_python')})"
    for name in GGML_QUANTIZERS:
        tid, bs, ts, _ = TYPES[name]
        x = np.ascontiguousarray(quantize_inputs(name))
        n_rows, n_per_row = x.shape
        q = np.zeros((n_rows, n_per_row // bs * ts), dtype=np.uint8)
        if hasattr(ggml, "ggml_quantize_init"):
            ggml.ggml_quantize_init(tid)
        n = ggml.ggml_quantize_chunk(tid, x.ctypes.data, q.ctypes.data, 0, n_rows, n_per_row, None)
        assert n == q.size, (name, n, q.size)
        write(OUT / f"quantize_{name}.in.f32", x.astype("<f4").tobytes(), verify, problems)
        write(OUT / f"quantize_{name}.bin", q.tobytes(), verify, problems)
        m["quantize"].append({"type": name, "rows": n_rows, "cols": n_per_row,
                              "input": f"quantize_{name}.in.f32", "expected": f"quantize_{name}.bin",
                              "reference": ref})
    save_manifest(m, verify, problems)
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["gguf", "ggml"])
    ap.add_argument("--verify", action="store_true", help="recompute and compare with the committed files")
    args = ap.parse_args()
    problems = stage_gguf(args.verify) if args.stage == "gguf" else stage_ggml(args.verify)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{args.stage}: {'verified' if args.verify else 'wrote'} {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
