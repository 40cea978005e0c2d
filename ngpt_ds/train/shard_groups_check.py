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
checked the same way. A universal folder (another world size) is checked by ngpt_ds.train.universal_check.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ngpt_ds import deepspeed_files
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.universal_check import OPTIMIZER_STATE_DICT, PARAM_GROUPS, converted_global_state, step_count

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

OPTIMIZER = "optimizer"
"""Where DeepSpeed's save puts the optimizer's state_dict in the model states file when ZeRO is off."""

NUMBERS = ("lr", "eps", "weight_decay")
"""The param_groups entries Adam reads as one number each (betas: a pair)."""


def _where(zero3: bool) -> str:
    """The field DeepSpeed's load copies the param_groups from (ZeRO 3: the inner optimizer's state dict)."""
    inner = "optimizer_state_dict" if zero3 else "base_optimizer_state"
    return f"optimizer_state_dict[{inner!r}][{PARAM_GROUPS!r}]"


def _value_problem(value: object) -> str | None:
    number = step_count(value)  # a number, or a 0-dim tensor of one, as torch's optimizers keep them
    if number is None:
        return f"is {repr(value)[:80]}, not a number"
    return None if math.isfinite(number) else f"is {number}, not a finite number"


def _group_problem(group: object) -> str | None:
    """Why one param group cannot drive Adam ('['lr'] is nan, not a finite number'), or None."""
    if not isinstance(group, dict):
        return f" holds a {type(group).__name__}, not a param group"
    for key in NUMBERS:
        if key not in group:
            return f" lacks {key!r}"
        if (problem := _value_problem(group[key])) is not None:
            return f"[{key!r}] {problem}"
    betas = group.get("betas")
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        return f"['betas'] is {repr(betas)[:80]}, not a pair of numbers"
    for i, beta in enumerate(betas):
        if (problem := _value_problem(beta)) is not None:
            return f"['betas'][{i}] {problem}"
    return None


def shard_problem(shard: Path, zero3: bool, groups: int) -> str | None:
    """Why the param_groups of `shard` cannot be loaded into an optimizer of `groups` param groups, as the line to
    stop on; or None. A shard without optimizer state: None (DeepSpeed's own read names what it lacks)."""
    try:
        state = converted_global_state(deepspeed_files.read(shard), zero3)
    except NgptConfigError as err:  # damaged, truncated, or a type safe_load refuses (its subclass)
        return str(err)
    if state is None:
        return None
    return _refusal(shard, _groups_problem(state[PARAM_GROUPS], _where(zero3), groups))


def model_states_problem(states_file: Path, groups: int) -> str | None:
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
    return _refusal(states_file, _groups_problem(optimizer[PARAM_GROUPS], where, groups))


def _groups_problem(found: object, where: str, groups: int) -> str | None:
    """What is wrong with the param_groups `found` at `where` for an optimizer of `groups` groups, or None."""
    if not isinstance(found, (list, tuple)) or len(found) != groups:
        size = f"{len(found)} group(s)" if isinstance(found, (list, tuple)) else f"a {type(found).__name__}"
        return f"{where} holds {size}, where the model's optimizer has {groups}"
    return next((f"{where}[{i}]{p}" for i, g in enumerate(found) if (p := _group_problem(g)) is not None), None)


def _refusal(file: Path, problem: str | None) -> str | None:
    if problem is None:
        return None
    return (
        f"{file}: {problem}: the checkpoint {file.parent} was altered or damaged after it was saved. Resume "
        "from another checkpoint (--resume PATH), or start a new run with --resume none and another --out"
    )


def check_on_all_ranks(engine: DeepSpeedEngine, path: Path) -> None:
    """Collective, before engine.load_checkpoint(path): each rank checks the shard DeepSpeed's load will copy its
    param_groups from, and every rank raises the same NgptConfigError for the first that does not fit (lowest rank
    first). Nothing to check (a universal load, no file of this rank's name): every rank answers None."""
    from ngpt_ds.train import collectives

    def mine() -> str | None:
        if engine.load_universal_checkpoint():
            return None
        if not engine.zero_optimization():
            # ZeRO 0: DeepSpeed's own name for the model states file its load reads 'optimizer' from.
            states_file = Path(engine._get_ckpt_name(str(path.parent), path.name))
            if not states_file.is_file():
                return None
            return model_states_problem(states_file, len(engine.optimizer.param_groups))
        # DeepSpeed's own name for the shard this rank's load reads its param_groups from (data-parallel rank,
        # model-parallel rank, the bf16_ prefix).
        shard = Path(engine._get_zero_ckpt_name(str(path.parent), path.name))
        if not shard.is_file():
            return None
        return shard_problem(shard, engine.zero_optimization_stage() == 3, len(engine.optimizer.param_groups))

    answers = collectives.all_answers(mine, f"checking the optimizer shards of {path}")
    found = next((a for a in answers if a is not None), None)
    if found is not None:
        raise NgptConfigError(found)
