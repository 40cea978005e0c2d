"""One training step with its activation memory read from the process RSS, for the CPU memory benchmarks.

bench/activation_memory.py (checkpointing modes in one process) and bench/sequence_parallel.py
(1 rank against S sequence-parallel ranks) build the same model from the same command-line shape,
train it on the same batch and read memory the same way, so their tables compare:

- held: memory the forward keeps for the backward (process RSS after the forward minus before it);
- peak: the highest RSS during forward + backward above the RSS before it (VmHWM, reset through
  /proc/self/clear_refs before each step).

RSS only follows the tensors when the allocator returns freed large blocks to the system: both run
with MALLOC_MMAP_THRESHOLD_ set to MMAP_THRESHOLD (glibc reads it at startup).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

MMAP_THRESHOLD = "131072"
RSS_NOTE = "memory is process RSS (allocator returns blocks >= 128 KiB)"


def add_shape_arguments(p: argparse.ArgumentParser) -> None:
    """The model and batch: --arch, --seq-len, --layers, --embd, --heads, --batch, --vocab."""
    p.add_argument("--arch", choices=("ngpt", "gpt"), default="ngpt", help="model (default ngpt)")
    p.add_argument("--seq-len", type=int, default=1024, help="context length (default 1024)")
    p.add_argument("--layers", type=int, default=8, help="transformer blocks (default 8)")
    p.add_argument("--embd", type=int, default=64, help="model width d (default 64)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size (default 4096)")


def model_config(args: argparse.Namespace):
    """The validated ModelConfig of the shape arguments."""
    from ngpt_ds.model import ModelConfig

    return ModelConfig(
        arch=args.arch,
        vocab_size=args.vocab,
        n_layer=args.layers,
        n_embd=args.embd,
        n_head=args.heads,
        seq_len=args.seq_len,
    ).validate()


def fixed_batch(args: argparse.Namespace):
    """(inputs, targets) of one batch of random tokens, the same in every process (seed 0)."""
    import torch

    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    return tokens[:, :-1], tokens[:, 1:]


def setting(args: argparse.Namespace, summary: str) -> str:
    """The setting line of the tables; `summary` says how the rounds are summarized."""
    return (
        f"{args.arch}, {args.layers} layers, d {args.embd}, {args.heads} heads, context {args.seq_len}, "
        f"batch {args.batch}, vocab {args.vocab}, fp32, {args.rounds} rounds ({summary})"
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measured_step(model, optimizer, inputs, targets, after_backward: Callable[[], None] | None = None) -> dict:
    """Forward, backward, `after_backward` (a gradient reduction), optimizer step: its seconds
    (step_s), held and peak memory (held_mib, peak_mib) and loss."""
    optimizer.zero_grad(set_to_none=False)  # gradient buffers stay allocated: not activation memory
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    start = time.perf_counter()
    _, loss = model(inputs, targets)
    held = _status_kib("VmRSS") - before
    loss.backward()
    peak = _status_kib("VmHWM") - before
    if after_backward is not None:
        after_backward()
    optimizer.step()
    return {
        "step_s": time.perf_counter() - start,
        "held_mib": held / 1024,
        "peak_mib": peak / 1024,
        "loss": loss.item(),
    }


if __name__ == "__main__":
    import sys

    from report import module_main

    sys.exit(module_main(__doc__))
