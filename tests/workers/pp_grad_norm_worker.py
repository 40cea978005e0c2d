"""The real trainer (ngpt_ds.cli.train) on the ranks of a pipeline, with every optimizer step recorded.

Per rank: its pipeline stage and data-parallel replica (the grid's data-parallel rank, what its loader deals
data by). Per step, on every rank: the stage's weights the step started from (under the plain model's names),
the micro-batches its loader gave, the gradient_clipping in effect, the gradients that reached the torch
optimizer (after clipping, under the plain model's names), the norm the rank would log for the step (None when
it measured none), and the steps at which the trainer computed the pipeline gradient norm
(ngpt_ds.train.ds_compat.pipeline_grad_norm, counted where it exists). Before step CLIP_OFF_FROM the engine's
gradient_clipping is set to 0, so one job runs steps with clipping and steps without. Rank 0 writes every
rank's records to OUT_PATH (torch.save) at the end of fit.

Usage: torchrun --nproc_per_node N pp_grad_norm_worker.py OUT_PATH CLIP_OFF_FROM [launch/train.py arguments]
"""

import sys

import torch
import torch.distributed as dist

from ngpt_ds.parallel.pipeline import model_parameter_name
from ngpt_ds.train import ds_compat, loop

out_path, clip_off_from = sys.argv[1], int(sys.argv[2])
records: list[dict] = []
computed: list[int] = []
train_step, fit = loop.Trainer.train_step, loop.Trainer.fit

if hasattr(ds_compat, "pipeline_grad_norm"):
    norm_of = ds_compat.pipeline_grad_norm

    def counted(engine):
        computed.append(int(engine.global_steps) + 1)  # the step this norm belongs to
        return norm_of(engine)

    ds_compat.pipeline_grad_norm = counted


def logged_norm(self) -> float | None:
    """The norm Trainer._log writes as train/grad_norm for the step just taken, on this rank."""
    norm = self.engine.get_global_grad_norm()
    if norm is None and self.own_grad_norm is not None:
        norm = self.own_grad_norm
    return None if norm is None else float(norm)


def recorded_train_step(self):
    number = self.step + 1
    if number == clip_off_from:
        self.engine._config.gradient_clipping = 0.0  # what engine.gradient_clipping() returns
    record = {
        "clipping": self.engine.gradient_clipping(),
        "weights": {model_parameter_name(k): v.detach().float().clone() for k, v in self.model.state_dict().items()},
        "batches": [],
        "grads": None,
        "norm": None,
    }
    next_batch = self.loader.next_batch

    def next_batch_recorded():
        batch = next_batch()
        record["batches"].append([t.clone() for t in batch])
        return batch

    def before_optimizer_step(optimizer, args, kwargs):
        record["grads"] = {
            model_parameter_name(name): p.grad.detach().double().clone()
            for name, p in self.model.named_parameters()
            if p.grad is not None
        }

    hook = self.engine.basic_optimizer.register_step_pre_hook(before_optimizer_step)
    self.loader.next_batch = next_batch_recorded
    try:
        result = train_step(self)
        record["norm"] = logged_norm(self)
        return result
    finally:
        del self.loader.next_batch
        hook.remove()
        records.append(record)


def recorded_fit(self):
    summary = fit(self)
    every: list = [None] * dist.get_world_size()
    stage, replica = self.engine.stage_id, self.engine.grid.get_data_parallel_rank()
    dist.all_gather_object(every, {"stage": stage, "replica": replica, "records": records, "computed": computed})
    if dist.get_rank() == 0:
        torch.save({"ranks": every, "model": self.run.model.to_dict()}, out_path)
    return summary


loop.Trainer.train_step, loop.Trainer.fit = recorded_train_step, recorded_fit

if __name__ == "__main__":
    from ngpt_ds.cli.train import main

    sys.exit(main(sys.argv[3:]))
