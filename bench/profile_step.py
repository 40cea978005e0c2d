"""Where the time of one training step goes: torch.profiler over DeepSpeed engine steps.

    python bench/profile_step.py [--config ngpt_tiny] [--ds ds_configs/zero2.json] [--steps 3] [--top 15]
                                 [--threads N] [--compile]

The engine is built as the trainer builds it (bench/engines.py; nGPT with its hypersphere hook). After
warm-up steps, `--steps` steps run under torch.profiler; the table lists the operators
with the most self CPU time (time inside the operator itself, not its children), summed
over those steps, and the share of each in the profiled total. The profiler times by the
wall clock: on a loaded machine prefer `--threads 1`, where an operator's time is its own work
stretched by the load, not waits for a descheduled second thread (bench/mfu.py).

`--compile` profiles the engine's module through torch.compile (as bench/mfu.py does) with
Inductor's kernel profiling on, so each fused C++ kernel is its own row, named after the operators
it fused (`graph_0_cpp_fused_..._cos_...`). That is how RoPE's cos and sin were found recomputed in
every kernel that read them (docs/benchmarks.md, "MFU"). CPU only: on a GPU, Inductor's kernels run
asynchronously and this table shows their launches.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from report import count  # noqa: E402  (bench/, the script's folder, is on sys.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--steps", type=count(1), default=3, help="profiled steps after 3 warm-up steps")
    parser.add_argument("--top", type=count(1), default=15, help="operators listed")
    parser.add_argument("--threads", type=count(1), help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="profile torch.compile'd steps, kernel by kernel")
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # one profiler row per fused C++ kernel

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # init_process_group keeps a set OMP_NUM_THREADS
    from engines import preset_engine
    from torch.profiler import ProfilerActivity, profile

    from ngpt_ds import distributed

    bench = preset_engine(args.config, args.ds, distributed.discover({}))
    engine, model_cfg, plan = bench.engine, bench.model, bench.plan
    tokens = torch.randint(0, model_cfg.vocab_size, (plan.micro_batch, model_cfg.seq_len + 1)).to(engine.device)

    forward = torch.compile(engine.module) if args.compile else engine

    def step() -> None:
        _, loss = forward(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        "| operator | calls per step | self ms per step | share |",
        "|---|---|---|---|",
    ]
    for e in events[: args.top]:
        rows.append(
            f"| `{e.key}` | {e.count / args.steps:g} | {e.self_cpu_time_total / 1e3 / args.steps:.1f} | "
            f"{100 * e.self_cpu_time_total / total:.1f}% |"
        )
    rows.append(f"| all operators | | {total / 1e3 / args.steps:.1f} | 100% |")
    table = "\n".join(rows)
    print(table)
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "profile_step_compiled" if args.compile else "profile_step",
            f"Command: `{command_line()}`  \nMachine: {machine()}, {torch.get_num_threads()} threads; "
            f"{args.config}{', compiled' if args.compile else ''}, micro-batch {plan.micro_batch} x "
            f"{model_cfg.seq_len}, self CPU time over {args.steps} profiled steps.\n\n" + table,
        )
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
