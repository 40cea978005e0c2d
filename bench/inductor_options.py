"""Compiled training steps under Inductor options, alternating in one process.

    python bench/inductor_options.py [--config ngpt_tiny] [--ds ds_configs/zero2.json] [--steps 10]
                                     [--variant NAME ...] [--threads N] [--clock wall|cpu]

One DeepSpeed engine (as bench/mfu.py builds it); its module is compiled once per variant with
`torch.compile(module, options=...)`, Inductor's per-compile config. Every round runs one engine step
(forward, engine.backward, engine.step) per variant, the variants' order rotating by round, so all of
them see the same machine state and the same training run. Before any step each variant's loss on one
batch at the same weights is compared with the default compile's (forward only, values printed; the
compile's backward graph is built there too, so the timed steps do not pay for it).

Variants (`--variant`, repeatable; default: all):
  default             torch.compile's defaults
  aggressive_fusion   Inductor's `aggressive_fusion`: fuse nodes that share no memory reads too
  no_epilogue_fusion  `epilogue_fusion` off (on by default): a control for what it gives
  simdlen_256         `cpp.simdlen` 256: AVX2-width vectors instead of the CPU's widest (AVX512 here)
  compiled_autograd   the default compile, its backward run under compiled autograd
                      (torch._dynamo.compiled_autograd, Inductor): DeepSpeed's gradient hooks traced too;
                      the loss check above does not reach its gradients
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402

VARIANTS: dict[str, dict] = {
    "default": {},
    "aggressive_fusion": {"aggressive_fusion": True},
    "no_epilogue_fusion": {"epilogue_fusion": False},
    "simdlen_256": {"cpp.simdlen": 256},
    "compiled_autograd": {},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--steps", type=count(1), default=10, help="timed rounds after 2 warm-up rounds")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    from engines import preset_engine, refuse_gpu

    if refuse_gpu("bench/inductor_options.py", "it times CPU steps without a CUDA synchronize"):
        return 2
    import torch
    import torch._dynamo
    from torch._dynamo import compiled_autograd

    from ngpt_ds import distributed

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = ["default"] + [n for n in (args.variant or sorted(VARIANTS)) if n != "default"]
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(names))
    bench = preset_engine(args.config, args.ds, distributed.discover({}))
    engine, model_cfg, plan = bench.engine, bench.model, bench.plan
    torch.manual_seed(0)
    tokens = torch.randint(0, model_cfg.vocab_size, (plan.micro_batch, model_cfg.seq_len + 1)).to(engine.device)
    forwards = {name: torch.compile(engine.module, options=VARIANTS[name]) for name in names}
    losses = {}
    for name, forward in forwards.items():
        start = time.perf_counter()
        _, loss = forward(tokens[:, :-1], tokens[:, 1:])
        losses[name] = loss.item()
        print(f"{name}: compiled in {time.perf_counter() - start:.1f} s, loss {losses[name]!r}", flush=True)
        del loss
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for step in range(args.steps + 2):
        order = names[step % len(names) :] + names[: step % len(names)]
        for name in order:
            start = clock()
            _, loss = forwards[name](tokens[:, :-1], tokens[:, 1:])
            if name == "compiled_autograd":
                with compiled_autograd._enable(torch.compile(backend="inductor", dynamic=False)):
                    engine.backward(loss)
            else:
                engine.backward(loss)
            engine.step()
            if step >= 2:
                seconds[name].append(clock() - start)
    base = statistics.median(seconds["default"])
    print(f"{args.config}, {torch.get_num_threads()} thread(s), {args.clock} clock, {args.steps} rounds")
    for name in names:
        ratios = [a / b for a, b in zip(seconds[name], seconds["default"])]
        print(
            f"{name:20s} step {1e3 * statistics.median(seconds[name]):8.1f} ms  vs default "
            f"{statistics.median(seconds[name]) / base:.3f} (per round {statistics.median(ratios):.3f}, "
            f"{min(ratios):.3f}-{max(ratios):.3f})  loss - default {losses[name] - losses['default']:+.3e}"
        )
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
