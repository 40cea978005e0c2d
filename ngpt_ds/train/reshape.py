"""Resume at another world size through DeepSpeed's universal checkpoints (README "Resuming at another
world size").

A ZeRO checkpoint is cut into one optimizer shard per data-parallel rank, so DeepSpeed loads it only at
the data-parallel size it was saved with. DeepSpeed's `ds_to_universal` rewrites it as one file per
parameter (fp32 master, Adam's exp_avg and exp_avg_sq, step) that `"checkpoint": {"load_universal": true}`
re-partitions at any data-parallel size. The trainer does this by itself:

1. `plan` (every rank, once the ranks have agreed on the checkpoint, before any engine): compare the
   checkpoint's saved layout (ZeRO stage, data- and tensor-parallel sizes, read by
   ngpt_ds.deepspeed_files) with this run's. Equal, or only ZeRO 1 <-> 2 at the same sizes (one
   format), or ZeRO 0 (whole optimizer state in one file): nothing to do. A data-parallel change within
   ZeRO 1/2 or within ZeRO 3, or another ZeRO 3 sub_group_size (its optimizer state is saved by sub-group): a
   `Reshape`. Anything DeepSpeed cannot convert is refused here, before any compute, naming both setups.
2. `convert` (collective, after the run lock): rank 0 runs the converter once into
   `checkpoints/step_N-universal/` (temporary name, manifest, rename: atomic and verified like every
   checkpoint, ngpt_ds.train.checkpoint); the other ranks wait in short polls, so a long conversion
   never meets the collective timeout. An intact folder converted from the same checkpoint is reused.
3. The engine is built with load_universal, loads the folder, and the hypersphere hook rebuilds and
   renormalizes its view of the masters.

The converter runs in a child process (`python -m ngpt_ds.train.reshape SOURCE OUTPUT`): it reads every
file under ngpt_ds.safe_load's guard, keeps its memory out of the trainer, and a crash in it is one
reported failure rather than a dead rank.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ngpt_ds import deepspeed_files, safe_load
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, preflight
from ngpt_ds.train.resume import verify_on_all_ranks

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

POLL_S = 0.5
"""How often the waiting ranks and rank 0 agree on whether the conversion is finished."""
CONVERTER_PARENT_VARIABLE = "NGPT_DS_CONVERTER_PARENT"
"""The pid of the rank that started the converter: the child ends when that rank is gone. Set in the
main thread: Linux's parent-death signal follows the thread that started the child."""


@dataclass(frozen=True)
class Layout:
    """`data_parallel` is the number of ranks ZeRO cuts the optimizer state over, the count compared: with
    sequence parallelism the data x sequence ranks (DeepSpeed records it as `dp_world_size`).
    `sequence_parallel` only names the split in messages: a checkpoint does not depend on it."""

    zero_stage: int
    data_parallel: int
    tensor_parallel: int
    pipeline_parallel: int = 1
    sequence_parallel: int = 1
    sub_group_size: int | None = None
    """ZeRO 3's zero_optimization.sub_group_size (None: not ZeRO 3, or not a number): it cuts each rank's
    fp32 partition into the sub-groups its optimizer state is saved by."""

    def ranks(self) -> str:
        if self.sequence_parallel > 1:
            return (
                f"data-parallel size {self.data_parallel // self.sequence_parallel} x sequence-parallel size "
                f"{self.sequence_parallel}"
            )
        return f"data-parallel size {self.data_parallel}"

    def describe(self) -> str:
        return f"ZeRO stage {self.zero_stage}, {self.ranks()}, tensor-parallel size {self.tensor_parallel}" + (
            f", {self.pipeline_parallel} pipeline stages" if self.pipeline_parallel > 1 else ""
        )


@dataclass(frozen=True)
class Reshape:
    """A checkpoint to convert into `target` and load at another data-parallel size (or, at ZeRO 3, with
    another sub_group_size)."""

    source: Path
    saved: Layout
    current: Layout
    target: Path

    @property
    def step(self) -> int:
        return checkpoint.step_of(self.source.name)


def _family(stage: int) -> str:
    return {0: "ZeRO 0", 3: "ZeRO 3"}.get(stage, "ZeRO 1/2")


def _refuse(source: Path, saved: Layout, current: Layout, reason: str) -> NgptConfigError:
    return NgptConfigError(
        f"cannot resume {source.name} (saved at {saved.describe()}) at {current.describe()}: {reason}"
    )


def plan(source: Path, current: Layout, out_dir: Path) -> Reshape | None:
    """What resuming `source` at `current` needs: None (DeepSpeed loads it as it is) or a Reshape.
    Raises NgptConfigError for what DeepSpeed cannot convert."""
    found = deepspeed_files.saved_layout(source)
    saved = Layout(
        found.zero_stage,
        found.data_parallel,
        found.tensor_parallel,
        found.pipeline_parallel,
        _saved_sequence_parallel(source),
        _saved_sub_group_size(source, found.zero_stage),
    )
    # A tensor- or pipeline-parallel checkpoint resumes only at its own layout, so its advice names all of it
    # (checked before the ZeRO stages: "any data-parallel size" was wrong for it, and so was "ZeRO 1/2", as a
    # pipeline runs at ZeRO 0 or 1 only).
    stage = "" if saved.zero_stage == current.zero_stage else f", at ZeRO stage {saved.zero_stage}"
    if saved.tensor_parallel != current.tensor_parallel or (
        saved.tensor_parallel > 1 and saved.data_parallel != current.data_parallel
    ):
        raise _refuse(
            source,
            saved,
            current,
            (
                "a tensor-parallel checkpoint resumes only at the same tensor-parallel and data-parallel sizes. "
                "DeepSpeed's universal converter merges tensor-parallel slices by Megatron name patterns, and the "
                "ngpt_ds tensor-parallel layout (ngpt_ds/parallel) is not declared to it, so a merged checkpoint "
                f"could be silently wrong. Resume with train.tensor_parallel_size {saved.tensor_parallel} on "
                f"{saved.tensor_parallel * saved.data_parallel} rank(s){stage}"
            ),
        )
    if saved.pipeline_parallel != current.pipeline_parallel or (
        saved.pipeline_parallel > 1 and saved.data_parallel != current.data_parallel
    ):
        raise _refuse(
            source,
            saved,
            current,
            (
                "a checkpoint resumes with pipeline stages only at the pipeline and data-parallel sizes it was "
                "saved with: its optimizer state is cut by stage, and ngpt_ds does not convert its pipeline "
                "layout (DeepSpeed's universal conversion of it is untested here). Resume with "
                "train.pipeline_parallel_size "
                f"{saved.pipeline_parallel} on {saved.pipeline_parallel * saved.tensor_parallel * saved.data_parallel}"
                f" rank(s){stage}"
            ),
        )
    if _family(saved.zero_stage) != _family(current.zero_stage):
        exact = saved.tensor_parallel > 1 or saved.pipeline_parallel > 1
        where = (
            f"at ZeRO stage {saved.zero_stage} (the same layout otherwise)"
            if exact
            else f"with a {_family(saved.zero_stage)} DeepSpeed config (any data-parallel size there)"
        )
        raise _refuse(
            source,
            saved,
            current,
            (
                f"DeepSpeed loads a {_family(saved.zero_stage)} checkpoint only into {_family(saved.zero_stage)}, and "
                "its universal checkpoints convert between data-parallel sizes within ZeRO 1/2 or within ZeRO 3, not "
                f"from one to the other. Resume {where}, or start a new run with --resume none and another --out"
            ),
        )
    # ZeRO 3 saves each rank's optimizer state by sub-group (zero_optimization.sub_group_size elements of its
    # fp32 partition each); DeepSpeed's own load of a checkpoint cut into other sub-groups stopped, after the
    # engine was built, with torch's "ValueError: loaded state dict contains a parameter group that doesn't
    # match the size of optimizer's group". The universal checkpoint is kept per parameter: it loads into any.
    other_sub_groups = saved.zero_stage == 3 and saved.sub_group_size != current.sub_group_size
    if (saved.data_parallel == current.data_parallel and not other_sub_groups) or saved.zero_stage == 0:
        return None  # ZeRO 1 <-> 2 share one format; ZeRO 0 keeps the whole optimizer state in one file
    target = out_dir / checkpoint.CHECKPOINTS / checkpoint.universal_name(source.name)
    return Reshape(source=source, saved=saved, current=current, target=target)


def _saved_sequence_parallel(source: Path) -> int:
    """The sequence-parallel size the checkpoint's run used (its config.yaml), for messages only."""
    try:
        size = preflight.saved_run_config(source).get("train", {}).get("sequence_parallel_size", 1)
    except (NgptConfigError, AttributeError):
        return 1
    return size if isinstance(size, int) and size > 0 else 1


SUB_GROUP_SIZE_DEFAULT = 1_000_000_000
"""DeepSpeed 0.19's zero_optimization.sub_group_size when a config leaves it out."""


def sub_group_size_of(ds_config: object, zero_stage: int) -> int | None:
    """zero_optimization.sub_group_size of a ZeRO 3 config (DeepSpeed's default when left out); None for
    another stage or a value that is no number (DeepSpeed's own check names it)."""
    if zero_stage != 3:
        return None
    zero = ds_config.get("zero_optimization") if isinstance(ds_config, dict) else None
    value = (zero if isinstance(zero, dict) else {}).get("sub_group_size", SUB_GROUP_SIZE_DEFAULT)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _saved_sub_group_size(source: Path, zero_stage: int) -> int | None:
    """The sub_group_size of a ZeRO 3 checkpoint, from the DeepSpeed config saved in its model states."""
    if zero_stage != 3:
        return None
    states = deepspeed_files.read(deepspeed_files.model_states_file(source, zero_stage))
    return sub_group_size_of(states.get("ds_config"), zero_stage)


def current_layout(
    ds_config: dict,
    world_size: int,
    tensor_parallel: int,
    other_parallel: int = 1,
    pipeline_parallel: int = 1,
    sequence_parallel: int = 1,
) -> Layout:
    """This run's layout: data parallelism is what the world size leaves after model parallelism.
    Sequence parallelism is not divided out: ZeRO partitions over the data x sequence ranks."""
    stage = deepspeed_files.zero_stage_of(ds_config)
    return Layout(
        stage,
        world_size // (tensor_parallel * other_parallel * pipeline_parallel),
        tensor_parallel,
        pipeline_parallel,
        sequence_parallel,
        sub_group_size_of(ds_config, stage),
    )


def describe(reshape: Reshape, reused: bool, renormalized: bool) -> str:
    """The one line the trainer prints."""
    how = (
        "reused the universal checkpoint {t} converted from it earlier"
        if reused
        else "converted it once into the universal checkpoint {t}"
    ).format(t=reshape.target)
    sphere = " and renormalized the sphere matrices" if renormalized else ""
    saved, current = reshape.saved, reshape.current
    if saved.data_parallel == current.data_parallel:  # only the ZeRO 3 sub-groups differ (plan)
        return (
            f"resuming step {reshape.step} saved with zero_optimization.sub_group_size {saved.sub_group_size} "
            f"at sub_group_size {current.sub_group_size} ({current.ranks()}, ZeRO 3): {how}, loaded it{sphere}"
        )
    return (
        f"resuming step {reshape.step} saved at {saved.ranks()} on "
        f"{current.ranks()} (ZeRO {current.zero_stage}): {how}, "
        f"loaded it{sphere}"
    )


def unalias_optimizer_steps(engine: DeepSpeedEngine) -> int:
    """Give each optimizer state its own `step` tensor; returns how many were shared.

    DeepSpeed 0.19.8's ZeRO-3 universal load stores one `step` tensor object in the state of every
    sub-group (stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3). torch's AdamW increments
    `step` in place once per sub-group update, so with the matrices and the vectors in two groups the
    count ran 2 per optimizer step: the next Adam bias correction was wrong and the loss after the
    first resumed step differed by 1.4e-4 (tests/test_resume_world_size.py, ZeRO 3 2 -> 1 ranks)."""
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    seen, shared = set(), 0
    for state in optimizer.state.values():
        step = state.get("step")
        if not torch.is_tensor(step):
            continue
        if id(step) in seen:
            state["step"] = step.clone()
            shared += 1
        else:
            seen.add(id(step))
    return shared


# ---- conversion -----------------------------------------------------------------------------------


def _wait_for(proc: subprocess.Popen | None, device: torch.device) -> None:
    """Every rank polls until rank 0's child process has exited: short collectives only."""
    while True:
        running = torch.tensor([float(proc is not None and proc.poll() is None)], device=device)
        dist.all_reduce(running, op=dist.ReduceOp.MAX)
        if running.item() == 0:
            return
        time.sleep(POLL_S)


def _start_converter(source: Path, output: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[CONVERTER_PARENT_VARIABLE] = str(os.getpid())
    with open(log, "w", encoding="utf-8") as f:
        # `python -m` puts its working folder first on sys.path: run from a folder holding another ngpt_ds (a
        # checkout of another version, a shared /tmp), the child ran that package's converter, not this one.
        # It runs in the package's own root instead, with the paths made absolute (--out may be relative).
        return subprocess.Popen(
            [sys.executable, "-m", "ngpt_ds.train.reshape", os.path.abspath(source), os.path.abspath(output)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            cwd=package_root,
        )


def _tail(log: Path, lines: int = 8) -> str:
    try:
        return " | ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


CONVERSION_SPACE_FACTOR = 2
"""ds_to_universal writes every parameter's slices, then the merged files, then deletes the slices: at its peak
about twice the checkpoint's optimizer state, which the checkpoint's size bounds from above."""


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _free_space(folder: Path) -> str:
    """The free space where the conversion wrote, for its failure message: a full disk ended in DeepSpeed's
    'basic_ios::clear: iostream error', and the advice sent the operator back to ranks they no longer had."""
    free = _free_bytes(folder)
    return (
        ""
        if free is None
        else f"{_mib(free)} are free on the filesystem of {folder} (if it is full, free space there and rerun). "
    )


def _space_problem(reshape: Reshape, work: Path) -> str | None:
    """Rank 0, before the converter starts: a conversion that cannot fit is refused, naming the space it needs."""
    size, free = checkpoint.checkpoint_bytes(reshape.source), _free_bytes(work.parent)
    if size is None or free is None or free >= CONVERSION_SPACE_FACTOR * size:
        return None
    return (
        f"not enough free space to convert {reshape.source.name} for {reshape.current.ranks()}: DeepSpeed's "
        f"ds_to_universal needs about {_mib(CONVERSION_SPACE_FACTOR * size)} (twice the checkpoint's "
        f"{_mib(size)}), and {_mib(free)} are free on the filesystem of {work.parent}. Free space there and rerun, or resume "
        f"at {reshape.saved.describe()}"
    )


def _remove_leftover(work: Path) -> str | None:
    """Rank 0, before converting: remove the work folder an earlier conversion left, or a link there (only
    the link, never what it points to). Returns the problem when it cannot. shutil.rmtree(ignore_errors=True)
    silently left a link (a run folder handed over, or copied with links) or a folder holding entries this
    user cannot delete, and every rerun then stopped on a bare '[Errno 17] File exists' from the mkdir that
    followed. Anything else there (a file) is no conversion's: the mkdir names it, as before."""
    try:
        if work.is_symlink():
            work.unlink()
        elif work.is_dir():
            shutil.rmtree(work)
    except OSError as err:
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(work) else ""
        return (
            f"cannot remove {work}, left there by an earlier conversion: {err.strerror or err}{where}. Remove it "
            "and rerun"
        )
    return None


def convert(reshape: Reshape, device: torch.device) -> bool:
    """Collective: make `reshape.target` (rank 0 converts, or reuses an intact earlier conversion).
    Returns True when an earlier conversion was reused. Raises NgptConfigError on every rank if the
    conversion fails; nothing is then left under the step_N-universal name."""
    rank = dist.get_rank()
    problem, proc = None, None
    work = reshape.target.with_name(reshape.target.name + checkpoint.TEMP_SUFFIX)
    # An earlier conversion (fp32 masters and both Adam moments: about 12 bytes per parameter) is
    # verified by all ranks together, each file by one of them.
    reused = checkpoint.is_converted_from(reshape.target, reshape.source, verify=verify_on_all_ranks)
    if rank == 0 and not reused:
        try:  # a failure here is reported through the gather below, so no rank is left waiting
            problem = _remove_leftover(work)
            if problem is None:
                work.mkdir(parents=True)
                problem = _space_problem(reshape, work)
            if problem is None:
                proc = _start_converter(reshape.source, work / "converted", work / "convert.log")
        except OSError as err:
            problem = f"could not start DeepSpeed's ds_to_universal in {work}: {err}"
    flag = torch.tensor([float(reused)], device=device)
    dist.broadcast(flag, src=0)
    reused = bool(flag.item())
    _wait_for(proc, device)
    if rank == 0 and proc is not None and proc.returncode != 0:
        problem = (
            f"DeepSpeed's ds_to_universal could not convert {reshape.source} (exit {proc.returncode}): "
            f"{_tail(work / 'convert.log')}. {_free_space(work.parent)}Resume at {reshape.saved.describe()} instead"
        )
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    problem = problems[0]
    if problem is None and not reused:
        # The converted files (about 12 bytes per parameter) are hashed by all ranks, each file by one.
        problem = checkpoint.finish_universal_on_all_ranks(work / "converted", reshape.target, reshape.source)
    if rank == 0 and not reused:
        shutil.rmtree(work, ignore_errors=True)
    if problem is not None:
        raise NgptConfigError(problem)
    return reused


def _end_with_parent() -> None:
    """The child process: die with the rank that started it. A rank SIGKILLed, or killed by a SIGTERM
    before its stop handlers exist, left the converter writing on into the .tmp-save folder that the
    rerun removes and makes anew: the rerun failed ("File exists") or hashed what two converters wrote.
    Linux's parent-death signal; then the parent is checked, in case it died before the call."""
    parent = os.environ.get(CONVERTER_PARENT_VARIABLE, "")
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if parent.isascii() and parent.isdigit() and os.getppid() != int(parent):
        sys.exit(f"the rank that started this conversion (pid {parent}) is gone")


PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
"""A parameter name as torch writes one for the model: dotted identifiers and indices, never a '/', '..' or ''."""


def _names(value: object) -> set[str]:
    """The keys of a dict, or of each dict in a list (DeepSpeed keeps one per parameter group)."""
    groups = value if isinstance(value, (list, tuple)) else [value]
    return {key for group in groups if isinstance(group, dict) for key in group}


def check_parameter_names(source: Path) -> None:
    """The child process, before DeepSpeed's converter: ds_to_universal makes a folder of each parameter name
    it reads (the optimizer shards' param_slice_mappings; the model states' param_shapes, frozen_param_shapes
    and module), joined to its output folder. A crafted name ('/home/someone/x', '../../x') wrote files
    outside it; names of the shards that the model states do not list sealed a conversion without those
    parameters' Adam moments, and DeepSpeed's load of it stopped on an AssertionError. Raises
    UnsafeCheckpointError for either. Each file is memory-mapped, as in the resume's check of it."""
    sharded: set[str] = set()
    listed: set[str] = set()
    for path in sorted(source.glob("*_states.pt")):
        states = safe_load.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))
        if not isinstance(states, dict):
            continue  # DeepSpeed's own read of it fails with its message
        found: set[str] = set()
        if path.name.endswith("_optim_states.pt"):
            optimizer = states.get("optimizer_state_dict")
            found = _names(optimizer.get("param_slice_mappings")) if isinstance(optimizer, dict) else set()
            sharded |= found
        else:
            found = _names(states.get("param_shapes")) | _names(states.get("frozen_param_shapes"))
            listed |= _names(states.get("param_shapes"))
            found |= _names(states.get("module"))
        bad = sorted(repr(n) for n in found if not isinstance(n, str) or not PARAMETER_NAME.fullmatch(n))
        if bad:
            raise safe_load.UnsafeCheckpointError(
                f"{path} was refused: it names parameter(s) {', '.join(bad[:3])}, which are not parameter names "
                "(dotted letters, digits and _; DeepSpeed's converter makes a folder of each name, so these would "
                "write outside the conversion's folder). This file was not written by the ngpt_ds trainer, or it "
                "was altered. Do not use it"
            )
    if sharded and sharded != listed:
        extra, missing = sorted(sharded - listed), sorted(listed - sharded)
        which = (
            f"the optimizer shards hold parameter(s) {', '.join(map(repr, extra[:3]))} that its model states do not list"
            if extra
            else f"its model states list parameter(s) {', '.join(map(repr, missing[:3]))} that no optimizer shard holds"
        )
        raise safe_load.UnsafeCheckpointError(
            f"{source} was refused: {which}, so a conversion would leave the optimizer state of some parameters "
            "out. The checkpoint is incomplete or was altered. Do not use it"
        )


def _convert_main(argv: list[str]) -> None:
    """The child process: DeepSpeed's converter with every load through the restricted unpickler.
    One worker each: the pools would have to inherit the guard, and the extraction is I/O bound."""
    parser = argparse.ArgumentParser(description="Convert a trainer checkpoint to DeepSpeed's universal format.")
    parser.add_argument("source")
    parser.add_argument("output")
    cli = parser.parse_args(argv)
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=cli.source,
        output_folder=cli.output,
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    try:
        check_parameter_names(Path(cli.source))
        with safe_load.deepspeed_loads_are_safe():
            ds_to_universal.main(args)
    except safe_load.UnsafeCheckpointError as err:  # one line for the rank's message, not the frames above it
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    _end_with_parent()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    _convert_main(sys.argv[1:])
