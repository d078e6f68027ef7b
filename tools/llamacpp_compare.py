#!/usr/bin/env python3
"""Run a GGUF through llama.cpp (llama-cpp-python, CPU) and compare with qmoe's logits.

    /work/pyggml/bin/python tools/llamacpp_compare.py MODEL.gguf --ids 1,2,3 \
        [--qmoe-logits FILE.npy] [--mode batch|decode] [--kv f32|f16] [--save FILE.npy] [--dequant-f32]

Prints the shape and stats of llama.cpp's logits for every position of --ids (one eval over all
ids with --mode batch, one token per eval with --mode decode). With --qmoe-logits (the output of
`qmoe logits --model ... --ids ... --out FILE.npy`, float32 [n_ids, vocab]) it prints max |diff|
(absolute and relative to llama.cpp's logit scale), per-position max |diff|, and argmax agreement.
--ids may also be a golden.json (its "ids") or a .npy of ints. Exit status 1 if --tol is given and
exceeded. --dequant-f32 runs llama.cpp on a temporary copy of the GGUF with every tensor dequantized
to F32 by gguf-py (f32 arithmetic on exactly the stored weights: what "dequantize, then f32 matmul"
must reproduce; plain llama.cpp converts activations to f16/bf16/q8 in its CPU matmuls). Setup:
tools/reference/requirements-gguf.txt (llama-cpp-python) and, for --dequant-f32, the vendored gguf-py
of the unpacked llama-cpp-python sdist (--llama-src, see tools/reference/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def parse_ids(s: str) -> list[int]:
    p = Path(s)
    if p.suffix == ".json" and p.exists():
        return [int(i) for i in json.loads(p.read_text())["ids"]]
    if p.suffix == ".npy" and p.exists():
        return [int(i) for i in np.load(p).reshape(-1)]
    return [int(x) for x in s.replace(" ", "").split(",") if x]


def llama_logits(model: str, ids: list[int], mode: str, kv: str, threads: int) -> tuple[np.ndarray, dict]:
    import llama_cpp
    from llama_cpp import Llama

    t = len(ids)
    kw = dict(model_path=model, logits_all=True, n_ctx=max(256, t), n_batch=max(1, t), n_ubatch=max(1, t),
              n_threads=threads, n_threads_batch=threads, verbose=False, flash_attn=False)
    if kv == "f32":
        kw.update(type_k=0, type_v=0)  # GGML_TYPE_F32; llama.cpp's default is F16
    llm = Llama(**kw)
    n_vocab = llm.n_vocab()
    bad = [i for i in ids if not 0 <= i < n_vocab]
    if bad:
        raise SystemExit(f"ids out of range [0, {n_vocab}): {bad[:8]}")
    if mode == "batch":
        llm.eval(ids)
    else:
        for tok in ids:
            llm.eval([tok])
    out = np.array(llm.scores[:t], dtype=np.float32, copy=True)
    meta = {k: v for k, v in llm.metadata.items() if not k.startswith("tokenizer.ggml.")}
    info = {"llama_cpp_python": llama_cpp.__version__, "n_vocab": n_vocab, "metadata": meta}
    return out, info


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a .gguf file")
    p.add_argument("--ids", required=True, help="comma-separated token ids, or golden.json / ids.npy")
    p.add_argument("--qmoe-logits", help="float32 .npy [n_ids, vocab] written by `qmoe logits`")
    p.add_argument("--mode", choices=["batch", "decode"], default="batch")
    p.add_argument("--kv", choices=["f32", "f16"], default="f32", help="KV cache type (llama.cpp default f16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", help="write llama.cpp's logits as float32 .npy")
    p.add_argument("--tol", type=float, help="fail (exit 1) if max |qmoe - llama.cpp| exceeds this")
    p.add_argument("--show", type=int, default=8, help="positions listed in the per-position table")
    p.add_argument("--dequant-f32", action="store_true", help="evaluate an F32-dequantized copy of the GGUF")
    p.add_argument("--llama-src", default="/work/ggml_src/llama_cpp_python-0.3.36/vendor/llama.cpp",
                   help="vendor/llama.cpp of the unpacked sdist (its gguf-py), for --dequant-f32")
    a = p.parse_args()

    ids = parse_ids(a.ids)
    model = a.model
    tmp = None
    if a.dequant_f32:
        import importlib.util
        import tempfile

        spec = importlib.util.spec_from_file_location(
            "make_gguf_fixtures", Path(__file__).resolve().parent / "reference" / "make_gguf_fixtures.py")
        mg = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mg)
        gguf = mg.gguf_module(Path(a.llama_src))
        tmp = tempfile.TemporaryDirectory(prefix="llamacpp-compare-")
        model = str(Path(tmp.name) / "dequant_f32.gguf")
        mg.dequantized_f32_copy(gguf, Path(a.model), Path(model))
        print(f"dequant    every tensor of {a.model} dequantized to F32 (gguf-py) -> temporary copy")
    ref, info = llama_logits(model, ids, a.mode, a.kv, a.threads)
    m = info["metadata"]
    arch = m.get("general.architecture", "?")
    print(f"model      {a.model}")
    print(f"llama.cpp  llama-cpp-python {info['llama_cpp_python']}, arch {arch}, file_type {m.get('general.file_type')}, "
          f"n_vocab {info['n_vocab']}, mode {a.mode}, kv {a.kv}")
    print(f"ids        {len(ids)}: {ids[:12]}{' ...' if len(ids) > 12 else ''}")
    scale = float(np.abs(ref).max())
    print(f"logits     shape {list(ref.shape)}, max|x| {scale:.6g}, mean {ref.mean():.6g}, std {ref.std():.6g}, "
          f"finite {bool(np.isfinite(ref).all())}")
    print(f"argmax     {ref.argmax(-1)[:16].tolist()}{' ...' if len(ids) > 16 else ''}")
    if a.save:
        np.save(a.save, np.ascontiguousarray(ref, dtype="<f4"))
        print(f"saved      {a.save}")
    if not a.qmoe_logits:
        return 0
    ours = np.load(a.qmoe_logits).astype(np.float32)
    if ours.shape != ref.shape:
        raise SystemExit(f"shape mismatch: qmoe {list(ours.shape)} vs llama.cpp {list(ref.shape)}")
    d = np.abs(ours - ref)
    per_pos = d.max(-1)
    agree = ours.argmax(-1) == ref.argmax(-1)
    worst = int(per_pos.argmax())
    print(f"compare    max|qmoe - llama.cpp| {d.max():.6g} ({d.max() / max(scale, 1e-30):.3g} x scale), "
          f"mean {d.mean():.3g}, worst position {worst}")
    print(f"argmax     agreement {int(agree.sum())}/{len(agree)}"
          + ("" if agree.all() else f", differing positions {np.flatnonzero(~agree)[:16].tolist()}"))
    print("per position (max |diff|): " + ", ".join(f"{i}:{per_pos[i]:.3g}" for i in range(min(a.show, len(ids)))))
    if a.tol is not None and d.max() > a.tol:
        print(f"FAIL       max |diff| {d.max():.6g} > tol {a.tol}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
