"""evaluate.py without --data reads the dataset its run recorded (data_dir, as given to the trainer, often relative):
from another folder that name may be another dataset made with the same tokenizer."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from ngpt_ds.cli.evaluate import main
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

from conftest import run, tiny_ngpt, tiny_train, write_ds_config, write_yaml


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory, tiny_dataset) -> tuple[Path, Path]:
    """`here/data`: the tiny dataset, and `here/runs/x` a 2-step run trained in `here` with --data data;
    `there/data`: other text prepared with the same tokenizer."""
    root = tmp_path_factory.mktemp("recorded_data")
    here, there = root / "here", root / "there"
    shutil.copytree(tiny_dataset, here / "data")
    import pydoc_data.topics

    there.mkdir()
    with (there / "corpus.jsonl").open("w") as f:
        for text in reversed(list(pydoc_data.topics.topics.values())):
            f.write(json.dumps({"text": text[: len(text) // 2]}) + "\n")
    prepare_dataset(
        PrepareConfig(
            inputs=(str(there / "corpus.jsonl"),),
            out=there / "data",
            tokenizer=here / "data" / "tokenizer.model",
            val_fraction=0.1,
            workers=1,
            progress=False,
        )
    )
    config = write_yaml(here / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(here / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    cmd = [sys.executable, Path(__file__).parents[1] / "launch/train.py", "--config", config]
    run([*cmd, "--deepspeed_config", ds, "--data", "data", "--out", "runs/x", "--no-progress"], cwd=here)
    return here, there


@contextlib.contextmanager
def _moved_aside(folder: Path, replacement: Path | None = None):
    """`folder` renamed away for the block (and `replacement` copied in its place), then put back."""
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    try:
        if replacement is not None:
            shutil.copytree(replacement, folder)
        yield
    finally:
        if folder.exists():
            shutil.rmtree(folder)
        aside.rename(folder)


def test_a_relative_data_dir_that_names_another_dataset_here_is_refused(two_folders, monkeypatch, capsys):
    """Fault: `evaluate.py RUN` from another folder read the run's recorded data_dir `data` there: a dataset
    prepared with the same tokenizer (--tokenizer, as for the parts of a corpus) passed the tokenizer check and
    the table was that dataset's, exit 0, as if it were the run's validation loss. Now the run records its
    dataset's absolute path too (data_dir_absolute) and reads that while it exists; where it does not (a run
    moved to another machine, or from before that record), the relative `data` here is refused before the
    evaluation, naming the recorded path, the record it was checked against and --data."""
    here, there = two_folders
    checkpoint = here / "runs" / "x" / "checkpoints" / "step_00000002"
    monkeypatch.chdir(there)
    assert main([str(here / "runs" / "x"), "--multiples", "1", "--windows", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"on {here / 'data'} (validation)" in err, err
    assert out.splitlines()[1].split()[:4] == ["32", "1.00x", "2", "64"]
    with _moved_aside(here / "data"):
        assert main([str(here / "runs" / "x"), "--multiples", "1", "--windows", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: {checkpoint} records its training data as data (the run's data_dir, a path relative to the folder "
        "training ran in), and the dataset data here holds other training data than the model was trained on (its "
        "train split's shards, token counts or block hashes differ from train_data_sha256 in "
        f"{checkpoint / 'config.yaml'}): its validation split is not the run's. Pass --data DIR, the run's dataset "
        "(a copy elsewhere is fine), or another dataset on purpose"
    )


def test_the_runs_own_dataset_and_an_explicit_data_are_evaluated(two_folders, monkeypatch, capsys):
    """The check leaves alone the run's dataset where it was recorded, and another dataset named by --data."""
    here, there = two_folders
    monkeypatch.chdir(here)
    assert main(["runs/x", "--multiples", "1", "--windows", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["32", "1.00x", "2", "64"]
    monkeypatch.chdir(there)
    assert main([str(here / "runs" / "x"), "--data", "data", "--multiples", "1", "--windows", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["32", "1.00x", "2", "64"]


def test_an_export_records_the_training_data_and_is_checked_like_its_checkpoint(two_folders, monkeypatch, capsys):
    """Fault: an export's config.json did not carry the run's train_data_sha256, so `evaluate.py EXPORT` read
    another dataset under the recorded name and printed its table, exit 0, where the checkpoint the export came
    from is refused (above). Now the export records it (with the dataset's absolute path) and is refused the
    same way when another dataset stands at that path."""
    from ngpt_ds.infer import export_model

    here, there = two_folders
    monkeypatch.chdir(there)  # the absolute data_dir finds the run's tokenizer from any folder
    folder = export_model(here / "runs" / "x", there / "export")
    training = json.loads((folder / "config.json").read_text())["training"]
    saved = (here / "runs" / "x" / "checkpoints" / "step_00000002" / "config.yaml").read_text()
    assert f"train_data_sha256: {training['train_data_sha256']}" in saved
    assert training["data_dir"] == str(here / "data")
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["32", "1.00x", "2", "64"]
    with _moved_aside(here / "data", replacement=there / "data"):
        assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: {folder} records its training data as {here / 'data'} (the run's data_dir), and the dataset "
        f"{here / 'data'} here holds other training data than the model was trained on (its "
        f"train split's shards, token counts or block hashes differ from train_data_sha256 in {folder}): its "
        "validation split is not the run's. Pass --data DIR, the run's dataset (a copy elsewhere is fine), or "
        "another dataset on purpose"
    )
