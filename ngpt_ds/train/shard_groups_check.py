"""A resume at the world size it was saved with: the optimizer hyperparameters of the ZeRO shard each rank loads.

DeepSpeed's ZeRO 1-3 load (0.19.8 `_load_legacy_checkpoint`, `_rigid_load_state_dict`) copies the param_groups
of the rank's own shard, `[bf16_]zero_pp_rank_R_mp_rank_XX_optim_states.pt`, into the optimizer: their lr, betas,
eps and weight_decay drive every later update. A shard altered with its manifest rebuilt (a NaN lr of the
vectors' group, 1 rank at ZeRO 2) was loaded as it was, and the run stopped two steps later on "the training loss
became nan ... lower train.lr", blaming the config. Each rank now reads its shard first (ngpt_ds.safe_load via
ngpt_ds.deepspeed_files, memory-mapped, no code runs) and every rank stops on one line naming the file and the
field. ZeRO 0 keeps its optimizer state in the model states file, `mp_rank_XX_model_states.pt` under 'optimizer'
(0.19.8 `_load_checkpoint`: torch's optimizer state_dict at fp32; the FP16_Optimizer's at fp16 or bf16, whose
`optimizer_state_dict` its load copies into the inner optimizer): a NaN lr there had blamed train.lr too, and is
checked the same way. Each group must hold what torch's load and Adam's step read ('params', lr, betas, eps,
weight_decay), values torch's AdamW takes (not only finite ones: a negative eps trained on in silence), as many
params and the same flags (amsgrad, maximize, name...) as the model's optimizer's group; and every rank's shard the
same groups (each rank sends its few numbers, no rank reads another's shard). A universal folder (another world size)
is checked by ngpt_ds.train.universal_check, and the groups its zero/optimizer_state.pt holds here (universal_problem).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ngpt_ds import deepspeed_files
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.universal_check import (
    OPTIMIZER_STATE,
    OPTIMIZER_STATE_DICT,
    PARAM_GROUPS,
    converted_global_state,
    same_value,
    step_count,
)

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

OPTIMIZER = "optimizer"
"""Where DeepSpeed's save puts the optimizer's state_dict in the model states file when ZeRO is off."""

NUMBERS = ("lr", "eps", "weight_decay")
"""The param_groups entries Adam reads as one number each (betas: a pair); torch's AdamW refuses each below 0 (its
constructor: a zero lr is legal). A negative eps or lr, a beta at 1 or above, loaded as they were, trained on in
silence (exit 0): a vectors' group's eps of -1e-3 put the loss 0.56 off the uninterrupted run's a step later."""
REQUIRED = ("params", *NUMBERS, "betas")
"""What torch's Optimizer.load_state_dict and Adam's step read of every loaded group; a group without 'params'
stopped its rank on "KeyError: 'params'" and the others on "another rank of the job died". torch's Adam gives
the other flags defaults when a group lacks them (older torch wrote none of 'decoupled_weight_decay')."""
KERNEL_CHOICES = frozenset({"foreach", "fused", "capturable", "differentiable"})
"""Flags that pick how torch runs Adam's update, not what it computes: another torch whose default differs (foreach
None or False) wrote a checkpoint this check must not refuse."""
OWN = frozenset({"params", *NUMBERS, "betas", "initial_lr", *KERNEL_CHOICES})
"""Keys not compared with the live optimizer's group: the hyperparameters (checked above; a resume may change them,
ngpt_ds.train.optim.apply_on_resume), LambdaLR's base LR and the kernel choices."""


def _where(zero3: bool) -> str:
    """The field DeepSpeed's load copies the param_groups from (ZeRO 3: the inner optimizer's state dict)."""
    inner = "optimizer_state_dict" if zero3 else "base_optimizer_state"
    return f"optimizer_state_dict[{inner!r}][{PARAM_GROUPS!r}]"


def _value_problem(value: object, below_one: bool = False) -> str | None:
    """Why `value` is no lr, eps or weight_decay torch's AdamW takes (`below_one`: no beta, in [0, 1)), or None."""
    number = step_count(value)  # a number, or a 0-dim tensor of one, as torch's optimizers keep them
    if number is None:
        return f"is {repr(value)[:80]}, not a number"
    if not math.isfinite(number):
        return f"is {number}, not a finite number"
    if number < 0 or (below_one and number >= 1):
        return f"is {number:g}, not in [0, 1)" if below_one else f"is {number:g}, not a number >= 0"
    return None


def _group_problem(group: object, live: Mapping[str, Any] | None = None) -> str | None:
    """Why one param group cannot drive the model's AdamW ('['lr'] is nan, not a finite number'), or None. `live`:
    the model's optimizer's group it is loaded into: as many params, and the same flags (amsgrad, maximize,
    decoupled_weight_decay, name...), which DeepSpeed's load copies over the live ones (amsgrad True stopped its rank on "KeyError:
    'max_exp_avg_sq'"; maximize True trained on in silence, climbing the loss on that rank's partition)."""
    if not isinstance(group, dict):
        return f" holds a {type(group).__name__}, not a param group"
    missing = [key for key in REQUIRED if key not in group]
    if missing:
        return f" lacks {missing[0]!r}"
    for key in NUMBERS:
        if (problem := _value_problem(group[key])) is not None:
            return f"[{key!r}] {problem}"
    betas = group["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        return f"['betas'] is {repr(betas)[:80]}, not a pair of numbers"
    for i, beta in enumerate(betas):
        if (problem := _value_problem(beta, below_one=True)) is not None:
            return f"['betas'][{i}] {problem}"
    if live is None:
        return None
    params = group["params"]
    if "params" in live and (not isinstance(params, (list, tuple)) or len(params) != len(live["params"])):
        want = len(live["params"])  # torch's load_state_dict stopped on "ValueError: loaded state dict contains ..."
        return f"['params'] is {repr(params)[:80]}, where the model's optimizer's group holds {want} parameter(s)"
    for key in sorted(set(group) & set(live) - OWN):
        if not same_value(group[key], live[key]):
            return f"[{key!r}] is {group[key]!r}, where the model's optimizer has {live[key]!r}"
    return None


Live = Sequence[Mapping[str, Any]] | None
"""The model's optimizer's param groups a checked param_groups is loaded into (None: their count alone)."""


def _loaded_groups(states: object, zero3: bool) -> tuple[object, str] | None:
    """The param_groups DeepSpeed's load copies from a rank's shard, and where they sit; None: no optimizer state."""
    state = converted_global_state(states, zero3)
    return None if state is None else (state[PARAM_GROUPS], _where(zero3))


def shard_problem(shard: Path, zero3: bool, groups: int, live: Live = None) -> str | None:
    """Why the param_groups of `shard` cannot be loaded into an optimizer of `groups` param groups (`live`: those
    groups), as the line to stop on; or None. A shard without optimizer state: None (DeepSpeed's own read names
    what it lacks)."""
    return _checked(shard, zero3, groups, live)[0]


def _checked(shard: Path, zero3: bool, groups: int, live: Live) -> tuple[str | None, object]:
    """shard_problem, and the param_groups it read (None when there are none)."""
    try:
        found = _loaded_groups(deepspeed_files.read(shard), zero3)
    except NgptConfigError as err:  # damaged, truncated, or a type safe_load refuses (its subclass)
        return str(err), None
    if found is None:
        return None, None
    return _refusal(shard, _groups_problem(found[0], found[1], groups, live)), found[0]


def _without_params(live: Live) -> Live:
    """The live groups for a load that does not take the loaded 'params' counts: load_universal, and ZeRO 3, whose
    inner optimizer's groups hold none while its load runs (0.19.8 stage3 empties them, and puts one partition in
    per sub-group step)."""
    return None if live is None else [{k: v for k, v in g.items() if k != "params"} for g in live]


def universal_problem(folder: Path, zero3: bool, groups: int, live: Live = None) -> str | None:
    """A universal folder: why the param_groups DeepSpeed's load_universal copies from zero/optimizer_state.pt (0.19.8
    load_hp_checkpoint_state_from_checkpoint_dir: its 'param_groups'; ZeRO 3, ..._stage3: the inner
    optimizer_state_dict's, group 0's values into every group) cannot drive the model's optimizer, or None. The
    converter copies them from the source's first shard, and universal_check compares the two: a negative eps there
    was copied, compared equal, and trained on (exit 0). Read by rank 0 alone (at ZeRO 3 the file holds rank 0's
    partition too, memory-mapped). A missing or unreadable file: None (universal_check names it)."""
    path = folder / "zero" / OPTIMIZER_STATE
    try:
        states = deepspeed_files.read(path) if path.is_file() else None
    except NgptConfigError as err:
        return str(err)
    if not isinstance(states, dict):
        return None
    where, found = f"{PARAM_GROUPS!r}", states.get(PARAM_GROUPS)
    if zero3:
        inner = states.get(OPTIMIZER_STATE_DICT)
        found = inner.get(PARAM_GROUPS) if isinstance(inner, dict) else None
        where = f"{OPTIMIZER_STATE_DICT!r}][{PARAM_GROUPS!r}"
    if found is None:
        return None
    # load_universal gives the live groups their own params, not these (ZeRO 3: none, _without_params).
    problem = _groups_problem(found, f"[{where}]", groups, _without_params(live))
    if problem is None:
        return None
    return (
        f"{path}: {problem}: the universal checkpoint {folder} holds optimizer settings no AdamW of this model takes, "
        "copied by its conversion from a checkpoint altered or damaged after it was saved, or altered since (a new "
        "conversion copies them again). Resume from another checkpoint (--resume PATH), or start a new run with "
        "--resume none and another --out"
    )


def model_states_problem(states_file: Path, groups: int, live: Live = None) -> str | None:
    """ZeRO 0: why the param_groups under 'optimizer' of the model states file cannot be loaded into an optimizer
    of `groups` param groups, as the line to stop on; or None. No optimizer state there: None (as shard_problem)."""
    try:
        states = deepspeed_files.read(states_file)
    except NgptConfigError as err:
        return str(err)
    optimizer = states.get(OPTIMIZER)
    if not isinstance(optimizer, dict):
        return None
    where = f"{OPTIMIZER}[{PARAM_GROUPS!r}]"
    if isinstance(optimizer.get(OPTIMIZER_STATE_DICT), dict):  # the FP16_Optimizer's (fp16, or bf16 at ZeRO 0)
        optimizer = optimizer[OPTIMIZER_STATE_DICT]
        where = f"{OPTIMIZER}[{OPTIMIZER_STATE_DICT!r}][{PARAM_GROUPS!r}]"
    if PARAM_GROUPS not in optimizer:
        return None
    return _refusal(states_file, _groups_problem(optimizer[PARAM_GROUPS], where, groups, live))


def _groups_problem(found: object, where: str, groups: int, live: Live = None) -> str | None:
    """What is wrong with the param_groups `found` at `where` for an optimizer of `groups` groups, or None."""
    if not isinstance(found, (list, tuple)) or len(found) != groups:
        size = f"{len(found)} group(s)" if isinstance(found, (list, tuple)) else f"a {type(found).__name__}"
        return f"{where} holds {size}, where the model's optimizer has {groups}"
    return next(
        (
            f"{where}[{i}]{p}"
            for i, g in enumerate(found)
            if (p := _group_problem(g, None if live is None else live[i])) is not None
        ),
        None,
    )


def _hyperparameters(found: object) -> list[dict[str, Any]] | None:
    """What every rank's shard of one save holds alike: each group without its 'params' (numbers as floats)."""
    if not isinstance(found, (list, tuple)):
        return None
    out = []
    for group in found:
        if not isinstance(group, dict):
            return None
        out.append({k: step_count(v) if step_count(v) is not None else v for k, v in group.items() if k != "params"})
    return out


def _disagreement(answers: Sequence[tuple[str | None, str, list[dict[str, Any]] | None]], zero3: bool) -> str | None:
    """The first rank whose shard's groups differ from the lowest rank's with a shard, as the line to stop on.
    DeepSpeed saves the same param_groups into every rank's shard, and each rank's load copies its own: a rank 1
    shard with another eps in the vectors' group trained on in silence, its partition with that eps."""
    ranked = [(file, groups) for _, file, groups in answers if groups is not None]
    if not ranked:
        return None
    first_file, first = ranked[0]
    for file, groups in ranked[1:]:
        for i, (group, want) in enumerate(zip(groups, first)):
            for key in sorted(set(group) | set(want), key=str):
                if key not in group or key not in want or not same_value(group[key], want[key]):
                    found = f"is {group.get(key, 'missing')!r}"
                    return _refusal(
                        Path(file),
                        f"{_where(zero3)}[{i}][{key!r}] {found}, where {Path(first_file).name} records "
                        f"{want.get(key, 'nothing')!r} (DeepSpeed saves the same param groups into every rank's shard)",
                    )
    return None


def _refusal(file: Path, problem: str | None) -> str | None:
    if problem is None:
        return None
    return (
        f"{file}: {problem}: the checkpoint {file.parent} was altered or damaged after it was saved. Resume "
        "from another checkpoint (--resume PATH), or start a new run with --resume none and another --out"
    )


def check_on_all_ranks(engine: DeepSpeedEngine, path: Path) -> None:
    """Collective, before engine.load_checkpoint(path): each rank checks the shard DeepSpeed's load will copy its
    param_groups from (a universal folder: rank 0 its optimizer_state.pt), and every rank raises the same
    NgptConfigError for the first that does not fit (lowest rank first), then for the first rank whose shard's
    groups differ from the others' (each rank sends its groups' hyperparameters, a few numbers: no rank reads
    another's shard). Nothing to check (no file of this rank's name): that rank answers None."""
    import torch.distributed as dist

    from ngpt_ds.train import collectives

    live = engine.optimizer.param_groups
    zero3 = engine.zero_optimization_stage() == 3

    def mine() -> tuple[str | None, str, list[dict[str, Any]] | None]:
        if engine.load_universal_checkpoint():
            found = universal_problem(path, zero3, len(live), live) if dist.get_rank() == 0 else None
            return found, str(path), None
        if not engine.zero_optimization():
            # ZeRO 0: DeepSpeed's own name for the model states file its load reads 'optimizer' from.
            states_file = Path(engine._get_ckpt_name(str(path.parent), path.name))
            if not states_file.is_file():
                return None, str(states_file), None
            return model_states_problem(states_file, len(live), live), str(states_file), None
        # DeepSpeed's own name for the shard this rank's load reads its param_groups from (data-parallel rank,
        # model-parallel rank, the bf16_ prefix).
        shard = Path(engine._get_zero_ckpt_name(str(path.parent), path.name))
        if not shard.is_file():
            return None, str(shard), None
        found, groups = _checked(shard, zero3, len(live), _without_params(live) if zero3 else live)
        return found, str(shard), _hyperparameters(groups)

    answers = collectives.all_answers(mine, f"checking the optimizer shards of {path}")
    found = next((a[0] for a in answers if a[0] is not None), None) or _disagreement(answers, zero3)
    if found is not None:
        raise NgptConfigError(found)
