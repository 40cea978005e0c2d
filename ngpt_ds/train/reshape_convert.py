"""Making the universal checkpoint a resume at another world size needs (ngpt_ds.train.reshape_plan decides
when; README "Resuming at another world size"), and the fix-up after DeepSpeed loads it.

`convert` (collective, after the run lock): rank 0 runs the converter once into
`checkpoints/step_N-universal/` (temporary name, manifest, rename: atomic and verified like every
checkpoint, ngpt_ds.train.checkpoint); the other ranks wait in short polls, so a long conversion
never meets the collective timeout. An intact folder converted from the same checkpoint is reused.

The converter runs in a child process (`python -m ngpt_ds.train.reshape SOURCE OUTPUT`, whose body is
`run_child` here): it reads every file under ngpt_ds.safe_load's guard, keeps its memory out of the trainer,
and a crash in it is one reported failure rather than a dead rank. Rank 0 announces it when it starts, and
stops it once it does no work at all for CONVERTER_STALL_S, or reads and writes nothing that long while using CPU
(a loop that never ends), so a hung conversion ends the resume with a message. A conversion interrupted after
its extraction phase goes on from the sealed fragments (ngpt_ds.train.reshape_fragments); any other leftover is
removed and converted again from the beginning.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch
import torch.distributed as dist

from ngpt_ds import log, safe_load
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, reshape_fragments, universal_check
from ngpt_ds.train.fs_errors import TORCH_WRITE_FAILURES, gib
from ngpt_ds.train.resume import verify_on_all_ranks

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from ngpt_ds.train.reshape_plan import Reshape

_log = log.get(__name__)

CHILD_MODULE = "ngpt_ds.train.reshape"
"""The converter child's command line: `python -m ngpt_ds.train.reshape SOURCE OUTPUT` (it calls run_child)."""
POLL_S = 0.5
"""How often the waiting ranks and rank 0 agree on whether the conversion is finished."""
CONVERTER_PARENT_VARIABLE = "NGPT_DS_CONVERTER_PARENT"
"""The pid of the rank that started the converter: the child ends when that rank is gone. Set in the
main thread: Linux's parent-death signal follows the thread that started the child."""
CONVERTER_STALL_S = 30 * 60
"""How long the converter may do no work at all (no CPU time, no byte read or written), or read and write no byte
while using CPU, before it is stopped as hung. Work, not time, bounds it: a large checkpoint converts for hours,
but never that long without reading or writing a file. A read on a hung network mount or a deadlock did, and
every rank polled on for good; so did a loop that never ends, counted as work by its CPU time."""
STOP_WAIT_S = 30
"""How long a stopped converter is given to go (a process blocked in the kernel on a hung mount ends only when
the call returns): the ranks stop with the message either way."""


def _activity(pid: int) -> tuple[float, int | None] | None:
    """The child's CPU seconds and the bytes it has read and written so far (None when this system gives no I/O
    counters), or None once it is gone."""
    try:
        child = psutil.Process(pid)
        with child.oneshot():
            cpu = child.cpu_times()
            try:
                io = child.io_counters()  # Linux: read_chars/write_chars count the page cache too
                moved: int | None = getattr(io, "read_chars", io.read_bytes) + getattr(
                    io, "write_chars", io.write_bytes
                )
            except (AttributeError, NotImplementedError, psutil.AccessDenied):  # no I/O counters here: CPU only
                moved = None
        return cpu.user + cpu.system, moved
    except psutil.Error:
        return None


IDLE, SPINNING = "idle", "spinning"
"""Why `_wait_for` stopped the converter: no work at all, or CPU time with no byte read or written."""


def _wait_for(proc: subprocess.Popen | None, device: torch.device) -> str | None:
    """Every rank polls until rank 0's child process has exited: short collectives only. Rank 0 stops the child
    once it has done no work for CONVERTER_STALL_S (IDLE), or, where the system counts its I/O, once it has read
    and written no byte for CONVERTER_STALL_S however much CPU it used (SPINNING: a loop that never ends; every
    stage of ds_to_universal reads or writes a file per parameter, which CPU time alone had kept running for
    good). Returns why there when it did, else None."""
    seen = _activity(proc.pid) if proc is not None else None
    since = since_io = time.monotonic()
    stopped: str | None = None
    while True:
        alive = proc is not None and stopped is None and proc.poll() is None
        if alive and proc is not None:
            now, clock = _activity(proc.pid), time.monotonic()
            if now is not None and seen is not None and now[1] != seen[1]:
                since_io = clock
            if now != seen:
                seen, since = now, clock
            if clock - since >= CONVERTER_STALL_S:
                stopped = IDLE
            elif now is not None and now[1] is not None and clock - since_io >= CONVERTER_STALL_S:
                stopped = SPINNING
            if stopped is not None:
                proc.kill()
                try:
                    proc.wait(timeout=STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    pass
                alive = False
        running = torch.tensor([float(alive)], device=device)
        dist.all_reduce(running, op=dist.ReduceOp.MAX)
        if running.item() == 0:
            return stopped
        time.sleep(POLL_S)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"


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
            [sys.executable, "-m", CHILD_MODULE, os.path.abspath(source), os.path.abspath(output)],
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


SPACE_FAILURES = (*(os.strerror(e) for e in checkpoint.DISK_FULL_ERRNOS), *TORCH_WRITE_FAILURES)
"""What the converter's log holds when a write failed for space: an errno's text (its traceback's OSError), or
torch.save's zip writer's failure, which gives no errno."""


def _killed_text(returncode: int) -> str | None:
    """How a converter ended by a signal reads in its failure message, or None when it exited."""
    if returncode >= 0:
        return None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    oom = " (the kernel's out-of-memory killer sends it: see dmesg)" if -returncode == signal.SIGKILL else ""
    return f"killed by {name}{oom}"


def _failed_for_space(reshape: Reshape, work: Path, returncode: int = 1) -> str:
    """Rank 0, the converter having failed: when its log's last lines say a write failed for space, or the free
    space is below what the conversion needs, the figures as a save gives them (ngpt_ds.train.checkpoint): what
    the conversion needs, what was free, the folder; else ''. It had read '... are free on the filesystem of
    <folder>' alone: no figure of what to free or to size a quota by."""
    size, free = checkpoint.checkpoint_bytes(reshape.source), _free_bytes(work.parent)
    tail = _tail(work / "convert.log")
    if size is None or free is None:
        return ""
    need = CONVERSION_SPACE_FACTOR * size
    said = any(marker in tail for marker in SPACE_FAILURES)
    if not said and (free >= need or returncode in (-signal.SIGKILL, -signal.SIGTERM)):
        # Killed, it failed for no write: a converter killed for memory after writing much of its output had
        # read 'The conversion needs about ..., ... were free' (the space its own files took), and the advice to
        # free space sent the operator after the wrong cause.
        return ""
    return (
        f"The conversion needs about {gib(need)} (twice the size of {reshape.source.name}), {gib(free)} were "
        f"free on the filesystem of {work.parent} when it failed. Free space there (or raise the quota), then "
        "rerun, or "
    )


def _space_problem(reshape: Reshape, work: Path, kept_bytes: int = 0) -> str | None:
    """Rank 0, before the converter starts: a conversion that cannot fit is refused, naming the space it needs.
    `kept_bytes`: the fragments an interrupted conversion extracted, reused, already on the disk (they count
    toward the need: without them, a conversion that fitted was refused on its rerun)."""
    size, free = checkpoint.checkpoint_bytes(reshape.source), _free_bytes(work.parent)
    if size is None or free is None or free + kept_bytes >= CONVERSION_SPACE_FACTOR * size:
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


def _interrupted(work: Path, source: Path, kept: bool = False) -> str | None:
    """Rank 0, before converting: the warning that an earlier conversion of `source` never finished (its work
    folder is still there: the run was stopped or killed while converting), or None. Nothing of it was ever under
    the step_N-universal name, so nothing resumed from it; but its removal had gone without a word, and a rerun
    after a preemption converted for hours again with no sign that this is a restart. `kept`: its sealed
    extraction goes on (ngpt_ds.train.reshape_fragments)."""
    if work.is_symlink() or not work.is_dir():
        return None
    if kept:
        return (
            f"warning: {work} holds an earlier conversion of {source.name} that did not finish (the run was stopped "
            "or killed while converting); it had extracted every ZeRO fragment (sealed and checked), so the "
            "conversion goes on from merging them, and the rest of it is made again"
        )
    return (
        f"warning: {work} holds an earlier conversion of {source.name} that did not finish (the run was stopped or "
        "killed while converting); nothing resumes from it. It holds no sealed extraction of the ZeRO "
        "fragments (only a ZeRO 1/2 conversion whose extraction finished goes on): it is removed and the "
        "conversion starts again from the beginning"
    )


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
            kept = reshape_fragments.keep_for_rerun(work, reshape.source)
            interrupted = _interrupted(work, reshape.source, kept is not None)
            problem = None if kept is not None else _remove_leftover(work)
            if problem is None and interrupted is not None:
                _log.warning(interrupted)
            if problem is None:
                work.mkdir(parents=True, exist_ok=kept is not None)
                problem = _space_problem(reshape, work, kept or 0)
            if problem is None:
                proc = _start_converter(reshape.source, work / "converted", work / "convert.log")
                # Said at once: a conversion of hours printed nothing until it ended, as a hung job would.
                _log.info(
                    f"converting {reshape.source} (saved at {reshape.saved.describe()}) to DeepSpeed's universal "
                    f"format in {reshape.target} with its ds_to_universal, once: this can take hours for a large "
                    f"checkpoint (its progress: {work / 'convert.log'}; stopped if it does no work for "
                    f"{_duration(CONVERTER_STALL_S)})"
                )
        except OSError as err:
            problem = f"could not start DeepSpeed's ds_to_universal in {work}: {err}"
        except Exception as err:  # noqa: BLE001 (any error: an answer, the other ranks wait in the broadcast below)
            _log.exception(f"rank 0: preparing the conversion of {reshape.source} failed")
            problem = f"{type(err).__name__}: {err}"
    flag = torch.tensor([float(reused)], device=device)
    dist.broadcast(flag, src=0)
    reused = bool(flag.item())
    stalled = _wait_for(proc, device)
    if rank == 0 and stalled is not None:
        what = (
            "did no work for {} (no CPU time, no byte read or written: a hung filesystem or a deadlock)"
            if stalled == IDLE
            else "used CPU time but read and wrote no byte for {} (a loop that never ends)"
        ).format(_duration(CONVERTER_STALL_S))
        problem = (
            f"DeepSpeed's ds_to_universal, converting {reshape.source}, {what}, so it was stopped. Its last "
            f"lines: {_tail(work / 'convert.log')}. Check the filesystems of {reshape.source} and {work.parent}, then "
            f"rerun to convert again, or resume at {reshape.saved.describe()} instead"
        )
    elif rank == 0 and proc is not None and proc.returncode != 0:
        space = _failed_for_space(reshape, work, proc.returncode)
        killed = _killed_text(proc.returncode)
        problem = (
            f"DeepSpeed's ds_to_universal could not convert {reshape.source} "
            f"({killed or f'exit {proc.returncode}'}): {_tail(work / 'convert.log')}. "
            + (f"{space}resume at " if space else f"{_free_space(work.parent) if not killed else ''}Resume at ")
            + f"{reshape.saved.describe()} instead"
        )
    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    problem = problems[0]
    if problem is None and not reused:
        # The converted files (about 12 bytes per parameter) are hashed by all ranks, each file by one.
        problem = checkpoint.finish_universal_on_all_ranks(work / "converted", reshape.target, reshape.source)
        if problem is None:  # universal_check need not read this process's own conversion again
            universal_check.remember_conversion(reshape.target)
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
        # A checkpoint saved before the trainer set universal_checkpoint_info (ngpt_ds.train.builder) gets the same
        # version entry; without it the converter refused the checkpoint on an assertion.
        inject_missing_state=True,
    )
    try:
        check_parameter_names(Path(cli.source))
        # A sealed extraction an interrupted conversion of this checkpoint left is reused; a new one is sealed.
        ds_to_universal._extract_zero_shard_files = reshape_fragments.extract_once(
            ds_to_universal._extract_zero_shard_files, Path(cli.source)
        )
        with safe_load.deepspeed_loads_are_safe():
            ds_to_universal.main(args)
    except safe_load.UnsafeCheckpointError as err:  # one line for the rank's message, not the frames above it
        sys.exit(f"error: {err}")


def run_child(argv: list[str]) -> None:
    """The converter child's whole run (`python -m ngpt_ds.train.reshape SOURCE OUTPUT`)."""
    _end_with_parent()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    _convert_main(argv)


# ---- after the load ----------------------------------------------------------------------------------


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
