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

This is the only module in ngpt_ds that reads DeepSpeed optimizer internals
(checked against deepspeed 0.19.8):
  no ZeRO, fp32        the torch optimizer holds the model parameters
  no ZeRO, bf16/fp16   FP16_UnfusedOptimizer.fp32_groups[i][j] <-> fp16_groups[i][j] (a torch optimizer);
                       FP16_Optimizer (the JSON's "optimizer" block: DeepSpeed's FusedAdam):
                       fp32_groups_flat[i] laid out as fp16_groups_flat[i] (see _flat_whole_masters)
  ZeRO 1/2             param._hp_mapping: hp_fragment (fp32 view), lp_fragment_address.start, checked
                       against the parameter's place in bit16_groups_flat (see _check_link)
  BF16_Optimizer       the same _hp_mapping (ZeRO 1 + bf16 + fp32 gradient accumulation), bf16_groups_flat
  ZeRO 3               fp32_partitioned_groups_flat[g].narrow(off, n), grad_position[param id],
                       start = partition rank * partition_numel
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ngpt_ds.model.sphere import SphereMatrix, sphere_matrices
from ngpt_ds.train.collectives import all_reduce_on, communication_device
from ngpt_ds.train.sphere_pieces import TINY_SQUARED_NORM, StepUnit
from ngpt_ds.train.sphere_slots import master_piece, reduction_group, slot_layout, spans

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer


class RenormalizationMissed(RuntimeError):
    """DeepSpeed applied an optimizer step without the renormalization hook running."""


def _check_link(
    opt: object, matrix: SphereMatrix, mapping: object, lp_flat: torch.Tensor, partition_start: int, partition_size: int
) -> None:
    """Raise unless DeepSpeed's link of `matrix` to its fp32 master slice (`_hp_mapping`, or None for no slice on
    this rank) is where the matrix lies in the flat bit16 group, which the fp32 partitions copy element for
    element. DeepSpeed 0.19 links in model order, and lays the group out in another with ZeRO 1/2's
    round_robin_gradients: the hook then renormalized other parameters' values, the weights left the sphere
    (0.17 after 3 steps on 2 ranks) and the deviation it reported, read through the same link, stayed 1.5e-7.
    The startup check refuses that key (ngpt_ds.train.ds_masters); this catches any other route to it. A
    parameter that is not a view of the flat group cannot be placed, and is left to the link."""
    data = matrix.param.data
    if data.untyped_storage().data_ptr() != lp_flat.untyped_storage().data_ptr():
        return
    offset = (data.data_ptr() - lp_flat.data_ptr()) // data.element_size()
    first = max(offset, partition_start)
    numel = min(offset + data.numel(), partition_start + partition_size) - first
    if numel > 0:  # this rank's partition holds flatten(W)[first - offset :][:numel] at first - partition_start
        expected: tuple[int, int, int] | None = (first - offset, first - partition_start, numel)
    else:
        expected = None
    linked = None
    if mapping is not None:
        lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address  # type: ignore[attr-defined]
        linked = (lp.start, hp.start, lp.numel)
    if linked != expected:
        raise NotImplementedError(
            f"nGPT renormalization cannot trust {type(opt).__name__}'s link of {matrix.name} to its fp32 master "
            f"weights: it links elements (start in the matrix, start in this rank's partition, count) {linked}, "
            f"but the matrix lies at {expected} of the flat parameter group the masters copy. Renormalizing "
            "through it would rescale other parameters' values. DeepSpeed 0.19 does this under "
            "zero_optimization.round_robin_gradients: remove it from the DeepSpeed JSON"
        )


def _flat_whole_masters(opt: object) -> tuple[dict[int, torch.Tensor], list[tuple[nn.Parameter, torch.Tensor]]]:
    """FP16_Optimizer (ZeRO 0 in bf16/fp16 with DeepSpeed's own optimizer, FusedAdam): group i's fp32 master is one
    flat tensor, fp32_groups_flat[i], laid out as the flat 16-bit group fp16_groups_flat[i] whose views the model's
    parameters are (concatenated in order, no padding). Returns param id -> its fp32 master view, and the (working
    copy, master) pairs. Raise if a parameter is not where that layout puts it: renormalizing through the layout
    would rescale other parameters' values."""
    masters: dict[int, torch.Tensor] = {}
    pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
    groups = zip(opt.fp16_groups, opt.fp16_groups_flat, opt.fp32_groups_flat)  # type: ignore[attr-defined]
    for lp_group, lp_flat, hp_flat in groups:
        offset = 0
        for lp in lp_group:
            data = lp.data
            placed = (
                data.untyped_storage().data_ptr() == lp_flat.untyped_storage().data_ptr()
                and data.data_ptr() == lp_flat.data_ptr() + offset * data.element_size()
                and data.is_contiguous()
                and hp_flat.numel() == lp_flat.numel()
            )
            if not placed:
                raise NotImplementedError(
                    f"nGPT renormalization cannot place a parameter of {type(opt).__name__} in its flat fp32 master "
                    f"weights (element {offset} of {lp_flat.numel()}): this DeepSpeed version lays them out otherwise. "
                    "Pass a torch optimizer to deepspeed.initialize instead of the DeepSpeed JSON's optimizer block"
                )
            hp = hp_flat.data.narrow(0, offset, data.numel()).view_as(data)
            masters[id(lp)] = hp
            pairs.append((lp, hp))
            offset += data.numel()
    return masters, pairs


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
        from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
        from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
        from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

        self._refuse_offloaded()
        opt = self.engine.optimizer
        self._whole_masters: dict[int, torch.Tensor] = {}
        self.kept = [m for m in self.matrices if m.param.requires_grad]
        held = {id(p) for group in self.engine.basic_optimizer.param_groups for p in group["params"]}
        self._held_frozen = [m for m in self.matrices if not m.param.requires_grad and id(m.param) in held]
        self._refresh_working_copy = lambda: None
        self._owners: list[torch.Tensor] = []
        if not self.kept:
            self.units = []
        elif isinstance(opt, DeepSpeedZeroOptimizer_Stage3):
            self._locate_zero3(opt)
        elif isinstance(opt, DeepSpeedZeroOptimizer):
            self._locate_flat_partitions(
                opt,
                opt.bit16_groups,
                opt.bit16_groups_flat,
                opt.single_partition_of_fp32_groups,
                opt.real_dp_process_group,
            )
        elif isinstance(opt, BF16_Optimizer):
            self._locate_flat_partitions(
                opt, opt.bf16_groups, opt.bf16_groups_flat, opt.fp32_groups_flat_partition, opt.real_dp_process_group
            )
        elif isinstance(opt, FP16_UnfusedOptimizer):
            masters = {
                id(lp): hp
                for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups)
                for lp, hp in zip(lp_group, hp_group)
            }
            self._locate_whole(masters)
            self._whole_masters = masters

            def refresh():
                for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
                    for lp, hp in zip(lp_group, hp_group):
                        lp.data.copy_(hp.data)

            self._refresh_working_copy = refresh
        elif isinstance(opt, FP16_Optimizer):
            masters, pairs = _flat_whole_masters(opt)
            self._locate_whole(masters, owners=opt.fp32_groups_flat)
            self._whole_masters = masters

            def refresh_flat():
                for lp, hp in pairs:
                    lp.data.copy_(hp)

            self._refresh_working_copy = refresh_flat
        elif isinstance(opt, torch.optim.Optimizer):
            self._locate_whole({id(m.param): m.param for m in self.kept})
        else:
            raise NotImplementedError(
                f"nGPT renormalization does not know DeepSpeed optimizer "
                f"{type(opt).__name__}; use ZeRO stage 0-3 with a torch optimizer"
            )
        not_fp32 = sorted({str(piece.values.dtype) for unit in self.units for piece in unit.pieces} - {"torch.float32"})
        if not_fp32:  # the config check refuses DeepSpeed's 16-bit masters; this is what a new route would reach
            raise NotImplementedError(
                f"nGPT renormalization needs fp32 master weights; {type(opt).__name__} keeps them in "
                f"{', '.join(not_fp32)} (remove bf16_master_weights_and_grads / fp16_master_weights_and_grads "
                "from the DeepSpeed JSON)"
            )
        # The tensors the torch optimizer steps (DeepSpeed swaps their .data when it moves them), with their storage:
        # the pieces' views keep that storage alive, so a moved master can never be found at the same address.
        self._sources = [(t, t.untyped_storage().data_ptr()) for t in self._owners]

    def _locate_whole(self, masters: dict[int, torch.Tensor], owners: list[torch.Tensor] | None = None) -> None:
        """Every rank holds every matrix whole: no communication. owners: the tensors the torch optimizer steps
        (default: the masters themselves)."""
        slots, total = slot_layout(self.kept)
        pieces = [master_piece(m, masters[id(m.param)].data.view(-1), 0, slots[id(m.param)]) for m in self.kept]
        device = pieces[0].values.device
        self._owners = list(masters.values() if owners is None else owners)
        self.units = [
            StepUnit(
                {id(t) for t in self._owners},
                total,
                pieces,
                None,
                device,
                self.comm_device,
                spans(self.kept, slots),
            )
        ]

    def _locate_flat_partitions(
        self,
        opt: DeepSpeedZeroOptimizer | BF16_Optimizer,
        lp_groups: list[list[nn.Parameter]],
        lp_flats: list[torch.Tensor],
        hp_partitions: list[torch.Tensor],
        dp_groups: list[dist.ProcessGroup],
    ) -> None:
        """ZeRO 1/2 and BF16_Optimizer: group i's master is one flat fp32 partition per rank, laid out as
        the flat bit16 group `lp_flats[i]` (the model's parameters are views of it)."""
        self.units = []
        for i, (lp_group, hp_partition) in enumerate(zip(lp_groups, hp_partitions)):
            in_group = {id(p) for p in lp_group}
            matrices = [m for m in self.kept if id(m.param) in in_group]
            if not matrices:
                continue
            slots, total = slot_layout(matrices)
            partition_start = dist.get_rank(group=dp_groups[i]) * hp_partition.numel()
            pieces = []
            for m in matrices:
                mapping = getattr(m.param, "_hp_mapping", None)
                _check_link(opt, m, mapping, lp_flats[i], partition_start, hp_partition.numel())
                if mapping is not None:  # None: this rank owns no part of the matrix
                    pieces.append(
                        master_piece(m, mapping.hp_fragment.data, mapping.lp_fragment_address.start, slots[id(m.param)])
                    )
            self._owners.append(hp_partition)
            self.units.append(
                StepUnit(
                    {id(hp_partition)},
                    total,
                    pieces,
                    reduction_group(dp_groups[i]),
                    hp_partition.device,
                    self.comm_device,
                    spans(matrices, slots),
                )
            )
        self._refresh_working_copy = opt.update_lp_params

    def _locate_zero3(self, opt: DeepSpeedZeroOptimizer_Stage3) -> None:
        """ZeRO 3: each parameter is cut evenly over the ranks; rank r holds
        flatten(W)[r * P : (r + 1) * P] (the last rank padded) inside sub-group g's flat fp32 tensor."""
        self.units = []
        for g, lp_group in enumerate(opt.fp16_groups):
            in_group = {id(p) for p in lp_group}
            matrices = [m for m in self.kept if id(m.param) in in_group]  # model order on every rank
            if not matrices:
                continue
            slots, total = slot_layout(matrices)
            flat = opt.fp32_partitioned_groups_flat[g]
            pieces = []
            for m in matrices:
                p = m.param
                _, offset, partition_numel = opt.grad_position[opt.get_param_id(p)]
                start = opt._get_param_partition_rank(p) * partition_numel
                valid = max(0, min(partition_numel, p.ds_numel - start))  # type: ignore[attr-defined]  # ZeRO-3 sets it
                if valid:
                    pieces.append(master_piece(m, flat.data.narrow(0, offset, valid), start, slots[id(p)]))
            group = reduction_group(opt._get_param_partition_group(matrices[0].param))
            self._owners.append(flat)
            self.units.append(
                StepUnit({id(flat)}, total, pieces, group, flat.device, self.comm_device, spans(matrices, slots))
            )

        def refresh():
            for g in range(len(opt.fp16_groups)):
                opt._reassign_or_swap_out_partitioned_parameters(g)
            if opt.persistent_parameters:
                opt.persistent_parameters[0].all_gather(opt.persistent_parameters)

        self._refresh_working_copy = refresh

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
        for piece in unit.pieces:
            piece.scale(inv_norms)

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
