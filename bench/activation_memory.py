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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import rss_step  # noqa: E402
from report import count, json_file  # noqa: E402

MODES = {"none": 0, "blocks": 1, "every_k: 2": 2}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rss_step.add_shape_arguments(p)
    p.add_argument("--rounds", type=count(1), default=3, help="measured steps per mode, after one warm-up step")
    p.add_argument("--json", type=json_file, default=None, help="also write the results here")
    p.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != rss_step.MMAP_THRESHOLD:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": rss_step.MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    from ngpt_ds.model import build_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    config = rss_step.model_config(args)
    inputs, targets = rss_step.fixed_batch(args)
    models, optimizers = {}, {}
    for mode, every in MODES.items():
        torch.manual_seed(1234)
        models[mode] = build_model(config)
        models[mode].checkpoint_every = every
        optimizers[mode] = torch.optim.Adam(models[mode].parameters(), lr=1e-3)

    def step(mode: str) -> dict:
        return rss_step.measured_step(models[mode], optimizers[mode], inputs, targets)

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
    setting = rss_step.setting(args, "median")
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
        from report import command_line, machine, update_section

        update_section(
            "activation_memory",
            f"Command: `{command_line()}`  \nMachine: {machine()}  \n"
            f"Setting: {setting}; {rss_step.RSS_NOTE}.\n\n"
            f"{table}\n\nLosses identical in every mode: {same_losses}.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
