"""Keep nGPT's matrices on the hypersphere where DeepSpeed keeps the fp32 master weights.

After every optimizer step (and once before step 0) every sphere matrix W is
renormalized along its declared dim, W <- W / ||W||, on the fp32 master copy, and
the bit16 working copy is refreshed from it. Under ZeRO the master is cut into
per-rank pieces of a *flattened* parameter group, so one row (or column) of W can
straddle two ranks. Each rank therefore sums the squares of the pieces it owns into
one buffer holding every norm vector of the group, the buffer is all-reduced once
over the data-parallel group (one collective per step for all matrices), and each
rank scales its own pieces by rsqrt of the sums. No parameter is gathered; extra
memory is that buffer (one float per row/column), a tiny fraction of a partition.

The hook is a post-step hook on the torch optimizer DeepSpeed wraps: it runs after
the fp32 update and before DeepSpeed copies fp32 -> bit16 and all-gathers, so the
working copy is refreshed by DeepSpeed's own step at no extra cost.

The sum buffer lives where the master partition does: on the CPU under ZeRO-Offload. Its
all-reduce runs on the communication device (the engine's device) through
ngpt_ds.train.collectives, because NCCL refuses CPU tensors. A zero norm vector (a
zero-padded vocabulary row in a loaded checkpoint) stays zero instead of becoming NaN:
the sums are clamped to the smallest normal float before rsqrt. NaN and inf are never
hidden: they are flagged at every step and reported by `deviations()`.

A frozen sphere matrix (requires_grad=False when the masters are located: a fine-tune that freezes the
embedding) is left alone on every path: no optimizer moves it, so it needs no renormalization, and x / ||x|| of a
unit vector would change its last bits at every step. DeepSpeed itself leaves frozen parameters out of every
fp32 master it keeps (ZeRO 0 in bf16/fp16, the flat groups of ZeRO 1/2/3: deepspeed.runtime.utils.
is_optimized_parameter); only a torch optimizer at ZeRO 0 in fp32 can hold one, and should it get a gradient
there (unfrozen later) the step is refused before it moves (`_refuse_moving_frozen`).

The masters the hook located can move: `engine.offload_states()` / `reload_states()` (ZeRO 1/2/3) give the
fp32 partitions new memory and DeepSpeed relinks its mappings, so the hook's views would renormalize memory no
optimizer reads. Before every step (and in normalize_now and deviations) it checks that each located master
still has its storage, locates the masters again if not, and refuses a step while they are offloaded.

Where DeepSpeed keeps the masters is found by ngpt_ds.train.sphere_masters, whose header lists the optimizer
internals it reads. This module reads, of DeepSpeed's (checked against deepspeed 0.19.8): engine.basic_optimizer
(the torch optimizer whose step hooks it registers), engine.optimizer.offloaded_states, and the parameters'
ds_id / _hp_mapping (to choose deepspeed.utils.safe_get_full_fp32_param in fp32_value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ngpt_ds.model.sphere import SphereMatrix, sphere_matrices
from ngpt_ds.train.collectives import all_reduce_on, communication_device
from ngpt_ds.train.sphere_masters import locate_masters
from ngpt_ds.train.sphere_pieces import TINY_SQUARED_NORM, StepUnit, scale_all

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


class RenormalizationMissed(RuntimeError):
    """DeepSpeed applied an optimizer step without the renormalization hook running."""


class HypersphereHook:
    """Renormalizes a DeepSpeed engine's sphere matrices on their fp32 master pieces.

    Usage: `hook = HypersphereHook(engine); hook.normalize_now()` once before step 0;
    afterwards it runs inside every `engine.step()` that updates the weights. After
    `engine.load_checkpoint` call `rebuild()`, then `normalize_now(keep_within=...)`:
    masters rebuilt from bf16 weights (`load_from_fp32_weights: false`) are off the sphere.
    `missed_step` tells whether an applied optimizer step really renormalized.

    comm_device: where collectives run; None: the engine's device.
    """

    def __init__(self, engine: DeepSpeedEngine, comm_device: torch.device | str | None = None) -> None:
        self.engine = engine
        self.comm_device = torch.device(comm_device) if comm_device is not None else communication_device(engine)
        self.matrices = sphere_matrices(engine.module)
        self.kept: list[SphereMatrix] = []
        """the matrices the hook renormalizes: the trainable ones (see the module docstring on frozen ones)."""
        self._sources: list[tuple[torch.Tensor, int]] = []
        self._held_frozen: list[SphereMatrix] = []
        self._whole_masters: dict[int, torch.Tensor] = {}
        self.all_reduces = 0
        self.renormalized_units = 0
        """units renormalized by the post-step hook so far (normalize_now not counted)."""
        self._nonfinite: torch.Tensor | None = None
        self.units: list[StepUnit] = []
        self._refresh_working_copy = lambda: None
        self.rebuild()
        self._handle = engine.basic_optimizer.register_step_post_hook(self._after_inner_step)
        self._pre_handle = engine.basic_optimizer.register_step_pre_hook(self._before_inner_step)

    def remove(self) -> None:
        self._handle.remove()
        self._pre_handle.remove()

    # ---- where the master weights are --------------------------------------------------

    def rebuild(self) -> None:
        """Locate the master pieces of every sphere matrix (after init or a checkpoint load)."""
        self._refuse_offloaded()
        self.kept = [m for m in self.matrices if m.param.requires_grad]
        held = {id(p) for group in self.engine.basic_optimizer.param_groups for p in group["params"]}
        self._held_frozen = [m for m in self.matrices if not m.param.requires_grad and id(m.param) in held]
        located = locate_masters(self.engine.optimizer, self.kept, self.comm_device)
        self.units = located.units
        self._whole_masters = located.whole_masters
        self._refresh_working_copy = located.refresh_working_copy
        # The tensors the torch optimizer steps (DeepSpeed swaps their .data when it moves them), with their storage:
        # the pieces' views keep that storage alive, so a moved master can never be found at the same address.
        self._sources = [(t, t.untyped_storage().data_ptr()) for t in located.owners]

    def fp32_value(self, param: nn.Parameter) -> torch.Tensor:
        """Any parameter's full fp32 master value on every rank (gathers under ZeRO; small tensors only). At
        ZeRO 0 with bf16/fp16 the parameter is the 16-bit working copy: its master is in `fp32_groups`."""
        from deepspeed.utils import safe_get_full_fp32_param

        master = self._whole_masters.get(id(param))
        if master is not None:
            return master.detach().float()
        value = safe_get_full_fp32_param(param) if (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")) else None
        return (value if value is not None else param.detach()).float()

    # ---- renormalization ----------------------------------------------------------------

    @torch.no_grad()
    def _renormalize(self, unit: StepUnit, keep_within: float = 0.0) -> None:
        sums = unit.norm_sums()
        if unit.group is not None:
            self.all_reduces += 1
        bad = sums.isfinite().logical_not().any()  # no host sync: read by the trainer with its own collective
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite.logical_or(bad)
        inv_norms = sums.clamp_min(TINY_SQUARED_NORM).rsqrt_()  # NaN stays NaN (clamp propagates it): it is reported
        if keep_within:
            inv_norms = torch.where((sums - 1).abs() <= keep_within, torch.ones_like(inv_norms), inv_norms)
        scale_all(unit.pieces, inv_norms)

    def _before_inner_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self._refuse_moving_frozen(optimizer)
        self._follow_moved_masters()

    def _refuse_moving_frozen(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise before a torch optimizer (ZeRO 0, fp32) moves a sphere matrix that was frozen when the masters were
        located, which the hook leaves alone: unfrozen since, it would leave the hypersphere."""
        moving = [m.name for m in self._held_frozen if m.param.grad is not None]
        if moving:
            raise RenormalizationMissed(
                f"{', '.join(moving)} had requires_grad=False when the nGPT renormalization located the master "
                f"weights, so it leaves them alone, and {type(optimizer).__name__} is about to update them: they "
                "would leave the hypersphere. After changing requires_grad, call the hook's rebuild() and then "
                "normalize_now(keep_within=4e-6)"
            )

    def _follow_moved_masters(self) -> None:
        """Locate the masters again if one no longer has the storage the hook's views read (offload_states and
        reload_states move them); refuse while DeepSpeed holds them offloaded (its links to them are cleared)."""
        if all(t.untyped_storage().data_ptr() == ptr for t, ptr in self._sources):
            return
        self.rebuild()

    def _refuse_offloaded(self) -> None:
        """Raise while engine.offload_states() holds the masters or the weights away: DeepSpeed then clears its links
        to them (hp_fragment None, or _hp_mapping None), and locating would find no piece to renormalize."""
        offloaded = sorted(str(getattr(s, "value", s)) for s in getattr(self.engine.optimizer, "offloaded_states", ()))
        if {"hp_params", "lp_params"} & set(offloaded):
            raise RenormalizationMissed(
                f"the nGPT renormalization cannot reach DeepSpeed's fp32 master weights while they are offloaded "
                f"(engine.offload_states(): {', '.join(offloaded)}): call engine.reload_states() before the next "
                "step, normalize_now, deviations or rebuild"
            )

    def _after_inner_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for unit in self.units:
            if unit.owner_ids & stepped:
                self._renormalize(unit)
                self.renormalized_units += 1

    @torch.no_grad()
    def normalize_now(self, keep_within: float = 0.0) -> None:
        """Renormalize every master piece and refresh the working copy (before step 0, after a load).

        keep_within: leave vectors whose squared norm is within this of 1 bit for bit as they are
        (after a load: a checkpoint already on the sphere then resumes exactly).
        """
        self._follow_moved_masters()
        for unit in self.units:
            self._renormalize(unit, keep_within)
        self._refresh_working_copy()

    def take_nonfinite(self, device: torch.device) -> torch.Tensor:
        """1.0 on `device` if a squared norm was NaN or inf at any renormalization since the last
        call (this rank's view), else 0.0. A tensor, not a bool: the trainer folds it into the
        collective it already makes every step, so checking costs no extra one."""
        flag = self._nonfinite
        self._nonfinite = None
        if flag is None:
            return torch.zeros((), device=device)
        return flag.to(device=device, dtype=torch.float32)

    def missed_step(self, renormalized_before: int, step_applied: bool) -> bool:
        """True if DeepSpeed applied an optimizer step without renormalizing every unit.

        renormalized_before: `renormalized_units` read before the step. A skipped step (fp16
        overflow) renormalizes nothing and is not a miss.
        """
        return bool(step_applied and self.units and self.renormalized_units - renormalized_before < len(self.units))

    def missed_error(self, step: int) -> RenormalizationMissed:
        import deepspeed

        return RenormalizationMissed(
            f"the nGPT renormalization hook did not run in optimizer step {step}: DeepSpeed {deepspeed.__version__} "
            f"updated the weights through {type(self.engine.optimizer).__name__} around "
            f"{type(self.engine.basic_optimizer).__name__} without calling that torch optimizer's step hooks "
            "(or stepped master weights the hook does not know), so the sphere matrices left the hypersphere. "
            "This DeepSpeed version or optimizer setup is not supported by ngpt_ds.train.hypersphere: install "
            "the DeepSpeed version setup.py pins, and use ZeRO stage 0-3 without NVMe offload"
        )

    @torch.no_grad()
    def deviations(self) -> dict[str, float]:
        """matrix name -> max | ||w|| - 1 | over its norm vectors on the fp32 master, over the whole
        job (a tensor-parallel rank holds only its shards); NaN if any norm is NaN, inf if infinite.

        Collective (every rank must call it): one all-reduce per unit, one over the world.
        """
        # A pipeline stage holds only its layers' matrices: the job-wide list (ngpt_ds.parallel.pipeline)
        # gives the all-reduce below the same length on every rank.
        self._follow_moved_masters()
        names = getattr(self.engine.module, "sphere_matrix_names", None) or [m.name for m in self.kept]
        index = {name: i for i, name in enumerate(names)}
        worst = torch.zeros(len(names), dtype=torch.float64)
        has_nan = torch.zeros(len(names), dtype=torch.float64)
        for unit in self.units:
            deviation = (unit.norm_sums().double().sqrt() - 1).abs().cpu()
            for name, lo, hi in unit.spans:
                part = deviation[lo:hi]
                worst[index[name]] = part.nan_to_num(nan=float("inf")).max()
                has_nan[index[name]] = float(part.isnan().any())
        stats = torch.cat([worst, has_nan])
        if dist.is_initialized() and dist.get_world_size() > 1:
            all_reduce_on(stats, self.comm_device, op=dist.ReduceOp.MAX)
        worst, has_nan = stats[: len(names)], stats[len(names) :]
        return {name: float("nan") if has_nan[i] else worst[i].item() for i, name in enumerate(names)}

    def max_deviation(self) -> float:
        """max | ||w|| - 1 | over every norm vector of every sphere matrix (NaN if any is NaN).

        Collective (see `deviations`): call it at logging intervals, not every step.
        """
        values = list(self.deviations().values())
        if any(v != v for v in values):
            return float("nan")
        return max(values, default=0.0)
