#!/usr/bin/env python3
"""GGUF golden fixtures made by llama.cpp itself (converter, quantizer and forward pass).

For each source checkpoint, llama.cpp's own `convert_hf_to_gguf.py` (the copy vendored in the
llama-cpp-python sdist) writes GGUFs of several types, llama.cpp's quantizer (through the
llama-cpp-python bindings) writes Q4_K_M, and llama.cpp (again through the bindings, CPU) computes
the logits of every position for the source's ids:

  tests/fixtures/gguf_moe_dv16_{bf16,f16,q8_0,q4_k_m}/    qwen35moe  <- moe_fused with Dv 24 -> 16
  tests/fixtures/gguf_nextmoe_{f32,f16,q8_0,q4_k_m}/      qwen3next  <- next with layer 2 made MoE
  tests/fixtures/gguf_dense_dv16_{f32,f16,q8_0,q4_k_m}/   qwen35     <- dense_tied with Dv 8 -> 16
  tests/fixtures/gguf_moe_k256_q4_k_m/                    qwen35moe  <- a new model in moe_fused's dialect
      whose every quantized matrix has 256-multiple rows (H 256, I 256, Is 256, attention 2 x 128,
      GDN Hk 2 / Hv 4 x 64), so Q4_K_M really is Q4_K + Q6_K (the others fall back to Q5_0 / Q8_0)

Each holds model.gguf, golden.json (ids, reference, logit_scale, notes, metadata, tensor listing,
distances to transformers) and logits.npy (float32 [T, vocab], llama.cpp, one batch over all ids).

Why derived sources: llama.cpp cannot run the committed HF fixtures as they are.
  * moe_fused / hf_interval / dense_tied have linear_value_head_dim != linear_key_head_dim; the
    converter writes them, but llama.cpp's loaders set head_v_dim = ssm.state_size (= Dk):
    "check_tensor_dims: tensor 'blk.0.attn_qkv.weight' has wrong shape; expected 64, 128, got 64, 160".
  * next has mlp_only_layers [2]; the converter stops at "Can not map tensor
    'model.layers.2.mlp.down_proj.weight'" (qwen3next has no dense FFN names; its loader requires
    MoE tensors in every layer).
  * dense_tied's head_dim 16 is below sum(mrope_section) = 32: ggml's CPU rope aborts with
    GGML_ASSERT(sect_dims <= ne0); the derived dense config uses mrope_section [1, 1, 0].
Each derived source is made here with transformers (make_fixtures.py's init rules and seeds with the
base fixture's key, so every tensor whose name and shape did not change equals the base's), and its
transformers f32 logits are computed here too (stage_derive).

Three pieces (see tools/reference/README.md, "GGUF fixtures"):
  driver      /work/pyggml  (requirements-gguf.txt: llama-cpp-python, numpy, pyyaml, tqdm)
  converter   /work/pyref   (requirements.txt: torch + transformers 5.x; the converter imports
              both, and transformers 4.x does not know qwen3_5 configs) + the vendored gguf-py
  llama.cpp   the unpacked llama-cpp-python sdist's vendor/llama.cpp (--llama-src)

Run:  /work/pyggml/bin/python tools/reference/make_gguf_fixtures.py [--only moe_dv16 nextmoe dense_dv16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"  # llama-cpp-python 0.3.36 CHANGELOG: "update llama.cpp to ggml-org/llama.cpp@0c1e57098"
DEFAULT_LLAMA_SRC = Path(f"/work/ggml_src/llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp")
DEFAULT_CONVERT_PYTHON = "/work/pyref/bin/python"
N_THREADS = 2

# label -> how to make it. `types`: converter --outtype values, plus "q4_k_m" (llama_model_quantize
# from the f32 GGUF). Sizes are kept ~<= 1.3 MB per GGUF: no f32 of the bf16 MoE source (2.4 MB);
# its bf16 GGUF is lossless instead.
SOURCES = {
    "moe_dv16": dict(vocab=512, pre="qwen35", types=["bf16", "f16", "q8_0", "q4_k_m"], convert_args=[]),
    "nextmoe": dict(vocab=384, pre="qwen2", types=["f32", "f16", "q8_0", "q4_k_m"], convert_args=["--no-mtp"]),
    "dense_dv16": dict(vocab=256, pre="qwen35", types=["f16", "q8_0", "q4_k_m"], convert_args=["--no-mtp"]),
    "moe_k256": dict(vocab=256, pre="qwen35", types=["q4_k_m"], convert_args=["--no-mtp"]),
}

# The moe_k256 model (moe_wrapper_config arguments): every matrix input width is a multiple of
# QK_K = 256 (hidden, nh*hd, Hv*Dv, moe_intermediate, shared); 4 experts (llama.cpp's Q4_K_M has a
# special case for exactly 8); layers lin, full so the Q4_K_M recipe gives both Q4_K and Q6_K.
K256 = dict(vocab=256, hidden=256, layer_types=["linear_attention", "full_attention"], nh=2, nkv=1, hd=128,
            hk=2, hv=4, dk=64, dv=64, e=4, k=2, inter=256, shared=256)

# ggml type names by id (gguf-py's GGMLQuantizationType has them too; kept here for the listing).
TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


# ================================================================================================
# stage 1 (converter interpreter): tiny tokenizer + llama.cpp's convert_hf_to_gguf.py
# ================================================================================================


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tiny_tokenizer(d: Path, vocab_size: int):
    """A byte-level BPE tokenizer with exactly `vocab_size` ids: byte tokens 0..nb-1 (nb = min(256,
    V-2); dropped bytes are the top ones, 0xFE/0xFF never occur in UTF-8), then merges of two lowercase
    letters ("a b" -> "ab", ...) up to id V-2, and `<|endoftext|>` (special) as id V-1. transformers
    5 loads it as Qwen3_5Tokenizer / Qwen2Tokenizer from the config's model_type, which would append
    its own `<|endoftext|>` past the vocabulary if the file lacked one."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    b2u = bytes_to_unicode()
    nb = min(256, vocab_size - 2)
    vocab = {b2u[b]: b for b in range(nb)}
    letters = "abcdefghijklmnopqrstuvwxyz"
    merges = []
    i = 0
    while len(vocab) < vocab_size - 1:
        a, c = letters[i // 26], letters[i % 26]
        i += 1
        merges.append((a, c))
        vocab[a + c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def stage_convert(a):
    """Run llama.cpp's converter on a temporary copy of the source with a tiny tokenizer.

    The only change to the converter's behaviour: `TextModel.get_vocab_base_pre` (the BPE
    pre-tokenizer detection, which hashes the token ids of a fixed test string and knows only real
    tokenizers) is replaced at run time by `lambda self, tokenizer: PRE`, so `tokenizer.ggml.pre` is
    PRE ("qwen35" / "qwen2", what the real Qwen3.5 / Qwen3-Next tokenizers are detected as). The
    converter's files are not modified or copied."""
    llama = Path(a.llama_src).resolve()
    src = Path(a.src)
    with tempfile.TemporaryDirectory(prefix="qmoe-gguf-src-") as tmp:
        # fixed directory name: the converter derives general.basename / general.finetune from it
        tmp = Path(tmp) / "qmoe-fixture"
        tmp.mkdir()
        for f in src.iterdir():
            if f.name == "config.json" or f.name.startswith("model.safetensors") or f.name.startswith("model-"):
                shutil.copy(f, tmp / f.name)
        write_tiny_tokenizer(tmp, a.vocab)
        sys.path[:0] = [str(llama), str(llama / "gguf-py")]
        import runpy

        import conversion.base as base

        pre = a.pre
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
        conv = str(llama / "convert_hf_to_gguf.py")
        sys.argv = [conv, str(tmp), "--outtype", a.outtype, "--outfile", a.outfile, *a.extra.split()]
        runpy.run_path(conv, run_name="__main__")


# ================================================================================================
# stage 0 (converter interpreter, has torch + transformers): the all-MoE qwen3_next source
# ================================================================================================


DERIVED = {
    # label: (base fixture, fixture key for make_fixtures' seeds, what changes)
    "moe_dv16": ("moe_fused", "moe", "linear_value_head_dim 24 -> 16 (= linear_key_head_dim)"),
    "dense_dv16": ("dense_tied", "dense", "linear_value_head_dim 8 -> 16 (= linear_key_head_dim) and "
                   "rope_parameters.mrope_section [11, 11, 10] -> [1, 1, 0] (sum = rotary pairs 16*0.25/2 = 2)"),
    "nextmoe": ("next", "next", "mlp_only_layers [2] -> [] (layer 2 becomes an MoE layer)"),
    "moe_k256": ("moe_fused", "moe_k256", "a new model in moe_fused's dialect (wrapper config, fused bf16 "
                 "experts), no MTP: V 256, H 256, layers lin,full, nh 2, nkv 1, hd 128, Hk 2, Hv 4, Dk = Dv 64, "
                 "E 4, k 2, I 256, Is 256; its own ids and seeds (key 'moe_k256')"),
}


def stage_derive(a):
    """Write a derived source checkpoint + its transformers f32 logits (make_fixtures.py's init rules
    and seeds, so tensors whose name and shape are unchanged equal the base fixture's)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3NextForCausalLM

    sys.path.insert(0, str(REPO / "tools" / "reference"))
    import make_fixtures as mf

    base, fx, change = DERIVED[a.kind]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_dict = json.loads((FIXTURES / base / "config.json").read_text())
    ids = torch.tensor(json.loads((FIXTURES / base / "golden.json").read_text())["ids"])
    if a.kind == "moe_k256":
        cfg_dict = mf.moe_wrapper_config(**K256, tie=False, bos=1, eos=K256["vocab"] - 1)
        cfg_dict["text_config"]["mtp_num_hidden_layers"] = 0
        ids = torch.randint(0, K256["vocab"], (mf.T_IDS,), generator=mf.gen(fx, "ids"))
        storage, spec, cls = torch.bfloat16, dict(embed_std=1.0, lm_head_gain=2.0, router_gain=2.0), Qwen3_5MoeForCausalLM
    elif a.kind == "moe_dv16":
        cfg_dict["text_config"]["linear_value_head_dim"] = 16
        storage, spec, cls = torch.bfloat16, dict(embed_std=1.0, lm_head_gain=2.0, router_gain=2.0), Qwen3_5MoeForCausalLM
    elif a.kind == "dense_dv16":
        cfg_dict["linear_value_head_dim"] = 16
        # llama.cpp's CPU rope asserts sum(sections) <= head_dim (GGML_ASSERT(sect_dims <= ne0)); [11,11,10]
        # sums to 32 > 16 and aborts. For text positions the sections do not change the function.
        cfg_dict["rope_parameters"]["mrope_section"] = [1, 1, 0]
        storage, spec, cls = torch.float16, dict(embed_std=2.0 / 96 ** 0.5, lm_head_gain=None, router_gain=None), Qwen3_5ForCausalLM
    else:
        cfg_dict["mlp_only_layers"] = []
        storage, spec, cls = torch.float32, dict(embed_std=1.0, lm_head_gain=2.0, router_gain=2.0), Qwen3NextForCausalLM
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    cfg = AutoConfig.from_pretrained(out)
    text_cfg = getattr(cfg, "text_config", cfg)
    model = mf.build(cls, text_cfg)
    attempts = mf.fill_weights(fx, model, spec, storage, ids)
    margins = mf.routing_margins(model, ids)
    logits, _ = mf.reference_forward(model, ids, text_cfg.num_hidden_layers)
    dec = float(np.abs(mf.decode_logits(model, ids) - logits).max())
    sd = {n: t.detach().to(storage).contiguous() for n, t in model.state_dict().items()}
    if a.kind == "moe_k256":  # moe_fused's dialect: wrapper names, fused experts; no visual, no mtp
        sd = mf.to_wrapper_names(sd)
        reload_cls = Qwen3_5MoeForCausalLM
    elif a.kind == "moe_dv16":  # same dialect as moe_fused: wrapper names, fused experts, + visual + mtp
        c = dict(mf.MOE, dv=16)
        sd = mf.to_wrapper_names(sd)
        sd.update(mf.visual_tensors(fx, cfg, storage))
        sd.update(mf.mtp_tensors(fx, c, spec, storage))
        reload_cls = Qwen3_5MoeForCausalLM
    elif a.kind == "dense_dv16":  # tied: no lm_head.weight, as save_pretrained writes it
        sd.pop("lm_head.weight", None)
        reload_cls = Qwen3_5ForCausalLM
    else:
        sd = mf.split_experts(sd, text_cfg.num_experts, text_cfg.moe_intermediate_size)
        reload_cls = Qwen3NextForCausalLM
    mf.save_st(sd, out / "model.safetensors")
    again = reload_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager",
                                       experts_implementation="eager").eval()
    with torch.no_grad():
        got = again(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
    reload = float(np.abs(got - logits).max())
    assert reload < 1e-4, reload
    same, differ = [], []
    with safe_open(FIXTURES / base / "model.safetensors", "pt") as f:
        for k in f.keys():
            if k in sd and tuple(sd[k].shape) == tuple(f.get_slice(k).get_shape()):
                (same if torch.equal(f.get_tensor(k), sd[k]) else differ).append(k)
    np.save(out / "transformers_logits.npy", np.ascontiguousarray(logits, dtype="<f4"))
    if storage == torch.float16:
        # convert_hf_to_gguf.py upcasts only non-f16/f32 tensors before its transformations, so for f16
        # checkpoints it computes the norm shift 1 + w and -exp(A_log) in f16. The function the GGUF
        # holds: same model with those rounded values.
        zc = tuple(mf.ZERO_CENTRED_SUFFIXES)
        with torch.no_grad():
            for n, p_ in again.named_parameters():
                if n.endswith(zc) or n == "model.norm.weight":
                    p_.copy_((p_.half() + 1).float() - 1)
                elif n.endswith("linear_attn.A_log"):
                    p_.copy_(torch.log(torch.exp(p_.half()).float()))
            conv = again(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
        np.save(out / "transformers_logits_converter_arith.npy", np.ascontiguousarray(conv, dtype="<f4"))
    (out / "meta.json").write_text(json.dumps({
        "base": base, "change": change, "storage_dtype": str(storage).replace("torch.", ""),
        "reference": mf.versions() + "; CPU float32 forward as make_fixtures.py (eager, GDN torch fallback)",
        "ids": [int(i) for i in ids],
        "min_routing_margin": min((float(m.min()) for m in margins.values()), default=None),
        "routing_margin_per_layer": {str(k): float(v.min()) for k, v in sorted(margins.items())},
        "router_redraws_per_layer": {str(k): v for k, v in sorted(attempts.items())},
        "decode_vs_prefill_max_abs_diff": dec,
        "reload_max_abs_diff": reload,
        "tensors_equal_to_base": len(same),
        "tensors_same_shape_but_different": differ,
        "logit_scale": float(np.abs(logits).max()),
    }, indent=2))
    print(f"{a.kind}: {len(same)} tensors equal to {base}, same shape but different: {differ}; decode diff {dec:.3g}")


# ================================================================================================
# driver (llama-cpp-python interpreter)
# ================================================================================================


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(str(c) for c in cmd)}")
    return r


def gguf_module(llama_src: Path):
    sys.path.insert(0, str(llama_src / "gguf-py"))
    import gguf

    return gguf


def field_value(gguf, field):
    """Python value of a GGUFReader field (scalars, strings, arrays)."""
    t = field.types
    if not t:
        return None
    if t[0] == gguf.GGUFValueType.ARRAY:
        if len(t) > 1 and t[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if t[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    v = field.parts[field.data[0]].tolist()
    return v[0] if len(v) == 1 else v


def read_gguf(gguf, path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    meta = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        v = field_value(gguf, field)
        if name in TOKENIZER_ARRAYS:
            v = f"<{len(v)} entries>"
        meta[name] = v
    tensors = {}
    arrays = {}
    for t in r.tensors:
        ne = [int(x) for x in t.shape]  # gguf-py reports ne (fastest first)
        tensors[t.name] = (t.tensor_type.name, ne)
        if t.tensor_type.name == "F32" and len(ne) == 1:
            arrays[t.name] = np.array(t.data, dtype=np.float32).reshape(-1)
    return {"meta": meta, "tensors": tensors, "arrays": arrays}


def read_safetensors(path: Path, names) -> dict:
    """Minimal safetensors reader (f32/f16/bf16) for the V-head check, no extra dependency."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name in names:
            info = header[name]
            s, e = info["data_offsets"]
            f.seek(base + s)
            raw = f.read(e - s)
            dt = info["dtype"]
            if dt == "F32":
                a = np.frombuffer(raw, "<f4")
            elif dt == "F16":
                a = np.frombuffer(raw, "<f2").astype(np.float32)
            elif dt == "BF16":
                a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                raise ValueError(dt)
            out[name] = a.reshape(info["shape"]).astype(np.float32)
    return out


def transform_checks(src_dir: Path, cfg: dict, info: dict) -> dict:
    """What the converter did to A_log and to the zero-centred norms, read back from the GGUF.

    ssm_a: GGUF value vs HF -exp(A_log) in grouped (HF) order and in tiled order (spec 5.4), and
    whether -exp was computed in f32 or in the source's f16 (the converter upcasts only non-f16/f32
    dtypes, e.g. bf16, to f32 before its transformations; f16 tensors stay f16).
    norms: GGUF output_norm / blk.*.attn_norm vs 1 + w in f32 and in f16 arithmetic."""
    tc = cfg.get("text_config", cfg)
    hk, hv = tc["linear_num_key_heads"], tc["linear_num_value_heads"]
    r = hv // hk
    st = src_dir / "model.safetensors"
    with open(st, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    prefix = "model.language_model." if any(k.startswith("model.language_model.") for k in header) else "model."
    tiled_from_grouped = [g * r + j for j in range(r) for g in range(hk)]  # gguf index n = j*Hk + g
    ssm, norms = {}, {}
    for name, arr in sorted(info["arrays"].items()):
        parts = name.split(".")
        if name.endswith("ssm_a"):
            hf = f"{prefix}layers.{parts[1]}.linear_attn.A_log"
            src_dtype = header[hf]["dtype"]
            a_log = read_safetensors(st, [hf])[hf]
            exp32 = -np.exp(a_log.astype(np.float32))
            exp16 = (-np.exp(a_log.astype(np.float16))).astype(np.float32)
            ssm[name] = {
                "src_dtype": src_dtype,
                "gguf": [float(x) for x in arr],
                "hf_minus_exp_A_log_f32": [float(x) for x in exp32],
                "max_abs_diff_grouped_f32": float(np.abs(arr - exp32).max()),
                "max_abs_diff_tiled_f32": float(np.abs(arr - exp32[tiled_from_grouped]).max()),
                "max_abs_diff_tiled_f16_arith": float(np.abs(arr - exp16[tiled_from_grouped]).max()),
                "max_abs_diff_grouped_f16_arith": float(np.abs(arr - exp16).max()),
            }
        elif name == "output_norm.weight" or (name.endswith("attn_norm.weight") and len(parts) == 4):
            hf = f"{prefix}norm.weight" if name == "output_norm.weight" else f"{prefix}layers.{parts[1]}.input_layernorm.weight"
            if hf not in header:
                continue
            w = read_safetensors(st, [hf])[hf]
            p32 = w + np.float32(1)
            p16 = (w.astype(np.float16) + np.float16(1)).astype(np.float32)
            norms[name] = {"src_dtype": header[hf]["dtype"],
                           "max_abs_diff_vs_1_plus_w_f32": float(np.abs(arr - p32).max()),
                           "max_abs_diff_vs_1_plus_w_f16_arith": float(np.abs(arr - p16).max())}

    def verdict(rows, keys):
        best = [min(keys, key=lambda k: v[k]) for v in rows]
        exact = [v[b] <= 2e-6 * max(1.0, max(abs(x) for x in v.get("gguf", [1.0]))) for v, b in zip(rows, best)]
        return sorted(set(best)), all(exact)

    order, exact = verdict(list(ssm.values()), ["max_abs_diff_grouped_f32", "max_abs_diff_tiled_f32",
                                                 "max_abs_diff_tiled_f16_arith", "max_abs_diff_grouped_f16_arith"])
    norder, nexact = verdict(list(norms.values()), ["max_abs_diff_vs_1_plus_w_f32", "max_abs_diff_vs_1_plus_w_f16_arith"])
    return {
        "Hk": hk, "Hv": hv,
        "ssm_a_best_match": order, "ssm_a_best_match_within_f32_rounding": exact,
        "norm_plus_one_best_match": norder, "norm_plus_one_best_match_within_f32_rounding": nexact,
        "ssm_a": ssm, "norms": norms,
    }


def dequantized_f32_copy(gguf, src: Path, dst: Path):
    """The same GGUF with every tensor dequantized to F32 by gguf-py (metadata copied, file_type
    ALL_F32): llama.cpp on it computes in f32 on exactly the weights of `src` (no f16/bf16/q8
    activation conversion in the matmuls), i.e. what "dequantize, then f32 matmul" should give."""
    r = gguf.GGUFReader(str(src))
    arch = field_value(gguf, r.fields["general.architecture"])
    w = gguf.GGUFWriter(str(dst), arch=arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = field.contents()
        if name == "general.file_type":
            val = int(gguf.LlamaFileType.ALL_F32)
        w.add_key_value(name, val, vtype, sub_type=sub)
    for t in r.tensors:
        ne = [int(x) for x in t.shape]
        data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, np.ascontiguousarray(data.reshape(tuple(reversed(ne)))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class LlamaRunner:
    def __init__(self):
        import llama_cpp

        self.llama_cpp = llama_cpp

    def logits(self, path: Path, ids, *, mode="batch", kv_f32=True) -> np.ndarray:
        from llama_cpp import Llama

        t = len(ids)
        kw = dict(model_path=str(path), logits_all=True, n_ctx=max(256, t), n_batch=t, n_ubatch=t,
                  n_threads=N_THREADS, n_threads_batch=N_THREADS, vocab_only=False, verbose=False,
                  flash_attn=False, seed=0)
        if kv_f32:
            kw.update(type_k=0, type_v=0)  # GGML_TYPE_F32 (default is F16)
        llm = Llama(**kw)
        if mode == "batch":
            llm.eval(list(ids))
        else:
            for tok in ids:
                llm.eval([int(tok)])
        out = np.array(llm.scores[:t], dtype=np.float32, copy=True)
        del llm
        return out

    def quantize(self, src: Path, dst: Path, ftype_name: str):
        lc = self.llama_cpp
        params = lc.llama_model_quantize_default_params()
        params.ftype = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{ftype_name.upper()}")
        params.nthread = N_THREADS
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize({src}, {ftype_name}) returned {rc}")

    def system_info(self) -> str:
        return self.llama_cpp.llama_print_system_info().decode().strip()


def convert(a, src_dir: Path, spec: dict, outtype: str, out: Path, label: str):
    args = ["--model-name", f"qmoe-fixture-{label}", *spec["convert_args"]]
    cmd = [a.convert_python, Path(__file__).resolve(), "_convert", "--llama-src", a.llama_src,
           "--src", src_dir, "--vocab", spec["vocab"], "--pre", spec["pre"], "--outtype", outtype,
           "--outfile", out, "--extra=" + " ".join(args)]
    run(cmd)
    return f"convert_hf_to_gguf.py SRC --outtype {outtype} --outfile model.gguf " + " ".join(args)


def write_json(path: Path, obj):
    text = json.dumps(obj, indent=2)
    text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(x.strip(",") for x in m.group(1).split()) + "]", text)
    path.write_text(text + "\n")


def make_source(a, label: str, spec: dict, runner: LlamaRunner, gguf, work: Path):
    # the source: derived in the transformers interpreter (stage_derive)
    src_dir = work / f"{label}_src"
    run([a.convert_python, Path(__file__).resolve(), "_derive", "--kind", label, "--out", src_dir])
    meta = json.loads((src_dir / "meta.json").read_text())
    hf_logits = np.load(src_dir / "transformers_logits.npy")
    hf_conv = src_dir / "transformers_logits_converter_arith.npy"
    hf_conv_logits = np.load(hf_conv) if hf_conv.exists() else None
    ids = meta["ids"]
    base = meta["base"]
    src_note = (f"a source derived from tests/fixtures/{base} ({meta['change']}; same ids; weights by "
                f"make_fixtures.py's init rules and seeds, so {meta['tensors_equal_to_base']} tensors equal "
                f"{base}'s), stored {meta['storage_dtype']}")
    if label == "moe_k256":
        src_note = (f"a tiny source made for this fixture ({meta['change']}; weights by make_fixtures.py's init "
                    f"rules and routing sharpening), stored {meta['storage_dtype']}")
    src_ref = {k: v for k, v in meta.items() if k not in ("ids",)}
    cfg = json.loads((src_dir / "config.json").read_text())

    f32_path = work / f"{label}_f32.gguf"
    f32_cmd = convert(a, src_dir, spec, "f32", f32_path, label)
    for typ in spec["types"]:
        d = FIXTURES / f"gguf_{label}_{typ}"
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            f.unlink()
        path = d / "model.gguf"
        if typ == "q4_k_m":
            runner.quantize(f32_path, path, "Q4_K_M")
            made_by = (f"{f32_cmd}, then llama_cpp.llama_model_quantize(f32.gguf, model.gguf, "
                       "ftype=LLAMA_FTYPE_MOSTLY_Q4_K_M, nthread=2, other params default)")
        elif typ == "f32":
            shutil.copy(f32_path, path)
            made_by = f32_cmd
        else:
            made_by = convert(a, src_dir, spec, typ, path, label)
        os.chmod(path, 0o644)
        info = read_gguf(gguf, path)
        logits = runner.logits(path, ids)
        decode = runner.logits(path, ids, mode="decode")
        kv16 = runner.logits(path, ids, kv_f32=False)
        np.save(d / "logits.npy", np.ascontiguousarray(logits, dtype="<f4"))
        deq = None
        if typ != "f32":
            deq_path = work / f"{label}_{typ}_dequant_f32.gguf"
            dequantized_f32_copy(gguf, path, deq_path)
            deq = runner.logits(deq_path, ids)
            np.save(d / "logits_dequant_f32.npy", np.ascontiguousarray(deq, dtype="<f4"))
        hist = Counter(t for t, _ in info["tensors"].values())
        diff_hf = float(np.abs(logits - hf_logits).max())
        agree = float((logits.argmax(-1) == hf_logits.argmax(-1)).mean())
        arch = info["meta"]["general.architecture"]
        vcheck = transform_checks(src_dir, cfg, info)
        golden = {
            "ids": [int(i) for i in ids],
            "reference": (
                f"llama.cpp ggml-org/llama.cpp@{LLAMA_CPP_COMMIT} as vendored in llama-cpp-python "
                f"{LLAMA_CPP_PYTHON_VERSION} (built from the sdist, CPU backend, GGML_NATIVE), "
                f"Llama(logits_all=True, n_ctx={max(256, len(ids))}, n_batch=n_ubatch={len(ids)}, "
                f"n_threads={N_THREADS}, flash_attn=False, type_k=type_v=F32); one eval() over all ids "
                f"(a single llama_decode); logits of every position"
            ),
            "logit_scale": float(np.abs(logits).max()),
            "notes": (
                f"{arch} GGUF written by llama.cpp's own tools from {src_note}. Tokenizer: the source has "
                f"none; the converter ran on a temporary copy with a tiny byte-level BPE tokenizer of exactly "
                f"{spec['vocab']} ids (last = <|endoftext|>), with the BPE pre-tokenizer detection replaced "
                f"by the constant '{spec['pre']}' (see make_gguf_fixtures.py, stage_convert). logits.npy = "
                "llama.cpp's float32 logits [T, vocab] (the golden). logits_dequant_f32.npy (not for f32 "
                "GGUFs) = llama.cpp on a copy of this GGUF with every tensor dequantized to F32 by gguf-py: "
                "f32 arithmetic on exactly these weights, the golden for 'dequantize, then f32 matmul'. "
                "max_abs_diff_vs_transformers: llama.cpp "
                "on this GGUF vs transformers f32 on the source weights = weight rounding of the type + the "
                "converter's arithmetic + llama.cpp's own arithmetic (ggml CPU matmuls convert activations to "
                "the weight's vec_dot type: f16 for F16, bf16 for BF16, q8_0/q8_K for quantized weights). "
                "For f16 sources the converter computes 1 + w (norms) and -exp(A_log) in f16 (it upcasts "
                "only bf16 and other non-f16/f32 dtypes): *_on_converter_values compares with transformers "
                "on those rounded values. The source checkpoint has linear_value_head_dim = "
                "linear_key_head_dim because llama.cpp's qwen35/qwen35moe/qwen3next loaders take the value "
                "head dim from ssm.state_size (= Dk) and reject Dk != Dv."
            ),
            "source": f"derived from tests/fixtures/{base}: {meta['change']}",
            "source_reference": src_ref,
            "gguf_type": typ,
            "made_by": made_by,
            "llama_cpp_system_info": runner.system_info(),
            "max_abs_diff_vs_transformers": diff_hf,
            **({"max_abs_diff_vs_transformers_on_converter_values": float(np.abs(logits - hf_conv_logits).max()),
                "transformers_on_converter_values_vs_transformers": float(np.abs(hf_conv_logits - hf_logits).max())}
               if hf_conv_logits is not None else {}),
            "argmax_agreement_vs_transformers": agree,
            **({"dequant_f32_vs_logits_max_abs_diff": float(np.abs(deq - logits).max()),
                "dequant_f32_vs_transformers_max_abs_diff": float(np.abs(deq - hf_logits).max()),
                "dequant_f32_argmax_agreement_vs_transformers": float((deq.argmax(-1) == hf_logits.argmax(-1)).mean()),
                **({"dequant_f32_vs_transformers_on_converter_values_max_abs_diff":
                    float(np.abs(deq - hf_conv_logits).max())} if hf_conv_logits is not None else {})}
               if deq is not None else {}),
            "decode_vs_batch_max_abs_diff": float(np.abs(decode - logits).max()),
            "kv_cache_f16_vs_f32_max_abs_diff": float(np.abs(kv16 - logits).max()),
            "tensor_type_histogram": dict(sorted(hist.items())),
            "converter_transforms_observed": vcheck,
            "metadata": info["meta"],
            "tensors": {k: f"{t} {ne}" for k, (t, ne) in info["tensors"].items()},
        }
        write_json(d / "golden.json", golden)
        print(f"  {d.relative_to(REPO)}: {path.stat().st_size} B, types {dict(hist)}, "
              f"|llama.cpp - transformers| {diff_hf:.3g} (scale {golden['logit_scale']:.2f}), argmax agree {agree:.3f}, "
              f"decode-batch {golden['decode_vs_batch_max_abs_diff']:.3g}, kv16 {golden['kv_cache_f16_vs_f32_max_abs_diff']:.3g}, "
              f"ssm_a: {vcheck['ssm_a_best_match']} exact={vcheck['ssm_a_best_match_within_f32_rounding']}, "
              f"norm+1: {vcheck['norm_plus_one_best_match']} exact={vcheck['norm_plus_one_best_match_within_f32_rounding']}", flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_convert":
        p = argparse.ArgumentParser()
        p.add_argument("_cmd")
        for k in ("--llama-src", "--src", "--pre", "--outtype", "--outfile"):
            p.add_argument(k, required=True)
        p.add_argument("--vocab", type=int, required=True)
        p.add_argument("--extra", default="", help="space-separated converter flags (pass as --extra=...)")
        return stage_convert(p.parse_args())
    if len(sys.argv) > 1 and sys.argv[1] == "_derive":
        p = argparse.ArgumentParser()
        p.add_argument("_cmd")
        p.add_argument("--kind", choices=sorted(DERIVED), required=True)
        p.add_argument("--out", required=True)
        return stage_derive(p.parse_args())

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(SOURCES), default=sorted(SOURCES))
    p.add_argument("--llama-src", default=str(DEFAULT_LLAMA_SRC),
                   help="vendor/llama.cpp of the unpacked llama-cpp-python sdist (has convert_hf_to_gguf.py, gguf-py)")
    p.add_argument("--convert-python", default=DEFAULT_CONVERT_PYTHON,
                   help="interpreter with torch + transformers 5.x for the converter")
    a = p.parse_args()
    llama_src = Path(a.llama_src)
    if not (llama_src / "convert_hf_to_gguf.py").exists():
        raise SystemExit(f"{llama_src}/convert_hf_to_gguf.py not found: unpack the sdist, see tools/reference/README.md")
    import llama_cpp

    assert llama_cpp.__version__ == LLAMA_CPP_PYTHON_VERSION, llama_cpp.__version__
    gguf = gguf_module(llama_src)
    runner = LlamaRunner()
    with tempfile.TemporaryDirectory(prefix="qmoe-gguf-") as work:
        for label in a.only:
            print(f"== {label}", flush=True)
            make_source(a, label, SOURCES[label], runner, gguf, Path(work))


if __name__ == "__main__":
    main()
