"""Metrics: one function logs every scalar to TensorBoard (rank 0), namespaced
train/ eval/ throughput/ memory/ ngpt/; plus the measurements behind them."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.model.layers import ScaleVector
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.ngpt import NormalizedBlock
from ngpt_ds.parallel.pipeline import block_layers, head_layer
from ngpt_ds.train.checkpoint import CheckpointWriteError
from ngpt_ds.train.collectives import all_reduce_on
from ngpt_ds.train.hypersphere import HypersphereHook
from ngpt_ds.train.manifest import RefusedFile, file_kind, open_regular
from ngpt_ds.train.summary import json_safe, lines_of, records_if_readable, replace_file

_log = log.get(__name__)

#: Dense bf16 peak TFLOP/s of common accelerators (vendor data sheets, dense, no sparsity); fp16 has
#: the same (V100: fp16 only). The first key found in the device name wins, so the PCIe and NVL parts
#: come before the bare names, whose figures are the SXM parts'.
KNOWN_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200 NVL": 835.0,
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "V100": 125.0,
}
#: Their fp32 peaks, what an fp32 run's matmuls get: torch runs fp32 matmuls without TF32 unless told
#: to (then set train.peak_tflops).
KNOWN_FP32_PEAK_TFLOPS = {
    "H100 PCIe": 51.0,
    "H100 NVL": 60.0,
    "H200 NVL": 60.0,
    "H200": 67.0,
    "H100": 67.0,
    "A100": 19.5,
    "L40S": 91.6,
    "A10": 31.2,
    "V100": 15.7,
}


class RecordWriteError(CheckpointWriteError):
    """The run's records (metrics.jsonl, the TensorBoard events, summary.json) could not be written: disk
    full, an I/O error. Rank 0 alone writes them; every rank raises this together
    (`stop_all_if_unwritten`), and launch/train.py exits 74 as for a checkpoint that cannot be written."""


def stop_all_if_unwritten(problem: str | None, device: torch.device | str, checkpoints_left: str) -> None:
    """Collective, on every rank at the same point: raise RecordWriteError on every rank when rank 0 (the
    only rank that writes the records) has a problem: `problem` (with its fix, `write_failure`), then
    `checkpoints_left` (what a rerun starts from). One all-reduce of a flag; rank 0's message travels only then. An error on rank 0
    alone left the other ranks in their next collective (gloo: 'Connection closed by peer'; NCCL: until
    train.dist_timeout_s)."""
    failed = torch.tensor([float(problem is not None)], device=device)
    all_reduce_on(failed, device)
    if failed.item() == 0:
        return
    message: list[str | None] = [problem]
    dist.broadcast_object_list(message, src=0)
    raise RecordWriteError(f"{message[0]}. {checkpoints_left}")


def write_failure(err: OSError, path: Path | str) -> tuple[str, str, str]:
    """(the file the error names, else `path`; the reason, as 'No space left on device'; the fix for that
    reason, as 'Free space on its filesystem (or fix the disk)'). TensorBoard names its events file in bytes,
    decoded here: the message read b'/runs/x/tensorboard/events...'. Every failure was told to free space,
    a read-only mount or a permission error too."""
    file = os.fsdecode(err.filename) if err.filename else str(path)
    reason = err.strerror or (os.strerror(err.errno) if err.errno is not None else str(err))
    return file, reason, _WRITE_FIXES.get(err.errno or 0, _OTHER_WRITE_FIX)


_WRITE_FIXES = {
    errno.ENOSPC: "Free space on its filesystem (or fix the disk)",
    errno.EDQUOT: "Free space within your disk quota there (or have the quota raised)",
    errno.EROFS: "Its filesystem is mounted read-only: remount it read-write (or fix the disk)",
    errno.EACCES: "Fix its permissions or ownership, or its folder's: the user the run goes as must be able to write it",
}
_WRITE_FIXES[errno.EPERM] = _WRITE_FIXES[errno.EACCES]
_OTHER_WRITE_FIX = "Check its filesystem and the disk, and what holds that name"


class MetricsLogger:
    """Scalars to TensorBoard (<out>/tensorboard) and to <out>/metrics.jsonl on rank 0; a no-op elsewhere.
    A NaN or infinite value is null in metrics.jsonl (`json_safe`); TensorBoard keeps it.

    A run that resumes from step k replays the steps after k: the records past k are dropped from
    metrics.jsonl and TensorBoard is told to purge them (`purge_step`), so each step appears once.

    A write that fails is kept in `problem`, not raised: rank 0 alone writes, and an error there alone
    left the other ranks in their next collective. `stop_if_unwritten` tells every rank, and the run
    stops rather than train steps it cannot record: no checkpoint is saved of a step metrics.jsonl lacks.
    """

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        self.writer = None
        self.out_dir = out_dir
        self.jsonl = out_dir / "metrics.jsonl"
        self.problem: str | None = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_writer_thread()
            try:
                replaced = truncate_jsonl(self.jsonl, resume_step)
                if replaced:
                    _log.info(
                        f"{self.jsonl.name}: moved the {len(replaced)} record(s) of steps {min(replaced)}-"
                        f"{max(replaced)}, after the resumed step {resume_step}, to {out_dir / REPLACED_JSONL}: "
                        "this run trains those steps again (TensorBoard shows the new ones)"
                    )
                self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1)
            except OSError as err:
                self.problem = self._failed(resume_step, err, "of the steps up to")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None or self.problem is not None:
            return
        try:
            for name, value in scalars.items():
                exact = name in EXACT_SCALARS  # float64 tensor scalars: the same tag in TensorBoard's UI
                self.writer.add_scalar(name, value, step, new_style=exact, double_precision=exact)
            self.writer.flush()  # raises what TensorBoard's writer thread met
            _append(self.jsonl, json.dumps({"step": step, **json_safe(scalars)}) + "\n")
        except OSError as err:
            self.problem = self._failed(step, err, "of step")

    def _failed(self, step: int, err: OSError, what: str) -> str:
        file, reason, fix = write_failure(err, f"{self.jsonl} or {self.out_dir / 'tensorboard'}")
        return f"the metrics {what} {step} could not be written to {file} ({reason}). {fix}"

    def stop_if_unwritten(self, device: torch.device | str, checkpoints_left: str) -> None:
        """Collective, on every rank at the same points: every rank raises RecordWriteError when rank 0
        could not write its metrics (`stop_all_if_unwritten`)."""
        stop_all_if_unwritten(self.problem, device, checkpoints_left)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


EXACT_SCALARS = frozenset({"train/tokens"})
"""Counts TensorBoard keeps exact: written as float64 tensors (exact to 2^53), not float32 `simple_value`s,
which rounded the token count past 2^24 tokens (minutes of a real run): 16777217 read back as 16777216, a
week's 241920000003 as 241920000000."""

_previous_excepthook = None


def _quiet_tensorboard_writer_thread() -> None:
    """TensorBoard writes its events in a thread of its own; a write error there (disk full) printed a
    traceback ('Exception in thread ...'), then reached the next flush, where `MetricsLogger.log`
    reports it with the run's other ranks. Only that thread's OSError is kept quiet."""
    global _previous_excepthook
    if _previous_excepthook is not None:
        return
    previous = _previous_excepthook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            previous(args)

    threading.excepthook = hook


REPLACED_JSONL = "metrics.replaced.jsonl"
"""Beside metrics.jsonl: the records a resume dropped from it, as they were, oldest resume first."""


def truncate_jsonl(path: Path, last_step: int) -> list[int]:
    """Keep the records of steps <= last_step. The records of later steps are appended to REPLACED_JSONL
    first: they are what a run that was killed, stopped without a checkpoint or diverged after its newest
    checkpoint logged, and the resume trains those steps again, maybe otherwise (another lr). Returns the
    steps of the records moved there.

    The file is read a line at a time and rewritten (atomically: a copy renamed over it, with its permission
    bits) only when something goes: later records, or bytes a crash or a bad disk left (NUL padding, garbage,
    a line cut short or of gigabytes), which are dropped instead of stopping the resume. Memory holds one line:
    the kept lines had been held three times over, gigabytes at each resume of a long run. A file kept whole
    stays in place, so a `tail -f` of it goes on following the run, unless it has other hard links (a run
    folder copied with `cp -al`), whose appends would reach the other folder's file.

    Both files are written as regular files of the run folder, never through a link (`replace_file`,
    `_append`): a link at either name (a run folder copied as links, `cp -rs`; or one planted in a folder
    someone handed over) is replaced by a regular file holding the records read through it, and whatever it
    names is left as it was. A named pipe or a device there is replaced unread. metrics.jsonl's link had been
    appended through by every log line, and a link to nothing had the file it names created."""
    if not os.path.lexists(path):
        return []
    irregular = _irregular(path)
    steps: list[int] = []
    kept_records = 0
    stepless: list[int] = []  # the line numbers of records without an integer step (hand-edited: "12", 12.5, null)
    with (
        tempfile.TemporaryFile(dir=path.parent) as kept,
        tempfile.TemporaryFile(dir=path.parent) as dropped,
        contextlib.ExitStack() as stack,
    ):
        try:
            source = stack.enter_context(open_regular(path))
        except (OSError, RefusedFile):
            if not irregular:  # swapped for something else since the lstat, or unreadable
                raise OSError(errno.EINVAL, _NOT_REGULAR, str(path)) from None
            source = io.BytesIO()  # a named pipe, a device or a link to nothing: replaced unread
        # Until the first change, the lines kept are counted, not copied: `whole` bytes of the file as they are.
        whole: int | None = None if irregular or _hard_linked(path) else 0
        for number, (line, record) in enumerate(lines_of(source), start=1):
            step = record.get("step") if record is not None else None
            if isinstance(step, bool) or not isinstance(step, int):
                step = None  # not a record
                if record is not None:
                    stepless.append(number)
            if whole is not None and step is not None and step <= last_step and source.tell() - whole == len(line):
                if line.endswith(b"\n"):
                    whole += len(line)
                    kept_records += 1
                    continue
            if whole is not None:  # the first change: the lines before it are kept as they are
                _copy_range(source, whole, kept)
                whole = None
            if step is None:
                if record is not None:  # kept beside it, as a record dropped for its step is
                    dropped.write(line if line.endswith(b"\n") else line + b"\n")
                continue  # dropped
            line = line if line.endswith(b"\n") else line + b"\n"
            if step > last_step:
                dropped.write(line)
                steps.append(step)
            else:
                kept.write(line)
                kept_records += 1
        if whole is not None:
            return []  # every line kept as it is, in the same file
        if steps or stepless:  # before the cut: a kill in between leaves them twice, never nowhere
            _keep_dropped(path.with_name(REPLACED_JSONL), dropped)
        kept.seek(0)
        mode = None if irregular else stat.S_IMODE(os.fstat(source.fileno()).st_mode)
        replace_file(path, kept, mode=mode)
    if stepless:
        _log.warning(_stepless_warning(path, stepless, kept_records, last_step))
    if irregular:
        held = (
            f"the {kept_records} record(s) up to step {last_step} read through it (what it names is left as it was)"
            if irregular.startswith("a symbolic link")
            else "nothing (it was not read)"
        )
        _log.warning(f"warning: {path} was {irregular}, not a regular file: replaced by a regular file holding {held}")
    return steps


def _stepless_warning(path: Path, lines: list[int], kept_records: int, last_step: int) -> str:
    """The warning of a resume that dropped the records of `lines` (1-based) from `path` for their step: not an
    integer ("12", 12.5, null, or none), as a hand edit leaves. They had gone without a word; a record's step
    says where it belongs, and one that cannot be read as a step number is no step's."""
    shown = ", ".join(str(n) for n in lines[:5]) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
    return (
        f'warning: {path}: {len(lines)} record(s) without an integer "step" (line(s) {shown}) were dropped '
        f'on resume and moved to {path.with_name(REPLACED_JSONL)}: a record\'s "step" must be a whole number '
        f'(12, not "12", 12.5 or null). The {kept_records} record(s) up to step {last_step} are kept'
    )


def _copy_range(source: BinaryIO, length: int, target: BinaryIO) -> None:
    """Copy the first `length` bytes of `source` to `target` in pieces of 256 KiB, leaving `source`'s position
    as it was."""
    done = 0
    while done < length:
        piece = os.pread(source.fileno(), min(2**18, length - done), done)
        if not piece:
            raise OSError(errno.EIO, "metrics.jsonl became shorter while it was read", getattr(source, "name", None))
        target.write(piece)
        done += len(piece)


def _keep_dropped(replaced: Path, dropped: BinaryIO) -> None:
    """Append the records in `dropped` to metrics.replaced.jsonl, or, when that name holds a link (to whatever
    it names, left as it was) or a file with other hard links (the original folder's, of a `cp -al` copy),
    replace it by a regular file of its own holding the records read through it, then those."""
    dropped.seek(0)
    if _irregular(replaced) or _hard_linked(replaced):
        with tempfile.TemporaryFile(dir=replaced.parent) as both:
            for line, _ in records_if_readable(replaced):
                both.write(line.encode("utf-8"))
            shutil.copyfileobj(dropped, both)
            both.seek(0)
            replace_file(replaced, both)
    else:
        _append(replaced, dropped, sync=True)


def _hard_linked(path: Path) -> bool:
    """Whether the regular file `path` has other names (a run folder copied with `cp -al`)."""
    try:
        return os.lstat(path).st_nlink > 1
    except FileNotFoundError:
        return False


def _irregular(path: Path) -> str | None:
    """What holds `path` when it is not a regular file ('a symbolic link to X', 'a named pipe'); None for a
    regular file or nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link to {os.readlink(path)}"
    return file_kind(mode)


_NOT_REGULAR = "not a regular file: a symbolic link, a named pipe or a device holds its name"


def _append(path: Path, text: str | BinaryIO, sync: bool = False) -> None:
    """Append `text` to the regular file `path`, created if absent, never through a link: O_NOFOLLOW refuses a
    link at the name, O_NONBLOCK a named pipe without a reader (ENXIO: a plain open waited for one for good), and
    fstat anything else that is no regular file. Raises OSError naming `path` (`_NOT_REGULAR`) for those."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO):
            raise OSError(err.errno, _NOT_REGULAR, str(path)) from None
        raise
    with os.fdopen(fd, "ab") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, _NOT_REGULAR, str(path))
        if isinstance(text, str):
            f.write(text.encode("utf-8"))
        else:  # an open binary file, copied from where it stands
            shutil.copyfileobj(text, f)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def peak_flops_per_device(configured_tflops: float | None, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one device in the run's `dtype`, how it was obtained)."""
    if configured_tflops is not None:
        return configured_tflops * 1e12, "train.peak_tflops"
    if _trains_on_cuda():
        name = torch.cuda.get_device_name()
        fp32 = dtype == torch.float32
        table = KNOWN_FP32_PEAK_TFLOPS if fp32 else KNOWN_PEAK_TFLOPS
        for key, tflops in table.items():  # A100 before A10: the first key in the name
            if key in name:
                return tflops * 1e12, f"data sheet, {'fp32' if fp32 else 'bf16/fp16'} ({name})"
        return float("nan"), f"unknown GPU {name}: set train.peak_tflops"
    return measure_matmul_flops(dtype), "measured dense matmul on this CPU"


def measure_matmul_flops(
    dtype: torch.dtype, size: int = 1024, seconds: float = 0.3, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Achieved FLOP/s of a square matmul with this process's threads: the CPU's practical peak.

    `clock`: wall time by default; bench/mfu.py passes time.process_time to time one thread by
    the CPU time it gets, which other processes on a shared machine do not inflate."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    n, start = 0, clock()
    while clock() - start < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * size**3 * n / (clock() - start)


def _trains_on_cuda() -> bool:
    """Whether the run trains on a CUDA GPU: DeepSpeed's accelerator says, not torch.cuda.is_available(). With
    DS_ACCELERATOR=cpu on a machine with GPUs the ranks train on the CPU, and MFU was divided by the GPU's data
    sheet peak (0.0x% on an H100) and the memory metrics read the unused GPU's (0 GiB)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cuda" and torch.cuda.is_available()


def memory_metrics() -> dict[str, float]:
    gib = 1024**3
    if _trains_on_cuda():
        return {
            "memory/max_allocated_gib": torch.cuda.max_memory_allocated() / gib,
            "memory/reserved_gib": torch.cuda.memory_reserved() / gib,
        }
    import psutil

    return {"memory/rss_gib": psutil.Process(os.getpid()).memory_info().rss / gib}


def grad_norm_deepspeed_leaves_out(engine: Any, model: torch.nn.Module) -> torch.Tensor | None:
    """The global gradient norm before clipping, for an engine that keeps none: ZeRO 0 in fp32, where
    DeepSpeed's clipping discards the norm it computes and get_global_grad_norm() stays None (every other
    engine sets it), so train/grad_norm was missing from every fp32 ZeRO 0 run. Called between the
    boundary micro-batch's backward (gradients averaged over the data-parallel ranks, summed over the
    micro-batches) and engine.step() (clipping, then zeroing). Tensor-parallel shards are summed over
    their group, replicated parameters counted once. None where DeepSpeed keeps the norm itself.
    Collective over the tensor-parallel group: every rank calls it at every step."""
    if engine.zero_optimization() or engine.bfloat16_enabled() or engine.fp16_enabled():
        return None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    sharded = [p.grad for p in model.parameters() if p.grad is not None and getattr(p, "tensor_model_parallel", False)]
    total = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum()
    tensor_parallel = getattr(model, "tensor_parallel", None)
    if tensor_parallel is not None and tensor_parallel.tp_size > 1:
        shards = torch.stack([g.detach().float().pow(2).sum() for g in sharded]).sum() if sharded else total * 0
        replicated = total - shards
        all_reduce_on(shards, shards.device, group=tensor_parallel.tp_group)
        total = replicated + shards
    return total.sqrt()


def ngpt_health(model: CausalLM, hook: HypersphereHook | None) -> dict[str, float]:
    """Per-layer mean |alpha_A|, |alpha_M|, mean s_qk; mean s_z; the largest | ||w|| - 1 | after the hook.

    Read from the fp32 master values (gathered under ZeRO). Every rank must call it.
    """
    if hook is None or not hook.matrices:
        return {}

    tensor_parallel = getattr(model, "tensor_parallel", None)

    def mean_effective(scale_vector: ScaleVector) -> float:
        value = hook.fp32_value(scale_vector.param) * (scale_vector.init / scale_vector.scale)
        mean = (value.abs() if scale_vector.absolute else value).mean()
        if tensor_parallel is not None and getattr(scale_vector.param, "tensor_model_parallel", False):
            all_reduce_on(mean, hook.comm_device, group=tensor_parallel.tp_group)  # equal shards: mean of the means
            mean = mean / tensor_parallel.tp_size
        return mean.item()

    out = {}
    stage = hasattr(model, "sphere_matrix_names")  # one pipeline stage (ngpt_ds.parallel.pipeline)
    blocks, head = (block_layers(model), head_layer(model)) if stage else (enumerate(model.blocks), model)
    for i, module in blocks:
        block = cast(NormalizedBlock, module)  # the hook has matrices: an nGPT model
        out[f"ngpt/alpha_attn/layer_{i:02d}"] = mean_effective(block.attn_alpha)
        out[f"ngpt/alpha_mlp/layer_{i:02d}"] = mean_effective(block.mlp_alpha)
        out[f"ngpt/s_qk/layer_{i:02d}"] = mean_effective(block.attn.s_qk)
    if head is not None:
        out["ngpt/s_z_mean"] = mean_effective(cast(ScaleVector, head.s_z))
    if stage:  # every stage's values, on every rank
        parts: list[dict[str, float]] = [{}] * dist.get_world_size()
        dist.all_gather_object(parts, out)
        out = {name: value for part in parts for name, value in part.items()}
    out["ngpt/max_norm_deviation"] = hook.max_deviation()
    return out
