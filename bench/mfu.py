"""Model FLOPs utilization of a training step, against this machine's measured matmul peak.

    python bench/mfu.py [--config ngpt_tiny] [--ds ds_configs/zero2.json] [--steps 20]

Achieved FLOP/s = training FLOPs per token (PaLM convention, ngpt_ds/model/flops.py) x tokens/s
of real DeepSpeed engine steps. Peak = the best of square-matmul timings in the same process
and dtype, taken before and after the training steps (so both see the same machine load).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="ngpt_tiny", help="preset or YAML (default ngpt_tiny)")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after 3 warm-up steps")
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    from ngpt_ds.cli import default_accelerator

    default_accelerator()
    from ngpt_ds import distributed
    from ngpt_ds.model import training_flops_per_token
    from ngpt_ds.train.builder import init_process_group, start_engine
    from ngpt_ds.train.config import RunConfig, load_model_and_train
    from ngpt_ds.train.ds_config import check_ds_config, load_ds_config, precision_of
    from ngpt_ds.train.hypersphere import HypersphereHook
    from ngpt_ds.train.metrics import measure_matmul_flops

    model_cfg, train_cfg, _ = load_model_and_train(args.config)
    model_cfg.vocab_size = model_cfg.vocab_size or 4096
    ds = load_ds_config(args.ds)
    plan = check_ds_config(
        ds, world_size=1, tensor_parallel=1, source=args.ds, fp16_supported=False, bf16_supported=True
    )
    env = distributed.discover({})
    init_process_group(env, timeout_s=300)
    engine = start_engine(
        RunConfig(
            config_source=args.config,
            model=model_cfg,
            train=train_cfg,
            deepspeed=ds,
            deepspeed_source=args.ds,
            data_dir="",
            out_dir="",
        )
    )
    if model_cfg.is_ngpt:
        HypersphereHook(engine).normalize_now()
    dtype = torch.bfloat16 if precision_of(ds) == "bf16" else torch.float32
    peaks = [measure_matmul_flops(dtype, seconds=1.0)]
    tokens = torch.randint(0, model_cfg.vocab_size, (plan.micro_batch, model_cfg.seq_len + 1)).to(engine.device)
    seconds = []
    for step in range(args.steps + 3):
        start = time.perf_counter()
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        if step >= 3:
            seconds.append(time.perf_counter() - start)
    peaks.append(measure_matmul_flops(dtype, seconds=1.0))
    tokens_per_s = plan.micro_batch * model_cfg.seq_len * len(seconds) / sum(seconds)
    achieved = training_flops_per_token(model_cfg) * tokens_per_s
    result = {
        "config": args.config,
        "arch": model_cfg.arch,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": training_flops_per_token(model_cfg),
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": max(peaks) / 1e12,
        "mfu": achieved / max(peaks),
    }
    print(
        f"MFU {args.config} ({result['dtype']}, {result['threads']} threads): {tokens_per_s:.0f} tokens/s x "
        f"{result['flops_per_token'] / 1e6:.1f} MFLOP/token = {result['achieved_tflops'] * 1e3:.1f} GFLOP/s; "
        f"matmul peak {result['peak_tflops'] * 1e3:.1f} GFLOP/s; MFU {100 * result['mfu']:.1f}%"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "mfu",
            f"Command: `{command_line()}`  \nMachine: {machine()}\n\n"
            f"| model | dtype | threads | tokens/s | MFLOP/token | achieved GFLOP/s | matmul peak GFLOP/s | MFU |\n"
            f"|---|---|---|---|---|---|---|---|\n"
            f"| {args.config} | {result['dtype']} | {result['threads']} | {tokens_per_s:.0f} | "
            f"{result['flops_per_token'] / 1e6:.1f} | {result['achieved_tflops'] * 1e3:.1f} | "
            f"{result['peak_tflops'] * 1e3:.1f} | **{100 * result['mfu']:.1f}%** |",
        )
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
