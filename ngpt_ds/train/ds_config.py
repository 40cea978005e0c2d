"""The DeepSpeed JSON: read, check against the world, before any engine exists.

The JSON is the single source of batch sizes, precision, ZeRO stage and gradient
clipping. The optimizer and LR schedule come from the YAML train section, so a JSON
`optimizer` or `scheduler` block is rejected rather than silently competing.

Keys DeepSpeed does not read, keys it has removed, blocks its own parser rejects and
non-boolean switches are refused by name (ngpt_ds.train.ds_schema asks DeepSpeed's parser).
A value the JSON leaves out is DeepSpeed's default (`gradient_clipping`: 1.0), and after
`deepspeed.initialize` the values the engine really uses are read back and compared
(`engine_settings`, `check_engine_agrees`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ngpt_ds import log
from ngpt_ds.config_files import broken_link, read_config_text, special_file, unparsable, unreadable
from ngpt_ds.errors import UNPARSABLE, NgptConfigError, Problems
from ngpt_ds.train import ds_compat, ds_masters, ds_refusals, ds_schema
from ngpt_ds.train.ds_schema import precision_of as precision_of

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

_log = log.get(__name__)


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int
    grad_accum: int
    data_parallel: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.data_parallel


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Parse a DeepSpeed JSON file; duplicate keys and syntax errors are reported with their line."""
    path = _shipped_config(Path(path))
    if path.is_dir():
        raise NgptConfigError(
            f"DeepSpeed config {path} is a folder, not a JSON file: give a file such as ds_configs/zero2.json "
            "(the shipped ones: zero0.json ... zero3.json, zero2_offload.json)"
        )
    special = special_file(path) or broken_link(path)
    if special:
        raise NgptConfigError(f"DeepSpeed config {path} {special}")
    if not path.is_file():
        raise NgptConfigError(
            f"DeepSpeed config {path} does not exist. The shipped ones are in ds_configs/ "
            "(zero0.json ... zero3.json, zero2_offload.json)"
        )

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        dupes_seen: set[str] = set()
        for key, _ in pairs:  # a set, not keys.count per key: 40,000 keys (400 KB) took minutes
            (dupes_seen if key in seen else seen).add(key)
        dupes = sorted(dupes_seen)
        if dupes:
            raise NgptConfigError(f"{path}: key(s) {', '.join(dupes)} appear twice in one object; keep one")
        return dict(pairs)

    try:
        config = json.loads(read_config_text(path, "DeepSpeed config"), object_pairs_hook=no_duplicates)
    except OSError as err:  # a file that exists but cannot be read (permissions, EIO) was a traceback
        raise NgptConfigError(f"DeepSpeed config {unreadable(path, err)}") from None
    except json.JSONDecodeError as err:
        if not err.doc.strip():  # an empty file (a redirect that failed, a save cut short) was "at line 1, column 1"
            raise NgptConfigError(
                f"DeepSpeed config {path} is empty: give it a JSON object of DeepSpeed settings, or pass a shipped "
                "one, e.g. --deepspeed_config ds_configs/zero2.json"
            ) from None
        raise NgptConfigError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
            f"{_comment_hint(err)}{_other_kind(path)}"
        ) from None
    except NgptConfigError:
        raise
    except UNPARSABLE as err:
        raise NgptConfigError(f"{path}: cannot be read as JSON: {unparsable(err)}") from None
    if not isinstance(config, dict):
        raise NgptConfigError(f"{path}: expected a JSON object")
    return config


def _comment_hint(err: json.JSONDecodeError) -> str:
    """The message's end for a comment or a trailing comma where the parser stopped: configs copied from JSONC/JSON5
    examples carry `//`, `/* */` or `#` notes and commas after the last item, and "Expecting property name enclosed
    in double quotes" (Python 3.11 and 3.12's text for both) did not say why."""
    if err.doc[err.pos : err.pos + 2].startswith(("//", "/*", "#")):
        return "; JSON has no comments: delete the comment (DeepSpeed reads plain JSON)"
    if err.doc[err.pos : err.pos + 1] in ("}", "]") and err.doc[: err.pos].rstrip().endswith(","):
        return "; JSON allows no comma after the last item: delete the comma before the " + err.doc[err.pos]
    return ""


def _other_kind(path: Path) -> str:
    """The message's end that sends a file which is not JSON but reads as a model/train YAML to --config (given
    to --deepspeed_config, it was only "not valid JSON at line 1, column 1"); "" for any other file."""
    from ngpt_ds import yaml_safe

    try:
        data = yaml_safe.safe_load(read_config_text(path, "DeepSpeed config"))
    except Exception:  # noqa: BLE001 - any file that is not such a YAML keeps the JSON message alone
        return ""
    if not isinstance(data, dict) or not {"model", "train"} & set(data):
        return ""
    return (
        f". It is a model/train YAML config, not a DeepSpeed JSON: pass it with --config {path}, and give "
        "--deepspeed_config a DeepSpeed JSON such as ds_configs/zero2.json"
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls in oneDNN's kernels (AVX512 or AMX): without them (AVX2 only, as on
    many laptops and cloud VMs) torch falls back to a reference gemm, about 35x slower than fp32 (the main
    command: 10.7 s a step against 0.3 on an AVX2 EPYC)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume the fast path, as before
        return True


def fall_back_from_slow_cpu_bf16(config: dict[str, Any], source: str, *, native: bool | None = None) -> str | None:
    """On a CPU without native bf16 (`cpu_has_native_bf16`), a JSON that enables bf16 trains in fp32 instead,
    unless NGPT_DS_CPU_BF16=1: the shipped JSONs enable bf16 for GPUs, and the README's main command took
    55 minutes instead of 2 on such a CPU. Edits `config` (what reaches DeepSpeed and config.yaml) and returns
    the line to print, or None when nothing changed. Call it for CPU runs only."""
    if precision_of(config) != "bf16" or os.environ.get("NGPT_DS_CPU_BF16") == "1":
        return None
    if _block(config, "fp16").get("enabled") is True:  # both on: check_ds_config names that conflict; switching
        return None  # bf16 off first made it refuse fp16 and ask for the bf16 the file already set
    if cpu_has_native_bf16() if native is None else native:
        return None
    for name in ("bf16", "bfloat16"):
        if isinstance(config.get(name), dict):
            config[name] = {**config[name], "enabled": False}
    return (
        f"DeepSpeed config {source} enables bf16, but this CPU has no native bf16 matmul (AVX512 or AMX): torch "
        "would run every matmul in a reference kernel, some 35x slower than fp32. Training in fp32 instead "
        "(recorded in config.yaml); NGPT_DS_CPU_BF16=1 keeps bf16"
    )


def _shipped_config(path: Path) -> Path:
    """`ds_configs/NAME` not found from the working directory -> the copy shipped with ngpt_ds: a pip-installed
    package carries them as ngpt_ds/ds_configs/ (setup.py), a checkout beside the package. The README's
    `--deepspeed_config ds_configs/zero2.json` then works from any folder (it stopped with "does not exist"
    for every pip user without a checkout)."""
    if path.is_file() or path.is_absolute() or len(path.parts) != 2 or path.parts[0] != "ds_configs":
        return path
    package = Path(__file__).resolve().parents[1]
    for shipped in (package / path, package.parent / path):
        if shipped.is_file():
            _log.info(f"DeepSpeed config {path}: not in {Path.cwd()}, using the one shipped with ngpt_ds ({shipped})")
            return shipped
    return path


_block = ds_schema.block


def zero_stage_of(config: dict[str, Any]) -> int:
    stage = _block(config, "zero_optimization").get("stage", 0)
    return stage if isinstance(stage, int) else 0


def gradient_clipping_of(config: dict[str, Any]) -> float:
    """The clipping norm DeepSpeed applies: the JSON's value, else DeepSpeed's own default (1.0 in 0.19)."""
    from deepspeed.runtime.constants import GRADIENT_CLIPPING, GRADIENT_CLIPPING_DEFAULT

    return config.get(GRADIENT_CLIPPING, GRADIENT_CLIPPING_DEFAULT)


def _finite_number(value: Any) -> bool:
    """A JSON number that is finite as a float (an integer of 400 digits is not: the engine reads it as one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 2.0**1023 if isinstance(value, int) else math.isfinite(value)


def check_ds_config(
    config: dict[str, Any],
    *,
    world_size: int,
    tensor_parallel: int,
    source: str,
    fp16_supported: bool,
    bf16_supported: bool,
    pipeline_parallel: int = 1,
    sequence_parallel: int = 1,
) -> BatchPlan:
    """Validate the JSON for this world; fill in the batch field DeepSpeed can derive. Returns the plan.

    train_batch_size = train_micro_batch_size_per_gpu * gradient_accumulation_steps * data-parallel size,
    where data-parallel size = world size / (tensor-parallel size x pipeline stages x sequence-parallel size).
    """
    p = Problems(f"DeepSpeed config {source}")
    ds_schema.check_keys(config, p, ds_refusals.yaml_field_home)
    ds_schema.check_switches(config, "", p)
    ds_refusals.check_owned_blocks(config, p)
    ds_refusals.check_loop_settings(config, p)
    # DeepSpeed still reads the deprecated `"zero_optimization": true` as stage 1, while the trainer planned
    # stage 0 from it: the run stopped only once the engine had started (check_engine_agrees). `false` is
    # stage 0 to both, and runs trained with it resume.
    zero = config.get("zero_optimization")
    p.check(
        zero is None or zero is False or isinstance(zero, dict),
        "zero_optimization",
        zero,
        'must be a JSON object with the stage, e.g. {"stage": 2} (DeepSpeed reads true as stage 1, a deprecated form)',
    )
    stage = _block(config, "zero_optimization").get("stage", 0)
    # An integer: 2.0 and true compare equal to 2 and 1, and DeepSpeed runs them as those stages, while the
    # trainer's plan (zero_stage_of) read 2.0 as stage 0 and stopped only after the engine had started.
    p.check(
        isinstance(stage, int) and not isinstance(stage, bool) and stage in (0, 1, 2, 3),
        "zero_optimization.stage",
        stage,
        "must be 0, 1, 2 or 3 (an integer, e.g. 2)",
    )
    precision = precision_of(config)
    if precision == "bf16" and _block(config, "fp16").get("enabled") is True:
        p.add("fp16.enabled", True, "bf16 and fp16 are both enabled; enable one")
    if precision == "fp16" and not fp16_supported:
        p.add(
            "fp16.enabled",
            True,
            "this device does not support fp16 training (CPUs without AVX512-FP16/AMX); "
            'use bf16 ("bf16": {"enabled": true}) or fp32 (disable both)',
        )
    if precision == "fp16" and stage == 0:
        # DeepSpeed's engine.backward scales the loss only for ZeRO optimizers, while its ZeRO-0 fp16
        # optimizer (FP16_UnfusedOptimizer) still divides the gradients by the loss scale: every update
        # shrinks (0.17x at the first step of tests/test_precision.py), unseen because the hook keeps
        # the weights on the sphere.
        p.add(
            "fp16.enabled",
            True,
            "fp16 at ZeRO stage 0 gives wrong updates in DeepSpeed (the loss scale is "
            "divided out but never applied); set zero_optimization.stage to 1, 2 or 3, "
            'or use bf16 ("bf16": {"enabled": true})',
        )
    if precision == "bf16" and not bf16_supported:
        p.add("bf16.enabled", True, 'this device does not support bf16; use fp32 ("bf16": {"enabled": false})')
    clip = gradient_clipping_of(config)
    p.check(  # Infinity (or 1e400, which JSON reads as it) clipped nothing while the run said it clipped
        _finite_number(clip) and clip >= 0,
        "gradient_clipping",
        clip,
        "must be a finite number >= 0 (0 turns clipping off; left out, DeepSpeed clips at 1.0)",
    )
    ds_schema.check_values(config, stage, sequence_parallel, p)
    ds_schema.check_monitors(config, p)
    if "gradient_predivide_factor" in config:  # DeepSpeed divides the gradients by it: 0 stopped in an assertion
        factor = config["gradient_predivide_factor"]
        p.check(
            isinstance(factor, (int, float)) and not isinstance(factor, bool) and math.isfinite(factor) and factor > 0,
            "gradient_predivide_factor",
            factor,
            "must be a number > 0 (1.0, DeepSpeed's default, divides nothing before the all-reduce)",
        )
        model_ranks = tensor_parallel * pipeline_parallel * sequence_parallel
        data_parallel = world_size // model_ranks if world_size % model_ranks == 0 else 0
        why = (
            ds_compat.predivide_factor_problem(
                config,
                stage=stage,
                averaging_ranks=data_parallel * sequence_parallel,
                sequence_parallel=sequence_parallel,
            )
            if isinstance(stage, int)
            else None
        )
        if why:
            p.add("gradient_predivide_factor", factor, why)
    ds_masters.check_masters_and_offload(config, stage, p)
    ds_refusals.check_owned_switches(
        config,
        p,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        sequence_parallel=sequence_parallel,
    )
    model_parallel = tensor_parallel * pipeline_parallel * sequence_parallel  # the ranks of one sample
    dp = world_size // model_parallel if model_parallel and world_size % model_parallel == 0 else None
    micro = config.get("train_micro_batch_size_per_gpu")
    accum = config.get("gradient_accumulation_steps")
    total = config.get("train_batch_size")
    for name, value in (
        ("train_micro_batch_size_per_gpu", micro),
        ("gradient_accumulation_steps", accum),
        ("train_batch_size", total),
    ):
        p.check(
            value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
            name,
            value,
            "must be a positive integer"
            + (
                # Hugging Face Trainer's DeepSpeed configs write "auto" for what the Trainer fills in
                '; "auto" is for Hugging Face\'s Trainer, which fills it in: write the number, or leave the field '
                "out where the others determine it"
                if value == "auto"
                else ""
            ),
        )
    flagged = {item.split(" = ")[0].split(".")[0] for item in p.items}
    ds_schema.check_blocks(config, p, skip=flagged | {"optimizer", "scheduler", "activation_checkpointing"})
    p.raise_if_any()
    if dp is None:
        raise NgptConfigError(
            f"world size {world_size} is not divisible by tensor_parallel_size {tensor_parallel}; "
            "start a multiple of it processes"
        )
    if micro is None:
        raise NgptConfigError(
            f"DeepSpeed config {source}: set train_micro_batch_size_per_gpu (sequences per rank per forward pass)"
        )
    if accum is None and total is None:
        accum = 1
    elif accum is None:
        if total % (micro * dp):
            raise NgptConfigError(
                f"DeepSpeed config {source}: train_batch_size = {total} is not a multiple of "
                f"train_micro_batch_size_per_gpu x data-parallel size = {micro} x {dp} = {micro * dp}"
            )
        accum = total // (micro * dp)
    plan = BatchPlan(micro_batch=micro, grad_accum=accum, data_parallel=dp)
    if total is not None and total != plan.global_batch:
        raise NgptConfigError(
            f"DeepSpeed config {source}: train_batch_size = {total}, but train_micro_batch_size_per_gpu x "
            f"gradient_accumulation_steps x data-parallel size = {micro} x {accum} x {dp} = {plan.global_batch} "
            f"(world size {world_size} / tensor-parallel {tensor_parallel}"
            + (f" / pipeline stages {pipeline_parallel}" if pipeline_parallel > 1 else "")
            + (f" / sequence-parallel {sequence_parallel}" if sequence_parallel > 1 else "")
            + f" = {dp} data-parallel ranks). "
            f"Set train_batch_size to {plan.global_batch}, or remove it and let it follow the world size"
        )
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum
    config["train_batch_size"] = plan.global_batch
    return plan


@dataclass(frozen=True)
class EngineSettings:
    """What the DeepSpeed engine actually uses, read back after deepspeed.initialize."""

    zero_stage: int
    precision: str
    micro_batch: int
    grad_accum: int
    global_batch: int
    gradient_clipping: float

    def describe(self, config: dict[str, Any]) -> str:
        from deepspeed.runtime.constants import GRADIENT_CLIPPING

        default = "" if GRADIENT_CLIPPING in config else " (DeepSpeed's default: the JSON does not set it)"
        return (
            f"ZeRO stage {self.zero_stage}, {self.precision}, micro-batch {self.micro_batch} x accumulation "
            f"{self.grad_accum} -> global batch {self.global_batch}, gradient clipping "
            f"{self.gradient_clipping!r}{default}"
        )


def engine_settings(engine: DeepSpeedEngine) -> EngineSettings:
    """Read the effective settings from a DeepSpeed engine (its parsed config, defaults filled in)."""
    return EngineSettings(
        zero_stage=int(engine.zero_optimization_stage()),
        precision="bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32",
        micro_batch=int(engine.train_micro_batch_size_per_gpu()),
        grad_accum=int(engine.gradient_accumulation_steps()),
        global_batch=int(engine.train_batch_size()),
        gradient_clipping=float(engine.gradient_clipping()),
    )


def check_engine_agrees(settings: EngineSettings, config: dict[str, Any], plan: BatchPlan) -> None:
    """The trainer plans (batches, precision, logs, MFU) from its reading of the JSON; stop if DeepSpeed
    read it differently, naming each value both ways."""
    assumed = EngineSettings(
        zero_stage=zero_stage_of(config),
        precision=precision_of(config),
        micro_batch=plan.micro_batch,
        grad_accum=plan.grad_accum,
        global_batch=plan.global_batch,
        gradient_clipping=float(gradient_clipping_of(config)),
    )
    differ = [
        f"{name}: DeepSpeed uses {getattr(settings, name)!r}, the trainer assumed {getattr(assumed, name)!r}"
        for name in EngineSettings.__dataclass_fields__
        if getattr(settings, name) != getattr(assumed, name)
    ]
    if differ:
        raise NgptConfigError(
            "the DeepSpeed engine reads the JSON differently from the trainer ("
            + "; ".join(differ)
            + "). Please report this with your DeepSpeed JSON and DeepSpeed version"
        )
