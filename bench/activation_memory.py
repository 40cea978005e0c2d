"""Activation memory and step time with and without activation checkpointing, side by side.

    python bench/activation_memory.py [--arch ngpt] [--seq-len 1024] [--rounds 3] [--json FILE] [--docs]

One process builds one model per mode of `train.activation_checkpointing` (none, blocks, every_k: 2),
from the same seed, and alternates their training steps (forward, backward, Adam step), so every mode
sees the same machine state. Per mode it reports the median of the rounds:

- held: memory the forward keeps for the backward (process RSS after the forward minus before it);
- peak: the highest RSS during forward + backward above the RSS before it (VmHWM, reset through
  /proc/self/clear_refs before each step);
- step: seconds of the training step.

RSS only reflects freed tensors when the allocator returns large blocks to the system, so the script
restarts itself with MALLOC_MMAP_THRESHOLD_=131072 (glibc reads it at startup). On a GPU, use
torch.cuda.max_memory_allocated instead; this script measures CPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MMAP_THRESHOLD = "131072"
MODES = {"none": 0, "blocks": 1, "every_k: 2": 2}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("ngpt", "gpt"), default="ngpt")
    p.add_argument("--seq-len", type=int, default=1024, help="context length (default 1024)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--embd", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3, help="measured steps per mode, after one warm-up step")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    return p.parse_args()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def main() -> int:
    args = parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    from ngpt_ds.model import ModelConfig, build_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    config = ModelConfig(
        arch=args.arch,
        vocab_size=args.vocab,
        n_layer=args.layers,
        n_embd=args.embd,
        n_head=args.heads,
        seq_len=args.seq_len,
    ).validate()
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    models, optimizers = {}, {}
    for mode, every in MODES.items():
        torch.manual_seed(1234)
        models[mode] = build_model(config)
        models[mode].checkpoint_every = every
        optimizers[mode] = torch.optim.Adam(models[mode].parameters(), lr=1e-3)

    def step(mode: str) -> dict:
        model, optimizer = models[mode], optimizers[mode]
        optimizer.zero_grad(set_to_none=False)  # gradient buffers stay allocated: not activation memory
        before = _status_kib("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        _, loss = model(inputs, targets)
        held = _status_kib("VmRSS") - before
        loss.backward()
        peak = _status_kib("VmHWM") - before
        optimizer.step()
        return {
            "step_s": time.perf_counter() - start,
            "held_mib": held / 1024,
            "peak_mib": peak / 1024,
            "loss": loss.item(),
        }

    for mode in MODES:  # warm-up: optimizer state and gradient buffers are allocated here
        step(mode)
    samples = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            samples[mode].append(step(mode))
    results = []
    for mode in MODES:
        row = {
            "mode": mode,
            **{key: statistics.median(s[key] for s in samples[mode]) for key in ("step_s", "held_mib", "peak_mib")},
        }
        results.append(row)
    base = results[0]
    for row in results:
        row["step_ratio"] = row["step_s"] / base["step_s"]
    # The same weights and data in every mode, and the same gradients: the losses agree exactly.
    same_losses = all(s["loss"] == samples["none"][i]["loss"] for mode in MODES for i, s in enumerate(samples[mode]))
    setting = (
        f"{args.arch}, {args.layers} layers, d {args.embd}, {args.heads} heads, context {args.seq_len}, "
        f"batch {args.batch}, vocab {args.vocab}, fp32, {args.rounds} rounds (median)"
    )
    lines = [
        "| train.activation_checkpointing | held after forward (MiB) | peak in fwd+bwd (MiB) | "
        "step (s) | step vs none |",
        "|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['mode']} | {row['held_mib']:.1f} | {row['peak_mib']:.1f} | {row['step_s']:.3f} | "
            f"{row['step_ratio']:.2f}x |"
        )
    table = "\n".join(lines)
    print(f"Setting: {setting}\n{table}\nlosses identical in every mode: {same_losses}")
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "results": results, "same_losses": same_losses}, indent=2))
    if args.docs:
        sys.path.insert(0, str(REPO / "bench"))
        from report import command_line, machine, update_section

        update_section(
            "activation_memory",
            f"Command: `{command_line()}`  \nMachine: {machine()}  \n"
            f"Setting: {setting}; memory is process RSS (allocator returns blocks >= 128 KiB).\n\n"
            f"{table}\n\nLosses identical in every mode: {same_losses}.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
