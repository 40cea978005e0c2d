"""One training step with its activation memory read from the process RSS, for the CPU memory benchmarks.

bench/activation_memory.py (checkpointing modes in one process) and bench/sequence_parallel.py
(1 rank against S sequence-parallel ranks) build the same model from the same command-line shape,
train it on the same batch and read memory the same way, so their tables compare:

- held: memory the forward keeps for the backward (process RSS after the forward minus before it);
- peak: the highest RSS during forward + backward above the RSS before it (VmHWM, reset through
  /proc/self/clear_refs before each step).

RSS only follows the tensors when the allocator returns freed large blocks to the system: both run
with MALLOC_MMAP_THRESHOLD_ set to MMAP_THRESHOLD (glibc reads it at startup).

Run as a script, it sets the startup memory check's figure beside the peak measured: for each shape, ZeRO
stage and precision a fresh process starts the trainer's engine on one rank (bench/engines.shape_engine: the
DeepSpeed engine and, for nGPT, the hypersphere hook), trains STEPS steps on one batch and reports the rise
of its peak RSS (VmHWM) over the RSS before the model was built, against what ngpt_ds.train.memory_plan
counts for that run (check_state_fits: training state from parameters_at_least, plus activations_at_least).
The check is a lower bound by design; the table says how far below the real peak it sits:

    python bench/rss_step.py [--docs]
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


SHAPES = {
    # name: (n_layer, n_embd, n_head, seq_len, vocab, micro batch)
    "small": (4, 256, 4, 256, 4096, 4),
    "medium": (6, 512, 8, 512, 8192, 4),
    "wide": (4, 1024, 8, 256, 32768, 2),
}
STEPS = 3


def one_row(shape: str, zero: int, precision: str) -> dict:
    """In this process (a fresh one): the check's figures and the measured peak of one run."""
    import json
    import tempfile

    from engines import shape_engine  # noqa: PLC2701  (the bench scripts' shared construction)

    from ngpt_ds import distributed
    from ngpt_ds.train import memory_plan
    from ngpt_ds.train.builder import init_process_group

    layers, embd, heads, seq_len, vocab, batch = SHAPES[shape]
    init_process_group(distributed.discover({}), timeout_s=600)
    import torch

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"train_micro_batch_size_per_gpu": batch, "bf16": {"enabled": precision == "bf16"},
                   "zero_optimization": {"stage": zero}, "gradient_clipping": 1.0}, f)  # fmt: skip
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM from here
    shape_fields = {"n_layer": layers, "n_embd": embd, "n_head": heads, "seq_len": seq_len, "vocab_size": vocab}
    bench = shape_engine("ngpt", shape_fields, batch, f.name)
    config = bench.model
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    for _ in range(STEPS):
        _, loss = bench.engine(tokens[:, :-1], tokens[:, 1:])
        bench.engine.backward(loss)
        bench.engine.step()  # the hypersphere hook (nGPT) runs inside it, as in the trainer
    peak = (_status_kib("VmHWM") - before) * 1024
    parameters = memory_plan.parameters_at_least(config)
    state = memory_plan.state_bytes_per_parameter(precision, zero, 1) * parameters
    activations = memory_plan.activations_at_least(config, micro_batch=batch, precision=precision)
    exact = sum(p.numel() for p in bench.engine.module.parameters())
    return {
        "shape": shape, "zero": zero, "precision": precision, "layers": layers, "embd": embd, "seq_len": seq_len,
        "vocab": vocab, "batch": batch, "parameters_counted": parameters, "parameters": exact,
        "state_counted": state, "activations_counted": activations, "counted": state + activations,
        "peak_rise": peak, "rss_before": before * 1024, "loss": float(loss),
    }  # fmt: skip


def main() -> int:
    import json
    import os
    import subprocess
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)} (default: all)")
    p.add_argument("--zero", default="0,2", help="ZeRO stages (default 0,2)")
    p.add_argument("--precisions", default="fp32,bf16", help="default fp32,bf16 (bf16 where the CPU has it)")
    p.add_argument("--docs", action="store_true", help="also write the table into docs/benchmarks.md")
    p.add_argument("--row", help=argparse.SUPPRESS)  # shape:zero:precision, in a child process
    args = p.parse_args()
    if args.row:
        from ngpt_ds.distributed import exit_process

        shape, zero, precision = args.row.split(":")
        print("ROW " + json.dumps(one_row(shape, int(zero), precision)), flush=True)
        exit_process(0)  # no interpreter teardown after a process group (see there)
        return 0
    from ngpt_ds.train.ds_config import cpu_has_native_bf16

    precisions = [x for x in args.precisions.split(",") if x != "bf16" or cpu_has_native_bf16()]
    env = dict(os.environ, DS_ACCELERATOR="cpu", NGPT_DS_CPU_BF16="1")
    load = open("/proc/loadavg").read().split()[0]
    mib = 2**20
    header = (
        f"{'shape':<7} {'ZeRO':>4} {'prec':<5} {'params':>7} {'state':>8} {'activ.':>8} {'counted':>8} "
        f"{'peak RSS':>9} {'peak/counted':>12}"
    )
    print(header + "   (MiB; peak RSS: its rise over the RSS before the model)", flush=True)
    rows = []
    for shape in args.shapes.split(","):
        for zero in (int(z) for z in args.zero.split(",")):
            for precision in precisions:
                done = subprocess.run(
                    [sys.executable, __file__, "--row", f"{shape}:{zero}:{precision}"],
                    env=env, capture_output=True, text=True, timeout=1200,
                )  # fmt: skip
                line = next((x for x in done.stdout.splitlines() if x.startswith("ROW ")), None)
                if line is None:
                    print(f"{shape} ZeRO {zero} {precision}: failed\n{done.stderr[-2000:]}", flush=True)
                    return 1
                r = json.loads(line[4:])
                rows.append(r)
                print(
                    f"{shape:<7} {zero:>4} {precision:<5} {r['parameters'] / 1e6:>6.1f}M {r['state_counted'] / mib:>8.0f} "
                    f"{r['activations_counted'] / mib:>8.0f} {r['counted'] / mib:>8.0f} {r['peak_rise'] / mib:>9.0f} "
                    f"{r['peak_rise'] / r['counted']:>12.2f}",
                    flush=True,
                )
    load_after = open("/proc/loadavg").read().split()[0]
    print(f"load average (1 min) {load} before, {load_after} after")
    if args.docs:
        from report import command_line, machine, update_section

        table = [
            "| shape (L, d, context, vocab, batch) | ZeRO | precision | parameters | counted: state + activations "
            "(MiB) | peak RSS rise (MiB) | peak / counted |",
            "|---|---|---|---|---|---|---|",
        ]
        table += [
            f"| {r['shape']} ({r['layers']}, {r['embd']}, {r['seq_len']}, {r['vocab']}, {r['batch']}) | {r['zero']} | "
            f"{r['precision']} | {r['parameters'] / 1e6:.1f}M | {r['state_counted'] / mib:.0f} + "
            f"{r['activations_counted'] / mib:.0f} = {r['counted'] / mib:.0f} | {r['peak_rise'] / mib:.0f} | "
            f"**{r['peak_rise'] / r['counted']:.2f}** |"
            for r in rows
        ]
        update_section(
            "rss_check",
            f"Command: `{command_line()}`  \nMachine: {machine()}; one rank, {STEPS} steps, load average "
            f"{load} before and {load_after} after.\n\n" + "\n".join(table),
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
