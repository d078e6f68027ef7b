#!/usr/bin/env python3
"""Write qmoe's golden fixtures for the FP8 and MLX dialects (and their HF source).

  tests/fixtures/hf_interval/   qwen3_5_moe wrapper, HF raw, bf16, fused experts, layers lin,lin,lin,full
                                (layer_types == full_attention_interval 4), + an mtp.* block
  tests/fixtures/fp8_block/     HF FP8-release style qwen3_5_moe: E4M3 weights + float32
                                weight_scale_inv with block [24, 48] (ragged edge blocks), per-expert
  tests/fixtures/mlx_bf16/      hf_interval converted by mlx_lm.convert (dtype bfloat16, no quantization)
  tests/fixtures/mlx_bf16_mtp/  mlx_bf16 + hf_interval's raw mtp.* tensors copied in ("-mtp" builds)
  tests/fixtures/mlx_q4/        hf_interval through mlx_lm.convert -q, 4 bits, group 32
  tests/fixtures/mlx_q6/        6 bits, group 32
  tests/fixtures/mlx_q3/        3 bits, group 64 (in-dims 32 and 96 are not multiples of 64: left bf16)
  tests/fixtures/mlx_next_q4/   tests/fixtures/next (qwen3_next) through mlx_lm.convert -q, 4 bits, group 32

Two interpreters, because the references live in two environments:

  /work/pyref/bin/python tools/reference/make_dialect_fixtures.py hf     # transformers: hf_interval, fp8_block
  /work/pymlx/bin/python tools/reference/make_dialect_fixtures.py mlx    # mlx-lm: mlx_* (reads hf_interval, next)
  ... hf --verify / mlx --verify                                          # reload committed files, compare

Deterministic (seeded by fixture and tensor name, one CPU thread); the mlx stage must run after the
hf stage because it converts the committed hf_interval checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
HERE = Path(__file__).resolve().parent

T_IDS = 80
FP8_BLOCK = [24, 48]  # [rows, cols]; divides none of 256/160/64/32 rows, none of 64/128/32 cols
FP8_MAX = 448.0


def write_npy(path: Path, arr):
    np.save(path, np.ascontiguousarray(arr, dtype="<f4"))


def write_json(path: Path, obj, sort_keys=False, compact_lists=True):
    text = json.dumps(obj, indent=2, sort_keys=sort_keys)
    if compact_lists:  # lists of numbers on one line

        def one_line(m):
            return "[" + ", ".join(x.strip(",") for x in m.group(1).split()) + "]"

        text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", one_line, text)
    path.write_text(text + "\n")


def reset_dir(d: Path):
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ================================================================================================
# stage "hf": transformers (torch) — hf_interval and fp8_block
# ================================================================================================


def stage_hf(verify_only: bool):
    import torch
    import transformers
    from safetensors.torch import load_file

    sys.path.insert(0, str(HERE))
    import make_fixtures as mf  # the conventions (init rules, decisive routing, goldens) of the HF fixtures
    from transformers import AutoConfig, Qwen3_5MoeForCausalLM, Qwen3_5MoeForConditionalGeneration

    LIN, FULL = mf.LIN, mf.FULL
    BF16 = torch.bfloat16
    C = dict(vocab=512, hidden=64, layer_types=[LIN, LIN, LIN, FULL], nh=4, nkv=2, hd=32, hk=2, hv=4, dk=16,
             dv=24, e=8, k=2, inter=32, shared=64)
    SPEC = dict(embed_std=1.0, lm_head_gain=2.0, router_gain=2.0)
    d_hf, d_fp8 = FIXTURES / "hf_interval", FIXTURES / "fp8_block"

    def common_ids():
        return torch.randint(0, C["vocab"], (T_IDS,), generator=mf.gen("hf_interval", "ids"))

    def build_text_model(cfg_dict, tmp_name):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(cfg_dict))
            wcfg = AutoConfig.from_pretrained(tmp)
        tcfg = wcfg.text_config
        assert tcfg.layer_types == C["layer_types"]
        return mf.build(Qwen3_5MoeForCausalLM, tcfg), wcfg

    # ----------------------------------------------------------------------------------------
    # FP8 block quantisation (per spec 4.4): per [BR, BC] block, scale = max|w| / 448 (f32),
    # w8 = float8_e4m3fn(w / scale); dequant W = float32(w8) * scale of its block.
    # ----------------------------------------------------------------------------------------
    BR, BC = FP8_BLOCK

    def fp8_quantize(w: torch.Tensor):
        w = w.to(torch.float32)
        out, inn = w.shape
        nr, nc = math.ceil(out / BR), math.ceil(inn / BC)
        w8 = torch.empty((out, inn), dtype=torch.float8_e4m3fn)
        s = torch.empty((nr, nc), dtype=torch.float32)
        for r in range(nr):
            for c in range(nc):
                blk = w[r * BR:(r + 1) * BR, c * BC:(c + 1) * BC]
                amax = blk.abs().max()
                scale = amax / FP8_MAX if amax > 0 else torch.tensor(1.0)
                s[r, c] = scale
                w8[r * BR:(r + 1) * BR, c * BC:(c + 1) * BC] = (blk / scale).to(torch.float8_e4m3fn)
        return w8, s

    def fp8_dequant(w8: torch.Tensor, s: torch.Tensor, br=BR, bc=BC, clamp=False):
        """Spec 4.4 form: expand the scale grid by the block size, crop, multiply."""
        out, inn = w8.shape
        if clamp:  # for seeded bugs with a wrong block size: index the grid, clamp at its edge
            ri = torch.clamp(torch.arange(out) // br, max=s.shape[0] - 1)
            ci = torch.clamp(torch.arange(inn) // bc, max=s.shape[1] - 1)
            full = s[ri][:, ci]
        else:
            full = s.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:out, :inn]
        return w8.to(torch.float32) * full

    NOT_CONVERTED_FP8_CANDIDATE = "model.layers.1.linear_attn.out_proj.weight"  # text-model name

    def is_fp8_name(name: str) -> bool:
        """FP8 tensor set of spec 4.4 (text-model or mtp names)."""
        if name == NOT_CONVERTED_FP8_CANDIDATE:
            return False
        return bool(re.search(
            r"(self_attn\.[qkvo]_proj\.weight|linear_attn\.(in_proj_qkv|in_proj_z|out_proj)\.weight|"
            r"shared_expert\.(gate|up|down)_proj\.weight|mlp\.experts\.(gate_up_proj|down_proj))$", name))

    def fp8_roundtrip(name: str, v: torch.Tensor) -> torch.Tensor:
        """The dequantised value of an FP8 tensor (fused experts are quantised per expert, gate and up
        separately, as the per-expert files store them)."""
        if name.endswith("mlp.experts.gate_up_proj"):
            i = v.shape[1] // 2
            return torch.stack([torch.cat([fp8_dequant(*fp8_quantize(v[e, :i])),
                                           fp8_dequant(*fp8_quantize(v[e, i:]))]) for e in range(v.shape[0])])
        if name.endswith("mlp.experts.down_proj"):
            return torch.stack([fp8_dequant(*fp8_quantize(v[e])) for e in range(v.shape[0])])
        return fp8_dequant(*fp8_quantize(v))

    @torch.no_grad()
    def fill_weights_with(fx, model, ids, transform):
        """make_fixtures.fill_weights with a value transform (FP8 round trip) applied to every
        parameter after bf16 rounding; routers (bf16 in every flavour) are sharpened against the
        transformed model so routing is decisive for the weights the reference really uses."""
        params = dict(model.named_parameters())
        for name, p in params.items():
            p.copy_(transform(name, mf.stored(mf.init_value(fx, name, p.shape, SPEC), BF16)))
        attempts = {}
        for name, mod in sorted(mf.router_modules(model), key=lambda nm: mf.layer_of(nm[0])):
            layer = mf.layer_of(name)
            pname = name + ".weight"
            p = params[pname]
            for attempt in range(20):
                w0 = mf.init_value(fx, pname, p.shape, SPEC, attempt)
                p.copy_(mf.stored(w0, BF16))
                x = mf.router_input(model, ids, mod)
                with torch.enable_grad():
                    w = mf.sharpen_router(w0, x, mod.top_k, mf.MARGIN_TARGET)
                p.copy_(mf.stored(w, BF16))
                if mf.routing_margins(model, ids)[layer].min() > mf.MARGIN_TARGET:
                    attempts[layer] = attempt
                    break
            else:
                raise RuntimeError(f"{fx}: no decisive router for layer {layer}")
        return attempts

    def routing_extra(margins, attempts):
        return {
            "min_routing_margin": min(float(m.min()) for m in margins.values()),
            "routing_margin_per_layer": {str(k): float(v.min()) for k, v in sorted(margins.items())},
            "router_redraws_per_layer": {str(k): v for k, v in sorted(attempts.items())},
        }

    # ----------------------------------------------------------------------------------------
    # hf_interval
    # ----------------------------------------------------------------------------------------
    def make_hf_interval():
        fx = "hf_interval"
        reset_dir(d_hf)
        cfg_dict = mf.moe_wrapper_config(**C, tie=False, bos=1, eos=2)
        mf.write_json(d_hf / "config.json", cfg_dict)
        wcfg = AutoConfig.from_pretrained(d_hf)
        assert wcfg.text_config.layer_types == C["layer_types"]
        ids = common_ids()
        model = mf.build(Qwen3_5MoeForCausalLM, wcfg.text_config)
        attempts = mf.fill_weights(fx, model, SPEC, BF16, ids)
        margins = mf.routing_margins(model, ids)
        assert min(float(m.min()) for m in margins.values()) > mf.MARGIN_MIN
        logits, hidden = mf.reference_forward(model, ids, 4)
        dec_diff = max_abs(mf.decode_logits(model, ids), logits)
        bugs = mf.seeded_bug_deltas(model, ids, logits)

        sd = {n: t.detach().to(BF16).contiguous() for n, t in model.state_dict().items()}
        wsd = mf.to_wrapper_names(sd)
        mtp = mf.mtp_tensors(fx, C, SPEC, BF16)
        wsd.update(mtp)
        mf.save_st(wsd, d_hf / "model.safetensors")
        write_npy(d_hf / "logits.npy", logits)
        write_npy(d_hf / "hidden.npy", hidden)
        g = mf.golden(ids, logits, "bfloat16", (
            "Source checkpoint of the MLX fixtures (mlx_bf16, mlx_bf16_mtp, mlx_q4, mlx_q6, mlx_q3). "
            "qwen3_5_moe wrapper config (text_config nested), HF raw names model.language_model.* + "
            "lm_head.weight, fused experts mlp.experts.gate_up_proj [E,2I,H] / down_proj [E,H,I], one "
            "model.safetensors, bf16. 4 layers lin,lin,lin,full: layer_types and full_attention_interval 4 "
            "agree (mlx-lm 0.32.2 ignores layer_types). H 64, nh 4, nkv 2, hd 32, Hk 2, Hv 4, Dk 16, Dv 24, "
            "E 8, k 2, I 32, Is 64, V 512 (every in-dim is a multiple of 32). Includes a random mtp.* block "
            "(spec 4.8 shapes, fused experts, zero-centred mtp norms ~N(0,0.2)) that transformers ignores "
            "and mlx-lm drops. No model.visual.* tensors. Init rules and decisive routing as moe_fused "
            "(make_fixtures.py). " + mf.HIDDEN_NOTE), {
            "storage_dtype": "bfloat16",
            "hidden_last_entry": "after_final_norm",
            **routing_extra(margins, attempts),
            "decode_vs_prefill_max_abs_diff": dec_diff,
            "seeded_bug_max_abs_logit_diff": bugs,
            "mtp_tensors": sorted(mtp),
        })
        write_json(d_hf / "golden.json", g)
        mf.verify_reload(Qwen3_5MoeForConditionalGeneration, d_hf, ids, logits, allow_missing_prefix="model.visual.")
        mf.verify_reload(Qwen3_5MoeForCausalLM, d_hf, ids, logits)
        mf.report("hf_interval", logits, margins, dec_diff, bugs)

    # ----------------------------------------------------------------------------------------
    # fp8_block
    # ----------------------------------------------------------------------------------------
    def fp8_modules_not_converted(n_layers):
        mods = ["lm_head", "model.language_model.embed_tokens"]
        for i, lt in enumerate(C["layer_types"]):
            p = f"model.language_model.layers.{i}."
            if lt == LIN:
                mods += [p + "linear_attn.in_proj_a", p + "linear_attn.in_proj_b"]
            mods += [p + "mlp.gate", p + "mlp.shared_expert_gate"]
        mods.append("model.language_model." + NOT_CONVERTED_FP8_CANDIDATE[len("model."):-len(".weight")])
        mods += ["mtp.fc", "mtp.layers.0.mlp.gate", "mtp.layers.0.mlp.shared_expert_gate"]
        return mods

    ACT_SCALE_MODULES = [  # modules that get a (meaningless, unused) scalar f32 activation_scale
        "model.language_model.layers.3.self_attn.q_proj",
        "model.language_model.layers.3.self_attn.k_proj",
        "model.language_model.layers.3.self_attn.v_proj",
        "model.language_model.layers.3.self_attn.o_proj",
        "model.language_model.layers.0.linear_attn.in_proj_qkv",
        "model.language_model.layers.0.mlp.experts.0.down_proj",
        "mtp.layers.0.self_attn.q_proj",
    ]

    def fp8_file_tensors(text_sd_bf16, mtp_bf16, n_experts, inter):
        """Master bf16 tensors (text-model names, fused experts) -> FP8 release tensors (wrapper names,
        per-expert experts, FP8 weight + weight_scale_inv for the FP8 set, activation_scale extras)."""
        wsd = mf.to_wrapper_names(text_sd_bf16)
        wsd.update(mtp_bf16)
        wsd = mf.split_experts(wsd, n_experts, inter)
        out, fp8_names = {}, []
        for name, t in wsd.items():
            text_name = name.replace("model.language_model.", "model.")
            per_expert = re.search(r"mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$", name)
            fused_equiv = re.sub(r"experts\.\d+\.(gate|up)_proj\.weight$", "experts.gate_up_proj",
                                 re.sub(r"experts\.\d+\.down_proj\.weight$", "experts.down_proj", text_name))
            if per_expert or is_fp8_name(fused_equiv if per_expert else text_name):
                w8, s = fp8_quantize(t.to(torch.float32))
                out[name] = w8
                out[name[: -len("weight")] + "weight_scale_inv"] = s
                fp8_names.append(name)
            else:
                out[name] = t
        for m in ACT_SCALE_MODULES:
            assert m + ".weight" in fp8_names, m
            out[m + ".activation_scale"] = torch.tensor(0.5 + 0.25 * (len(m) % 4), dtype=torch.float32)
        return out, sorted(fp8_names)

    def dequant_file_to_text_sd(tensors: dict, n_experts: int, index_form: bool = False) -> dict:
        """What an FP8 loader must do: W = float32(w8) * scale_inv (block expanded), drop
        activation_scale, drop mtp, stack per-expert -> fused, names -> Qwen3_5MoeForCausalLM."""
        deq = {}
        for name, t in tensors.items():
            if name.endswith(".weight_scale_inv") or name.endswith(".activation_scale") or name.startswith("mtp."):
                continue
            sname = name[: -len("weight")] + "weight_scale_inv"
            if sname in tensors:
                assert t.dtype == torch.float8_e4m3fn and name.endswith(".weight")
                # index_form: W[o,i] = w8[o,i] * s[o div BR, i div BC] by gathering the grid (a second,
                # independent formulation of the same rule, used by --verify)
                deq[name] = fp8_dequant(t, tensors[sname], clamp=index_form)
            else:
                deq[name] = t.to(torch.float32)
        out = {}
        for name, t in deq.items():
            m = re.match(r"(.*mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight$", name)
            if m:
                if m.group(2) == "0":
                    base = m.group(1)
                    if m.group(3) == "down":
                        out[base + "down_proj"] = torch.stack([deq[f"{base}{e}.down_proj.weight"] for e in range(n_experts)])
                    elif m.group(3) == "gate":
                        out[base + "gate_up_proj"] = torch.stack([
                            torch.cat([deq[f"{base}{e}.gate_proj.weight"], deq[f"{base}{e}.up_proj.weight"]])
                            for e in range(n_experts)])
                continue
            out[name] = t
        return {("model." + n[len("model.language_model."):] if n.startswith("model.language_model.") else n): t
                for n, t in out.items()}

    def fp8_config(cfg_dict):
        c = json.loads(json.dumps(cfg_dict))
        c["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "modules_to_not_convert": fp8_modules_not_converted(len(C["layer_types"])),
            "quant_method": "fp8",
            "weight_block_size": list(FP8_BLOCK),
        }
        return c

    def try_transformers_fp8_load(d: Path) -> dict:
        """What transformers 5.23 itself does with this directory (recorded, not relied on)."""
        res = {}
        try:
            model = Qwen3_5MoeForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
            res["from_pretrained"] = f"loaded without error as {type(model).__name__}"
        except Exception as e:  # noqa: BLE001 — we record what happens
            res["from_pretrained"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        # its CPU path (dequantize=True) folds each (weight, weight_scale_inv) pair with Fp8Dequantize,
        # which derives the block from the scale grid and rejects grids that do not divide the weight
        from transformers.integrations.finegrained_fp8 import Fp8Dequantize

        raw = load_file(d / "model.safetensors")
        for n in ("model.language_model.layers.3.self_attn.q_proj.weight",
                  "model.language_model.layers.0.linear_attn.in_proj_z.weight"):
            s = raw[n[: -len("weight")] + "weight_scale_inv"]
            try:
                got = Fp8Dequantize(None)._dequantize_one(raw[n], s, torch.float32)
                ok = torch.equal(got.float(), fp8_dequant(raw[n], s))
                res[f"Fp8Dequantize {n} {list(raw[n].shape)} grid {list(s.shape)}"] = (
                    f"ok, equals the spec dequantisation: {ok}")
            except Exception as e:  # noqa: BLE001
                res[f"Fp8Dequantize {n} {list(raw[n].shape)} grid {list(s.shape)}"] = (
                    f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return res

    def make_fp8():
        fx = "fp8_block"
        reset_dir(d_fp8)
        base_cfg = mf.moe_wrapper_config(**C, tie=False, bos=1, eos=2)
        cfg_dict = fp8_config(base_cfg)
        mf.write_json(d_fp8 / "config.json", cfg_dict)
        model, _ = build_text_model(base_cfg, "fp8")
        ids = common_ids()

        def transform(name, v):
            return fp8_roundtrip(name, v) if is_fp8_name(name) else v

        attempts = fill_weights_with(fx, model, ids, transform)
        margins = mf.routing_margins(model, ids)
        assert min(float(m.min()) for m in margins.values()) > mf.MARGIN_MIN
        logits, hidden = mf.reference_forward(model, ids, 4)
        dec_diff = max_abs(mf.decode_logits(model, ids), logits)
        bugs = mf.seeded_bug_deltas(model, ids, logits)

        # master = the bf16 values before FP8 (the reference model holds the dequantised ones)
        params = dict(model.named_parameters())
        master = {}
        for name, p in model.state_dict().items():
            if is_fp8_name(name):
                master[name] = mf.stored(mf.init_value(fx, name, p.shape, SPEC), BF16).to(BF16)
            else:
                master[name] = p.detach().to(BF16).contiguous()
        assert all(torch.equal(transform(n, master[n].float()), params[n]) for n in master if is_fp8_name(n))
        mtp = {n: t for n, t in mf.mtp_tensors(fx, C, SPEC, BF16).items()}
        tensors, fp8_names = fp8_file_tensors(master, mtp, C["e"], C["inter"])
        mf.save_st(tensors, d_fp8 / "model.safetensors")

        # the dequantised file must be exactly the reference model's weights
        sd_from_file = dequant_file_to_text_sd(load_file(d_fp8 / "model.safetensors"), C["e"])
        ref_sd = {n: t.float() for n, t in model.state_dict().items()}
        assert sorted(sd_from_file) == sorted(ref_sd)
        assert all(torch.equal(sd_from_file[n], ref_sd[n]) for n in ref_sd)

        # FP8-specific seeded bugs: logits under wrong dequantisation of the FP8 tensors
        fp8_bugs = {}
        raw = load_file(d_fp8 / "model.safetensors")
        variants = {
            "scale_ignored": lambda w8, s: w8.to(torch.float32),
            "divide_by_scale": lambda w8, s: w8.to(torch.float32) / fp8_dequant(torch.ones(w8.shape).to(torch.float8_e4m3fn), s),
            "block_128x128_assumed": lambda w8, s: fp8_dequant(w8, s, 128, 128, clamp=True),
            "block_rows_cols_swapped": lambda w8, s: fp8_dequant(w8, s, BC, BR, clamp=True),
        }
        with torch.no_grad():
            for label, fn in variants.items():
                bad = {}
                for n, t in raw.items():
                    if n.endswith(".weight_scale_inv"):
                        continue
                    sname = n[: -len("weight")] + "weight_scale_inv"
                    bad[n] = fn(t, raw[sname]) if sname in raw else t
                model.load_state_dict(dequant_file_to_text_sd(bad, C["e"]), strict=True)
                got = model(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
                v = float(np.nan_to_num(np.abs(got - logits), nan=np.inf).max())
                fp8_bugs[label] = v if math.isfinite(v) else "non-finite (NaN/inf logits)"
            model.load_state_dict(ref_sd, strict=True)
        bugs.update({"fp8_" + k: v for k, v in fp8_bugs.items()})

        hf_load = try_transformers_fp8_load(d_fp8)
        write_npy(d_fp8 / "logits.npy", logits)
        write_npy(d_fp8 / "hidden.npy", hidden)
        scale_shapes = {n: list(t.shape) for n, t in tensors.items() if n.endswith("weight_scale_inv")}
        shape_examples = {k: scale_shapes[k] for k in sorted(scale_shapes) if re.search(
            r"layers\.(0|3)\.(self_attn|linear_attn)\.|layers\.0\.mlp\.(shared_expert\.|experts\.0\.)", k)}
        g = mf.golden(ids, logits, "float8_e4m3fn+float32 scales (dequantised in Python)", (
            "HF FP8-release-style qwen3_5_moe wrapper checkpoint (same config shapes as hf_interval, its own "
            "random weights). quantization_config {quant_method fp8, fmt e4m3, activation_scheme dynamic, "
            f"weight_block_size {FP8_BLOCK}, modules_to_not_convert [...]}} at the top level of config.json. "
            "FP8 tensors: X.weight float8_e4m3fn [out,in] + X.weight_scale_inv float32 "
            f"[ceil(out/{BR}), ceil(in/{BC})]; dequantised W[o,i] = float32(w8[o,i]) * "
            f"weight_scale_inv[o div {BR}, i div {BC}] (a multiplication). The block size divides neither "
            "most row counts (256, 160, 64, 32) nor most column counts (64, 128, 32): edge blocks are partial "
            "(96 rows/cols divide exactly). FP8 set = spec 4.4: self_attn q/k/v/o, linear_attn in_proj_qkv / "
            "in_proj_z / out_proj, shared_expert gate/up/down, every routed expert per expert "
            "(mlp.experts.{e}.{gate,up,down}_proj.weight); bf16: embed_tokens, lm_head, norms, router mlp.gate, "
            "shared_expert_gate, in_proj_a/b, conv1d, A_log, dt_bias. Exception: "
            "model.language_model.layers.1.linear_attn.out_proj is listed in modules_to_not_convert and stored "
            "bf16 without a scale. Some modules carry an unused scalar float32 X.activation_scale (shape []) "
            "as releases do; ignore them. An mtp.* block (per-expert experts, FP8 attention/shared/experts, "
            "bf16 fc/norms/router/shared gate) must be ignored. Quantisation: per block scale = max|w|/448 "
            "(f32), w8 = float8_e4m3fn(w/scale) from bf16 masters. Reference: the dequantised f32 weights "
            "loaded into Qwen3_5MoeForCausalLM (transformers) and run in f32 as the other HF fixtures; routers "
            "were sharpened against the dequantised model (decisive routing for the FP8 weights). "
            "seeded_bug_max_abs_logit_diff.fp8_* = logit change under wrong dequantisation (scale ignored, "
            "divided, 128x128 blocks assumed, block rows/cols swapped; grid indices clamped at the edge). "
            + mf.HIDDEN_NOTE), {
            "storage_dtype": "float8_e4m3fn (FP8 set) / bfloat16 (rest) / float32 (weight_scale_inv, activation_scale)",
            "hidden_last_entry": "after_final_norm",
            "fp8_weight_block_size": list(FP8_BLOCK),
            "fp8_tensors": fp8_names,
            "fp8_tensor_count": len(fp8_names),
            "fp8_scale_shape_examples": shape_examples,
            "bf16_not_converted_linear": "model.language_model.layers.1.linear_attn.out_proj.weight",
            "activation_scale_tensors": [m + ".activation_scale" for m in ACT_SCALE_MODULES],
            **routing_extra(margins, attempts),
            "decode_vs_prefill_max_abs_diff": dec_diff,
            "seeded_bug_max_abs_logit_diff": bugs,
            "transformers_5_23_on_this_dir": hf_load,
        })
        write_json(d_fp8 / "golden.json", g)
        mf.report("fp8_block", logits, margins, dec_diff, bugs)
        print("  transformers:", json.dumps(hf_load, indent=1))

    @torch.no_grad()
    def verify():
        ok = True
        # hf_interval: transformers from_pretrained
        mf.CHECKS[:] = [("tests/fixtures/hf_interval", "tests/fixtures/hf_interval",
                         Qwen3_5MoeForConditionalGeneration, "model.visual.")]
        mf.verify_committed()
        # fp8_block: dequantise the file per spec, load strictly into the CausalLM
        g = json.loads((d_fp8 / "golden.json").read_text())
        wcfg = json.loads((d_fp8 / "config.json").read_text())
        base = {k: v for k, v in wcfg.items() if k != "quantization_config"}
        model, _ = build_text_model(base, "fp8v")
        model.load_state_dict(dequant_file_to_text_sd(load_file(d_fp8 / "model.safetensors"), C["e"], True), strict=True)
        ids = torch.tensor(g["ids"])
        got, hid = mf.reference_forward(model, ids, 4)
        dl = max_abs(got, np.load(d_fp8 / "logits.npy"))
        dh = max_abs(hid, np.load(d_fp8 / "hidden.npy"))
        print(f"{'ok ' if max(dl, dh) < 1e-4 else 'BAD'} tests/fixtures/fp8_block: dequantised (index form) into "
              f"Qwen3_5MoeForCausalLM max|dlogits| {dl:.3g} max|dhidden| {dh:.3g}")
        dl = max(dl, dh)
        ok &= dl < 1e-4
        assert ok

    if transformers.__version__ != "5.23.0":
        print(f"warning: pinned transformers 5.23.0, running {transformers.__version__}", file=sys.stderr)
    print(mf.versions())
    if verify_only:
        verify()
        return
    make_hf_interval()
    make_fp8()


# ================================================================================================
# stage "mlx": mlx-lm 0.32.2 (CPU) — mlx_bf16, mlx_bf16_mtp, mlx_q4, mlx_q6, mlx_q3, mlx_next_q4
# ================================================================================================

# fixture -> (source fixture, (bits, group_size) or None)
MLX_FIXTURES = {
    "mlx_bf16": ("hf_interval", None),
    "mlx_q4": ("hf_interval", (4, 32)),
    "mlx_q6": ("hf_interval", (6, 32)),
    "mlx_q3": ("hf_interval", (3, 64)),
    "mlx_next_q4": ("next", (4, 32)),
}
MLX_ORDER = ["mlx_bf16", "mlx_bf16_mtp", "mlx_q4", "mlx_q6", "mlx_q3", "mlx_next_q4"]
KEEP_FROM_CONVERT = ("config.json", "model.safetensors", "model.safetensors.index.json")
ZC_NORM_SUFFIXES = (".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight",
                    ".q_norm.weight", ".k_norm.weight")

MLX_F32_NOTE = (
    "Reference: mlx-lm's own model (mlx_lm.utils.load_model on this directory: sanitize, per-path "
    "quantization from config.json, load_weights strict) on the CPU, then every floating-point parameter "
    "(bf16 weights, norms, A_log, dt_bias, conv1d, quantization scales and biases) cast to float32 with "
    "model.update(tree_map(lambda p: p.astype(float32) if floating else p, model.parameters())) before "
    "the forward; packed uint32 weights untouched. So activations are float32 and the quantized matmuls "
    "use the exact stored (bf16-representable) scales/biases. Why: mlx 0.32.4 on CPU cannot run the bf16 "
    "MoE at all ('[GatherMM::eval] Currently only supports float32.'); the quantized models do run in "
    "bf16 (gather_qmm) but are cast too, for f32 activations. One prefill forward over all 80 ids, no "
    "cache; hidden.npy [L+1,T,H] as in the HF fixtures (entry 0 embedding rows, entry i output of layer "
    "i-1, entry L after the final norm), from mlx-lm's own layer modules (their composition reproduces "
    "model() bit for bit). ")

MLX_METRICS_NOTE = (
    "Metrics: vs_transformers_max_abs_diff = distance to the transformers-f32 logits of the source "
    "fixture (per_token: max over the vocab per position); mlx_impl_noise_vs_transformers = mlx-lm (f32) "
    "on the source's raw weights cast to f32 BEFORE sanitize (so 1+w is exact) vs transformers: mlx-lm's "
    "pure implementation noise; decode_vs_prefill / chunked_prefill_37_43_vs_prefill = mlx-lm's own "
    "token-by-token decode / two-chunk prefill with its caches vs this prefill (mlx-lm self-noise; exactly "
    "0 on CPU f32 here); mlx_routing_margin_per_moe_layer = min over tokens of p_k - p_(k+1) of mlx-lm's "
    "f32 router softmax in this run; tokens_routed_differently_than_source_per_moe_layer = tokens whose "
    "top-k set differs from mlx-lm f32 on the exact source weights (= transformers' routing); for quantized "
    "fixtures quantized_vs_dequantized_f32_max_abs_diff = this run vs the same model after mlx-lm's "
    "dequantize_model (dense f32 matrices): how exactly 'dequantize then f32 matmul' reproduces it. "
    "Quantization error flips routing for many tokens (the random routers are decisive only to "
    "p_k - p_(k+1) > 0.01 for the exact weights) and each flip moves logits by O(1): so the distances to "
    "transformers are large for the quantized fixtures and only the mlx-lm logits of each fixture are a "
    "usable golden for it. ")


def stage_mlx(verify_only: bool, only=None):
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.convert import convert
    from mlx_lm.models import qwen3_next as mlx_qwen3_next
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.utils import _get_classes, dequantize_model, load_config, load_model

    versions = f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, numpy {np.__version__}"
    if mlx_lm.__version__ != "0.32.2":
        print(f"warning: pinned mlx-lm 0.32.2, running {mlx_lm.__version__}", file=sys.stderr)
    print(versions, mx.default_device())

    def tiny_tokenizer(d: Path, vocab: int):
        """mlx_lm.convert loads and saves a tokenizer; the fixtures have none, so the temporary source
        copy gets a tiny word-level one (not kept in the fixture)."""
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "t0", "bos_token": "t1", "eos_token": "t2"}))

    def run_convert(src: Path, dst: Path, vocab: int, **kw):
        with tempfile.TemporaryDirectory() as tmp:
            s = Path(tmp) / "src"
            shutil.copytree(src, s, ignore=shutil.ignore_patterns("*.npy", "golden.json"))
            tiny_tokenizer(s, vocab)
            out = Path(tmp) / "out"
            convert(str(s), str(out), **kw)
            written = sorted(p.name for p in out.iterdir())
            reset_dir(dst)
            for f in KEEP_FROM_CONVERT:
                shutil.copy(out / f, dst / f)
                os.chmod(dst / f, 0o644)
        return written

    def to_f32(model):
        model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p,
                              model.parameters()))
        mx.eval(model.parameters())
        return model

    def mlx_load_f32(d: Path):
        model, config = load_model(d)
        return to_f32(model), config

    def raw_f32_in_mlx(src: Path):
        """mlx-lm's model on a raw HF checkpoint with every tensor cast to f32 BEFORE sanitize."""
        config = load_config(src)
        model_class, args_class = _get_classes(config)
        model = model_class(args_class.from_dict(config))
        w = {k: v.astype(mx.float32) for k, v in mx.load(str(src / "model.safetensors")).items()}
        model.load_weights(list(model.sanitize(w).items()), strict=True)
        model.eval()
        mx.eval(model.parameters())
        return model

    def text_model(model):
        return model.language_model if hasattr(model, "language_model") else model

    def forward(model, tokens):
        tm = text_model(model)
        inner = tm.model
        x = mx.array([tokens])
        h = inner.embed_tokens(x)
        hs = [h]
        fa_mask = create_attention_mask(h, None)
        for layer in inner.layers:
            h = layer(h, mask=None if layer.is_linear else fa_mask, cache=None)
            hs.append(h)
        hs[-1] = inner.norm(h)
        logits = model(x)
        head = tm.lm_head(hs[-1]) if hasattr(tm, "lm_head") else inner.embed_tokens.as_linear(hs[-1])
        mx.eval(logits, head, *hs)
        lg = np.array(logits[0].astype(mx.float32))
        assert max_abs(np.array(head[0].astype(mx.float32)), lg) == 0.0, "layer loop must reproduce model()"
        return lg, np.stack([np.array(t[0].astype(mx.float32)) for t in hs])

    def decode(model, tokens):
        cache = model.make_cache()
        rows = []
        for t in tokens:
            out = model(mx.array([[t]]), cache=cache)
            mx.eval(out)
            rows.append(np.array(out[0, -1].astype(mx.float32)))
        return np.stack(rows)

    def chunked_prefill(model, tokens, cut=37):
        cache = model.make_cache()
        a = model(mx.array([tokens[:cut]]), cache=cache)
        b = model(mx.array([tokens[cut:]]), cache=cache)
        mx.eval(a, b)
        return np.concatenate([np.array(a[0].astype(mx.float32)), np.array(b[0].astype(mx.float32))])

    def routing_info(model, tokens):
        """Per MoE layer: min over tokens of p_k - p_(k+1) (f32 softmax of the router, on mlx-lm's own
        inputs) and the selected top-k sets [T, k] (sorted)."""
        cls = mlx_qwen3_next.Qwen3NextSparseMoeBlock  # qwen3_5(_moe) reuses this class
        orig = cls.__call__
        rec = []

        def patched(self, x):
            rec.append((self.top_k, mx.softmax(self.gate(x).astype(mx.float32), axis=-1)))
            return orig(self, x)

        cls.__call__ = patched
        try:
            mx.eval(model(mx.array([tokens])))
        finally:
            cls.__call__ = orig
        margins, sets = [], []
        for k, p in rec:
            pn = np.array(p[0])
            srt = np.sort(pn, axis=-1)[:, ::-1]
            margins.append(float((srt[:, k - 1] - srt[:, k]).min()))
            sets.append(np.sort(np.argsort(-pn, axis=-1, kind="stable")[:, :k], axis=-1))
        return margins, sets

    def seeded_norm_shift(model, tokens, ref):
        """Logit change if a loader adds 1 again to the (already 1+w) MLX norms, or subtracts 1."""
        flat = dict(tree_flatten(model.parameters()))
        keys = [k for k in flat if k.endswith(ZC_NORM_SUFFIXES)]
        res = {}
        for label, delta in (("norms_shifted_again", 1.0), ("norms_minus_one", -1.0)):
            model.load_weights([(k, flat[k] + delta) for k in keys], strict=False)
            got = np.array(model(mx.array([tokens]))[0].astype(mx.float32))
            res[label] = max_abs(got, ref)
        model.load_weights([(k, flat[k]) for k in keys], strict=False)
        return res

    def dequantized_logits(d: Path, tokens):
        m, _ = mlx_load_f32(d)
        out = dequantize_model(m)(mx.array([tokens]))
        mx.eval(out)
        return np.array(out[0].astype(mx.float32))

    def spec_unpack_check(out_w: dict, config: dict) -> dict:
        """Unpack every quantized tensor with numpy per spec 4.6 (row = little-endian uint32 words as one
        LSB-first bitstream, element i = bits [i*b, (i+1)*b)), dequantize w = scales*q + biases, and compare
        with mx.dequantize. Bits/group from config per-path entry, else the global setting."""
        qcfg = config["quantization"]
        worst, n = 0.0, 0
        for k in sorted(out_w):
            if not k.endswith(".scales"):
                continue
            base = k[: -len(".scales")]
            ent = qcfg.get(base, qcfg)
            b, gsz = ent["bits"], ent["group_size"]
            wq = np.array(out_w[base + ".weight"])
            sc = np.array(out_w[k].astype(mx.float32))
            bi = np.array(out_w[base + ".biases"].astype(mx.float32))
            bits = np.unpackbits(wq.astype("<u4").view(np.uint8), axis=-1, bitorder="little")
            in_dim = wq.shape[-1] * 32 // b
            q = (bits[..., : in_dim * b].reshape(*wq.shape[:-1], in_dim, b).astype(np.int64)
                 << np.arange(b)).sum(-1).astype(np.float32)
            deq = q * np.repeat(sc, gsz, -1) + np.repeat(bi, gsz, -1)
            ref = np.array(mx.dequantize(out_w[base + ".weight"], out_w[k].astype(mx.float32),
                                         out_w[base + ".biases"].astype(mx.float32), gsz, b))
            worst = max(worst, max_abs(deq, ref))
            n += 1
        return {"quantized_tensors": n, "max_abs_numpy_spec_unpack_vs_mx_dequantize": worst}

    def header(d: Path):
        with open(d / "model.safetensors", "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            h = json.loads(fh.read(n))
        meta = h.pop("__metadata__", {})
        return {k: (v["dtype"], v["shape"]) for k, v in h.items()}, meta

    def patterns(rows: dict) -> dict:
        out = {}
        for k in sorted(rows):
            out.setdefault(re.sub(r"layers\.\d+\.", "layers.N.", k), set()).add(f"{rows[k][0]} {rows[k][1]}")
        return {k: " | ".join(sorted(v)) for k, v in out.items()}

    def config_diff(a: dict, b: dict, prefix=""):
        out = []
        for k in sorted(set(a) | set(b)):
            p = f"{prefix}{k}"
            if k not in b:
                out.append(f"removed {p}")
            elif k not in a:
                out.append(f"added {p}")
            elif isinstance(a[k], dict) and isinstance(b[k], dict):
                out += config_diff(a[k], b[k], p + ".")
            elif a[k] != b[k]:
                out.append(f"changed {p}: {json.dumps(a[k])[:60]} -> {json.dumps(b[k])[:60]}")
        return out

    def norm_facts(out_w: dict, src_w: dict, to_src_name):
        """Compare every zero-centred norm in the converted file with the source value w."""
        keys = sorted(k for k in out_w if k.endswith(ZC_NORM_SUFFIXES))
        eq_round, worst, dtypes = True, 0.0, set()
        for k in keys:
            a = out_w[k]
            w = src_w[to_src_name(k)].astype(mx.float32)
            dtypes.add(str(a.dtype).replace("mlx.core.", ""))
            eq_round &= bool(mx.array_equal(a, (w + 1.0).astype(mx.bfloat16)).item())
            worst = max(worst, float(mx.abs(a.astype(mx.float32) - (w + 1.0)).max().item()))
        return {
            "tensors_checked": len(keys),
            "dtype": sorted(dtypes),
            "all_equal_bf16_round_of_f32(1+w)": eq_round,
            "max_abs_vs_exact_f32(1+w)": worst,
        }

    # ------------------------------------------------------------------------------------------
    # the sources: their transformers goldens and mlx-lm's f32 run on their exact weights
    # ------------------------------------------------------------------------------------------
    sources = {}

    def source(name):
        if name not in sources:
            d = FIXTURES / name
            g = json.loads((d / "golden.json").read_text())
            hf_logits = np.load(d / "logits.npy")
            m = raw_f32_in_mlx(d)
            lg, _ = forward(m, g["ids"])
            _, sets = routing_info(m, g["ids"])
            sources[name] = dict(
                dir=d, ids=g["ids"], hf_logits=hf_logits, sets=sets,
                vocab=int(hf_logits.shape[1]),
                impl_noise=max_abs(lg, hf_logits),
                impl_decode=max_abs(decode(m, g["ids"]), lg),
                raw=mx.load(str(d / "model.safetensors")),
                config=json.loads((d / "config.json").read_text()),
            )
            print(f"mlx-lm f32 on {name} raw weights (exact 1+w) vs transformers: {sources[name]['impl_noise']:.3g}; "
                  f"its decode vs prefill {sources[name]['impl_decode']:.3g}")
        return sources[name]

    def check_reload(name, d):
        g = json.loads((d / "golden.json").read_text())
        model, _ = mlx_load_f32(d)
        lg, hid = forward(model, g["ids"])
        dl, dh = max_abs(lg, np.load(d / "logits.npy")), max_abs(hid, np.load(d / "hidden.npy"))
        ok = dl < 1e-5 and dh < 1e-5
        print(f"{'ok ' if ok else 'BAD'} tests/fixtures/{name}: mlx-lm load_model + f32 cast max|dlogits| {dl:.3g} "
              f"max|dhidden| {dh:.3g}")
        assert ok
        return dl

    def make_converted(name):
        src_name, q = MLX_FIXTURES[name]
        src = source(src_name)
        d = FIXTURES / name
        ids = src["ids"]
        kw = dict(dtype="bfloat16")
        if q:
            kw.update(quantize=True, q_bits=q[0], q_group_size=q[1])
        written = run_convert(src["dir"], d, src["vocab"], **kw)
        model, config = mlx_load_f32(d)
        logits, hidden = forward(model, ids)
        margins, sets = routing_info(model, ids)
        rows, meta = header(d)
        out_w = mx.load(str(d / "model.safetensors"))
        wrapper = "text_config" in src["config"]
        to_src = (lambda k: k.replace("language_model.model.", "model.language_model.")) if wrapper else (lambda k: k)
        gdn_key = ("language_model." if wrapper else "") + "model.layers.0.linear_attn.norm.weight"
        alog_key = ("language_model." if wrapper else "") + "model.layers.0.linear_attn.A_log"
        extra = {
            "source": f"tests/fixtures/{src_name}",
            "storage_dtype": ("bfloat16" if not q else
                              f"affine {q[0]}-bit group {q[1]} (bf16 scales/biases), routers 8-bit group 64; "
                              f"modules with in-dim not a multiple of {q[1]} bf16"),
            "hidden_last_entry": "after_final_norm",
            "vs_transformers_max_abs_diff": max_abs(logits, src["hf_logits"]),
            "vs_transformers_per_token_max": [round(float(x), 5) for x in np.abs(logits - src["hf_logits"]).max(-1)],
            "mlx_impl_noise_vs_transformers": src["impl_noise"],
            "mlx_impl_decode_vs_prefill_on_source": src["impl_decode"],
            "decode_vs_prefill_max_abs_diff": max_abs(decode(model, ids), logits),
            "chunked_prefill_37_43_vs_prefill_max_abs_diff": max_abs(chunked_prefill(model, ids), logits),
            "mlx_routing_margin_per_moe_layer": margins,
            "min_routing_margin": min(margins),
            "tokens_routed_differently_than_source_per_moe_layer": [
                int((a != b).any(-1).sum()) for a, b in zip(sets, src["sets"])],
        }
        if q:
            extra["quantized_vs_dequantized_f32_max_abs_diff"] = max_abs(dequantized_logits(d, ids), logits)
            bf = FIXTURES / "mlx_bf16" / "logits.npy"
            if src_name == "hf_interval" and bf.exists():
                extra["vs_mlx_bf16_max_abs_diff"] = max_abs(logits, np.load(bf))
        else:
            extra["seeded_bug_max_abs_logit_diff"] = seeded_norm_shift(model, ids, logits)
        facts = {
            "convert_wrote": written,
            "kept": list(KEEP_FROM_CONVERT),
            "safetensors_metadata": meta,
            "mtp_tensors_in_source": sum(1 for k in src["raw"] if k.startswith("mtp.")),
            "mtp_tensors_in_output": sorted(k for k in rows if "mtp" in k),
            "conv1d_shapes": sorted({str(v[1]) for k, v in rows.items() if k.endswith("conv1d.weight")}),
            "zero_centred_norms": norm_facts(out_w, src["raw"], to_src),
            "gdn_norm_unchanged": bool(mx.array_equal(
                out_w[gdn_key], src["raw"][to_src(gdn_key)].astype(out_w[gdn_key].dtype)).item()),
            "A_log_dtype": str(out_w[alog_key].dtype).replace("mlx.core.", ""),
            "config_changes": config_diff(src["config"], json.loads((d / "config.json").read_text())),
            "tensor_count": len(rows),
            "tensor_patterns": patterns(rows),
        }
        if q:
            facts["config_quantization"] = config.get("quantization")
            facts["spec_4_6_unpack_check"] = spec_unpack_check(out_w, config)
            facts["quantization_config_is_identical_copy"] = config.get("quantization_config") == config.get("quantization")
            facts["unquantized_2d_or_3d_weights"] = sorted(
                {re.sub(r"layers\.\d+\.", "layers.N.", k) for k, v in rows.items()
                 if k.endswith(".weight") and len(v[1]) >= 2 and v[0] != "U32" and "conv1d" not in k})
        extra["mlx_convert"] = facts
        if wrapper:
            what = (
                f"tests/fixtures/{src_name} (qwen3_5_moe wrapper, HF raw, bf16, fused experts, + mtp.*) converted by "
                "mlx-lm's own converter: mlx_lm.convert.convert(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) +
                ") on a temporary copy that has a tiny word-level tokenizer (convert insists on one); only "
                "config.json, model.safetensors, model.safetensors.index.json are kept (not the tokenizer files "
                "or README.md). qwen3_5_moe sanitize: names model.language_model.X -> language_model.model.X, "
                "lm_head.weight -> language_model.lm_head.weight; experts.gate_up_proj [E,2I,H] split at I into "
                "mlp.switch_mlp.gate_proj / up_proj [E,I,H], experts.down_proj -> switch_mlp.down_proj [E,H,I]; "
                "mtp.* dropped; conv1d [C,1,K] -> [C,K,1]; the zero-centred norms (input/post_attention "
                "layernorm, model.norm, q_norm, k_norm) get +1 (the conv1d was unsanitized), added in bf16 so "
                "stored bf16(1+w); linear_attn.norm, A_log (cast_predicate keeps its dtype), dt_bias unchanged. "
                "config.json: vision_config removed, rope_parameters.rope_type renamed to 'type' (mlx-lm mutates "
                "the dict in TextModelArgs.__post_init__ and saves it), keys sorted, see config_changes. ")
        else:
            what = (
                f"tests/fixtures/{src_name} (qwen3_next flat config, f32, fused in_proj_qkvz / in_proj_ba, per-expert "
                "experts, mlp_only_layers [2]) converted by mlx_lm.convert.convert(" +
                ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ") (temporary copy with a tiny tokenizer; only "
                "config.json, model.safetensors, model.safetensors.index.json kept). qwen3_next sanitize (runs "
                "because per-expert keys exist): drops mtp.*, stacks experts.{e}.{up,down,gate}_proj into "
                "mlp.switch_mlp.*, conv1d -> [C,K,1], adds 1 to the zero-centred norms in f32 (source is f32), "
                "then the bf16 cast rounds 1+w; names stay model.* / lm_head.*; in_proj_qkvz / in_proj_ba stay "
                "fused (grouped per key head). qwen3_next has no cast_predicate: A_log is cast to bf16 too. ")
        if q:
            what += (
                f"Quantized: affine {q[0]} bits, group {q[1]}, with the model's default quant_predicate (mlp.gate and "
                "mlp.shared_expert_gate -> {group_size 64, bits 8}, recorded per path in config.json "
                "'quantization' and its identical copy 'quantization_config'); quantize_model leaves modules "
                f"whose input dim is not a multiple of {q[1]} unquantized (bf16 .weight, no scales/biases, no "
                "config entry; see mlx_convert.unquantized_2d_or_3d_weights); embed_tokens and lm_head are "
                "quantized. Per quantized module X: X.weight uint32 [..., out, in*bits/32], X.scales and "
                "X.biases bf16 [..., out, in/group]; w = scales * q + biases per group. ")
        g = {
            "ids": [int(i) for i in ids],
            "reference": f"{versions}; CPU float32 forward of mlx-lm's own model on this directory (see notes)",
            "logit_scale": float(np.abs(logits).max()),
            "notes": what + MLX_F32_NOTE + MLX_METRICS_NOTE,
        }
        g.update(extra)
        write_json(d / "golden.json", g)
        write_npy(d / "logits.npy", logits)
        write_npy(d / "hidden.npy", hidden)
        check_reload(name, d)
        print(f"{name}: logit_scale {np.abs(logits).max():.3f} vs transformers {extra['vs_transformers_max_abs_diff']:.3g} "
              f"decode-vs-prefill {extra['decode_vs_prefill_max_abs_diff']:.3g} min margin {min(margins):.3g} "
              f"rerouted {extra['tokens_routed_differently_than_source_per_moe_layer']} "
              f"q-vs-deq {extra.get('quantized_vs_dequantized_f32_max_abs_diff')}")

    def make_bf16_mtp():
        """mlx_bf16 + hf_interval's raw mtp.* tensors copied in (as third-party '-mtp' MLX builds)."""
        name, srcd = "mlx_bf16_mtp", FIXTURES / "mlx_bf16"
        d = FIXTURES / name
        reset_dir(d)
        w = mx.load(str(srcd / "model.safetensors"))
        raw = mx.load(str(FIXTURES / "hf_interval" / "model.safetensors"))
        mtp = {k: v for k, v in raw.items() if k.startswith("mtp.")}
        assert mtp and not any(k.startswith("mtp.") for k in w)
        w.update(mtp)
        mx.save_safetensors(str(d / "model.safetensors"), dict(sorted(w.items())), metadata={"format": "mlx"})
        os.chmod(d / "model.safetensors", 0o644)
        shutil.copy(srcd / "config.json", d / "config.json")
        idx = json.loads((srcd / "model.safetensors.index.json").read_text())
        idx["weight_map"] = {k: "model.safetensors" for k in sorted(w)}
        idx["metadata"]["total_size"] = int(sum(v.nbytes for v in w.values()))
        (d / "model.safetensors.index.json").write_text(json.dumps(idx, indent=4))
        for f in ("logits.npy", "hidden.npy"):
            shutil.copy(srcd / f, d / f)
        g = json.loads((srcd / "golden.json").read_text())
        g["notes"] = (
            "mlx_bf16 (bit-identical tensors and config) plus hf_interval's mtp.* tensors copied in unchanged "
            "(HF raw values: zero-centred mtp norms stored as w, NOT 1+w; fused mtp experts "
            "mtp.layers.0.mlp.experts.gate_up_proj / down_proj; bf16; unprefixed names mtp.*), added to "
            "model.safetensors and its index, as third-party '-mtp' MLX builds ship them. Expected logits and "
            "hidden = mlx_bf16's (copied). Tests that the presence of mtp.* does not change the norm decision: "
            "conv1d is [C,K,1] => the trunk norms are already 1+w (mlx-lm <= 0.31 shifted again whenever "
            "mtp.* keys existed; 0.32.2 keys only on the conv1d layout and drops mtp.* in sanitize). "
            "mlx-lm 0.32.2 loads this directory and reproduces mlx_bf16's logits exactly "
            "(mtp_checkpoint_reload_max_abs_diff). The notes of mlx_bf16 follow. " + g["notes"])
        g["mtp_tensors_added"] = {k: f"{str(v.dtype).replace('mlx.core.', '')} {list(v.shape)}" for k, v in sorted(mtp.items())}
        g["mtp_norms_stored_as"] = "w (HF zero-centred raw values, not shifted): effective multiplier 1+w"
        write_json(d / "golden.json", g)
        g["mtp_checkpoint_reload_max_abs_diff"] = check_reload(name, d)
        write_json(d / "golden.json", g)

    names = only or MLX_ORDER
    for name in names:
        if name not in MLX_ORDER:
            raise SystemExit(f"unknown mlx fixture {name}")
        if verify_only:
            check_reload(name, FIXTURES / name)
        elif name == "mlx_bf16_mtp":
            make_bf16_mtp()
        else:
            make_converted(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["hf", "mlx"])
    ap.add_argument("--verify", action="store_true", help="reload the committed files and compare; write nothing")
    ap.add_argument("--only", nargs="*", help="mlx stage: a subset of " + ", ".join(MLX_ORDER))
    args = ap.parse_args()
    if args.stage == "hf":
        stage_hf(args.verify)
    else:
        stage_mlx(args.verify, args.only)


if __name__ == "__main__":
    main()
