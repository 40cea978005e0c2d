"""The real trainer (ngpt_ds.cli.train) on every rank, with the hypersphere hook watched.

Per optimizer step it records how often DeepSpeed called the hook's post-step function, how many
step units the hook renormalized, and the ranks of every all-reduce the hook made; after each step,
this stage's largest | ||w|| - 1 | over its fp32 master matrices (complete over the stage's
data-parallel group). Writes <out_dir>/rank<R>.json after every step; the rest of argv goes to the
trainer.

Usage: torchrun --nproc_per_node N pp_worker.py OUT_DIR [launch/train.py arguments]
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ngpt_ds.train import hypersphere, loop, sphere_pieces

out_dir = Path(sys.argv[1])
record: dict = {"steps": []}
current = {"calls": 0, "renormalized": 0, "all_reduces": []}

after_inner_step = hypersphere.HypersphereHook._after_inner_step
all_reduce_on = sphere_pieces.all_reduce_on  # the renormalization's one all-reduce (StepUnit.norm_sums)
train_step = loop.Trainer.train_step


def counted_after_inner_step(self, optimizer, args, kwargs):
    current["calls"] += 1
    before = self.renormalized_units
    after_inner_step(self, optimizer, args, kwargs)
    current["renormalized"] += self.renormalized_units - before


def recorded_all_reduce(tensor, device, group=None, **kwargs):
    current["all_reduces"].append(dist.get_process_group_ranks(group) if group is not None else "world")
    return all_reduce_on(tensor, device, group=group, **kwargs)


def watched_train_step(self):
    current.update(calls=0, renormalized=0, all_reduces=[])
    result = train_step(self)
    step = {**current, "all_reduces": list(current["all_reduces"])}  # not the later ones of logging
    with torch.no_grad():
        step["stage_deviation"] = max(
            (unit.norm_sums().double().sqrt() - 1).abs().max().item() for unit in self.hook.units
        )
    record["steps"].append(step)
    record["stage"] = self.engine.stage_id
    record["matrices"] = [m.name for m in self.hook.matrices]
    record["units"] = len(self.hook.units)
    record["param_groups"] = len(self.engine.basic_optimizer.param_groups)
    # Written at every step: the trainer's main ends its process without returning (os._exit).
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    return result


hypersphere.HypersphereHook._after_inner_step = counted_after_inner_step
sphere_pieces.all_reduce_on = recorded_all_reduce
loop.Trainer.train_step = watched_train_step

if __name__ == "__main__":
    from ngpt_ds.cli.train import main

    sys.exit(main(sys.argv[2:]))
