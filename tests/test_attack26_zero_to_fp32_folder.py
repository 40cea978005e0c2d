"""A folder named like a DeepSpeed checkpoint file in a ZeRO checkpoint is an error naming it.

Fault: a checkpoint's manifest allows folders (verify refuses only named pipes, devices and links to nothing), and a
checkpoint written by an older trainer has no manifest at all; zero_to_fp32 reads every `*_model_states.pt` and
`*_optim_states.pt` in the folder, and the layout check before it opened each: a folder `zz_optim_states.pt` stopped
generate, evaluate and export with `IsADirectoryError: [Errno 21] Is a directory` (a traceback).
"""

from __future__ import annotations

import pytest
import torch

from ngpt_ds.errors import NgptConfigError

ALTERED = "the checkpoint is damaged, or was not written by the ngpt_ds trainer"


def test_a_folder_named_like_an_optimizer_shard_is_refused_by_the_loader(tmp_path, tiny_dataset):
    from ngpt_ds.infer import load

    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.yaml").write_text(
        f"model: {{vocab_size: 512}}\ndata_dir: {tiny_dataset}\ndeepspeed: {{zero_optimization: {{stage: 1}}}}\n",
        encoding="utf-8",
    )
    (checkpoint / "COMPLETE").write_text("step 2\n", encoding="utf-8")  # an older trainer's marker: no manifest
    torch.save({"module": {}, "dp_world_size": 1}, checkpoint / "mp_rank_00_model_states.pt")
    (checkpoint / "zz_optim_states.pt").mkdir()
    with pytest.raises(NgptConfigError) as caught:
        load(checkpoint, device="cpu")
    assert str(caught.value) == (
        f"{checkpoint / 'zz_optim_states.pt'} is a folder, where DeepSpeed's zero_to_fp32 reads a checkpoint file: "
        + ALTERED
    )
