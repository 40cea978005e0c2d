"""Numbers that YAML 1.1 (PyYAML) reads as other numbers than the file shows: refused with the key, the line,
what YAML reads and the fix (ngpt_ds.model.config.yaml11_number_problem)."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.config import load_model_and_train

OCTAL = "write it without the leading zero (or {0}, if the octal number was meant)"


@pytest.mark.parametrize(
    "text, line",
    [
        (
            "model: {n_layer: 2}\ntrain: {max_steps: 010000}\n",
            f"max_steps = 010000 (line 2) is read by YAML as the octal number 4096, not 10000: {OCTAL.format(4096)}",
        ),
        (
            "model: {n_layer: 2}\ntrain:\n  seed: 0123\n",
            f"seed = 0123 (line 3) is read by YAML as the octal number 83, not 123: {OCTAL.format(83)}",
        ),
        (
            "model: {n_layer: 2}\ntrain: {seed: -010}\n",
            f"seed = -010 (line 2) is read by YAML as the octal number -8, not -10: {OCTAL.format(-8)}",
        ),
        (
            "model: {n_layer: 2}\ntrain: {max_steps: 1:30}\n",
            "max_steps = 1:30 (line 2) is read by YAML as the base-60 number 90; write the number itself, e.g. 90",
        ),
        (
            "model: {n_layer: 2}\ntrain: {lr: 1:30.5}\n",
            "lr = 1:30.5 (line 2) is read by YAML as the base-60 number 90.5; write the number itself, e.g. 90.5",
        ),
        (
            "model: {n_layer: 2}\ntrain: {betas: [0.9, 010]}\n",
            f"betas[1] = 010 (line 2) is read by YAML as the octal number 8, not 10: {OCTAL.format(8)}",
        ),
        (
            "model: &m {n_layer: 010}\n",
            f"n_layer = 010 (line 1) is read by YAML as the octal number 8, not 10: {OCTAL.format(8)}",
        ),
    ],
)
def test_a_number_yaml_reads_as_octal_or_base_60_is_named(tmp_path, text, line):
    """Fault: YAML 1.1 reads a leading zero as octal and colons as base 60, and the trainer took what it read
    without a word: `max_steps: 010000` trained 4096 steps, `seed: 0123` seeded 83, `max_steps: 1:30` trained
    90, `betas: [0.9, 010]` stopped as 'must be two numbers in [0, 1)' with the value (0.9, 8)."""
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(NgptConfigError) as err:
        load_model_and_train(str(path))
    assert str(err.value) == f"{path}: {line}"


def test_numbers_yaml_reads_as_written_pass(tmp_path):
    """Leading zeros that change nothing, 0 itself, hexadecimal and digit groups are read as the file shows them."""
    path = tmp_path / "x.yaml"
    path.write_text("model: {n_layer: 0004, n_embd: 0x40}\ntrain: {seed: 0, max_steps: 1_000, lr: 0.01}\n")
    model, train, _ = load_model_and_train(str(path))
    assert (model.n_layer, model.n_embd, train.seed, train.max_steps, train.lr) == (4, 64, 0, 1000, 0.01)
