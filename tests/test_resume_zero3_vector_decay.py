"""A ZeRO-3 resume at another data-parallel size keeps the vectors' group undecayed (optim.parameter_groups)."""

import torch

from conftest import tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

GPT = {"arch": "gpt", "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": 32}


def saved_groups(step_dir):
    """(name, weight_decay) of each optimizer group in rank 0's file of a ZeRO-3 checkpoint."""
    (optim,) = step_dir.glob("zero_pp_rank_0_*optim_states.pt")
    state = torch.load(optim, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    return [(g["name"], g["weight_decay"]) for g in state["optimizer_state_dict"]["param_groups"]]


def test_a_zero3_resume_at_another_world_size_does_not_decay_the_norm_weights(tmp_path, tiny_dataset):
    """Fault: DeepSpeed's ZeRO-3 universal load copies the first optimizer group's settings into every
    group, so after a resume from 2 ranks on 1 the vectors' group (GPT's norm weights) was named
    'matrices' and decayed with train.weight_decay 0.1 from then on (and in every later checkpoint)."""
    config = write_yaml(
        tmp_path / "run.yaml", GPT, tiny_train(4, checkpoint_interval=3, keep_checkpoints=5, weight_decay=0.1)
    )
    two, one = tmp_path / "two", tmp_path / "one"
    ds2 = write_ds_config(tmp_path / "dp2.json", stage=3, bf16=False, micro=2, accum=1)
    ds1 = write_ds_config(tmp_path / "dp1.json", stage=3, bf16=False, micro=2, accum=2)
    torchrun(*train_cmd(config, ds2, tiny_dataset, two), nproc=2)
    assert saved_groups(two / "checkpoints" / "step_00000003") == [("matrices", 0.1), ("vectors", 0.0)]
    torchrun(*train_cmd(config, ds1, tiny_dataset, one, "--resume", two / "checkpoints" / "step_00000003"), nproc=1)
    assert saved_groups(one / "checkpoints" / "step_00000004") == [("matrices", 0.1), ("vectors", 0.0)]
