"""The PYTHON that bench/gpu_check.sh runs, imitating a machine with $FAKE_GPUS CUDA GPUs, on a CPU.

bench/gpu_check.sh calls "$PYTHON" for everything. This stand-in answers its GPU count with
$FAKE_GPUS, so the script takes its real GPU path (RANKS = the GPU count, the GPU-size trainer
config), and for each command:
  - `-c` asking torch.cuda.device_count(): prints $FAKE_GPUS;
  - `-m torch.distributed.run ... launch/train.py ARGS`: the checks the trainer makes on every rank
    before its first step that need no GPU: the startup checks (ngpt_ds.train.builder.prepare) for
    --nproc_per_node ranks, then, for each rank, the training loader and validation batches as
    ngpt_ds.train.loop.Trainer builds them. A refusal prints the trainer's error and exits 1; else a
    one-record metrics.jsonl stands for the finished run;
  - launch/export.py, bench/gpu_check_worker.py and any other torchrun script: nothing runs; a
    worker's --result gets "PASS imitated" (what they check needs a GPU);
  - anything else (preparing the data, a free port, the machine line): the real interpreter.
Every call is appended to $FAKE_GPU_CALLS, one JSON list per line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def trainer_startup(argv: list[str], ranks: int) -> int:
    sys.path.insert(0, str(REPO))
    from ngpt_ds.cli import default_accelerator

    default_accelerator()
    from ngpt_ds.cli.train import parse_args
    from ngpt_ds.data.loader import TokenWindowLoader, validation_batches
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train.builder import TrainOptions, prepare

    args = parse_args(argv)
    options = TrainOptions(
        deepspeed_config=args.deepspeed_config,
        config=args.config,
        data=args.data,
        max_steps=args.max_steps,
        compile_model=args.compile,
        out=args.out,
        progress=False,
        world_size=ranks,
    )
    try:
        prepared = prepare(options)
        run, plan = prepared.run, prepared.plan
        for rank in range(ranks):  # data-parallel rank = rank: no tensor, pipeline or sequence parallelism here
            TokenWindowLoader(
                run.data_dir, "train", run.model.seq_len, plan.micro_batch, rank, ranks, run.train.seed, plan.grad_accum
            )
            validation_batches(
                run.data_dir, run.model.seq_len, plan.micro_batch, rank, ranks, max_batches=run.train.eval_batches
            )
    except NgptConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # A finished run's log, so that the script's checks that follow a finished trainer run too.
    Path(run.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(run.out_dir) / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
    return 0


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_GPU_CALLS"], "a", encoding="utf-8") as f:
        f.write(json.dumps(argv) + "\n")
    gpus = int(os.environ["FAKE_GPUS"])
    if argv[:1] == ["-c"] and "device_count" in argv[1]:
        print(gpus)
        return 0
    ranks = 1
    if argv[:2] == ["-m", "torch.distributed.run"]:
        ranks = int(argv[argv.index("--nproc_per_node") + 1])
        argv = argv[next(i for i, a in enumerate(argv) if a.endswith(".py")) :]
    script = argv[0] if argv and argv[0].endswith(".py") else None
    if script == "launch/train.py":
        return trainer_startup(argv[1:], ranks)
    if script is not None and script != "launch/prepare_data.py":
        if "--result" in argv:
            Path(argv[argv.index("--result") + 1]).write_text("PASS imitated\n")
        return 0
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
