"""evaluate.py refuses --windows, --batch-size, --data and --split it cannot use before it loads the model.

Fault: --windows 0, --batch-size 0, a --data folder that is no prepared dataset and a --split the dataset does
not have were refused only after the model had been loaded (minutes for a large checkpoint) and the
'evaluating ...' line printed.
"""

import pytest

import ngpt_ds.infer
from ngpt_ds.cli.evaluate import main


@pytest.mark.parametrize("case", ["windows", "batch_size", "no_dataset", "split"])
def test_unusable_evaluation_options_are_refused_before_the_model_is_loaded(
    case, tiny_dataset, tmp_path, monkeypatch, capsys
):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for options that cannot be used")

    monkeypatch.setattr(ngpt_ds.infer, "load", no_load)
    argv, message = {
        "windows": (
            ["--data", str(tiny_dataset), "--windows", "0"],
            "--windows 0: must be >= 1 (windows per context length)",
        ),
        "batch_size": (
            ["--data", str(tiny_dataset), "--batch-size", "-1"],
            "--batch-size -1: must be >= 1 (windows per forward pass)",
        ),
        "no_dataset": (
            ["--data", str(tmp_path / "absent")],
            f"data dir {tmp_path / 'absent'} does not exist; prepare it with "
            "`python launch/prepare_data.py --input CORPUS --out DIR`",
        ),
        "split": (
            ["--data", str(tiny_dataset), "--split", "test"],
            f"dataset {tiny_dataset} has no 'test' split (it has train, validation); use one of those splits",
        ),
    }[case]
    code = main([str(tmp_path / "model"), *argv, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"error: {message}"]
