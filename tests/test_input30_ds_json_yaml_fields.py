"""YAML config fields written in the DeepSpeed JSON (input30): `"tensor_parallel_size": 2` in ds.json was "unknown
key: DeepSpeed does not read it and would silently ignore it; did you mean 'tensor_parallel'?" (DeepSpeed's AutoTP
block, which is not how ngpt_ds splits a model), `"pipeline_parallel_size": 2` "did you mean
'sequence_parallel_size'?", and `"lr"`, `"seq_len"` or a whole `"model": {...}` no word of where they belong. Now each
is named as a model:/train: field of the YAML config, with where to move it."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.ds_config import check_ds_config

BASE = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}}


def problems(extra: dict) -> list[str]:
    with pytest.raises(NgptConfigError) as err:
        check_ds_config(
            {**BASE, **extra},
            world_size=2,
            tensor_parallel=1,
            source="ds.json",
            fp16_supported=True,
            bf16_supported=True,
        )
    return str(err.value).splitlines()[1:]


@pytest.mark.parametrize(
    ("key", "value", "section"),
    [
        ("tensor_parallel_size", 2, "train"),
        ("pipeline_parallel_size", 2, "train"),
        ("lr", 0.01, "train"),
        ("max_steps", 100, "train"),
        ("seq_len", 1024, "model"),
        ("n_layer", 12, "model"),
    ],
)
def test_a_yaml_field_in_the_json_is_sent_to_its_section(key, value, section):
    """Fault: 'unknown key ...; did you mean 'tensor_parallel'?' (a DeepSpeed block ngpt_ds does not use)."""
    assert problems({key: value}) == [
        f"  - {key} = {value}: a {section}: field of the YAML config (--config), not a DeepSpeed key (DeepSpeed "
        f"would ignore it): move it under {section}: there"
    ]


@pytest.mark.parametrize("section", ["model", "train"])
def test_a_yaml_section_in_the_json_is_sent_to_the_yaml(section):
    assert problems({section: {"n_layer": 2}}) == [
        f"  - {section} = '{{...}}': the {section}: section of the YAML config (--config), not a DeepSpeed setting: "
        "move it into that file"
    ]


def test_hugging_faces_gradient_checkpointing_is_sent_to_the_yaml():
    """Fault: "gradient_checkpointing = True: unknown key: ...; did you mean 'gradient_clipping'?"."""
    assert problems({"gradient_checkpointing": True}) == [
        "  - gradient_checkpointing = True: not a DeepSpeed key (DeepSpeed would ignore it; Hugging Face's name): "
        "activation checkpointing is set in the YAML config, train.activation_checkpointing: blocks (or none, or "
        "{every_k: K})"
    ]


def test_other_unknown_keys_keep_their_suggestion():
    assert problems({"gradient_clip": 1.0}) == [
        "  - gradient_clip = 1.0: unknown key: DeepSpeed does not read it and would silently ignore it; did you mean "
        "'gradient_clipping'?"
    ]
