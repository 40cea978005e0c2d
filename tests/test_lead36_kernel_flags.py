"""A resumed shard's param groups may choose another Adam kernel (foreach, fused, capturable, differentiable) than
the model's optimizer; only the flags that change the update are compared.

The fault (review36's reading of d63f53e): shard_groups_check compared every flag a loaded group shares with the live
one, so a checkpoint written by a torch whose default differs ('foreach': None in 2.13, False elsewhere) or with
another kernel would be refused ("['foreach'] is False, where the model's optimizer has None") though it computes the
same update. A real torch AdamW's group, as the trainer builds it (fused)."""

import torch

from ngpt_ds.train.shard_groups_check import _group_problem


def live_group() -> dict:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], fused=True).param_groups[0]


def saved(**changes) -> dict:
    group = {key: value for key, value in live_group().items() if key != "params"}
    return {**group, "params": [0], **changes}


def test_another_kernel_choice_is_not_refused():
    live = live_group()
    for changes in (
        {"foreach": False},
        {"fused": None, "foreach": True},
        {"capturable": True},
        {"differentiable": True},
    ):
        assert _group_problem(saved(**changes), live) is None, changes  # old code: "['foreach'] is False, where ..."


def test_a_flag_that_changes_the_update_is_still_refused():
    live = live_group()
    assert _group_problem(saved(maximize=True), live) == "['maximize'] is True, where the model's optimizer has False"
    assert _group_problem(saved(amsgrad=True), live) == "['amsgrad'] is True, where the model's optimizer has False"
    assert _group_problem(saved(decoupled_weight_decay=False), live) == (
        "['decoupled_weight_decay'] is False, where the model's optimizer has True"
    )
