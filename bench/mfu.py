"""Model FLOPs utilization of a training step, against this machine's measured matmul peak.

    python bench/mfu.py [--config ngpt_tiny] [--ds ds_configs/zero2.json] [--steps 20]
                        [--compile [--flash-compiled]] [--threads N] [--clock wall|cpu]

Achieved FLOP/s = training FLOPs per token (PaLM convention, ngpt_ds/model/flops.py) x tokens/s
of real DeepSpeed engine steps (the median step). Peak = the best of square-matmul timings in
the same process, dtype and threads, taken before and after the training steps (so both see the
same machine load).

`--compile` also runs the engine's module through torch.compile and alternates eager and
compiled steps of the same engine, so both modes see the same machine state. `--flash-compiled` adds a
third mode, compiled steps with attention on SDPA's flash kernel at every context (as before
`written_attention`, ngpt_ds/model/blocks.py), and prints compiled/that per step: the written
attention's gain, from the same interleaved steps.

CPU only: the peak is a CPU matmul and the steps are timed without a CUDA synchronize. On a machine
with a GPU the script stops with an error unless run as DS_ACCELERATOR=cpu (which times the CPU).

`--clock cpu` times steps and matmuls by this process's CPU time instead of wall time. On a
shared machine other processes stretch wall time (a loaded 2-core machine made two threads
wait on each other at every parallel operator); CPU time counts only the work done. It is a
step time only with one thread (`--threads 1`): with more, CPU time adds up all threads,
spin-waiting included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count, json_file  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--steps", type=count(1), default=20, help="timed steps after 3 warm-up steps")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps, alternating")
    parser.add_argument(
        "--flash-compiled",
        action="store_true",
        help="with --compile: also compiled steps with SDPA's flash attention at every context, alternating",
    )
    add_timing_arguments(parser)
    parser.add_argument("--json", type=json_file, help="write the result here too")
    parser.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    if args.flash_compiled and not args.compile:
        parser.error("--flash-compiled compares two compiled modes: add --compile")
    from engines import refuse_gpu

    if refuse_gpu(
        "bench/mfu.py",
        "its peak is a CPU matmul and its step times have no CUDA synchronize: a GPU's MFU would be nonsense",
    ):
        return 2

    import torch

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    from engines import preset_engine, with_flash_attention

    from ngpt_ds import distributed
    from ngpt_ds.model import training_flops_per_token
    from ngpt_ds.train.ds_config import precision_of
    from ngpt_ds.train.metrics import measure_matmul_flops

    bench = preset_engine(args.config, args.ds, distributed.discover({}))
    engine, model_cfg, ds, plan = bench.engine, bench.model, bench.ds, bench.plan
    dtype = torch.bfloat16 if precision_of(ds) == "bf16" else torch.float32
    peaks = [measure_matmul_flops(dtype, seconds=1.0, clock=clock)]
    tokens = torch.randint(0, model_cfg.vocab_size, (plan.micro_batch, model_cfg.seq_len + 1)).to(engine.device)
    forwards = {"eager": engine}
    if args.compile:
        forwards["compiled"] = torch.compile(engine.module)
    if args.flash_compiled:
        forwards["compiled, flash attention"] = with_flash_attention(torch.compile(engine.module))
    seconds = {mode: [] for mode in forwards}
    for step in range(args.steps + 3):
        for mode, forward in forwards.items():
            start = clock()
            _, loss = forward(tokens[:, :-1], tokens[:, 1:])
            engine.backward(loss)
            engine.step()
            if step >= 3:
                seconds[mode].append(clock() - start)
    peaks.append(measure_matmul_flops(dtype, seconds=1.0, clock=clock))
    flops_per_token = training_flops_per_token(model_cfg)

    def mode_result(times: list[float]) -> dict:
        tokens_per_s = plan.micro_batch * model_cfg.seq_len / statistics.median(times)
        achieved = flops_per_token * tokens_per_s
        return {"tokens_per_s": tokens_per_s, "achieved_tflops": achieved / 1e12, "mfu": achieved / max(peaks)}

    result = {
        "config": args.config,
        "arch": model_cfg.arch,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "flops_per_token": flops_per_token,
        "peak_tflops": max(peaks) / 1e12,
        **mode_result(seconds["eager"]),
    }
    for mode in forwards:
        if mode != "eager":
            result[mode] = mode_result(seconds[mode])
    rows = []
    for mode in forwards:
        r = result if mode == "eager" else result[mode]
        print(
            f"MFU {args.config} {mode} ({result['dtype']}, {result['threads']} threads, {args.clock} clock): "
            f"{r['tokens_per_s']:.0f} tokens/s x {flops_per_token / 1e6:.1f} MFLOP/token = "
            f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s; matmul peak {result['peak_tflops'] * 1e3:.1f} GFLOP/s; "
            f"MFU {100 * r['mfu']:.1f}%"
        )
        rows.append(
            f"| {args.config} | {mode} | {result['dtype']} | {result['threads']} | {args.clock} | "
            f"{r['tokens_per_s']:.0f} | {flops_per_token / 1e6:.1f} | {r['achieved_tflops'] * 1e3:.1f} | "
            f"{result['peak_tflops'] * 1e3:.1f} | **{100 * r['mfu']:.1f}%** |"
        )
    if args.flash_compiled:
        # tokens/s of compiled over compiled with flash attention, per pair of steps timed in the same step
        gains = [f / c for c, f in zip(seconds["compiled"], seconds["compiled, flash attention"])]
        result["written_attention_gain"] = {"median": statistics.median(gains), "min": min(gains), "max": max(gains)}
        below = sum(g > 1 for g in gains)
        print(
            f"compiled / compiled with flash attention, tokens/s per step: {statistics.median(gains):.3f} "
            f"({min(gains):.3f}-{max(gains):.3f}), above 1.0 in {below} of {len(gains)} steps"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "mfu",
            f"Command: `{command_line()}`  \nMachine: {machine()}; medians of {args.steps} steps\n\n"
            "| model | mode | dtype | threads | clock | tokens/s | MFLOP/token | achieved GFLOP/s | "
            "matmul peak GFLOP/s | MFU |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows),
        )
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
