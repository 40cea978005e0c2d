"""Load a trained model for inference, on CPU or GPU, without starting DeepSpeed.

Two sources:

- a DeepSpeed checkpoint written by the trainer (`<out>/checkpoints/step_N/`, any ZeRO stage
  and world size): ZeRO 1-3 shards are consolidated into fp32 weights by DeepSpeed's own
  `zero_to_fp32` utilities on the CPU (no process group); ZeRO 0 keeps whole module weights
  in `mp_rank_00_model_states.pt` (in bf16/fp16 runs, the fp32 master copies saved beside them).
  Tensor-parallel checkpoints are consolidated per model-parallel rank the same way, then merged
  with `ngpt_ds.parallel.merge_tensor_parallel`. The model config comes from the checkpoint's
  `config.yaml` and the tokenizer from the run's dataset (`data_dir` in that file);
- an exported folder (`ngpt_ds.infer.export`): `model.safetensors`, `config.json`,
  `tokenizer.model`.

Loading never runs code: every checkpoint file, DeepSpeed's reads in `zero_to_fp32` included, is
unpickled by ngpt_ds.safe_load (tensors, plain data and an allow-list only).

Every load checks what it can: the COMPLETE marker, parameter names and shapes against the
model config, the tokenizer against the model's vocabulary (and its recorded sha256), and that
nGPT's sphere matrices are unit norm along their declared dims.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ngpt_ds import safe_load
from ngpt_ds.data.shards import load_dataset_meta, sha256_file
from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import CausalLM, ModelConfig, build_model, max_norm_deviation
from ngpt_ds.train import checkpoint as ckpt_layout

EXPORT_FORMAT = "ngpt_ds-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
COMPLETE = ckpt_layout.COMPLETE  # the trainer's marker and manifest, written last
STEP_PREFIX = ckpt_layout.TAG_PREFIX

#: Largest allowed | ||row|| - 1 | of a sphere matrix: fp32 weights are renormalized after every step
#: (to ~1e-7); a bf16 copy of unit vectors is off by up to ~2^-9 per element.
NORM_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode), its tokenizer, and where it came from."""

    model: CausalLM
    config: ModelConfig
    tokenizer: Tokenizer
    tokenizer_sha256: str
    source: Path
    """The checkpoint directory (step_N) or the exported folder."""
    kind: str
    """'checkpoint' or 'export'."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance: step, zero_stage, world_size, weights, data_dir, eval (the trainer's eval batches)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        m = self.config
        step = f", step {self.info['step']}" if "step" in self.info else ""
        return (f"{'nGPT' if m.arch == 'ngpt' else 'GPT'} {m.n_layer} layers, d {m.n_embd}, {m.n_head} heads, "
                f"context {m.seq_len}, vocab {m.vocab_size} ({self.kind} {self.source}{step})")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None -> cuda when available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NgptConfigError(f"device {device} requested but no CUDA GPU is available; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise NgptConfigError(f"dtype {dtype!r}: must be one of float32, bfloat16, float16")
    return DTYPES[dtype]


def is_export(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).exists()


# ---- checkpoints ----------------------------------------------------------------------------


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint (step_N with COMPLETE), a run's checkpoints/ folder or a run directory -> the
    newest complete checkpoint directory, verified against its manifest. A partial or damaged
    checkpoint given by name is a clear error; in a folder, a damaged newest one is skipped with a
    warning (as the trainer's --resume auto does). The layout is the trainer's (ngpt_ds.train.checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise NgptConfigError(f"{path} does not exist. Give an exported model folder, a checkpoint directory "
                              "(<out>/checkpoints/step_N) or a training run's --out directory")
    if path.name.startswith(STEP_PREFIX) and path.is_dir():
        if (path / COMPLETE).is_file():
            problem = ckpt_layout.verify(path)
            if problem is not None:
                raise NgptConfigError(f"{path} is damaged: {problem}. Use another checkpoint")
            if ckpt_layout.is_legacy(path):
                print(ckpt_layout.legacy_warning(path), file=sys.stderr)
            return path
        others = [d.name for d in ckpt_layout.complete_checkpoints(path.parent)]
        hint = f"; complete checkpoints next to it: {', '.join(others)}" if others else ""
        raise NgptConfigError(f"{path} is a partial checkpoint: it has no {COMPLETE} marker (the save was "
                              f"interrupted or is still running){hint}")
    for folder in (path, path / ckpt_layout.CHECKPOINTS):
        steps = ckpt_layout.step_dirs(folder)
        if ckpt_layout.complete_checkpoints(folder):
            return ckpt_layout.newest_intact(folder, warn=lambda line: print(line, file=sys.stderr))
        if steps:
            raise NgptConfigError(f"{folder} holds no complete checkpoint: {', '.join(d.name for d in steps)} "
                                  f"lack the {COMPLETE} marker (interrupted saves)")
    raise NgptConfigError(f"{path} is neither an exported model ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a checkpoint "
                          "directory (step_N with COMPLETE) nor a training run (checkpoints/step_N)")


def read_run_config(checkpoint: Path) -> dict[str, Any]:
    """The resolved run config the trainer saved next to the DeepSpeed files."""
    config_path = checkpoint / "config.yaml"
    if not config_path.is_file():
        raise NgptConfigError(f"{config_path} not found: {checkpoint} was not written by the ngpt_ds trainer "
                              "(it saves config.yaml with every checkpoint)")
    try:
        run = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise NgptConfigError(f"{config_path}: not valid YAML ({err})") from None
    if not isinstance(run, dict) or not isinstance(run.get("model"), dict):
        raise NgptConfigError(f"{config_path}: expected the trainer's resolved config with a 'model:' section")
    return run


@contextlib.contextmanager
def _quiet():
    """DeepSpeed's consolidation prints progress lines and bars; keep them off the terminal, where
    generate.py streams text and evaluate.py prints its table."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _zero_stage(run: dict[str, Any]) -> int:
    zero = (run.get("deepspeed") or {}).get("zero_optimization") or {}
    return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0


def _model_parallel_ranks(checkpoint: Path) -> int:
    ranks = {p.name.split("mp_rank_")[1][:2] for p in checkpoint.glob("*mp_rank_*_model_states.pt")}
    return max(1, len(ranks))


def _torch_load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NgptConfigError(f"{path} is missing: the checkpoint {path.parent} is incomplete or damaged")
    try:
        return safe_load.load(path, map_location="cpu", mmap=True)
    except safe_load.UnsafeCheckpointError:
        raise
    except Exception as err:  # a truncated or foreign file: torch raises many types
        raise NgptConfigError(f"{path} could not be read ({type(err).__name__}: {err}); the checkpoint is "
                              "damaged") from None


def _consolidate_zero(checkpoint: Path) -> dict[str, torch.Tensor]:
    """fp32 weights from ZeRO 1/2/3 shards, by DeepSpeed's zero_to_fp32 (CPU, no process group)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with _quiet(), safe_load.deepspeed_loads_are_safe():
            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    except safe_load.UnsafeCheckpointError:
        raise
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, EOFError) as err:
        raise NgptConfigError(f"DeepSpeed could not consolidate the ZeRO shards in {checkpoint}: {err}. "
                              "The checkpoint is incomplete or damaged; use another one") from None


def _consolidate_tensor_parallel(checkpoint: Path, tp_size: int, stage: int, full_model: CausalLM):
    """Tensor-parallel checkpoints: consolidate each model-parallel rank's ZeRO shards with
    zero_to_fp32 (through a view of the folder holding only that rank's files, named as rank 0's),
    then merge the ranks with ngpt_ds.parallel's plan."""
    from ngpt_ds.parallel import merge_tensor_parallel

    shards = []
    for mp in range(tp_size):
        if stage == 0:
            shards.append(_torch_load(checkpoint / f"mp_rank_{mp:02d}_model_states.pt")["module"])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            view = Path(tmp) / checkpoint.name
            view.mkdir()
            for f in checkpoint.glob(f"*mp_rank_{mp:02d}_*"):
                os.symlink(f.resolve(), view / f.name.replace(f"mp_rank_{mp:02d}", "mp_rank_00"))
            shards.append(_consolidate_zero(view))
    return merge_tensor_parallel(shards, full_model)


def _zero0_master_weights(states: dict[str, Any], model: CausalLM) -> dict[str, torch.Tensor] | None:
    """ZeRO 0 in bf16/fp16: the fp32 master copies DeepSpeed saves beside the half-precision module
    weights (optimizer `fp32_groups`, in the order of the trainer's parameter groups). None when
    they are absent or do not map one to one onto the module weights (each must cast to them exactly,
    as the trainer keeps working copy = cast(master))."""
    groups = (states.get("optimizer") or {}).get("fp32_groups")
    module = states.get("module") or {}
    if not groups or not isinstance(groups, list):
        return None
    from ngpt_ds.train.optim import parameter_groups

    names = {id(p): n for n, p in model.named_parameters()}
    order = [[names[id(p)] for p in g["params"]] for g in parameter_groups(model, 0.0)]
    if [len(g) for g in order] != [len(g) if isinstance(g, (list, tuple)) else -1 for g in groups]:
        return None
    master = {n: t for group_names, tensors in zip(order, groups) for n, t in zip(group_names, tensors)}
    for n, t in master.items():
        working = module.get(n)
        if working is None or tuple(t.shape) != tuple(working.shape) or not torch.equal(t.to(working.dtype), working):
            return None
    return master


def read_checkpoint_weights(checkpoint: Path, run: dict[str, Any], full_model: CausalLM
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, provenance) of a complete trainer checkpoint."""
    stage = _zero_stage(run)
    tp_size = _model_parallel_ranks(checkpoint)
    states_file = checkpoint / ("zero_pp_rank_0_mp_rank_00_model_states.pt" if stage == 3
                                else "mp_rank_00_model_states.pt")
    states = _torch_load(states_file)
    world = int(states.get("dp_world_size") or 1)
    if tp_size > 1:
        weights = _consolidate_tensor_parallel(checkpoint, tp_size, stage, full_model)
        source = f"tensor-parallel x{tp_size}, " + ("module weights" if stage == 0 else "fp32 master weights")
    elif stage == 0:
        weights = states.get("module")
        if not isinstance(weights, dict):
            raise NgptConfigError(f"{states_file} holds no module weights: the checkpoint is damaged")
        source = "module weights (ZeRO 0)"
        if any(t.dtype in (torch.bfloat16, torch.float16) for t in weights.values()):
            master = _zero0_master_weights(states, full_model)
            if master is not None:
                weights, source = master, "fp32 master weights (ZeRO 0)"
    else:
        weights = _consolidate_zero(checkpoint)
        source = f"fp32 master weights consolidated from ZeRO-{stage} shards of {world} rank(s)"
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in weights.values()})
    deepspeed = run.get("deepspeed") or {}
    info = {
        "checkpoint": str(checkpoint),
        "step": int(checkpoint.name[len(STEP_PREFIX):]),
        "zero_stage": stage,
        "world_size": world * tp_size,
        "data_parallel": world,
        "tensor_parallel": tp_size,
        "weights": f"{source}, {'/'.join(dtypes)}",
        "data_dir": run.get("data_dir"),
        "eval": {"batches": (run.get("train") or {}).get("eval_batches"),
                 "micro_batch": deepspeed.get("train_micro_batch_size_per_gpu"),
                 "data_parallel": world},
    }
    return weights, info


# ---- tokenizer --------------------------------------------------------------------------------


def check_tokenizer(tokenizer: Tokenizer, vocab_size: int, expected_sha256: str | None, what: str) -> str:
    """Raise unless the tokenizer fits the model: same vocabulary size, and the recorded file hash
    when one is known. Returns the tokenizer file's sha256."""
    if tokenizer.vocab_size != vocab_size:
        raise NgptConfigError(f"tokenizer {tokenizer.path} has a vocabulary of {tokenizer.vocab_size} pieces, but "
                              f"{what} was trained with vocab_size {vocab_size}: it is not this model's tokenizer. "
                              "Use the tokenizer.model of the dataset the model was trained on")
    digest = sha256_file(tokenizer.path)
    if expected_sha256 and digest != expected_sha256:
        raise NgptConfigError(f"tokenizer {tokenizer.path} (sha256 {digest[:12]}…) is not the one {what} was trained "
                              f"with (sha256 {expected_sha256[:12]}…), although both have {vocab_size} pieces; "
                              "token ids would mean different text. Use the model's own tokenizer.model")
    return digest


def _checkpoint_tokenizer(run: dict[str, Any], checkpoint: Path, override: str | Path | None
                          ) -> tuple[Tokenizer, str | None]:
    """The run's dataset tokenizer (and its recorded sha256), or the override checked against it."""
    data_dir = run.get("data_dir")
    expected = None
    meta_error = None
    if data_dir:
        try:
            meta = load_dataset_meta(data_dir)
            expected = meta.tokenizer_sha256
            if override is None:
                return Tokenizer.load(meta.tokenizer_file), expected
        except NgptConfigError as err:
            meta_error = err
    if override is not None:
        return Tokenizer.load(override), expected
    reason = f"its dataset {data_dir} (data_dir in {checkpoint / 'config.yaml'}) cannot be read: {meta_error}" \
        if data_dir else f"{checkpoint / 'config.yaml'} records no data_dir"
    raise NgptConfigError(f"no tokenizer for {checkpoint}: {reason}. Pass the tokenizer.model the training data "
                          "was prepared with (--tokenizer FILE)")


# ---- the model --------------------------------------------------------------------------------


def check_weights(model: CausalLM, weights: dict[str, torch.Tensor], source: str) -> None:
    """Names and shapes of `weights` must be exactly those of `model` (built from the saved config),
    and every value finite."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in weights.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
    bad = sorted(n for n, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise NgptConfigError(f"{source}: {', '.join(bad[:8])} hold NaN or infinite values; the weights are corrupt "
                              "(or training diverged before this checkpoint)")
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(f"{n} {got[n]} vs config {expected[n]}" for n in wrong[:8]))
        raise NgptConfigError(f"{source}: the weights do not match the model config ({'; '.join(parts)}); "
                              "the files are damaged or from another model")


def check_unit_norm(model: CausalLM, source: str, weights_dtype: torch.dtype = torch.float32) -> float:
    """nGPT: every sphere matrix must be unit norm along its declared dim. Returns the largest deviation."""
    deviation = max_norm_deviation(model)
    tolerance = NORM_TOLERANCE.get(weights_dtype, 1e-2)
    if model.config.arch == "ngpt" and not deviation <= tolerance:  # also catches NaN
        raise NgptConfigError(f"{source}: an nGPT weight matrix is not unit norm along its declared dim "
                              f"(largest | ||w|| - 1 | = {deviation:.3g} > {tolerance:g}); the weights are corrupt "
                              "or were not trained with the hypersphere hook")
    return deviation


def _finish(model: CausalLM, weights: dict[str, torch.Tensor], source: str, device, dtype) -> CausalLM:
    """Load checked weights into `model` (built from their config), check the sphere, move and cast it."""
    check_weights(model, weights, source)
    weights_dtype = min((t.dtype for t in weights.values() if t.is_floating_point()),
                        key=lambda d: torch.finfo(d).bits, default=torch.float32)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    check_unit_norm(model, source, weights_dtype)
    return model.to(device=resolve_device(device), dtype=resolve_dtype(dtype)).eval().requires_grad_(False)


def _model_config(values: Any, source: str) -> ModelConfig:
    config = ModelConfig.from_dict(dict(values or {}), source=source)
    if config.vocab_size is None:
        raise NgptConfigError(f"{source}: model.vocab_size is not set; the file was not written by the trainer")
    return config


def load_checkpoint(path: str | Path, *, device=None, dtype=None, tokenizer: str | Path | None = None
                    ) -> LoadedModel:
    """A trainer checkpoint (any ZeRO stage, any world size) -> LoadedModel. No DeepSpeed engine starts."""
    checkpoint = resolve_checkpoint(path)
    run = read_run_config(checkpoint)
    config = _model_config(run["model"], f"model config ({checkpoint / 'config.yaml'})")
    tok, expected_sha = _checkpoint_tokenizer(run, checkpoint, tokenizer)
    digest = check_tokenizer(tok, config.vocab_size, expected_sha, f"the model in {checkpoint}")
    model = build_model(config)
    weights, info = read_checkpoint_weights(checkpoint, run, model)
    model = _finish(model, weights, str(checkpoint), device, dtype)
    return LoadedModel(model=model, config=config, tokenizer=tok, tokenizer_sha256=digest, source=checkpoint,
                       kind="checkpoint", info=info)


def read_export_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NgptConfigError(f"{path} cannot be read ({err}); export the checkpoint again") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise NgptConfigError(f"{path}: format = {config.get('format') if isinstance(config, dict) else None!r}, "
                              f"expected {EXPORT_FORMAT!r}: not a folder written by launch/export.py")
    if config.get("format_version") != EXPORT_VERSION:
        raise NgptConfigError(f"{path}: format_version {config.get('format_version')!r} is not supported by this "
                              f"ngpt_ds (it reads version {EXPORT_VERSION}); export the checkpoint again")
    return config


def _export_tokenizer_file(folder: Path, tok_meta: dict[str, Any]) -> Path:
    """The tokenizer file named in config.json: a file inside the export folder, never a path that
    leads out of it (an export is one self-contained folder; a shared one must not read elsewhere)."""
    name = tok_meta.get("file", TOKENIZER_FILE)
    path = folder / str(name)
    root = folder.resolve()
    if not isinstance(name, str) or Path(name).is_absolute() or root not in path.resolve().parents:
        raise NgptConfigError(f"{folder / CONFIG_FILE}: tokenizer.file = {name!r} must name a file inside the export "
                              f"folder (normally {TOKENIZER_FILE!r}); export the checkpoint again")
    return path


def load_export(path: str | Path, *, device=None, dtype=None, tokenizer: str | Path | None = None) -> LoadedModel:
    """An exported folder -> LoadedModel (safetensors weights, config.json, tokenizer.model)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    meta = read_export_config(folder)
    config = _model_config(meta.get("model"), f"model config ({folder / CONFIG_FILE})")
    tok_meta = meta.get("tokenizer") or {}
    tok = Tokenizer.load(tokenizer if tokenizer is not None else _export_tokenizer_file(folder, tok_meta))
    digest = check_tokenizer(tok, config.vocab_size, tok_meta.get("sha256"), f"the model in {folder}")
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError) as err:
        raise NgptConfigError(f"{folder / WEIGHTS_FILE} cannot be read ({err}); export the checkpoint again") from None
    model = _finish(build_model(config), weights, str(folder), device, dtype)
    return LoadedModel(model=model, config=config, tokenizer=tok, tokenizer_sha256=digest, source=folder,
                       kind="export", info=dict(meta.get("training") or {}))


def load(path: str | Path, *, device=None, dtype=None, tokenizer: str | Path | None = None) -> LoadedModel:
    """An exported folder or a trainer checkpoint / run directory -> LoadedModel in eval mode.

    device: 'cpu', 'cuda', 'cuda:1', or 'auto'/None (a GPU when there is one).
    dtype: 'float32' (default), 'bfloat16' or 'float16' for the forward pass.
    tokenizer: a sentencepiece .model to use instead of the model's own (checked against it).
    """
    if is_export(path):
        return load_export(path, device=device, dtype=dtype, tokenizer=tokenizer)
    return load_checkpoint(path, device=device, dtype=dtype, tokenizer=tokenizer)
