"""Load a trained model for inference, on CPU or GPU, without starting DeepSpeed.

Two sources:

- a DeepSpeed checkpoint written by the trainer (`<out>/checkpoints/step_N/`, any ZeRO stage
  and world size), found and read by ngpt_ds.infer.run_checkpoint: its DeepSpeed files are read
  by ngpt_ds.deepspeed_files (ZeRO 1-3 shards consolidated into fp32
  weights by DeepSpeed's `zero_to_fp32` on the CPU; ZeRO 0's module weights or fp32 masters;
  tensor-parallel ranks merged with `ngpt_ds.parallel.merge_tensor_parallel`). The model config
  comes from the checkpoint's `config.yaml` and the tokenizer from the run's dataset (`data_dir`
  in that file);
- an exported folder (`ngpt_ds.infer.export`; its files are named in ngpt_ds.infer.export_layout):
  `model.safetensors`, `config.json`, `tokenizer.model`.

Loading never runs code: every checkpoint file, DeepSpeed's reads in `zero_to_fp32` included, is
unpickled by ngpt_ds.safe_load (tensors, plain data and an allow-list only).

Every load checks what it can: the COMPLETE marker, parameter names and shapes against the
model config, the tokenizer against the model's vocabulary (and its recorded sha256), and that
nGPT's sphere matrices are unit norm along their declared dims.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ngpt_ds.data.shards import PREPARE_HINT, load_dataset_meta
from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError

# Re-exported (`X as X`): read_export_config and these names were defined here before export_config existed.
from ngpt_ds.infer.export_config import (
    HF_MODEL_TYPES as HF_MODEL_TYPES,
)
from ngpt_ds.infer.export_config import (
    check_recorded_config,
    export_tokenizer_file,
    read_export_config,
)
from ngpt_ds.infer.export_layout import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    is_export,
)
from ngpt_ds.infer.export_layout import (
    EXPORT_FORMAT as EXPORT_FORMAT,
)
from ngpt_ds.infer.export_layout import (
    EXPORT_VERSION as EXPORT_VERSION,
)
from ngpt_ds.infer.export_layout import (
    TOKENIZER_FILE as TOKENIZER_FILE,
)
from ngpt_ds.infer.run_checkpoint import (
    read_checkpoint_weights,
    read_run_config,
    recorded_data_dir,
    removed_while_read,
    resolve_checkpoint,
)
from ngpt_ds.model import CausalLM, ModelConfig, build_model, max_norm_deviation
from ngpt_ds.model.saved_weights import (
    NORM_TOLERANCE,
    check_dtypes,
    check_host_memory,
    header_shapes,
    numel,
    pinned_weights,
)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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
        return (
            f"{m.display_name} {m.n_layer} layers, d {m.n_embd}, {m.n_head} heads, "
            f"context {m.seq_len}, vocab {m.vocab_size} ({self.kind} {self.source}{step})"
        )

    def card_fields(self) -> dict[str, Any]:
        """What an export's README.md says of the model (the fields both README templates fill,
        ngpt_ds.infer.export and ngpt_ds.hf.export): architecture, shape and the checkpoint it came from."""
        m = self.config
        return {
            "article": "An" if m.is_ngpt else "A",
            "arch_name": "nGPT (normalized Transformer)" if m.is_ngpt else "GPT (baseline)",
            "checkpoint": self.info.get("checkpoint", self.source),
            "step": self.info.get("step", "?"),
            "n_layer": m.n_layer,
            "n_embd": m.n_embd,
            "n_head": m.n_head,
            "seq_len": m.seq_len,
            "vocab_size": m.vocab_size,
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None -> cuda when available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NgptConfigError(f"device {device} requested but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        # CUDA itself says only "invalid device ordinal", from deep inside the first tensor moved there.
        raise NgptConfigError(
            f"device {device} requested but this machine has {count} CUDA GPU(s); use --device cuda:0"
            + (f" to cuda:{count - 1}" if count > 1 else "")
        )
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise NgptConfigError(f"dtype {dtype!r}: must be one of float32, bfloat16, float16")
    return DTYPES[dtype]


# ---- tokenizer --------------------------------------------------------------------------------


def check_tokenizer(tokenizer: Tokenizer, vocab_size: int, expected_sha256: str | None, what: str) -> str:
    """Raise unless the tokenizer fits the model: same vocabulary size, and the recorded file hash
    when one is known. Returns the sha256 of the bytes that were loaded (Tokenizer.sha256), never of the
    file at its path now: a file replaced after the load was hashed in place of the tokenizer in use, so
    the wrong tokenizer passed the check and an export recorded another file's hash."""
    if tokenizer.vocab_size != vocab_size:
        raise NgptConfigError(
            f"tokenizer {tokenizer.path} has a vocabulary of {tokenizer.vocab_size} pieces, but "
            f"{what} was trained with vocab_size {vocab_size}: it is not this model's tokenizer. "
            "Use the tokenizer.model of the dataset the model was trained on"
        )
    digest = tokenizer.sha256
    if expected_sha256 and digest != expected_sha256:
        raise NgptConfigError(
            f"tokenizer {tokenizer.path} (sha256 {digest[:12]}…) is not the one {what} was trained "
            f"with (sha256 {expected_sha256[:12]}…), although both have {vocab_size} pieces; "
            "token ids would mean different text. Use the model's own tokenizer.model"
        )
    return digest


def _checkpoint_tokenizer(
    run: dict[str, Any], checkpoint: Path, override: str | Path | None
) -> tuple[Tokenizer, str | None]:
    """The run's dataset tokenizer, or the override, and the sha256 it must have: the one config.yaml
    records (the trainer's `tokenizer_sha256`), else, from a trainer that did not record it, the dataset's.

    data_dir is a path on the machine that trained: on another machine it may be missing, or name
    another dataset, or the same folder prepared again with another tokenizer of the same size. Only
    the recorded hash tells the model's tokenizer from those."""
    data_dir = recorded_data_dir(run)
    recorded = run.get("tokenizer_sha256")
    expected = recorded if isinstance(recorded, str) and recorded else None
    problem = f"{checkpoint / 'config.yaml'} records no data_dir"
    if data_dir:
        try:
            meta = load_dataset_meta(data_dir, verify_contents=False)  # its tokenizer only: no shard is read
        except NgptConfigError as err:
            # Without the dataset's own fix: preparing it again trains another tokenizer, which the hash check
            # refuses; the message ends with the fix that works (--tokenizer).
            reason = str(err).replace(f"; {PREPARE_HINT}", "")
            reason = reason.replace(f"; delete {Path(data_dir)} and prepare it again", "")
            problem = f"its dataset {data_dir} (data_dir in {checkpoint / 'config.yaml'}) cannot be read: {reason}"
        else:
            if expected is not None and meta.tokenizer_sha256 != expected:
                problem = (
                    f"the tokenizer of its dataset {data_dir} (sha256 {meta.tokenizer_sha256[:12]}…) is not the "
                    f"one the model was trained with (sha256 {expected[:12]}…, tokenizer_sha256 in "
                    f"{checkpoint / 'config.yaml'}): that folder was prepared again, or names another dataset here"
                )
            else:
                expected = expected or meta.tokenizer_sha256
                if override is None:
                    return Tokenizer.load(meta.tokenizer_file), expected
    if override is not None:
        return Tokenizer.load(override), expected
    raise NgptConfigError(
        f"no tokenizer for {checkpoint}: {problem}. Pass the tokenizer.model the training data "
        "was prepared with (--tokenizer FILE)"
    )


# ---- the model --------------------------------------------------------------------------------


def check_shapes(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], source: str) -> None:
    """Names and shapes of the weights (`got`) must be exactly those the model config gives (`expected`)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(f"{n} {got[n]} vs config {expected[n]}" for n in wrong[:8]))
        raise NgptConfigError(
            f"{source}: the weights do not match the model config ({'; '.join(parts)}); "
            "the files are damaged or from another model"
        )


def check_weights(expected: dict[str, tuple[int, ...]], weights: dict[str, torch.Tensor], source: str) -> None:
    """Names and shapes of `weights` must be exactly the `expected` ones (config_shapes of the saved
    config), every one of a float dtype (check_dtypes), and every value finite."""
    check_dtypes({name: t.dtype for name, t in weights.items()}, source)
    bad = sorted(n for n, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise NgptConfigError(
            f"{source}: {', '.join(bad[:8])} hold NaN or infinite values; the weights are corrupt "
            "(or training diverged before this checkpoint)"
        )
    check_shapes(expected, {name: tuple(t.shape) for name, t in weights.items()}, source)


def check_layer_count(config: ModelConfig, names: Iterable[str], source: str) -> None:
    """The blocks the weights hold (`blocks.N.` in their names) must be the config's n_layer, checked before
    config_shapes describes the model: that takes about 20 ms and 40 KB a block, so a config.json saying far
    more blocks than the file holds spent minutes and memory before check_shapes named the difference."""
    indices = {int(m.group(1)) for name in names if (m := _BLOCK_INDEX.match(name))}
    held = max(indices) + 1 if indices else 0
    if held != config.n_layer:
        raise NgptConfigError(
            f"{source}: the weights hold {held} transformer block{'s' if held != 1 else ''} (blocks.0 to "
            f"blocks.{held - 1}), but the model config says n_layer {config.n_layer}; the files are damaged, "
            "altered or from another model"
            if held
            else f"{source}: the weights hold no transformer block (no blocks.N. names), but the model config says "
            f"n_layer {config.n_layer}; the files are damaged, altered or from another model"
        )


_BLOCK_INDEX = re.compile(r"blocks\.(\d{1,9})\.")


def config_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of the model `config` describes, without allocating it (meta tensors)."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in build_model(config).state_dict().items()}


def held_while_read(checkpoint: Path) -> int:
    """Bytes of host memory that reading a trainer checkpoint's weights holds: the files are memory-mapped, and of
    each ZeRO optimizer file (`*_optim_states.pt`) only the fp32 masters are copied out, a third of it (AdamW keeps
    the master and two moments per parameter, all fp32; zero_to_fp32 drops the moments unread). Other `.pt` files
    (the model states, at ZeRO 0 with the optimizer in them) count whole. Counting every byte refused checkpoints
    that fit: a 1.5B run's 18 GB of optimizer files holds 6 GB of masters."""
    held = 0
    for f in checkpoint.iterdir():
        if f.suffix == ".pt" and f.is_file():
            size = f.stat().st_size
            held += size // 3 if f.name.endswith("_optim_states.pt") else size
    return held


def check_load_memory(stored_bytes: int, parameters: int, source: str, edited: str) -> None:
    """The host memory a load holds at its peak, checked before it is read or built: the weights as read
    (`stored_bytes`) and the float32 model built from them (`parameters`; 0 where they are not known). A config describing a far larger model than the machine
    holds, with a weights file to match (a sparse file of any size costs a few bytes on disk), was read and built until
    the allocator failed with a traceback, or the OOM killer ended the process."""
    GIB = 2**30
    built = f"the float32 model built from them ({parameters} parameters)"
    what = f"its weights ({stored_bytes / GIB:.2f} GiB as read)"
    if parameters:
        what = f"{what} and {built}" if stored_bytes else f"{built.replace('them', 'its weights')}"
    check_host_memory(
        stored_bytes + 4 * parameters, source, what, f"{edited}; else load it on a machine with more memory"
    )


def check_unit_norm(model: CausalLM, source: str, weights_dtype: torch.dtype = torch.float32) -> float:
    """nGPT: every sphere matrix must be unit norm along its declared dim. Returns the largest deviation."""
    deviation = max_norm_deviation(model)
    tolerance = NORM_TOLERANCE.get(weights_dtype, 1e-2)
    if model.config.is_ngpt and not deviation <= tolerance:  # also catches NaN
        raise NgptConfigError(
            f"{source}: an nGPT weight matrix is not unit norm along its declared dim "
            f"(largest | ||w|| - 1 | = {deviation:.3g} > {tolerance:g}); the weights are corrupt "
            "or were not trained with the hypersphere hook"
        )
    return deviation


def _finish(
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    source: str,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    edited: str | None = None,
) -> CausalLM:
    """Check the weights against `config`, then build its model (only then: a config describing a far
    larger model than the files hold must not allocate it), load them, check the sphere, move and cast it.
    With `edited` (the fix naming the config file), the float32 model is first checked against the memory left."""
    check_weights(config_shapes(config), weights, source)
    if edited is not None:
        check_load_memory(0, sum(t.numel() for t in weights.values()), source, edited)
    model = build_model(config)
    weights_dtype = min(
        (t.dtype for t in weights.values() if t.is_floating_point()),
        key=lambda d: torch.finfo(d).bits,
        default=torch.float32,
    )
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    check_unit_norm(model, source, weights_dtype)
    return model.to(device=resolve_device(device), dtype=resolve_dtype(dtype)).eval().requires_grad_(False)


def _model_config(values: Any, source: str) -> ModelConfig:
    # Every model field is a number, a string or null. A list or mapping is refused here, shown abridged:
    # YAML aliases let a few lines nest 10^9 items, which ModelConfig's message would print whole.
    if not isinstance(values, dict):
        raise NgptConfigError(f"{source}: model = {reprlib.repr(values)[:80]} must be a mapping of the model's fields")
    nested = {k: v for k, v in values.items() if isinstance(v, (list, tuple, dict, set))}
    if nested:
        name, value = next(iter(nested.items()))
        raise NgptConfigError(
            f"{source}: model.{name} = {reprlib.repr(value)[:80]} must be a number or a string; the file was "
            "not written by the ngpt_ds trainer or was altered"
        )
    config = ModelConfig.from_dict(dict(values), source=source)
    if config.vocab_size is None:
        raise NgptConfigError(f"{source}: model.vocab_size is not set; the file was not written by the trainer")
    return config


def checkpoint_tokenizer(checkpoint: Path, override: str | Path | None = None) -> Tokenizer:
    """The tokenizer load_checkpoint would use for the complete `checkpoint` (its run's dataset's, or `override`),
    without reading any weight: for checks that must not wait for the weights (export --format hf)."""
    return _checkpoint_tokenizer(read_run_config(checkpoint), checkpoint, override)[0]


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
) -> LoadedModel:
    """A trainer checkpoint (any ZeRO stage, any world size) -> LoadedModel. No DeepSpeed engine starts."""
    checkpoint = resolve_checkpoint(path)
    with removed_while_read(checkpoint):  # a training run's retention may delete it meanwhile
        run = read_run_config(checkpoint)
        config = _model_config(run["model"], f"model config ({checkpoint / 'config.yaml'})")
        assert config.vocab_size is not None  # _model_config refuses a config without it
        tok, expected_sha = _checkpoint_tokenizer(run, checkpoint, tokenizer)
        digest = check_tokenizer(tok, config.vocab_size, expected_sha, f"the model in {checkpoint}")
        with torch.device("meta"):
            layout = build_model(config)  # names, shapes and tensor-parallel plan to read by; nothing allocated
        # What reading the files holds first; the model its config.yaml describes once the weights read match it
        # (_finish), so that a config.yaml describing another model is named as such.
        edited = f"if {checkpoint / 'config.yaml'} was edited, restore it"
        check_load_memory(held_while_read(checkpoint), 0, str(checkpoint), edited)
        weights, info = read_checkpoint_weights(checkpoint, run, layout)
    model = _finish(config, weights, str(checkpoint), device, dtype, edited)
    return LoadedModel(
        model=model,
        config=config,
        tokenizer=tok,
        tokenizer_sha256=digest,
        source=checkpoint,
        kind="checkpoint",
        info=info,
    )


def load_export(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
) -> LoadedModel:
    """An exported folder -> LoadedModel (safetensors weights, config.json, tokenizer.model)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(path)
    meta = read_export_config(folder)
    config = _model_config(meta.get("model"), f"model config ({folder / CONFIG_FILE})")
    assert config.vocab_size is not None  # _model_config refuses a config without it
    tok_meta = meta.get("tokenizer") or {}
    if tokenizer is None:
        tokenizer = export_tokenizer_file(folder, tok_meta)
        if not tokenizer.exists():  # "pass an existing sentencepiece .model file" named no fix for an export
            link = (
                f" (a symbolic link to {tokenizer.readlink()}, which does not exist)" if tokenizer.is_symlink() else ""
            )
            raise NgptConfigError(
                f"{tokenizer} is missing{link}: the export {folder} has no tokenizer (an export copied in part). "
                "Copy the whole export folder again, export the checkpoint again, or pass the model's own "
                "tokenizer.model with --tokenizer FILE"
            )
    tok = Tokenizer.load(tokenizer)
    digest = check_tokenizer(tok, config.vocab_size, tok_meta.get("sha256"), f"the model in {folder}")
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():  # a named pipe there made safe_open wait forever
        raise NgptConfigError(f"{weights_file} is not a regular file; export the checkpoint again")
    edited = f"if {folder / CONFIG_FILE} was edited, restore it or export the checkpoint again"
    with pinned_weights(weights_file) as (read, size):  # every read below is of the one file opened here
        # Before safe_open, which maps the file (twice: under `ulimit -v` a file of half the limit failed there).
        shapes = header_shapes(read) or {}
        check_load_memory(size, sum(map(numel, shapes.values())), str(weights_file), edited)
        try:
            # The file's header against config.json before the model is built: a config.json describing a
            # larger model than the file holds must not allocate that model first.
            with safe_open(read, "pt") as f:
                header = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
                check_dtypes({name: f.get_slice(name).get_dtype() for name in header}, str(weights_file))
                check_recorded_config(f.metadata(), config, folder)
            check_layer_count(config, header, str(weights_file))
            check_shapes(config_shapes(config), header, str(weights_file))
            weights = load_file(read)
        except (OSError, SafetensorError) as err:
            raise NgptConfigError(f"{weights_file} cannot be read ({err}); export the checkpoint again") from None
    model = _finish(config, weights, str(folder), device, dtype)
    return LoadedModel(
        model=model,
        config=config,
        tokenizer=tok,
        tokenizer_sha256=digest,
        source=folder,
        kind="export",
        info=dict(meta.get("training") or {}),
    )


def load(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | Path | None = None,
) -> LoadedModel:
    """An exported folder or a trainer checkpoint / run directory -> LoadedModel in eval mode.

    device: 'cpu', 'cuda', 'cuda:1', or 'auto'/None (a GPU when there is one).
    dtype: 'float32' (default), 'bfloat16' or 'float16' for the forward pass.
    tokenizer: a sentencepiece .model to use instead of the model's own (checked against it).
    """
    if is_export(path):
        return load_export(path, device=device, dtype=dtype, tokenizer=tokenizer)
    return load_checkpoint(path, device=device, dtype=dtype, tokenizer=tokenizer)
