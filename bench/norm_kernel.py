"""Norm's eager backward and forward through `ngpt_ds.model.norm_kernel`'s C++ loops against torch's operators
(issue 14).

    python bench/norm_kernel.py [--part backward|update|step] [--rounds 10] [--passes 30] [--threads N] [--clock wall|cpu]

`--part backward` (default): `layers.tangent_rows`, Norm's backward alone, at `tiny`'s shapes (the stream's
[8, 256, 192] with one factor per row, q and k's [8, 256, 2, 4, 48] with the factor copied to the whole shape,
as the model runs them), bf16 and fp32, torch's operators and the loops alternating within each round (which
goes first alternating too); the loops' values are checked equal to torch's (torch.equal) before timing.
`--part update`: eq. 10-11's update (`ngpt.block_update`) at the stream's shape, forward plus backward (its
forward in one loop, its two Norms' backwards and its own products through the loops), bf16 and fp32, gradients
checked equal first.
`--part step`: whole eager engine steps at `tiny` (bench/engines.py, ds_configs/zero2.json, one rank, the
hypersphere hook), three engines interleaved: nGPT with the loops (NGPT_DS_NORM_KERNEL=1 during its steps),
nGPT with torch's operators (NGPT_DS_NORM_KERNEL=0), GPT; `--passes` is ignored there, and the two nGPT engines' first losses are checked
equal. Both print medians and per-round ratios, median (min-max). glibc's allocator is set as the trainer sets
it. The loops are built on the first run on a machine (about 30 s of CPU time). docs/benchmarks.md, "Norm's
backward in C++" and "Norm's forward in C++", has the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402

ENV = "NGPT_DS_NORM_KERNEL"


def _ratio(times: dict[str, list[float]], a: str, b: str) -> str:
    per_round = [x / y for x, y in zip(times[a], times[b])]
    return f"{statistics.median(per_round):.3f} ({min(per_round):.3f}-{max(per_round):.3f})"


def _interleave(forms: dict[str, Callable[[], float]], rounds: int, warmup: int) -> dict[str, list[float]]:
    names = list(forms)
    for _ in range(warmup):
        for form in forms.values():
            form()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            times[name].append(forms[name]())
    return times


def _backward_pass(
    loops: bool, tensors: tuple[Any, Any, Any, Any], passes: int, clock: Callable[[], float]
) -> Callable[[], float]:
    """ms per `layers.tangent_rows` call over `passes` calls, with the loops or torch's operators."""
    from ngpt_ds.model.layers import tangent_rows

    grad, y, inv_norm, factor = tensors

    def run() -> float:
        os.environ[ENV] = "1" if loops else "0"
        start = clock()
        for _ in range(passes):
            tangent_rows(grad, y, inv_norm, -1, factor)
        return (clock() - start) / passes * 1e3

    return run


def backward_part(rounds: int, passes: int, clock: Callable[[], float]) -> int:
    import torch

    from ngpt_ds.model import norm_kernel
    from ngpt_ds.model.layers import _row_factor, tangent_rows

    if norm_kernel.loops() is None:
        return 1
    for dtype in (torch.bfloat16, torch.float32):
        for shape in ((8, 256, 192), (8, 256, 2, 4, 48)):
            torch.manual_seed(0)
            x, grad = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
            inv_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
            factor = _row_factor(x, inv_norm.to(dtype))
            y = x * factor

            os.environ[ENV] = "0"
            reference = tangent_rows(grad, y, inv_norm, -1, factor)
            os.environ[ENV] = "1"
            looped = norm_kernel.tangent_rows(grad, y, inv_norm, -1, factor)
            if looped is None or not torch.equal(looped, reference):
                print(f"{dtype} {shape}: the loops' values differ from torch's operators", file=sys.stderr)
                return 1
            forms = {
                name: _backward_pass(name == "loops", (grad, y, inv_norm, factor), passes, clock)
                for name in ("torch", "loops")
            }
            times = _interleave(forms, rounds, 1)
            print(
                f"{str(dtype).removeprefix('torch.'):<9} {str(list(shape)):<20} torch {statistics.median(times['torch']):.3f} ms  "
                f"loops {statistics.median(times['loops']):.3f} ms  loops/torch {_ratio(times, 'loops', 'torch')}",
                flush=True,
            )
    return 0


def update_part(rounds: int, passes: int, clock: Callable[[], float]) -> int:
    import torch

    from ngpt_ds.model import ngpt, norm_kernel

    if norm_kernel.loops() is None:
        return 1
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        h0 = torch.nn.functional.normalize(torch.randn(8, 256, 192), dim=-1).to(dtype)
        x0, grad = torch.randn(8, 256, 192).to(dtype), torch.randn(8, 256, 192).to(dtype)
        alpha0 = torch.full((192,), 0.05).to(dtype)
        inputs = [t.detach().requires_grad_() for t in (h0, x0, alpha0)]

        def once(loops: bool, inputs: list[torch.Tensor] = inputs, grad: torch.Tensor = grad) -> list[torch.Tensor]:
            os.environ[ENV] = "1" if loops else "0"
            return list(torch.autograd.grad(ngpt.block_update(*inputs), inputs, grad))

        if not all(torch.equal(a, b) for a, b in zip(once(True), once(False))):
            print(f"{dtype}: the update's gradients differ with the loops", file=sys.stderr)
            return 1

        def timed(loops: bool, once: Callable[[bool], list[torch.Tensor]] = once) -> Callable[[], float]:
            def run() -> float:
                start = clock()
                for _ in range(passes):
                    once(loops)
                return (clock() - start) / passes * 1e3

            return run

        times = _interleave({"torch": timed(False), "loops": timed(True)}, rounds, 1)
        print(
            f"update {str(dtype).removeprefix('torch.'):<9} [8, 256, 192] forward+backward: torch "
            f"{statistics.median(times['torch']):.3f} ms  loops {statistics.median(times['loops']):.3f} ms  "
            f"loops/torch {_ratio(times, 'loops', 'torch')}",
            flush=True,
        )
    return 0


def step_part(rounds: int, clock: Callable[[], float]) -> int:
    from ngpt_ds.cli import default_accelerator

    default_accelerator()
    import torch
    from engines import shape_engine
    from step_time import SHAPES

    from ngpt_ds import distributed
    from ngpt_ds.model import norm_kernel
    from ngpt_ds.train.builder import init_process_group

    os.environ[ENV] = "1"
    if norm_kernel.loops() is None:
        return 1
    init_process_group(distributed.discover({}), timeout_s=600)
    shape, batch = SHAPES["tiny"]
    tokens = torch.randint(0, shape["vocab_size"], (batch, shape["seq_len"] + 1))
    losses: dict[str, list[float]] = {"loops": [], "torch": []}

    def timed(arch: str, loops: bool | None) -> Callable[[], float]:
        engine = shape_engine(arch, shape, batch, str(REPO / "ds_configs/zero2.json")).engine

        def run() -> float:
            os.environ[ENV] = "1" if loops else "0"
            start = clock()
            _, loss = engine(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            seconds = clock() - start
            if loops is not None:
                losses["loops" if loops else "torch"].append(loss.item())
            return seconds * 1e3

        return run

    torch.manual_seed(0)
    loops_step = timed("ngpt", True)
    torch.manual_seed(0)
    torch_step = timed("ngpt", False)
    times = _interleave({"loops": loops_step, "torch": torch_step, "gpt": timed("gpt", None)}, rounds, 2)
    if losses["loops"][0] != losses["torch"][0]:
        print(f"first losses differ: {losses['loops'][0]!r} against {losses['torch'][0]!r}", file=sys.stderr)
        return 1
    print(
        "nGPT loops {:.1f} ms, nGPT torch {:.1f} ms, GPT {:.1f} ms (medians of {} rounds)".format(
            *(statistics.median(times[k]) for k in ("loops", "torch", "gpt")), rounds
        )
    )
    print(f"nGPT loops / nGPT torch: {_ratio(times, 'loops', 'torch')}")
    print(f"nGPT torch / GPT:        {_ratio(times, 'torch', 'gpt')}")
    print(f"nGPT loops / GPT:        {_ratio(times, 'loops', 'gpt')}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("backward", "update", "step"), default="backward")
    parser.add_argument("--rounds", type=count(1), default=10)
    parser.add_argument("--passes", type=count(1), default=30, help="backward passes per form and round")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    from ngpt_ds.hostmem import keep_freed_memory

    keep_freed_memory()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.part == "backward":
        return backward_part(args.rounds, args.passes, clock)
    if args.part == "update":
        return update_part(args.rounds, args.passes, clock)
    return step_part(args.rounds, clock)


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))
