#!/usr/bin/env python3
"""qmoe vs llama.cpp, side by side on the same files and threads, in one run.

    /work/pyggml/bin/python tools/bench_vs_llamacpp.py \
        --gguf Q4_K_M=/work/synth-q4km/model.gguf --gguf Q8_0=/work/synth-q8/model.gguf \
        --qmoe-only MLX-4bit=/work/synth-mlx4 --qmoe-only bf16=/work/synth-bf16 \
        --threads 1,2 -p 512 -n 128 --reps 3 [--json-out results.json]

For every GGUF file and thread count the two engines alternate, `--reps` times each:
llama.cpp (llama-cpp-python, built from source with native CPU flags, loaded once per file and
thread count; memory cleared between repetitions) runs a prefill of `-p` random token ids in one
batch and then `-n` single-token decode steps; qmoe runs `qmoe bench -p P -n N --reps 1` (the same
measurement, after an untimed forward of the prompt's first chunk that grows and first touches
its buffers; llama.cpp likewise runs the prompt once, untimed, in each repetition's context). Figures are medians; ratios are qmoe / llama.cpp (higher
is better for qmoe). `--qmoe-only` lists checkpoints only qmoe reads (MLX, HF bf16), measured
with the same settings so they can be read against the GGUF rows.

Setup: tools/reference/requirements-gguf.txt (pip install llama-cpp-python; it compiles llama.cpp).
Build qmoe first: cargo build --release -p qmoe. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_named(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for it in items:
        if "=" not in it:
            raise SystemExit(f"expected NAME=PATH, got {it!r}")
        name, path = it.split("=", 1)
        if not Path(path).exists():
            raise SystemExit(f"{name}: {path} does not exist")
        out.append((name, path))
    return out


class LlamaRunner:
    """One llama.cpp context for a file and thread count."""

    def __init__(self, path: str, threads: int, n_prompt: int, n_gen: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 16, n_batch=n_prompt, n_ubatch=n_prompt,
                         n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def close(self) -> None:
        # Free the context and its worker threads: a live llama.cpp context
        # measurably slowed the qmoe process run next to it (12.3 -> 8.8 tok/s).
        self.llm.close()

    def rep(self, ids: list[int], n_gen: int) -> tuple[float, float]:
        self.llm.reset()  # the next eval removes every cached position (KV and recurrent state)
        t0 = time.perf_counter()
        self.llm.eval(ids)
        t1 = time.perf_counter()
        rng = random.Random(7)
        for _ in range(n_gen):
            self.llm.eval([rng.randrange(self.n_vocab)])
        t2 = time.perf_counter()
        return len(ids) / (t1 - t0), n_gen / (t2 - t1)


def qmoe_rep(qmoe: str, path: str, threads: int, n_prompt: int, n_gen: int) -> dict:
    cmd = [qmoe, "bench", "--model", path, "-p", str(n_prompt), "-n", str(n_gen), "--threads", str(threads),
           "--reps", "1", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"qmoe bench failed on {path}:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", action="append", default=[], help="NAME=FILE.gguf, run by both engines")
    ap.add_argument("--qmoe-only", action="append", default=[], help="NAME=PATH, run by qmoe alone")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--qmoe", default="target/release/qmoe")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    if not Path(a.qmoe).exists():
        raise SystemExit(f"{a.qmoe} not found: cargo build --release -p qmoe")

    import llama_cpp

    rows = []
    last = {}  # the last qmoe report: its binary's commit and kernel level
    for name, path in parse_named(a.gguf):
        for th in threads:
            runner = LlamaRunner(path, th, a.p, a.n)
            ids = [random.Random(1).randrange(runner.n_vocab) for _ in range(a.p)]
            runner.rep(ids[:8], 2)  # warm-up: page in, size buffers
            runner.close()
            qmoe_rep(a.qmoe, path, th, 8, 2)
            lp, ld, qp, qd, extra = [], [], [], [], None
            for r in range(a.reps):
                # Each engine runs alone: llama.cpp's context (mmap warm, so a
                # reload is quick and untimed) lives only for its repetition.
                runner = LlamaRunner(path, th, a.p, a.n)
                # Untimed: a prefill of the same prompt first touches the
                # context's buffers, as qmoe bench's warm-up does its own.
                runner.rep(ids, 0)
                p, d = runner.rep(ids, a.n)
                runner.close()
                lp.append(p)
                ld.append(d)
                q = qmoe_rep(a.qmoe, path, th, a.p, a.n)
                qp.append(q["prefill_tok_s"])
                qd.append(q["decode_tok_s"])
                extra = last = q
                print(f"  {name} t{th} rep {r}: llama.cpp {p:.1f}/{d:.2f}  qmoe {q['prefill_tok_s']:.1f}/{q['decode_tok_s']:.2f}",
                      file=sys.stderr)
            rows.append(dict(model=name, threads=th, llama_prefill=statistics.median(lp), llama_decode=statistics.median(ld),
                             qmoe_prefill=statistics.median(qp), qmoe_decode=statistics.median(qd),
                             bytes_per_token=extra["bytes_per_token"], stream_gbs=extra["stream_gbs"]))
    for name, path in parse_named(a.qmoe_only):
        for th in threads:
            qmoe_rep(a.qmoe, path, th, 8, 2)
            qs = [qmoe_rep(a.qmoe, path, th, a.p, a.n) for _ in range(a.reps)]
            last = qs[-1]
            rows.append(dict(model=name, threads=th, llama_prefill=None, llama_decode=None,
                             qmoe_prefill=statistics.median(q["prefill_tok_s"] for q in qs),
                             qmoe_decode=statistics.median(q["decode_tok_s"] for q in qs),
                             bytes_per_token=qs[-1]["bytes_per_token"], stream_gbs=qs[-1]["stream_gbs"]))

    # The binary's own commit (what `--qmoe` names may not be this checkout's).
    commit = str(last.get("commit", "?"))[:7]
    simd = last.get("simd", "?")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    import os
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()}; qmoe {commit} ({simd} kernels); "
          f"llama-cpp-python {llama_cpp.__version__}; prefill {a.p}, decode {a.n}, medians of {a.reps}")
    print("| model | threads | prefill llama.cpp | prefill qmoe | ratio | decode llama.cpp | decode qmoe | ratio | qmoe GB/s (of stream) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gbs = r["qmoe_decode"] * r["bytes_per_token"] / 1e9
        share = f"{gbs:.1f} ({100 * gbs / r['stream_gbs']:.0f}%)"
        if r["llama_prefill"] is None:
            print(f"| {r['model']} | {r['threads']} | - | {r['qmoe_prefill']:.1f} | - | - | {r['qmoe_decode']:.2f} | - | {share} |")
        else:
            print(f"| {r['model']} | {r['threads']} | {r['llama_prefill']:.1f} | {r['qmoe_prefill']:.1f} | "
                  f"{ratio(r['qmoe_prefill'], r['llama_prefill'])} | {r['llama_decode']:.2f} | {r['qmoe_decode']:.2f} | "
                  f"{ratio(r['qmoe_decode'], r['llama_decode'])} | {share} |")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
