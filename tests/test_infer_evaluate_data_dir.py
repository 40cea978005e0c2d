"""evaluate.py without --data reads the dataset the model records (the training run's data_dir): when that
folder is not there, the error says where the path came from and asks for --data."""

import json
import shutil

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)


@pytest.mark.parametrize("recorded", ["data", "/nonexistent/datasets/tiny"], ids=["relative", "absolute"])
def test_a_recorded_dataset_that_is_not_here_asks_for_data(small_export, tmp_path, monkeypatch, capsys, recorded):  # noqa: F811
    """Fault: an export whose training.data_dir is not a folder where evaluate.py runs (the trainer records the
    --data it was given, often relative: `data`) stopped with the dataset's own message, 'data dir data does
    not exist; prepare it with `python launch/prepare_data.py --input CORPUS --out DIR`': it sent the user to
    tokenize a corpus again, where passing --data with the existing dataset is the fix."""
    from ngpt_ds.cli.evaluate import main

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = {"data_dir": recorded}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)  # no `data` folder here
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 2
    out, err = capsys.readouterr()
    relative = ", a path relative to the folder training ran in" if recorded == "data" else ""
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: {folder} records its training data as {recorded} (the run's data_dir{relative}), which is not a "
        "folder here; pass --data DIR, a dataset prepared with the model's tokenizer"
    )


def test_a_recorded_dataset_set_aside_by_a_killed_overwrite_keeps_the_loaders_message(
    small_export,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    """The check above leaves to the dataset's loader a data_dir that a killed --overwrite set aside: its message
    names the copy and the `mv` that puts it back."""
    from ngpt_ds.cli.evaluate import main

    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = {"data_dir": "data"}
    (folder / "config.json").write_text(json.dumps(config))
    aside = ".data.old-" + "0" * 32
    (tmp_path / aside).mkdir()
    monkeypatch.chdir(tmp_path)
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: dataset data does not exist, but {aside} is the copy a killed --overwrite set aside: "
        f"mv it back (mv {aside} data)"
    )
