"""What the per-parameter files of a universal checkpoint must hold before DeepSpeed's load_universal reads them
(README "Resuming at another world size"; the folder is made by ngpt_ds.train.reshape_convert).

A step_N-universal folder is reused whenever its manifest verifies and names the source checkpoint, and whoever
can write the folder can rebuild its manifest. DeepSpeed's load_universal then took what it found: an fp32.pt of
another shape stopped rank 0 on an AssertionError deep in DeepSpeed ("full param numel 3104 != tensor slice numel
3072") while the other rank was told only that a rank died; a NaN was loaded and the run stopped a step later,
blaming the learning rate; an int64 Adam moment was cast to float without a word; a step.pt of another count ended
in "AssertionError: Steps [...] are not equal". Each file is now checked first, on every rank (each file by one
rank, one agreed verdict), and a file that does not fit is one NgptConfigError naming it and the parameter.
A folder this very process has just converted and sealed (ngpt_ds.train.reshape_convert remembers it) is not read
again while every file is as sealed: the conversion had hashed each file for its manifest a moment before, and
reading it once more (12 bytes per parameter, parsed and scanned) cost 11-16 s at 162.5M parameters on one rank of a
2-core machine, 3-4 times the hash. A folder reused from an earlier run, or changed since, is checked.
zero/optimizer_state.pt, the optimizer's global state DeepSpeed's load copies into the engine, must be what the
converter writes from the source's first optimizer shard (`global_state_problem`): a param_groups of one group
(ZeRO 1/2) left the second group's parameters without their masters and Adam moments and trained on in silence
(exit 0, the loss 4.2e-3 off the uninterrupted run's a step later); a NaN lr stopped two steps later blaming
train.lr; at ZeRO 3 a step of 7 (the source at 3) trained on with Adam's bias correction of step 7, in silence.

Reads DeepSpeed's universal format (checked against 0.19.8): zero/<name>/{fp32,exp_avg,exp_avg_sq}.pt
(ZeRO 1/2: a dict whose "param" is the tensor in the parameter's shape, beside keys that say how tensor-parallel
slices were merged; ZeRO 3: the flat tensor) and zero/<name>/step.pt (ZeRO 1/2: Adam's step count); and the
step count in the source's ZeRO 1/2 optimizer shards (optimizer_state_dict.base_optimizer_state.state); and
zero/optimizer_state.pt (ZeRO 1/2: the first shard's optimizer_state_dict without its sharded states, and
base_optimizer_state's param_groups; ZeRO 3: the first shard's optimizer_state_dict, whose inner
optimizer_state_dict holds the param_groups and the step DeepSpeed's load reads, state[0]['step']). Every
file is read through ngpt_ds.safe_load (no code runs), memory-mapped. It must not decide what to convert
(ngpt_ds.train.reshape_plan) nor convert (ngpt_ds.train.reshape_convert).
"""

from __future__ import annotations

import enum
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import verified_here

STATES = ("fp32", "exp_avg", "exp_avg_sq")
"""The tensors DeepSpeed's universal load reads of each parameter (besides step.pt)."""
STEP = "step"
MERGE_KEYS = frozenset({"param", "cat_dim", "vocab_tensor", "param_n_sub_params", "sub_param_shape"})
"""The keys of a ZeRO 1/2 state file that DeepSpeed's converter writes (0.19.8 merge_tp_slices): "param" and how
tensor-parallel slices were merged, which changes nothing at tensor-parallel size 1 (the only size converted)."""


def _load(path: Path) -> Any:
    from ngpt_ds import safe_load  # imports DeepSpeed's types: not at the module's import

    return safe_load.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))


def step_count(value: object) -> float | None:
    """A step count as DeepSpeed saves one (a 0-dim tensor or a number), or None for anything else."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def is_count(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0 and value == int(value)


def optimizer_shards(source: Path) -> list[Path]:
    """The source's optimizer shards, rank 0's first (the one DeepSpeed's converter copies the global state of)."""
    return sorted(source.glob("*zero_pp_rank_*_optim_states.pt"), key=lambda p: (len(p.name), p.name))


def optimizer_step(source: Path, every_shard: bool = True) -> float | None:
    """The Adam step count the source's ZeRO 1/2 optimizer shards record, every shard and parameter group the
    same; None when they record none (ZeRO 0 or 3, an optimizer without one). Raises NgptConfigError naming the
    shard when one records another count or none that is a count: DeepSpeed's converter stopped on "AssertionError:
    All shards must have the same step value". `every_shard` False: the first shard's only (the converter checked
    them all; every rank of a large job reading every shard would open ranks x shards files)."""
    found: tuple[float, Path] | None = None
    shards = optimizer_shards(source)
    for path in shards if every_shard else shards[:1]:
        states = _load(path)
        optimizer = states.get("optimizer_state_dict") if isinstance(states, dict) else None
        base = optimizer.get("base_optimizer_state") if isinstance(optimizer, dict) else None
        groups = base.get("state") if isinstance(base, dict) else None
        if not isinstance(groups, Mapping):
            continue  # ZeRO 3 keeps its state elsewhere; DeepSpeed's own read names a damaged file
        for group, state in groups.items():
            if not isinstance(state, Mapping) or STEP not in state:
                continue
            count = step_count(state[STEP])
            if not is_count(count):
                raise NgptConfigError(
                    f"{path}: parameter group {group!r} records optimizer step {state[STEP]!r}, which is no step "
                    f"count. {_ALTERED.format(what=source.name)}"
                )
            assert count is not None  # is_count
            if found is not None and count != found[0]:
                raise NgptConfigError(
                    f"{path}: parameter group {group!r} records optimizer step {count:g}, {found[1].name} records "
                    f"{found[0]:g} (every shard of one optimizer holds the same count). "
                    f"{_ALTERED.format(what=source.name)}"
                )
            found = (count, path)
    return None if found is None else found[0]


_ALTERED = "The checkpoint {what} was altered or damaged: resume from another checkpoint"


def parameter_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The full shape of each trainable parameter, by the name DeepSpeed gives its folder (ZeRO 3 keeps a
    partitioned parameter's shape in ds_shape)."""
    return {
        name: tuple(getattr(p, "ds_shape", None) or p.shape) for name, p in module.named_parameters() if p.requires_grad
    }


def _tensor_problem(tensor: object, shape: tuple[int, ...], zero3: bool) -> str | None:
    if not isinstance(tensor, torch.Tensor):
        return f"holds a {type(tensor).__name__}, not a tensor"
    if tensor.dtype != torch.float32:
        return f"holds a {tensor.dtype} tensor, not float32"
    want = (math.prod(shape),) if zero3 else shape
    if tuple(tensor.shape) != want:  # ZeRO 3 keeps it flat
        return f"holds a tensor of shape {list(tensor.shape)}" + (f", not the flat {list(want)}" if zero3 else "")
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        return f"holds {bad} non-finite value(s) (NaN or inf)"
    return None


def file_problem(path: Path, shape: tuple[int, ...], zero3: bool, step: float | None) -> str | None:
    """What is wrong with one zero/<name>/<state>.pt (`step`: the count step.pt must hold), or None."""
    loaded = _load(path)
    if path.stem == STEP:
        count = step_count(loaded)
        if not is_count(count):
            return f"holds {loaded!r}, which is no step count"
        if step is not None and count != step:
            return f"holds optimizer step {count:g}, where the checkpoint it was converted from is at {step:g}"
        return None
    if zero3:
        return _tensor_problem(loaded, shape, zero3)
    if not isinstance(loaded, dict) or "param" not in loaded:
        return f"holds a {type(loaded).__name__} without the 'param' tensor DeepSpeed's load reads"
    other = sorted(map(repr, set(loaded) - MERGE_KEYS))
    if other:
        return f"holds key(s) {', '.join(other[:3])}, which DeepSpeed's converter does not write"
    return _tensor_problem(loaded["param"], shape, zero3)


def problem(
    folder: Path, shapes: Mapping[str, tuple[int, ...]], zero3: bool, step: float | None, rank: int = 0, world: int = 1
) -> str | None:
    """The first file of `folder`'s share for `rank` (each file by one of `world` ranks) that does not fit
    `shapes`, as a message; or None. A missing parameter folder or file is named by every rank."""
    zero = folder / "zero"
    files: list[tuple[Path, str]] = []
    for name in sorted(shapes):
        for state in STATES:
            path = zero / name / f"{state}.pt"
            if not path.is_file():
                return _message(folder, path, name, shapes[name], "is missing")
            files.append((path, name))
        if not zero3:
            files.append((zero / name / f"{STEP}.pt", name))
    for index, (path, name) in enumerate(files):
        if index % world != rank:
            continue
        if path.stem == STEP and step is None and not path.is_file():
            continue  # an optimizer without a step count has none
        try:
            found = file_problem(path, shapes[name], zero3, step)
        except NgptConfigError as err:  # safe_load's refusal of a file that needs code
            found = f"was refused ({err})"
        except Exception as err:  # noqa: BLE001 (a crafted file raises what the unpickler meets)
            found = f"cannot be read ({type(err).__name__}: {err})"
        if found is not None:
            return _message(folder, path, name, shapes[name], found)
    return None


def _message(folder: Path, path: Path, name: str, shape: tuple[int, ...], what: str) -> str:
    return (
        f"{path} {what} (parameter {name}, shape {list(shape)}): the universal checkpoint {folder.name} does not fit "
        f"this model; it was altered or damaged after its conversion. Remove {folder} and rerun: the trainer converts "
        "the checkpoint again"
    )


OPTIMIZER_STATE = "optimizer_state.pt"
"""The optimizer's global state in the folder's zero/: the param_groups (lr, betas, eps, weight_decay, ...) and the
loss scaler DeepSpeed's load copies into the engine, and at ZeRO 3 the step count it gives every parameter."""
OPTIMIZER_STATE_DICT, PARAM_GROUPS = "optimizer_state_dict", "param_groups"
SHARDED = frozenset({"base_optimizer_state", "param_slice_mappings", "single_partition_of_fp32_groups"})
"""What DeepSpeed's ZeRO 1/2 converter leaves out of optimizer_state.pt (0.19.8 _save_optimizer_state): each rank's
partition of the state, merged into the per-parameter files instead."""


def converted_global_state(shard_states: object, zero3: bool) -> dict | None:
    """What DeepSpeed's converter writes as zero/optimizer_state.pt from the source's first optimizer shard (0.19.8
    _save_optimizer_state, _save_optimizer_state_stage3), or None when the shard holds no optimizer state."""
    optimizer = shard_states.get(OPTIMIZER_STATE_DICT) if isinstance(shard_states, dict) else None
    if not isinstance(optimizer, dict):
        return None
    if zero3:
        inner = optimizer.get(OPTIMIZER_STATE_DICT)
        groups = inner.get(PARAM_GROUPS) if isinstance(inner, dict) else None
        return None if groups is None else {**optimizer, PARAM_GROUPS: groups}
    base = optimizer.get("base_optimizer_state")
    groups = base.get(PARAM_GROUPS) if isinstance(base, dict) else None
    return (
        None if groups is None else {**{k: v for k, v in optimizer.items() if k not in SHARDED}, PARAM_GROUPS: groups}
    )


def same_value(found: object, want: object) -> bool:
    """Equal values of the same type, a NaN equal to a NaN (a copy of the source is no refusal)."""
    if type(found) is not type(want):
        return False
    if isinstance(want, float) and isinstance(found, float) and math.isnan(want):
        return math.isnan(found)
    try:
        return bool(found == want)
    except Exception:  # noqa: BLE001 (an object whose comparison fails is no copy)
        return False


def _field(field: str, key: object) -> str:
    return f"{field}[{key!r}]" if field else str(key)


def _difference(found: object, want: object, field: str, origin: str) -> str | None:
    """Where `found` (the folder's optimizer_state.pt) differs from `want` (what the converter writes of the source):
    the first field, as 'param_groups[1]['lr'] is nan, where ... records 0.01'; None when it does not. A tensor of more
    than one element is compared by dtype and shape (DeepSpeed's universal load reads none from this file: ZeRO 3's
    copy of rank 0's partition, the per-parameter files hold the state); one of one element by its value too."""
    where = f"{field or 'the file'}"
    if isinstance(want, torch.Tensor):
        if not isinstance(found, torch.Tensor):
            return f"{where} holds a {type(found).__name__}, where {origin} records a tensor"
        if found.dtype != want.dtype or found.shape != want.shape:
            return (
                f"{where} holds a {found.dtype} tensor of shape {list(found.shape)}, where {origin} records a "
                f"{want.dtype} tensor of shape {list(want.shape)}"
            )
        if want.numel() == 1 and not same_value(found.item(), want.item()):
            return f"{where} is {found.item():g}, where {origin} records {want.item():g}"
        return None
    if isinstance(want, Mapping):
        if not isinstance(found, Mapping):
            return f"{where} holds a {type(found).__name__}, where {origin} records a {type(want).__name__}"
        extra = [k for k in found if k not in want]
        missing = [k for k in want if k not in found]
        if missing:
            return f"{where} lacks the key {missing[0]!r}, which {origin} records"
        if extra:
            return f"{where} holds the key {extra[0]!r}, which {origin} does not record"
        return next(
            (d for k in want if (d := _difference(found[k], want[k], _field(field, k), origin)) is not None), None
        )
    if isinstance(want, (list, tuple)):
        if not isinstance(found, (list, tuple)) or len(found) != len(want):
            size = f"{len(found)} item(s)" if isinstance(found, (list, tuple)) else f"a {type(found).__name__}"
            return f"{where} holds {size}, where {origin} records {len(want)}"
        return next(
            (
                d
                for i, (f, w) in enumerate(zip(found, want))
                if (d := _difference(f, w, f"{field}[{i}]", origin)) is not None
            ),
            None,
        )
    if not isinstance(want, (enum.Enum, str, bytes, int, float, complex, type(None))) and hasattr(want, "__dict__"):
        if type(found) is not type(want):  # DeepSpeed's loss scaler: its attributes
            return f"{where} holds a {type(found).__name__}, where {origin} records a {type(want).__name__}"
        return _difference(vars(found), vars(want), field, origin)
    if not same_value(found, want):
        return f"{where} is {found!r}, where {origin} records {want!r}"
    return None


def global_state_problem(folder: Path, source: Path, zero3: bool) -> str | None:
    """Why `folder`'s zero/optimizer_state.pt is not what DeepSpeed's converter writes of `source` (its first
    optimizer shard), as the message to stop on; or None. Nothing to compare with (no shard, no optimizer state in
    it): None, and DeepSpeed's own read names the file."""
    shards = optimizer_shards(source)
    want = converted_global_state(_load(shards[0]), zero3) if shards else None
    if want is None:
        return None
    path = folder / "zero" / OPTIMIZER_STATE
    found: str | None
    try:
        found = _difference(_load(path), want, "", shards[0].name) if path.is_file() else "is missing"
    except NgptConfigError as err:  # safe_load's refusal of a file that needs code
        found = f"was refused ({err})"
    except Exception as err:  # noqa: BLE001 (a crafted file raises what the unpickler meets)
        found = f"cannot be read ({type(err).__name__}: {err})"
    if found is None:
        return None
    return (
        f"{path}: {found}: the universal checkpoint {folder.name} does not "
        f"hold the optimizer state of {source}, which it was converted from; it was altered or damaged after its "
        f"conversion. Remove {folder} and rerun: the trainer converts the checkpoint again"
    )


_converted_here: set[verified_here.Fingerprint] = set()


def remember_conversion(folder: Path) -> None:
    """Every rank, once ngpt_ds.train.reshape_convert has sealed `folder`, converted by this process: its fingerprint
    as it is now (ngpt_ds.train.verified_here: the manifest's digest, every file's inode, size, mtime and ctime, which
    any write moves). Never a folder reused from an earlier run: whoever can write it can rebuild its manifest."""
    sealed = verified_here.fingerprint(folder)
    if sealed is not None:
        _converted_here.add(sealed)


def converted_here(folder: Path) -> bool:
    """Whether this process converted `folder` and nothing in it changed since (the memory is used once)."""
    now = verified_here.fingerprint(folder)
    if now is None or now not in _converted_here:
        return False
    _converted_here.discard(now)
    return True


def check_on_all_ranks(folder: Path, shapes: Mapping[str, tuple[int, ...]], zero3: bool, source: Path) -> None:
    """Collective, before DeepSpeed's load_universal reads `folder`: every rank checks its share of the files (the
    last rank also zero/optimizer_state.pt against the source's first optimizer shard), and every rank raises the
    same NgptConfigError for the first that does not fit (lowest rank first). Skipped when every rank converted
    `folder` itself and finds it as sealed (`converted_here`)."""
    from ngpt_ds.train import collectives

    if all(collectives.all_answers(lambda: converted_here(folder), f"looking up the conversion of {folder}")):
        return  # the files are the conversion's own, hashed for the manifest a moment ago
    rank, world = dist.get_rank(), dist.get_world_size()

    def mine() -> str | None:
        try:
            step = None if zero3 else optimizer_step(source, every_shard=False)
        except NgptConfigError as err:  # an answer like the others: every rank raises it after the gather
            return str(err)
        found = global_state_problem(folder, source, zero3) if rank == world - 1 else None
        return found if found is not None else problem(folder, shapes, zero3, step, rank, world)

    answers = collectives.all_answers(mine, f"checking {folder}")
    found = next((a for a in answers if a is not None), None)
    if found is not None:
        raise NgptConfigError(found)
