"""Where nGPT's extra step time goes: profile nGPT and GPT engine steps in one process, list the differences.

    python bench/step_diff.py [--shape tiny] [--steps 6] [--warmup 3] [--top 20] [--compile]
                              [--threads N] [--clock wall|cpu]

Builds one engine per architecture at a `bench/step_time.py` shape (nGPT with its hypersphere hook, as the
trainer runs it), warms both up, then runs `--steps` steps of each, alternating, each step under its own
torch.profiler. The table ranks operators by |nGPT self time - GPT self time| per step, so the rows are where
the two steps differ, not where both spend their time. It also prints each architecture's step time
(median of the unprofiled steps timed between the profiled ones, by `--clock`) and, for nGPT, the hook's
share: the self time of the operators run inside `engine.step()` after DeepSpeed's own step, counted as
the profiler's `hypersphere` record_function range around the hook.

`--compile` profiles the engines' modules through torch.compile, with Inductor's kernel profiling on (each
fused C++ kernel its own row), as bench/profile_step.py does. CPU only.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count  # noqa: E402


def _common_name(key: str, arch: str) -> str:
    """The profiler row's name without what differs between the two models' compiled graphs: Inductor's
    `graph_N_` prefix and kernel index, a compiled graph's hash, the step's own range."""
    key = re.sub(r"^graph_\d+_", "", key)
    key = re.sub(r"_\d+$", "", key) if key.startswith("cpp_fused") else key
    key = re.sub(r"CompiledFxGraph \w+", "CompiledFxGraph", key)
    return "step (Python, outside operators)" if key == f"step_{arch}" else key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", help="a bench/step_time.py shape (default tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--steps", type=count(1), default=6, help="profiled steps per architecture")
    parser.add_argument("--warmup", type=count(1), default=3, help="steps per architecture before profiling")
    parser.add_argument("--top", type=count(1), default=20, help="operators listed")
    parser.add_argument("--compile", action="store_true", help="profile torch.compile'd steps, kernel by kernel")
    add_timing_arguments(parser)
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    from engines import refuse_gpu

    if refuse_gpu(
        "bench/step_diff.py", "its profile records CPU operators only, and its steps have no CUDA synchronize"
    ):
        return 2

    import torch

    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    from engines import shape_engine
    from step_time import SHAPES
    from torch.profiler import ProfilerActivity, profile, record_function

    from ngpt_ds import distributed
    from ngpt_ds.train.builder import init_process_group

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shape, batch = SHAPES[args.shape]
    init_process_group(distributed.discover({}), timeout_s=300)
    steps = {}
    for arch in ("ngpt", "gpt"):
        bench = shape_engine(arch, shape, batch, args.ds)
        engine, hook = bench.engine, bench.hook
        forward = torch.compile(engine.module) if args.compile else engine
        tokens = torch.randint(0, shape["vocab_size"], (batch, shape["seq_len"] + 1))

        def step(engine=engine, forward=forward, tokens=tokens) -> float:
            start = clock()
            _, loss = forward(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            return clock() - start

        if hook is not None:
            inner = hook._renormalize  # looked up per call: a record_function range around each unit's renormalization

            def renormalize(*a, inner=inner, **k):
                with record_function("hypersphere"):
                    return inner(*a, **k)

            hook._renormalize = renormalize
        steps[arch] = (step, hook)
    for _ in range(args.warmup):
        for step, _ in steps.values():
            step()

    totals: dict[str, dict[str, list[float]]] = {arch: {} for arch in steps}
    times: dict[str, list[float]] = {arch: [] for arch in steps}
    hook_us: list[float] = []
    for round_index in range(args.steps):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for arch in order:
            step, hook = steps[arch]
            times[arch].append(step())  # unprofiled, timed
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                with record_function(f"step_{arch}"):
                    step()
            for e in prof.key_averages():
                if e.self_cpu_time_total <= 0 and not e.key.startswith("hypersphere"):
                    continue
                slot = totals[arch].setdefault(_common_name(e.key, arch), [0.0, 0.0])
                slot[0] += e.count
                slot[1] += e.self_cpu_time_total
                if e.key.startswith("hypersphere") and arch == "ngpt":
                    hook_us.append(e.cpu_time_total)
    n = args.steps
    keys = set(totals["ngpt"]) | set(totals["gpt"])
    rows = []
    for key in keys:
        a = totals["ngpt"].get(key, [0.0, 0.0])
        b = totals["gpt"].get(key, [0.0, 0.0])
        rows.append((key, a[0] / n, b[0] / n, a[1] / 1e3 / n, b[1] / 1e3 / n))
    rows.sort(key=lambda r: abs(r[3] - r[4]), reverse=True)
    sum_a = sum(v[1] for v in totals["ngpt"].values()) / 1e3 / n
    sum_b = sum(v[1] for v in totals["gpt"].values()) / 1e3 / n
    print(
        f"{args.shape}, {'compiled' if args.compile else 'eager'}, {torch.get_num_threads()} threads, {args.clock} clock; "
        f"unprofiled steps, median of {n}: nGPT {1e3 * statistics.median(times['ngpt']):.1f} ms, "
        f"GPT {1e3 * statistics.median(times['gpt']):.1f} ms, nGPT/GPT per round "
        f"{statistics.median(a / b for a, b in zip(times['ngpt'], times['gpt'])):.3f} "
        f"({min(a / b for a, b in zip(times['ngpt'], times['gpt'])):.3f}-"
        f"{max(a / b for a, b in zip(times['ngpt'], times['gpt'])):.3f})"
    )
    if hook_us:
        print(f"hypersphere hook (record_function ranges, total CPU time): {sum(hook_us) / 1e3 / n:.2f} ms per step")
    print(f"profiled self time per step: nGPT {sum_a:.1f} ms, GPT {sum_b:.1f} ms, difference {sum_a - sum_b:+.1f} ms")
    print("| operator | nGPT calls | GPT calls | nGPT self ms | GPT self ms | difference ms |")
    print("|---|---|---|---|---|---|")
    for key, ca, cb, ta, tb in rows[: args.top]:
        print(f"| `{key[:110]}` | {ca:g} | {cb:g} | {ta:.2f} | {tb:.2f} | {ta - tb:+.2f} |")
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))
