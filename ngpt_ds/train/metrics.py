"""Metrics: one function logs every scalar to TensorBoard (rank 0), namespaced
train/ eval/ throughput/ memory/ ngpt/; plus the measurements behind them."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist

from ngpt_ds import log
from ngpt_ds.model.layers import ScaleVector
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.ngpt import NormalizedBlock
from ngpt_ds.parallel.pipeline import block_layers, head_layer
from ngpt_ds.train import out_moved
from ngpt_ds.train.checkpoint import CheckpointWriteError
from ngpt_ds.train.collectives import all_reduce_on
from ngpt_ds.train.hypersphere import HypersphereHook
from ngpt_ds.train.metrics_jsonl import REPLACED_JSONL as REPLACED_JSONL  # where lineage.py imports it from
from ngpt_ds.train.metrics_jsonl import append_record, truncate_jsonl
from ngpt_ds.train.summary import json_safe

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


def stop_all_if_unwritten(
    problem: str | None, device: torch.device | str, checkpoints_left: str | Callable[[], str]
) -> None:
    """Collective, on every rank at the same point: raise RecordWriteError on every rank when rank 0 (the
    only rank that writes the records) has a problem: `problem` (with its fix, `write_failure`), then
    `checkpoints_left` (what a rerun starts from). One all-reduce of a flag; rank 0's message travels only then. An error on rank 0
    alone left the other ranks in their next collective (gloo: 'Connection closed by peer'; NCCL: until
    train.dist_timeout_s). `checkpoints_left` as a function is asked only then, after rank 0's write: asked before,
    a rank other than 0 had read --out before rank 0 met its move, and said 'No checkpoint was saved yet ...: running
    the same command again starts from step 0' (the old place) where rank 0 named the new one."""
    failed = torch.tensor([float(problem is not None)], device=device)
    all_reduce_on(failed, device)
    if failed.item() == 0:
        return
    message: list[str | None] = [problem]
    dist.broadcast_object_list(message, src=0)
    left = checkpoints_left() if callable(checkpoints_left) else checkpoints_left
    raise RecordWriteError(f"{message[0]}. {left}")


def write_failure(err: OSError, path: Path | str) -> tuple[str, str, str]:
    """(the file the error names, else `path`; the reason, as 'No space left on device'; the fix for that
    reason, as 'Free space on its filesystem (or fix the disk)'). TensorBoard names its events file in bytes,
    decoded here: the message read b'/runs/x/tensorboard/events...'. Every failure was told to free space,
    a read-only mount or a permission error too; a write into an --out moved or removed while the run trained was told
    to 'Check its filesystem and the disk' (ngpt_ds.train.out_moved)."""
    file = os.fsdecode(err.filename) if err.filename else str(path)
    reason = err.strerror or (os.strerror(err.errno) if err.errno is not None else str(err))
    moved = out_moved.moved_from(file)
    if moved is not None:  # the line that follows names the move and the --out to rerun with (divergence)
        return file, reason, f"{moved} is no longer the run's folder"
    return file, reason, _WRITE_FIXES.get(err.errno or 0, _OTHER_WRITE_FIX)


_WRITE_FIXES = {
    errno.ENOSPC: "Free space on its filesystem (or fix the disk)",
    errno.EDQUOT: "Free space within your disk quota there (or have the quota raised)",
    errno.EROFS: "Its filesystem is mounted read-only: remount it read-write (or fix the disk)",
    errno.EACCES: "Fix its permissions or ownership, or its folder's: the user the run goes as must be able to write it",
}
_WRITE_FIXES[errno.EPERM] = _WRITE_FIXES[errno.EACCES]
_OTHER_WRITE_FIX = "Check its filesystem and the disk, and what holds that name"


def _events_kept(out_dir: Path) -> str:
    """What becomes of the replaced steps in <out>/tensorboard: SummaryWriter's purge_step only writes a marker,
    and TensorBoard drops the older values at read time; the event files keep them, so any other reader of the
    files (tbparse, an export of the scalars) gets those steps twice, the old values first."""
    try:
        files = sorted(p.name for p in (out_dir / "tensorboard").glob("events.out.tfevents.*"))
    except OSError:
        return ""
    if not files:
        return ""
    return (
        f"; their earlier values stay in the {len(files)} event file(s) of {out_dir / 'tensorboard'} "
        f"({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}): TensorBoard hides them, other readers of "
        "those files see those steps twice"
    )


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
                        f"this run trains those steps again (TensorBoard shows the new ones){_events_kept(out_dir)}"
                    )
                made = out_moved.missing(out_dir / "tensorboard")
                before = out_moved.names_in(out_dir / "tensorboard")
                self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1)
            except OSError as err:
                self.problem = self._failed(resume_step, err, "of the steps up to")
            else:
                self._moved_as_made(made, before)

    def _moved_as_made(self, made: list[Path], before: set[str]) -> None:
        """--out moved or removed between the run's lock and the SummaryWriter: its makedirs made <old
        --out>/tensorboard again, and the run had trained on with its metrics there until its first save met the move.
        What the writer made there goes (ngpt_ds.train.out_moved.remove_made: its events file, the folders `made`
        where empty), and the run stops at once with the move's line (`stop_if_unwritten`, right after). `before`:
        the names in that folder before the writer started (out_moved.events_made tells its events file by them)."""
        moved = out_moved.moved_from(self.out_dir)
        if moved is None or self.writer is None:
            return
        events = out_moved.events_made(self.out_dir / "tensorboard", before)
        self.writer.close()  # the events file closed before it goes
        self.writer = None
        out_moved.remove_made(events, made)
        self.problem = (
            f"the metrics could not be written to {self.out_dir / 'tensorboard'} (--out was moved or removed as the "
            f"run started). {moved} is no longer the run's folder"
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None or self.problem is not None:
            return
        try:
            for name, value in scalars.items():
                exact = name in EXACT_SCALARS  # float64 tensor scalars: the same tag in TensorBoard's UI
                self.writer.add_scalar(name, value, step, new_style=exact, double_precision=exact)
            self.writer.flush()  # raises what TensorBoard's writer thread met
            append_record(self.jsonl, json.dumps({"step": step, **json_safe(scalars)}) + "\n")
        except OSError as err:
            self.problem = self._failed(step, err, "of step")

    def _failed(self, step: int, err: OSError, what: str) -> str:
        file, reason, fix = write_failure(err, f"{self.jsonl} or {self.out_dir / 'tensorboard'}")
        return f"the metrics {what} {step} could not be written to {file} ({reason}). {fix}"

    def stop_if_unwritten(self, device: torch.device | str, checkpoints_left: str | Callable[[], str]) -> None:
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
        out = _every_stage(model, out, hook.comm_device)
    out["ngpt/max_norm_deviation"] = hook.max_deviation()
    return out


def _health_names(n_layer: int) -> list[str]:
    """ngpt_health's names in the order it logs them (the run without pipelining's): per block, then the head."""
    per_block = ("alpha_attn", "alpha_mlp", "s_qk")
    return [f"ngpt/{kind}/layer_{i:02d}" for i in range(n_layer) for kind in per_block] + ["ngpt/s_z_mean"]


def _every_stage(stage: Any, own: dict[str, float], device: torch.device | str) -> dict[str, float]:
    """Every stage's health values on every rank, from this stage's `own`: one float64 all-reduce (SUM) over the
    pipeline group, each slot filled by the one stage that holds it and 0 on the others.

    Every stage knows the whole list of names: `sphere_matrix_names` names every stage's matrices, blocks as
    `<layer index>.block.<path>` (ngpt_ds.parallel.pipeline). The group is DeepSpeed's pipe-parallel group, one
    rank per stage (the ranks of this rank's data-parallel coordinate): a sum over the world would count each
    stage once per data-parallel replica. x + 0.0 is x, so the float32 means (Python floats) arrive bit-equal.
    It replaced an all_gather_object over the world at every log line: a pickle, a device copy and a host sync
    under NCCL."""
    layers = [name.split(".", 2) for name in stage.sphere_matrix_names]
    block_indices = {parts[0] for parts in layers if parts[1] == "block"}
    names = _health_names(len(block_indices))
    unknown = own.keys() - set(names)
    if unknown:  # a stage's value with no slot would vanish from the log unseen
        raise RuntimeError(f"ngpt_health: this stage's {sorted(unknown)} have no slot among the pipeline's names")
    values = torch.tensor([own.get(name, 0.0) for name in names], dtype=torch.float64)
    all_reduce_on(values, device, group=stage.mpu().get_pipe_parallel_group())
    return dict(zip(names, values.tolist(), strict=True))
