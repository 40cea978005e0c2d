"""DeepSpeed JSON settings that DeepSpeed accepts and runs but that change the trainer's loop without a word:
refused at startup (ngpt_ds.train.ds_refusals.check_loop_settings)."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

BASE = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 1}}
UNMANAGED = (
    "remove it: the trainer leaves the accumulation boundary to DeepSpeed's count of gradient_accumulation_steps "
    "(true, DeepSpeed's default); otherwise every micro-batch steps the optimizer and the LR schedule"
)
SUM = (
    "remove it: the trainer's gradient is that of the mean loss over the global batch ('mean', DeepSpeed's default); "
    "a sum multiplies it by the data-parallel size, which changes gradient clipping and the logged norm with the "
    "number of ranks"
)
DATA_EFFICIENCY = (
    "data_efficiency = '{...}': remove it: DeepSpeed's curriculum data sampling applies only to its own data loader "
    "and random-LTD only to layers it has converted, neither of which ngpt_ds uses (the trainer reads its token "
    "windows itself)"
)
CURRICULUM = {
    "enabled": True,
    "curriculum_metrics": {
        "seqlen": {
            "index_to_sample_path": "x",
            "index_to_metric_path": "y",
            "difficulty_type": "value",
            "clustering_type": "single_cluster",
            "min_difficulty": 8,
            "max_difficulty": 32,
            "schedule_type": "fixed_linear",
            "schedule_config": {"total_curriculum_step": 10, "difficulty_step": 8},
        }
    },
}


def check(config, world=1):
    return check_ds_config(
        config, world_size=world, tensor_parallel=1, source="x.json", fp16_supported=False, bf16_supported=True
    )


@pytest.mark.parametrize(
    "patch, line",
    [
        ({"managed_gradient_accumulation": False}, f"managed_gradient_accumulation = False: {UNMANAGED}"),
        ({"managed_gradient_accumulation": None}, f"managed_gradient_accumulation = None: {UNMANAGED}"),
        ({"gradient_allreduce_op": "sum"}, f"gradient_allreduce_op = 'sum': {SUM}"),
        ({"gradient_allreduce_op": "SUM"}, f"gradient_allreduce_op = 'SUM': {SUM}"),
        (
            {
                "data_efficiency": {
                    "enabled": True,
                    "data_sampling": {"enabled": True, "curriculum_learning": CURRICULUM},
                }
            },
            DATA_EFFICIENCY,
        ),
        ({"data_efficiency": {"data_routing": {"random_ltd": {"enabled": True}}}}, DATA_EFFICIENCY),
    ],
)
def test_deepspeed_settings_that_change_the_trainers_loop_are_refused(patch, line):
    """Faults, each trained to its end with exit 0 (1 rank, micro-batch 2 x accumulation 2, 3 steps, lr 1e-2):
    - "managed_gradient_accumulation": false stepped the optimizer and the LR schedule at every micro-batch: the
      logged LR was 0.01, 0.0025, 0.0 where the run without it logs 0.01, 0.0075, 0.0025;
    - "gradient_allreduce_op": "sum" on 2 ranks logged a gradient norm of 0.344 at step 1 for the 0.172 of the same
      global batch on 1 rank, and clipped against it;
    - a data_efficiency seqlen curriculum trained the same losses as none (6.2457, 6.2616, 6.2385), and random_ltd
      stopped the engine's start in a KeyError traceback ('total_layer_num')."""
    with pytest.raises(NgptConfigError) as err:
        check({**BASE, **patch})
    assert str(err.value) == f"DeepSpeed config x.json: 1 problem\n  - {line}"


@pytest.mark.parametrize(
    "patch",
    [
        {"managed_gradient_accumulation": True},
        {"gradient_allreduce_op": "mean"},
        {"gradient_allreduce_op": "Mean"},
        {"data_efficiency": {"enabled": False, "seed": 7, "data_sampling": {"enabled": False}}},
        {"data_efficiency": {"data_routing": {"enabled": False, "random_ltd": {"enabled": False}}}},
    ],
)
def test_the_values_that_leave_the_loop_as_it_is_pass(patch):
    """DeepSpeed's defaults, written out, and a data_efficiency block that turns everything off, ask for nothing."""
    assert check({**BASE, **patch}).grad_accum == 2


@pytest.mark.parametrize(
    "checkpoint, line",
    [
        (
            {"checkpoint_serialization": False},
            "checkpoint.checkpoint_serialization = False: remove it (true, DeepSpeed's default): a resume reads "
            "checkpoints memory-mapped, which torch's legacy format cannot be, and would refuse every checkpoint of "
            "the run as damaged",
        ),
        (
            {"writer": {"type": "python"}},
            "checkpoint.writer = '{...}': remove it: the trainer saves checkpoints with torch.save and verifies their "
            'files itself; DeepSpeed\'s checkpoint writers replace it (README "Checkpoints")',
        ),
        (
            {"writer": {}},
            "checkpoint.writer = '{...}': remove it: the trainer saves checkpoints with torch.save and verifies their "
            'files itself; DeepSpeed\'s checkpoint writers replace it (README "Checkpoints")',
        ),
    ],
)
def test_deepspeed_checkpoint_settings_that_replace_torch_save_are_refused(checkpoint, line):
    """Faults: "checkpoint": {"checkpoint_serialization": false} trained and saved every checkpoint in torch's legacy
    format, and the run's first resume refused them all ('could not be read (RuntimeError: mmap can only be used with
    files saved with `torch.save(_use_new_zipfile_serialization=True)` ...); the checkpoint is damaged', exit 2);
    a "writer" block ({"type": "python"}) stopped deepspeed.initialize on every rank in KeyError 'CROSS_SIZE'."""
    with pytest.raises(NgptConfigError) as err:
        check({**BASE, "checkpoint": {"tag_validation": "Warn", **checkpoint}})
    assert str(err.value) == f"DeepSpeed config x.json: 1 problem\n  - {line}"
    check({**BASE, "checkpoint": {"tag_validation": "Warn", "checkpoint_serialization": True, "writer": None}})
