"""Ulysses sequence parallelism against the plain 1-rank run: step time and activation memory per rank.

    python bench/sequence_parallel.py [--seq-len 1024] [--sp 2] [--rounds 3] [--json FILE] [--docs]

The same model (same seed) trains on the same batch in two jobs started one after the other with
torchrun: 1 rank holding whole sequences, and S ranks each holding seq_len / S positions of them
(ngpt_ds.parallel.sequence: DeepSpeed's all-to-all attention, gradients summed over the sequence group
as DeepSpeed's ZeRO would). Per job and rank it reports the median over the rounds of:

- held: memory the forward keeps for the backward (process RSS after the forward minus before it);
- peak: the highest RSS during forward + backward above the RSS before it (VmHWM, reset through
  /proc/self/clear_refs before each step);
- step: seconds of forward, backward, the gradient all-reduce (S > 1) and the Adam step.

The worst rank is shown. The jobs run with MALLOC_MMAP_THRESHOLD_=131072, so freed large blocks go
back to the system and RSS follows the tensors (as in bench/activation_memory.py), and one thread per
rank. On a GPU, read torch.cuda.max_memory_allocated instead; this script measures CPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import rss_step  # noqa: E402
from report import count, json_file  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rss_step.add_shape_arguments(p)
    p.add_argument("--sp", type=count(1), default=2, help="sequence-parallel size of the second job (default 2)")
    p.add_argument("--rounds", type=count(1), default=3, help="measured steps per job, after one warm-up step")
    p.add_argument("--json", type=json_file, default=None, help="also write the results here")
    p.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one rank
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One rank of a job: train `rounds` + 1 steps, rank 0 writes every rank's samples to args.worker."""
    import torch
    import torch.distributed as dist

    from ngpt_ds import distributed
    from ngpt_ds.model import build_model
    from ngpt_ds.parallel.sequence import create_sequence_groups, parallelize_sequence
    from ngpt_ds.train.builder import init_process_group

    init_process_group(distributed.discover(), timeout_s=600)
    sp = dist.get_world_size()
    torch.manual_seed(1234)
    model = build_model(rss_step.model_config(args))
    groups = create_sequence_groups(sp) if sp > 1 else None
    if groups is not None:
        parallelize_sequence(model, groups)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = rss_step.fixed_batch(args)

    def sum_gradients() -> None:  # what DeepSpeed's reduction does: sum the chunks' gradients
        flat = torch.cat([p.grad.flatten() for p in model.parameters()])
        dist.all_reduce(flat, group=groups.sp_group)
        offset = 0
        for p in model.parameters():
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def step() -> dict:
        return rss_step.measured_step(model, optimizer, inputs, targets, sum_gradients if groups is not None else None)

    step()  # warm-up: optimizer state and gradient buffers are allocated here
    samples = [step() for _ in range(args.rounds)]
    everyone = [None] * sp
    dist.all_gather_object(everyone, samples)
    if dist.get_rank() == 0:
        args.worker.write_text(json.dumps(everyone))
    dist.barrier()
    dist.destroy_process_group()


def run_job(args: argparse.Namespace, ranks: int, out: Path) -> dict:
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "MALLOC_MMAP_THRESHOLD_": rss_step.MMAP_THRESHOLD,
    }
    # --standalone: torchrun's agent listens on a port of the kernel's choosing and hands it to the ranks. A port
    # probed here and closed could be taken by any other process's connection before the agent listened on it.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--standalone"]
    cmd += [__file__, "--worker", str(out)]
    for name in ("arch", "seq_len", "layers", "embd", "heads", "batch", "vocab", "rounds"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {ranks}-rank job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    per_rank = json.loads(out.read_text())
    row = {"ranks": ranks}
    for key in ("step_s", "held_mib", "peak_mib"):
        row[key] = max(statistics.median(s[key] for s in samples) for samples in per_rank)
    row["losses"] = [s["loss"] for s in per_rank[0]]
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        plain = run_job(args, 1, Path(tmp) / "plain.json")
        split = run_job(args, args.sp, Path(tmp) / "sp.json")
    loss_diff = max(abs(a - b) for a, b in zip(plain["losses"], split["losses"]))
    setting = rss_step.setting(args, "median, worst rank")
    lines = [
        "| run | ranks | positions per rank | held after forward (MiB) | peak in fwd+bwd (MiB) | step (s) | "
        "step vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in (("plain", plain), (f"train.sequence_parallel_size: {args.sp}", split)):
        lines.append(
            f"| {name} | {row['ranks']} | {args.seq_len // row['ranks']} | {row['held_mib']:.1f} | "
            f"{row['peak_mib']:.1f} | {row['step_s']:.3f} | {row['step_s'] / plain['step_s']:.2f}x |"
        )
    table = "\n".join(lines)
    print(f"Setting: {setting}\n{table}\nlargest loss difference, SP vs plain: {loss_diff:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"setting": setting, "plain": plain, "sp": split}, indent=2))
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "sequence_parallel",
            "`bench/sequence_parallel.py` runs the same training steps as 1 rank and as "
            f"{args.sp} sequence-parallel ranks, and reports each rank's activation memory (process RSS) and "
            "step time. Each rank holds 1/S of every sequence, so its activations shrink S-fold. The step "
            "time compares S processes (one thread each) with one, as two jobs run one after the other, not "
            "interleaved rounds: a change of load between them moves the ratio. Below 1x the ranks' parallel "
            "work outweighs the all-to-alls here, on a shared machine whose times are rough; on GPUs the "
            "all-to-alls cost bandwidth instead.\n\n"
            f"Command: `{command_line()}`  \nMachine: {machine()}  \n"
            f"Setting: {setting}; {rss_step.RSS_NOTE}.\n\n"
            f"{table}\n\nLargest loss difference, sequence-parallel vs plain: {loss_diff:.1e}.",
        )
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
