"""train.activation_checkpointing written as a number: the error names the modes to write.

Fault (input29): `activation_checkpointing: 3` in the YAML (meaning every 3 blocks, the README's K) stopped with
"train.activation_checkpointing = 3: must be a string or dict", naming neither `{every_k: 3}` nor the other modes."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import TrainConfig


def test_an_integer_activation_checkpointing_is_told_every_k():
    with pytest.raises(NgptConfigError) as raised:
        TrainConfig.from_dict({"activation_checkpointing": 3}, source="t.yaml")
    assert (
        "train.activation_checkpointing = 3: write none, blocks, or {every_k: K} (every K-th block; {every_k: 3} "
        "for every 3)"
    ) in str(raised.value)
    assert "string or dict" not in str(raised.value)


def test_a_float_activation_checkpointing_is_told_the_modes():
    with pytest.raises(NgptConfigError) as raised:
        TrainConfig.from_dict({"activation_checkpointing": 2.5}, source="t.yaml")
    assert "train.activation_checkpointing = 2.5: write none, blocks, or {every_k: K}" in str(raised.value)
