#!/usr/bin/env python3
"""Write qmoe's golden fixtures with the pinned reference implementation (transformers).

Every fixture is a tiny random checkpoint in one real on-disk dialect, plus the logits and
per-layer hidden states that transformers computes for a fixed token sequence:

  tests/fixtures/moe_fused/       qwen3_5_moe wrapper, fused experts, bf16, + dummy visual/mtp tensors
  tests/fixtures/moe_per_expert/  same weights/logits as moe_fused, per-expert keys, 2 shards + index
  tests/fixtures/next/            qwen3_next (flat config, in_proj_qkvz/in_proj_ba, per-expert), f32
  tests/fixtures/dense_tied/      qwen3_5 dense text-only export (Qwen3_5ForCausalLM), tied, f16
  models/demo/                    tiny qwen3_5_moe wrapper with the real 248320 vocabulary, bf16, tied
  tests/fixtures/demo_golden/     logits / hidden states of models/demo for 12 ids

The reference forward always runs in float32 on the *stored* values: weights are drawn in f32,
rounded to the storage dtype, and the rounded values (exactly representable in f32) are what both
the file and the reference model hold. Everything is seeded; rerunning rewrites identical files.

Run:  /work/pyref/bin/python tools/reference/make_fixtures.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    Qwen3_5ForCausalLM,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3NextForCausalLM,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
DEMO = REPO / "models" / "demo"

T_IDS = 80  # crosses the GDN chunk size (64) of the HF chunked kernel
MARGIN_TARGET = 1e-2  # router redraw target: p_k - p_{k+1} for every token and MoE layer
MARGIN_MIN = 1e-3  # asserted on the final reference run
NORM_STD = 0.2  # zero-centred norms ~ N(0, 0.2) (so 1+w != 1 and 2+w != 1+w)

torch.set_num_threads(1)  # bit-reproducible CPU reductions across reruns
torch.use_deterministic_algorithms(True)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

LIN, FULL = "linear_attention", "full_attention"


# --------------------------------------------------------------------------------------------
# deterministic random numbers: one generator per (fixture, tensor name, redraw attempt)
# --------------------------------------------------------------------------------------------


def seed_for(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def gen(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))


def normal(shape, std, *key) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen(*key), dtype=torch.float32) * std


def uniform(shape, lo, hi, *key) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=gen(*key), dtype=torch.float32) * (hi - lo) + lo


def stored(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round to the on-disk dtype and back to f32 (exact): what the file and the reference share."""
    return t.to(dtype).to(torch.float32)


def versions() -> str:
    return (
        f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"safetensors {safetensors.__version__}, numpy {np.__version__}"
    )


# --------------------------------------------------------------------------------------------
# weight initialisation rules (scales keep activations O(1), logits a few units)
# --------------------------------------------------------------------------------------------

ZERO_CENTRED_SUFFIXES = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "q_norm.weight",
    "k_norm.weight",
    "pre_fc_norm_embedding.weight",
    "pre_fc_norm_hidden.weight",
)


def is_zero_centred(name: str) -> bool:
    return name.endswith(ZERO_CENTRED_SUFFIXES) or name in ("model.norm.weight", "mtp.norm.weight")


def is_router(name: str) -> bool:
    return name.endswith(".mlp.gate.weight")


def init_value(fx: str, name: str, shape, spec: dict, attempt: int = 0) -> torch.Tensor:
    """Random value for one parameter, by name (HF text-model names, or mtp.* names)."""
    key = (fx, name, attempt)
    if name.endswith("embed_tokens.weight"):
        return normal(shape, spec["embed_std"], *key)
    if name == "lm_head.weight":
        return normal(shape, spec["lm_head_gain"] / shape[1] ** 0.5, *key)
    if is_zero_centred(name):
        return normal(shape, NORM_STD, *key)
    if name.endswith("linear_attn.norm.weight"):
        return 1.0 + normal(shape, NORM_STD, *key)
    if name.endswith("linear_attn.A_log"):
        # HF init: A ~ U(0.01, 16), A_log = log(A). Value head 0 is forced slow (A in [0.01, 0.05],
        # decay per token ~0.97..0.99) so the recurrent state carries across the 64-token chunk
        # boundary; head Hv//2 (if distinct) gets a medium decay.
        a = uniform(shape, 0.01, 16.0, *key)
        a[0] = uniform((1,), 0.01, 0.05, fx, name, attempt, "slow")[0]
        if shape[0] > 2:
            a[shape[0] // 2] = uniform((1,), 0.05, 0.5, fx, name, attempt, "medium")[0]
        return torch.log(a)
    if name.endswith("linear_attn.dt_bias"):
        return normal(shape, 1.0, *key)
    if name.endswith("linear_attn.conv1d.weight"):  # [C, 1, K], depthwise: fan_in = K
        return normal(shape, 1.0 / shape[-1] ** 0.5, *key)
    if is_router(name):
        return normal(shape, spec["router_gain"] / shape[1] ** 0.5, *key)
    if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
        return normal(shape, 1.0 / shape[-1] ** 0.5, *key)  # [E, out, in]
    if len(shape) == 2:  # every other Linear [out, in]
        return normal(shape, 1.0 / shape[1] ** 0.5, *key)
    raise ValueError(f"no init rule for {name} {tuple(shape)}")


# --------------------------------------------------------------------------------------------
# reference model helpers
# --------------------------------------------------------------------------------------------


def build(cls, config):
    model = cls._from_config(
        config, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    )
    return model.eval()


def router_modules(model):
    return [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("TopKRouter")]


def layer_of(module_name: str) -> int:
    parts = module_name.split(".")
    return int(parts[parts.index("layers") + 1])


@torch.no_grad()
def routing_margins(model, ids: torch.Tensor) -> dict[int, np.ndarray]:
    """Per MoE layer: for every token, p_k - p_{k+1} of the fp32 router softmax (HF's ranking)."""
    margins: dict[int, np.ndarray] = {}
    hooks = []
    for name, mod in router_modules(model):
        layer = layer_of(name)
        k = mod.top_k

        def hook(m, inp, out, layer=layer, k=k):
            logits, _, indices = out
            probs = torch.softmax(logits.float(), dim=-1)
            top = torch.sort(probs, dim=-1, descending=True).values
            margins[layer] = (top[:, k - 1] - top[:, k]).numpy().copy()
            # HF's own selection must be exactly our fp32 top-k set
            ours = torch.topk(probs, k, dim=-1).indices.sort(-1).values
            assert torch.equal(ours, indices.sort(-1).values)

        hooks.append(mod.register_forward_hook(hook))
    try:
        model(input_ids=ids[None], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return margins


@torch.no_grad()
def router_input(model, ids: torch.Tensor, router) -> torch.Tensor:
    """The [T, H] input of one router (post_attention_layernorm output) for the current weights."""
    got = {}
    h = router.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0].reshape(-1, m.hidden_dim).clone()))
    try:
        model(input_ids=ids[None], use_cache=False)
    finally:
        h.remove()
    return got["x"]


def sharpen_router(w0: torch.Tensor, x: torch.Tensor, k: int, target: float) -> torch.Tensor:
    """Deterministic gradient ascent on the soft-min over tokens of p_k - p_{k+1} (fp32 softmax of
    x W^T), at fixed Frobenius norm of W, starting from the random draw w0. Stops at 2*target."""
    w = w0.clone().requires_grad_(True)
    norm0 = w0.norm()
    opt = torch.optim.Adam([w], lr=2e-3)
    tau = target / 4
    for _ in range(5000):
        probs = torch.softmax(x @ w.T, dim=-1)
        top = torch.sort(probs, dim=-1, descending=True).values
        margin = top[:, k - 1] - top[:, k]
        if margin.min().item() > 2 * target:
            break
        loss = tau * torch.logsumexp(-margin / tau, dim=0)  # = -softmin(margin)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w.mul_(norm0 / w.norm())
    return w.detach()


@torch.no_grad()
def fill_weights(fx: str, model, spec: dict, storage: torch.dtype, ids: torch.Tensor) -> dict:
    """Fill every parameter by the init rules (rounded to storage). Then, layer by layer (a router
    only sees the layers before it), start each router from its random draw and sharpen it until
    every token's top-k is decisive (margin > MARGIN_TARGET after rounding to storage).
    Returns {layer: redraws used}."""
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.copy_(stored(init_value(fx, name, p.shape, spec), storage))
    attempts = {}
    for name, mod in sorted(router_modules(model), key=lambda nm: layer_of(nm[0])):
        layer = layer_of(name)
        pname = name + ".weight"
        p = params[pname]
        for attempt in range(20):
            w0 = init_value(fx, pname, p.shape, spec, attempt)
            p.copy_(stored(w0, storage))
            x = router_input(model, ids, mod)
            with torch.enable_grad():
                w = sharpen_router(w0, x, mod.top_k, MARGIN_TARGET)
            p.copy_(stored(w, storage))
            if routing_margins(model, ids)[layer].min() > MARGIN_TARGET:
                attempts[layer] = attempt
                break
        else:
            raise RuntimeError(f"{fx}: no decisive router for layer {layer}")
    return attempts


@torch.no_grad()
def reference_forward(model, ids: torch.Tensor, num_layers: int):
    """Full-sequence forward. Returns logits [T,V], hidden [L+1,T,H] (HF output_hidden_states),
    and checks what HF's hidden_states entries are, using hooks on the decoder layers / final norm."""
    layer_out = {}
    hooks = []
    base = model.model
    for i, layer in enumerate(base.layers):
        hooks.append(layer.register_forward_hook(lambda m, a, o, i=i: layer_out.__setitem__(i, o)))
    try:
        out = model(input_ids=ids[None], use_cache=False, output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    hs = out.hidden_states
    assert len(hs) == num_layers + 1
    emb = base.embed_tokens(ids[None])
    assert torch.equal(hs[0], emb), "hidden[0] must be the embedding rows"
    for i in range(num_layers - 1):
        assert torch.equal(hs[i + 1], layer_out[i]), f"hidden[{i + 1}] must be layer {i} output"
    assert torch.equal(hs[num_layers], base.norm(layer_out[num_layers - 1])), (
        "hidden[L] must be the last layer output AFTER the final norm"
    )
    logits = out.logits[0].float().numpy()
    hidden = torch.stack([h[0] for h in hs]).float().numpy()
    return logits, hidden


@torch.no_grad()
def decode_logits(model, ids: torch.Tensor) -> np.ndarray:
    """Token-by-token decode with HF's cache (recurrent GDN kernel + conv update, KV cache)."""
    out = model(input_ids=ids[None, :1], use_cache=True)
    cache = out.past_key_values
    rows = [out.logits[0, -1]]
    for t in range(1, ids.numel()):
        out = model(input_ids=ids[None, t : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0, -1])
    return torch.stack(rows).float().numpy()


@torch.no_grad()
def seeded_bug_deltas(model, ids: torch.Tensor, ref: np.ndarray) -> dict:
    """How far logits move under typical loader bugs (for sizing tolerances)."""
    res = {}
    params = dict(model.named_parameters())
    zc = [n for n in params if is_zero_centred(n)]
    saved = {n: params[n].detach().clone() for n in zc}
    for label, delta in (("zero_centred_norms_not_shifted", -1.0), ("zero_centred_norms_shifted_twice", 1.0)):
        for n in zc:
            params[n].copy_(saved[n] + delta)
        got = model(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
        res[label] = float(np.abs(got - ref).max())
        for n in zc:
            params[n].copy_(saved[n])
    return res


def save_st(tensors: dict, path: Path):
    save_file(tensors, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)


def write_npy(path: Path, arr: np.ndarray):
    np.save(path, np.ascontiguousarray(arr, dtype="<f4"))


def write_json(path: Path, obj, sort_keys=True, compact_lists=False):
    text = json.dumps(obj, indent=2, sort_keys=sort_keys)
    if compact_lists:  # put lists of numbers (ids) on one line
        def one_line(m):
            return "[" + ", ".join(x.strip(",") for x in m.group(1).split()) + "]"

        text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", one_line, text)
    path.write_text(text + "\n")


def reset_dir(d: Path, keep=()):
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if f.name not in keep:
            f.unlink()


def tensor_bytes(sd: dict) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def golden(ids, logits, dtype_name, notes, extra) -> dict:
    g = {
        "ids": [int(i) for i in ids],
        "reference": (
            f"{versions()}; CPU float32 forward (eager attention, eager experts, GDN via the "
            f"transformers torch fallback torch_chunk_gated_delta_rule chunk 64 and causal_conv1d_fn) "
            f"on weights stored as {dtype_name} and upcast exactly to float32"
        ),
        "logit_scale": float(np.abs(logits).max()),
        "notes": notes,
    }
    g.update(extra)
    return g


HIDDEN_NOTE = (
    "hidden.npy [num_hidden_layers+1, T, hidden] float32 = transformers output_hidden_states: "
    "entry 0 = embedding rows (input of layer 0), entry i (1 <= i < L) = output of decoder layer i-1 "
    "(residual stream after its MLP/MoE), entry L = output of the last layer AFTER the final "
    "model.norm (transformers overwrites the last entry with last_hidden_state), i.e. the vector "
    "that multiplies the LM head."
)


# --------------------------------------------------------------------------------------------
# config.json builders (the real key sets of released checkpoints, tiny values)
# --------------------------------------------------------------------------------------------


def qwen35_rope():
    return {
        "mrope_interleaved": True,
        "mrope_section": [11, 11, 10],
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000000,
        "rope_type": "default",
    }


def moe_wrapper_config(*, vocab, hidden, layer_types, nh, nkv, hd, hk, hv, dk, dv, e, k, inter, shared,
                       tie, bos, eos, vision_out=None):
    text = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "bos_token_id": bos,
        "dtype": "bfloat16",
        "eos_token_id": eos,
        "full_attention_interval": 4,
        "head_dim": hd,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "layer_types": layer_types,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": dk,
        "linear_num_key_heads": hk,
        "linear_num_value_heads": hv,
        "linear_value_head_dim": dv,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 262144,
        "model_type": "qwen3_5_moe_text",
        "moe_intermediate_size": inter,
        "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False,
        "num_attention_heads": nh,
        "num_experts": e,
        "num_experts_per_tok": k,
        "num_hidden_layers": len(layer_types),
        "num_key_value_heads": nkv,
        "output_router_logits": False,
        "pad_token_id": None,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_parameters": qwen35_rope(),
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": shared,
        "tie_word_embeddings": tie,
        "use_cache": True,
        "vocab_size": vocab,
    }
    vision = {
        "deepstack_visual_indexes": [],
        "depth": 1,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 16,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 32,
        "model_type": "qwen3_5_moe",  # sic: released configs carry this (HF rewrites it on load)
        "num_heads": 2,
        "num_position_embeddings": 16,
        "out_hidden_size": vision_out or hidden,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "image_token_id": 248056,
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "tie_word_embeddings": tie,
        "transformers_version": transformers.__version__,
        "video_token_id": 248057,
        "vision_config": vision,
        "vision_end_token_id": 248054,
        "vision_start_token_id": 248053,
    }


# --------------------------------------------------------------------------------------------
# fixture 1 + 2: qwen3_5_moe, fused (bf16, single file, + visual/mtp) and per-expert (2 shards)
# --------------------------------------------------------------------------------------------

MOE = dict(vocab=512, hidden=64, layer_types=[LIN, FULL, LIN, LIN, FULL], nh=4, nkv=2, hd=32, hk=2, hv=4,
           dk=16, dv=24, e=8, k=2, inter=32, shared=48)


def visual_tensors(fx: str, cfg, storage) -> dict:
    """Real (tiny) vision-tower tensors of Qwen3_5MoeForConditionalGeneration, random values."""
    with torch.device("meta"):
        wrapper = Qwen3_5MoeForConditionalGeneration._from_config(cfg)
    out = {}
    for name, p in wrapper.state_dict().items():
        if name.startswith("model.visual."):
            std = 0.02 if len(p.shape) > 1 else 0.1
            out[name] = stored(normal(p.shape, std, fx, name), storage).to(storage)
    return out


def mtp_tensors(fx: str, c: dict, spec: dict, storage) -> dict:
    h, nh, nkv, hd, e, i, s = c["hidden"], c["nh"], c["nkv"], c["hd"], c["e"], c["inter"], c["shared"]
    shapes = {
        "mtp.fc.weight": [h, 2 * h],
        "mtp.pre_fc_norm_embedding.weight": [h],
        "mtp.pre_fc_norm_hidden.weight": [h],
        "mtp.norm.weight": [h],
        "mtp.layers.0.input_layernorm.weight": [h],
        "mtp.layers.0.post_attention_layernorm.weight": [h],
        "mtp.layers.0.self_attn.q_proj.weight": [nh * 2 * hd, h],
        "mtp.layers.0.self_attn.k_proj.weight": [nkv * hd, h],
        "mtp.layers.0.self_attn.v_proj.weight": [nkv * hd, h],
        "mtp.layers.0.self_attn.o_proj.weight": [h, nh * hd],
        "mtp.layers.0.self_attn.q_norm.weight": [hd],
        "mtp.layers.0.self_attn.k_norm.weight": [hd],
        "mtp.layers.0.mlp.gate.weight": [e, h],
        "mtp.layers.0.mlp.experts.gate_up_proj": [e, 2 * i, h],
        "mtp.layers.0.mlp.experts.down_proj": [e, h, i],
        "mtp.layers.0.mlp.shared_expert.gate_proj.weight": [s, h],
        "mtp.layers.0.mlp.shared_expert.up_proj.weight": [s, h],
        "mtp.layers.0.mlp.shared_expert.down_proj.weight": [h, s],
        "mtp.layers.0.mlp.shared_expert_gate.weight": [1, h],
    }
    return {n: stored(init_value(fx, n, shp, spec), storage).to(storage) for n, shp in shapes.items()}


def split_experts(sd: dict, num_experts: int, inter: int) -> dict:
    """Fused experts -> per-expert keys (gate = rows 0..I-1 of gate_up_proj[e], up = rows I..2I-1)."""
    out = {}
    for name, t in sd.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e in range(num_experts):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :inter].clone()
                out[f"{base}{e}.up_proj.weight"] = t[e, inter:].clone()
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(num_experts):
                out[f"{base}{e}.down_proj.weight"] = t[e].clone()
        else:
            out[name] = t
    return out


def to_wrapper_names(sd: dict) -> dict:
    """Qwen3_5Moe(ForCausalLM) names -> Qwen3_5MoeForConditionalGeneration names."""
    out = {}
    for name, t in sd.items():
        if name.startswith("model."):
            out["model.language_model." + name[len("model.") :]] = t
        elif name == "lm_head.weight":
            out[name] = t
        else:
            raise ValueError(name)
    return out


@torch.no_grad()
def verify_reload(cls, d: Path, ids, logits, allow_missing_prefix=None) -> float:
    """from_pretrained the written directory with the class a user would use; compare logits."""
    model, info = cls.from_pretrained(
        d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True,
    )
    missing = [k for k in info["missing_keys"] if not (allow_missing_prefix and k.startswith(allow_missing_prefix))]
    assert not missing, f"{d.name}: missing keys on reload: {missing}"
    assert not info.get("mismatched_keys"), f"{d.name}: mismatched: {info['mismatched_keys']}"
    got = model.eval()(input_ids=ids[None], use_cache=False).logits[0].float().numpy()
    diff = float(np.abs(got - logits).max())
    unexpected = sorted(info["unexpected_keys"])
    print(f"  reload {d.relative_to(REPO)} via {cls.__name__}: max|dlogits| = {diff:.3g}; "
          f"unexpected keys reported: {len(unexpected)}")
    assert diff < 1e-4, f"{d.name}: reloaded logits differ by {diff}"
    return diff


def make_moe():
    fx = "moe"
    c = MOE
    storage = torch.bfloat16
    spec = dict(embed_std=1.0, lm_head_gain=2.0, router_gain=2.0)
    cfg_dict = moe_wrapper_config(**c, tie=False, bos=1, eos=2)
    d_fused, d_pe = FIXTURES / "moe_fused", FIXTURES / "moe_per_expert"
    for d in (d_fused, d_pe):
        reset_dir(d)
        write_json(d / "config.json", cfg_dict)
    wrapper_cfg = AutoConfig.from_pretrained(d_fused)
    text_cfg = wrapper_cfg.text_config
    assert text_cfg.layer_types == c["layer_types"]

    ids = torch.randint(0, c["vocab"], (T_IDS,), generator=gen(fx, "ids"))
    model = build(Qwen3_5MoeForCausalLM, text_cfg)
    attempts = fill_weights(fx, model, spec, storage, ids)
    margins = routing_margins(model, ids)
    min_margin = min(float(m.min()) for m in margins.values())
    assert min_margin > MARGIN_MIN
    logits, hidden = reference_forward(model, ids, len(c["layer_types"]))
    dec = decode_logits(model, ids)
    dec_diff = float(np.abs(dec - logits).max())
    bugs = seeded_bug_deltas(model, ids, logits)

    sd = {n: t.detach().to(storage).contiguous() for n, t in model.state_dict().items()}
    assert "lm_head.weight" in sd
    wsd = to_wrapper_names(sd)

    # fused, single file, + dummy visual tower and MTP block (both ignored by transformers)
    fused = dict(wsd)
    fused.update(visual_tensors(fx, wrapper_cfg, storage))
    fused.update(mtp_tensors(fx, c, spec, storage))
    save_st(fused, d_fused / "model.safetensors")

    # per-expert, two shards; the split point falls inside layer 2's experts (expert 3's
    # down_proj in shard 1, its gate_proj/up_proj in shard 2)
    pe = split_experts(wsd, c["e"], c["inter"])
    names = sorted(pe)
    cut = names.index("model.language_model.layers.2.mlp.experts.3.gate_proj.weight")
    shards = [names[:cut], names[cut:]]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for fname, keys in zip(files, shards):
        save_st({k: pe[k] for k in keys}, d_pe / fname)
        weight_map.update({k: fname for k in keys})
    write_json(d_pe / "model.safetensors.index.json", {
        "metadata": {"total_parameters": sum(t.numel() for t in pe.values()), "total_size": tensor_bytes(pe)},
        "weight_map": dict(sorted(weight_map.items())),
    }, sort_keys=False)

    notes_common = (
        "qwen3_5_moe wrapper config (text_config nested); layer_types [lin,full,lin,lin,full] are "
        "authoritative (full_attention_interval 4 is also present and would give a different schedule). "
        "Linear [out,in] weights N(0,1/sqrt(in)), embeddings N(0,1), lm_head N(0,2/sqrt(H)), router "
        "drawn N(0,2/sqrt(H)) then sharpened (deterministic gradient ascent at fixed Frobenius norm, layer "
        "by layer) until every token's p_k - p_(k+1) > 0.01 in the f32 reference, zero-centred norms "
        "(input/post_attention/model.norm/q_norm/k_norm) stored as w ~ N(0,0.2) (effective 1+w), "
        "linear_attn.norm stored as 1+N(0,0.2) (plain), A_log = log(U(0.01,16)) with value head 0 slow "
        "(A in [0.01,0.05]) and head Hv/2 medium (A in [0.05,0.5]), dt_bias N(0,1), conv1d N(0,1/2). "
        + HIDDEN_NOTE
    )
    extra = {
        "storage_dtype": "bfloat16",
        "hidden_last_entry": "after_final_norm",
        "min_routing_margin": min_margin,
        "routing_margin_per_layer": {str(k): float(v.min()) for k, v in sorted(margins.items())},
        "router_redraws_per_layer": {str(k): v for k, v in sorted(attempts.items())},
        "decode_vs_prefill_max_abs_diff": dec_diff,
        "seeded_bug_max_abs_logit_diff": bugs,
    }
    write_json(d_fused / "golden.json", golden(ids, logits, "bfloat16", (
        "Fused experts (mlp.experts.gate_up_proj [E,2I,H], down_proj [E,H,I]) in one model.safetensors, "
        "with dummy model.visual.* (a real depth-1 vision tower) and an mtp.* block (spec 4.8, fused "
        "experts) that must be ignored. " + notes_common), extra), sort_keys=False, compact_lists=True)
    write_json(d_pe / "golden.json", golden(ids, logits, "bfloat16", (
        "Same weights and expected outputs as moe_fused, experts written per expert "
        "(mlp.experts.{e}.{gate,up,down}_proj.weight), two shards + model.safetensors.index.json; "
        "layer 2's experts straddle the shards (expert 3's down_proj in shard 1, its gate/up in shard 2). "
        "No visual/mtp tensors. " + notes_common), extra), sort_keys=False, compact_lists=True)
    for d in (d_fused, d_pe):
        write_npy(d / "logits.npy", logits)
        write_npy(d / "hidden.npy", hidden)

    # a second, text-only reference path: the state dict must load strictly into the CausalLM
    verify_reload(Qwen3_5MoeForConditionalGeneration, d_fused, ids, logits)
    verify_reload(Qwen3_5MoeForConditionalGeneration, d_pe, ids, logits, allow_missing_prefix="model.visual.")
    verify_reload(Qwen3_5MoeForCausalLM, d_fused, ids, logits)
    report("moe_fused", logits, margins, dec_diff, bugs)


# --------------------------------------------------------------------------------------------
# fixture 3: qwen3_next, flat config, fused GDN projections, per-expert experts, float32
# --------------------------------------------------------------------------------------------


def make_next():
    fx = "next"
    storage = torch.float32
    spec = dict(embed_std=1.0, lm_head_gain=2.0, router_gain=2.0)
    d = FIXTURES / "next"
    reset_dir(d)
    cfg_dict = {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "decoder_sparse_step": 1,
        "eos_token_id": 2,
        "full_attention_interval": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 80,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 6,
        "linear_value_head_dim": 16,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [2],
        "model_type": "qwen3_next",
        "moe_intermediate_size": 24,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 6,
        "num_experts_per_tok": 3,
        "num_hidden_layers": 4,
        "num_key_value_heads": 1,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 40,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 384,
    }
    write_json(d / "config.json", cfg_dict)
    cfg = AutoConfig.from_pretrained(d)
    assert cfg.layer_types == [LIN, LIN, LIN, FULL], cfg.layer_types
    ids = torch.randint(0, cfg.vocab_size, (T_IDS,), generator=gen(fx, "ids"))
    model = build(Qwen3NextForCausalLM, cfg)
    assert type(model.model.layers[2].mlp).__name__ == "Qwen3NextMLP"
    attempts = fill_weights(fx, model, spec, storage, ids)
    margins = routing_margins(model, ids)
    assert sorted(margins) == [0, 1, 3]
    min_margin = min(float(m.min()) for m in margins.values())
    assert min_margin > MARGIN_MIN
    logits, hidden = reference_forward(model, ids, 4)
    dec_diff = float(np.abs(decode_logits(model, ids) - logits).max())
    bugs = seeded_bug_deltas(model, ids, logits)

    sd = {n: t.detach().to(storage).contiguous() for n, t in model.state_dict().items()}
    sd = split_experts(sd, cfg.num_experts, cfg.moe_intermediate_size)
    save_st(sd, d / "model.safetensors")
    write_npy(d / "logits.npy", logits)
    write_npy(d / "hidden.npy", hidden)
    write_json(d / "golden.json", golden(ids, logits, "float32", (
        "qwen3_next flat config (rope_theta + partial_rotary_factor flat, no layer_types: the schedule "
        "comes from full_attention_interval 4 -> layers 0,1,2 linear, 3 full). mlp_only_layers [2]: layer 2 "
        "is a dense SwiGLU of width intermediate_size 80; layers 0,1,3 are MoE (E=6, k=3, norm_topk_prob "
        "true, per-expert keys). GDN projections fused as in_proj_qkvz [2*Hk*Dk+2*Hv*Dv, H] and "
        "in_proj_ba [2*Hv, H] in the grouped-per-key-head layout (spec 2.5.2), r = Hv/Hk = 3. "
        "Same init rules as moe_fused. " + HIDDEN_NOTE), {
        "storage_dtype": "float32",
        "hidden_last_entry": "after_final_norm",
        "min_routing_margin": min_margin,
        "routing_margin_per_layer": {str(k): float(v.min()) for k, v in sorted(margins.items())},
        "router_redraws_per_layer": {str(k): v for k, v in sorted(attempts.items())},
        "decode_vs_prefill_max_abs_diff": dec_diff,
        "seeded_bug_max_abs_logit_diff": bugs,
    }), sort_keys=False, compact_lists=True)
    verify_reload(Qwen3NextForCausalLM, d, ids, logits)
    report("next", logits, margins, dec_diff, bugs)


# --------------------------------------------------------------------------------------------
# fixture 4: qwen3_5 dense text-only export (Qwen3_5ForCausalLM), tied, float16
# --------------------------------------------------------------------------------------------


def make_dense():
    fx = "dense"
    storage = torch.float16
    H = 96
    spec = dict(embed_std=2.0 / H ** 0.5, lm_head_gain=None, router_gain=None)  # tied: logit std ~ 2
    d = FIXTURES / "dense_tied"
    reset_dir(d)
    from transformers import Qwen3_5TextConfig

    cfg = Qwen3_5TextConfig(
        vocab_size=256, hidden_size=H, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
        head_dim=16, linear_num_key_heads=3, linear_num_value_heads=6, linear_key_head_dim=16,
        linear_value_head_dim=8, linear_conv_kernel_dim=4, intermediate_size=160, tie_word_embeddings=True,
        layer_types=[LIN, LIN, FULL, LIN, FULL, LIN], full_attention_interval=4, rms_norm_eps=1e-6,
        max_position_embeddings=262144, rope_parameters=qwen35_rope(),
        attn_output_gate=True, mamba_ssm_dtype="float32", mtp_num_hidden_layers=1,
        mtp_use_dedicated_embeddings=False,
    )
    ids = torch.randint(0, cfg.vocab_size, (T_IDS,), generator=gen(fx, "ids"))
    model = build(Qwen3_5ForCausalLM, cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    fill_weights(fx, model, spec, storage, ids)
    logits, hidden = reference_forward(model, ids, 6)
    dec_diff = float(np.abs(decode_logits(model, ids) - logits).max())
    bugs = seeded_bug_deltas(model, ids, logits)

    # config.json exactly as Qwen3_5ForCausalLM.save_pretrained writes it (flat, model_type
    # qwen3_5_text), with the dtype of the stored weights
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        exported = json.loads((Path(tmp) / "config.json").read_text())
        with safe_open(Path(tmp) / "model.safetensors", "pt") as f:
            export_keys = sorted(f.keys())
    assert exported["model_type"] == "qwen3_5_text" and "text_config" not in exported
    exported["dtype"] = "float16"  # save_pretrained records the in-memory (f32) dtype; files hold f16
    exported["transformers_version"] = transformers.__version__
    write_json(d / "config.json", exported)
    sd = {n: t.detach().to(storage).contiguous() for n, t in model.state_dict().items() if n != "lm_head.weight"}
    assert sorted(sd) == export_keys, "our names must be exactly what save_pretrained writes"
    save_st(sd, d / "model.safetensors")
    write_npy(d / "logits.npy", logits)
    write_npy(d / "hidden.npy", hidden)
    write_json(d / "golden.json", golden(ids, logits, "float16", (
        "qwen3_5 dense, text-only export as Qwen3_5ForCausalLM.save_pretrained writes it: flat config "
        "(model_type qwen3_5_text, no text_config), names model.* , tie_word_embeddings true and no "
        "lm_head.weight tensor (logits = embed_tokens . h). layer_types [lin,lin,full,lin,full,lin] are "
        "authoritative (full_attention_interval 4 also present). Hk=3, Hv=6 (r=2), Dk=16, Dv=8, dense "
        "SwiGLU F=160. Embeddings N(0, 2/sqrt(H)) (tied head), other init rules as moe_fused. " + HIDDEN_NOTE), {
        "storage_dtype": "float16",
        "hidden_last_entry": "after_final_norm",
        "decode_vs_prefill_max_abs_diff": dec_diff,
        "seeded_bug_max_abs_logit_diff": bugs,
    }), sort_keys=False, compact_lists=True)
    verify_reload(Qwen3_5ForCausalLM, d, ids, logits)
    report("dense_tied", logits, {}, dec_diff, bugs)


# --------------------------------------------------------------------------------------------
# fixture 5: models/demo (real vocabulary) + tests/fixtures/demo_golden
# --------------------------------------------------------------------------------------------


def make_demo():
    fx = "demo"
    storage = torch.bfloat16
    H = 16
    spec = dict(embed_std=2.0 / H ** 0.5, lm_head_gain=None, router_gain=2.0)  # tied: logit std ~ 2
    keep = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    for f in keep:
        assert (DEMO / f).exists(), f"models/demo/{f} missing"
    reset_dir(DEMO, keep=keep)
    dg = FIXTURES / "demo_golden"
    reset_dir(dg)
    cfg_dict = moe_wrapper_config(vocab=248320, hidden=H, layer_types=[LIN, LIN, LIN, FULL], nh=2, nkv=1, hd=16,
                                  hk=1, hv=2, dk=16, dv=16, e=4, k=2, inter=16, shared=16, tie=True,
                                  bos=248044, eos=248044)
    write_json(DEMO / "config.json", cfg_dict)
    write_json(DEMO / "generation_config.json", {
        "bos_token_id": 248044,
        "eos_token_id": [248046, 248044],
        "pad_token_id": 248044,
        "transformers_version": transformers.__version__,
    })
    cfg = AutoConfig.from_pretrained(DEMO)
    rnd = torch.randint(0, 248320, (12,), generator=gen(fx, "ids"))
    ids = rnd.clone()
    # special / high ids: <|im_start|>-family 248044..248046 and the last (padding) embedding row
    ids[0], ids[4], ids[7], ids[10] = 248044, 248045, 248046, 248319
    model = build(Qwen3_5MoeForCausalLM, cfg.text_config)
    attempts = fill_weights(fx, model, spec, storage, ids)
    margins = routing_margins(model, ids)
    min_margin = min(float(m.min()) for m in margins.values())
    assert min_margin > MARGIN_MIN
    logits, hidden = reference_forward(model, ids, 4)
    dec_diff = float(np.abs(decode_logits(model, ids) - logits).max())

    sd = {n: t.detach().to(storage).contiguous() for n, t in model.state_dict().items() if n != "lm_head.weight"}
    wsd = to_wrapper_names(sd)
    save_st(wsd, DEMO / "model.safetensors")
    write_npy(dg / "logits.npy", logits)
    write_npy(dg / "hidden.npy", hidden)
    write_json(dg / "golden.json", golden(ids, logits, "bfloat16", (
        "Expected outputs of models/demo (tiny random qwen3_5_moe wrapper, real Qwen3.6 vocabulary 248320, "
        "H=16, 4 layers lin,lin,lin,full, E=4 k=2, fused experts, tied embeddings: no lm_head.weight; no "
        "visual/mtp tensors). ids include 248044/248045/248046 and the last padded row 248319. "
        + HIDDEN_NOTE), {
        "weights": "models/demo",
        "storage_dtype": "bfloat16",
        "hidden_last_entry": "after_final_norm",
        "min_routing_margin": min_margin,
        "routing_margin_per_layer": {str(k): float(v.min()) for k, v in sorted(margins.items())},
        "router_redraws_per_layer": {str(k): v for k, v in sorted(attempts.items())},
        "decode_vs_prefill_max_abs_diff": dec_diff,
    }), sort_keys=False, compact_lists=True)
    verify_reload(Qwen3_5MoeForConditionalGeneration, DEMO, ids, logits, allow_missing_prefix="model.visual.")
    total = sum(f.stat().st_size for f in DEMO.iterdir())
    print(f"  models/demo total {total / 1e6:.2f} MB")
    assert total < 20e6
    report("demo", logits, margins, dec_diff, {})


def report(name, logits, margins, dec_diff, bugs):
    m = {k: round(float(v.min()), 4) for k, v in sorted(margins.items())}
    print(f"{name}: logit_scale {np.abs(logits).max():.3f}  logit std {logits.std():.3f}  "
          f"routing margins(min per layer) {m}  decode-vs-prefill {dec_diff:.2g}  seeded bugs {bugs}")


MAKERS = {"moe": make_moe, "next": make_next, "dense": make_dense, "demo": make_demo}

# (weights dir, golden dir, class a user would load it with, missing-key prefix tolerated)
CHECKS = [
    ("tests/fixtures/moe_fused", "tests/fixtures/moe_fused", Qwen3_5MoeForConditionalGeneration, None),
    ("tests/fixtures/moe_per_expert", "tests/fixtures/moe_per_expert", Qwen3_5MoeForConditionalGeneration, "model.visual."),
    ("tests/fixtures/next", "tests/fixtures/next", Qwen3NextForCausalLM, None),
    ("tests/fixtures/dense_tied", "tests/fixtures/dense_tied", Qwen3_5ForCausalLM, None),
    ("models/demo", "tests/fixtures/demo_golden", Qwen3_5MoeForConditionalGeneration, "model.visual."),
]


@torch.no_grad()
def verify_committed():
    """Reload every committed checkpoint with from_pretrained and compare with logits.npy/hidden.npy."""
    for wdir, gdir, cls, allow in CHECKS:
        model, info = cls.from_pretrained(
            REPO / wdir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
            output_loading_info=True,
        )
        missing = [k for k in info["missing_keys"] if not (allow and k.startswith(allow))]
        assert not missing, f"{wdir}: missing {missing}"
        g = json.loads((REPO / gdir / "golden.json").read_text())
        ids = torch.tensor(g["ids"])
        out = model.eval()(input_ids=ids[None], use_cache=False, output_hidden_states=True)
        logits = np.load(REPO / gdir / "logits.npy")
        hidden = np.load(REPO / gdir / "hidden.npy")
        dl = float(np.abs(out.logits[0].numpy() - logits).max())
        dh = float(np.abs(torch.stack([h[0] for h in out.hidden_states]).numpy() - hidden).max())
        ok = dl < 1e-4 and dh < 1e-4 and abs(g["logit_scale"] - float(np.abs(logits).max())) == 0
        print(f"{'ok ' if ok else 'BAD'} {wdir}: {cls.__name__} max|dlogits| {dl:.3g} max|dhidden| {dh:.3g} "
              f"logits {logits.shape} hidden {hidden.shape}")
        assert ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(MAKERS), help="subset of fixtures to (re)write")
    ap.add_argument("--verify", action="store_true", help="only reload the committed files and compare")
    args = ap.parse_args()
    if args.verify:
        print(versions())
        verify_committed()
        return
    if transformers.__version__ != "5.23.0":
        print(f"warning: pinned transformers 5.23.0, running {transformers.__version__}", file=sys.stderr)
    print(versions())
    for name in args.only or list(MAKERS):
        MAKERS[name]()


if __name__ == "__main__":
    main()
