"""Per-step time of nGPT versus GPT at equal shape and batch, measured side by side.

    python bench/step_time.py [--shapes tiny,0.5b-short] [--rounds 10] [--compile both|eager|compiled]

One process builds both models of each shape and alternates their training steps
(forward, backward, AdamW step, and for nGPT the renormalization of every matrix), so
both see the same machine state; the reported ratio is median(nGPT) / median(GPT).
The paper reports nGPT 1.6-1.8x slower per step with unfused normalizations (A.4).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ngpt_ds.model import ModelConfig, build_model, normalize_matrices_  # noqa: E402
from ngpt_ds.train.optim import build_optimizer  # noqa: E402

#: name -> (model shape, micro-batch). "0.5b-short": the paper's 0.5B layer shape (d 1024, 16 heads,
#: 4d MLP, 1k context) at 2 layers so a CPU can run it.
SHAPES = {
    "tiny": (dict(n_layer=4, n_embd=192, n_head=4, seq_len=256, vocab_size=4096), 8),
    "0.5b-short": (dict(n_layer=2, n_embd=1024, n_head=16, seq_len=1024, vocab_size=32000), 1),
    "micro": (dict(n_layer=2, n_embd=32, n_head=2, seq_len=32, vocab_size=256), 2),
}


def make_step(arch: str, shape: dict, batch: int, dtype: torch.dtype, compiled: bool):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, **shape)).to(dtype)
    forward = torch.compile(model) if compiled else model
    optimizer = build_optimizer(model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    tokens = torch.randint(0, shape["vocab_size"], (batch, shape["seq_len"] + 1))

    def step() -> float:
        start = time.perf_counter()
        _, loss = forward(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if arch == "ngpt":
            normalize_matrices_(model)
        return time.perf_counter() - start
    return step


def measure(shape_name: str, rounds: int, warmup: int, dtype: torch.dtype, compiled: bool) -> dict:
    shape, batch = SHAPES[shape_name]
    steps = {arch: make_step(arch, shape, batch, dtype, compiled) for arch in ("ngpt", "gpt")}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {arch: [] for arch in steps}
    for _ in range(rounds):  # A B A B ...: both see the same machine noise
        for arch, step in steps.items():
            times[arch].append(step())
    ngpt, gpt = statistics.median(times["ngpt"]), statistics.median(times["gpt"])
    return {"shape": shape_name, **shape, "batch": batch, "dtype": str(dtype).replace("torch.", ""),
            "compiled": compiled, "rounds": rounds, "ngpt_ms": 1e3 * ngpt, "gpt_ms": 1e3 * gpt, "ratio": ngpt / gpt}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,0.5b-short", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--rounds", type=int, default=10, help="timed A/B rounds per shape")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (and compilation)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--compile", default="both", choices=("both", "eager", "compiled"),
                        help="eager models, torch.compile'd models, or both")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    modes = {"both": (False, True), "eager": (False,), "compiled": (True,)}[args.compile]
    results = []
    print(f"{'shape':<12} {'mode':<9} {'nGPT ms':>9} {'GPT ms':>9} {'nGPT/GPT':>9}")
    for name in args.shapes.split(","):
        for compiled in modes:
            r = measure(name, args.rounds, args.warmup, dtype, compiled)
            results.append(r)
            mode = "compiled" if compiled else "eager"
            print(f"{name:<12} {mode:<9} {r['ngpt_ms']:>9.1f} {r['gpt_ms']:>9.1f} {r['ratio']:>9.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2)
                                   + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
