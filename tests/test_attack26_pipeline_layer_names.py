"""A pipeline checkpoint's layer files are read by the index in their names, which a crafted folder chooses.

Fault: ngpt_ds.deepspeed_files read a ZeRO-0 pipeline checkpoint's layer files with
`int(name.split("-")[0].removeprefix("layer_"))`: a file named layer_xx-model_states.pt stopped generate, evaluate
and export with `ValueError: invalid literal for int() with base 10: 'xx'` (a traceback, not an error naming the
file), and layer_1 beside layer_01 loaded whichever sorted last without a word.
"""

from __future__ import annotations

import pytest
import torch

from ngpt_ds import deepspeed_files
from ngpt_ds.errors import NgptConfigError

ALTERED = "the checkpoint is damaged, or was not written by the ngpt_ds trainer"


def _pipeline_checkpoint(folder, layers):
    """A ZeRO-0 pipeline checkpoint of two stages: stage 0's model states (module None, as a stage writes it) and
    the layer files named in `layers` (file name -> state dict)."""
    folder.mkdir()
    states = {"module": None, "dp_world_size": 1, "mp_world_size": 2}
    torch.save(states, folder / "mp_rank_00_model_states.pt")
    torch.save(states, folder / "mp_rank_01_model_states.pt")
    for name, weights in layers.items():
        torch.save(weights, folder / name)
    return folder


def _read(folder):
    return deepspeed_files.read_weights(folder, 0, [], lambda shards: shards[0])


def test_a_layer_file_without_an_index_is_an_error_naming_it(tmp_path):
    folder = _pipeline_checkpoint(
        tmp_path / "step_1",
        {"layer_00-model_states.pt": {"embed.weight": torch.ones(4, 2)}, "layer_xx-model_states.pt": {}},
    )
    with pytest.raises(NgptConfigError) as caught:
        _read(folder)
    assert str(caught.value) == (
        f"{folder / 'layer_xx-model_states.pt'}: a pipeline checkpoint's layer files are named "
        "layer_<index>-model_states.pt (DeepSpeed's PipelineModule), and this name has no layer index: " + ALTERED
    )


def test_two_files_of_one_layer_are_an_error_naming_both(tmp_path):
    folder = _pipeline_checkpoint(
        tmp_path / "step_1",
        {
            "layer_00-model_states.pt": {"embed.weight": torch.ones(4, 2)},
            "layer_01-model_states.pt": {"block.mlp.weight": torch.ones(2, 2)},
            "layer_1-model_states.pt": {"block.mlp.weight": torch.zeros(2, 2)},
        },
    )
    with pytest.raises(NgptConfigError) as caught:
        _read(folder)
    assert str(caught.value) == (
        f"{folder / 'layer_1-model_states.pt'}: layer 1 has two files (layer_01-model_states.pt too); DeepSpeed's "
        "PipelineModule writes one per layer: " + ALTERED
    )


def test_layer_files_as_deepspeed_names_them_are_read_under_the_models_names(tmp_path):
    folder = _pipeline_checkpoint(
        tmp_path / "step_1",
        {
            "layer_00-model_states.pt": {"embed.weight": torch.full((4, 2), 0.5)},
            "layer_01-model_states.pt": {"block.mlp.weight": torch.full((2, 2), 1.5)},
            "layer_02-model_states.pt": {"block.mlp.weight": torch.full((2, 2), 2.5)},
        },
    )
    saved = _read(folder)
    assert (saved.source, saved.pipeline_parallel, saved.data_parallel) == (
        "pipeline x2, module weights (ZeRO 0)",
        2,
        1,
    )
    assert sorted(saved.weights) == ["blocks.0.mlp.weight", "blocks.1.mlp.weight", "embed.weight"]
    assert [saved.weights[n].sum().item() for n in sorted(saved.weights)] == [6.0, 10.0, 4.0]
