"""How config errors read: advice that works when followed, and a length a terminal can show."""

import pytest

from ngpt_ds import yaml_safe
from ngpt_ds.errors import MAX_LISTED, NgptConfigError
from ngpt_ds.train.config import load_model_and_train


@pytest.mark.parametrize("written", ["1e-5", "3E-4", "1e+20"])
def test_the_number_suggested_for_one_yaml_reads_as_text_is_one_yaml_reads_as_a_number(tmp_path, written):
    """Fault: `min_lr: 1e-5` was told "write it with a dot, e.g. 1e-05": Python's repr, which YAML 1.1 reads
    as text again (its floats need a dot in the mantissa), so the advice followed failed the same way."""
    path = tmp_path / "x.yaml"
    path.write_text(f"model: {{n_layer: 2}}\ntrain: {{min_lr: {written}}}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    suggested = str(err.value).split("write it with a dot, e.g. ", 1)[1].split(")", 1)[0]
    assert yaml_safe.safe_load(f"min_lr: {suggested}")["min_lr"] == float(written)
    path.write_text(f"model: {{n_layer: 2}}\ntrain: {{min_lr: {suggested}, lr: 1.0e+21}}\n")
    _, train, _ = load_model_and_train(str(path))  # the advice followed: accepted
    assert train.min_lr == float(written)


def test_an_error_of_many_problems_lists_the_first_and_counts_the_rest(tmp_path):
    """Fault: a config of 90,000 unknown keys made one error of 7.6 MB, every problem listed, which every
    rank printed."""
    path = tmp_path / "many.yaml"
    keys = "".join(f"  unknown_key_{i:04d}: 1\n" for i in range(2000))
    path.write_text(f"model: {{n_layer: 2}}\ntrain:\n{keys}")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    text = str(err.value)
    listed = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(listed) == MAX_LISTED
    assert "train.unknown_key_0000" in listed[0]
    assert text.splitlines()[0].endswith(": 2000 problems")
    assert text.endswith(f"  ... and {2000 - MAX_LISTED} more")
    assert len(text) < 200 * MAX_LISTED


@pytest.mark.parametrize(
    "blocks",
    [
        {"bf16": None, "bfloat16": {"enabled": True}},
        {"bfloat16": {"enabled": True}},
        {"bf16": {"enabled": False}, "bfloat16": {"enabled": True}},
        {"bf16": {"enabled": True}, "bfloat16": {"enabled": False}},
        {"bf16": None, "bfloat16": {"enabled": False}, "fp16": {"enabled": True}},
    ],
)
def test_the_precision_read_from_the_json_is_the_one_deepspeed_reads(blocks):
    """Fault: {"bf16": null, "bfloat16": {"enabled": true}} read as fp32 (the trainer took any "bf16" key as
    the block), while DeepSpeed, reading "bfloat16" when "bf16" is null, trained in bf16: the startup line,
    config.yaml and the resume precision check said fp32."""
    from deepspeed.runtime.precision_config import get_bfloat16_config, get_float16_config

    from ngpt_ds.train.ds_config import precision_of

    deepspeed_reads = (
        "bf16" if get_bfloat16_config(blocks).enabled else "fp16" if get_float16_config(blocks).enabled else "fp32"
    )
    assert precision_of(blocks) == deepspeed_reads
