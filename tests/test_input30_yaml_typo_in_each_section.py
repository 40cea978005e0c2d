"""A typo in each section of a YAML config (input30): `n_embed: 64` under model: and `warmup_step: 3` under train:.
Every rank named the model's alone ("model config (c.yaml): 1 problem - model.n_embed ..."); the train: typo came
out only at the next start, once the first was fixed. Now one error names both, each under its section."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import load_model_and_train

from conftest import tiny_ngpt, tiny_train, write_yaml


def test_both_sections_problems_in_one_error(tmp_path):
    """Fault: the error held the model: section's problem only."""
    path = write_yaml(tmp_path / "c.yaml", {**tiny_ngpt(), "n_embed": 64}, tiny_train(2, warmup_step=3, lr=-1.0))
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    lines = str(err.value).splitlines()
    assert lines[0] == f"model config ({path}): 1 problem"
    assert lines[1].startswith("  - model.n_embed = 64: unknown field; did you mean 'n_embd'? (known fields: ")
    assert lines[2:] == [
        f"train config ({path}): 1 problem",
        "  - train.warmup_step = 3: unknown field; did you mean 'warmup_steps'?",
    ]


def test_a_train_value_problem_is_named_beside_a_model_problem(tmp_path):
    """The train: section is validated too (its ranges, with the arch's defaults), not only its field names."""
    path = write_yaml(tmp_path / "c.yaml", {**tiny_ngpt(), "n_head": 3}, tiny_train(2, lr=-1.0))
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value) == (
        f"model config ({path}): 1 problem\n"
        "  - model.n_embd = 32: must be divisible by n_head = 3 (head_dim = n_embd / n_head)\n"
        f"train config ({path}): 1 problem\n"
        "  - train.lr = -1.0: must be > 0"
    )


def test_a_model_problem_alone_keeps_its_error(tmp_path):
    """A sound train: section adds nothing: the error is the model's, as before."""
    path = write_yaml(tmp_path / "c.yaml", {**tiny_ngpt(), "n_embed": 64}, tiny_train(2))
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value).count("\n") == 1
    assert str(err.value).startswith(f"model config ({path}): 1 problem\n  - model.n_embed = 64: unknown field")
