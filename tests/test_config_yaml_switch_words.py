"""train.activation_checkpointing written with YAML's switch words (ngpt_ds.train.config.TrainConfig.from_dict)."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import load_model_and_train


@pytest.mark.parametrize("word, read", [("off", False), ("no", False), ("on", True), ("null", None)])
def test_activation_checkpointing_written_as_a_yaml_switch_word_is_told_what_to_write(tmp_path, word, read):
    """Fault: `activation_checkpointing: off` (or no, on, null) was refused as "train.activation_checkpointing =
    False: must be a string or dict": the value YAML made of the word, not the word, and no mode to write."""
    path = tmp_path / "x.yaml"
    path.write_text(f"model: {{n_layer: 2}}\ntrain: {{activation_checkpointing: {word}}}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value) == (
        f"train config ({path}): 1 problem\n  - train.activation_checkpointing = {read}: YAML reads off/no/false, "
        "on/yes/true and null unquoted as values, not modes: write none, blocks or {every_k: K}"
    )
    path.write_text("model: {n_layer: 2}\ntrain: {activation_checkpointing: none}\n")
    assert load_model_and_train(str(path))[1].checkpoint_every == 0
