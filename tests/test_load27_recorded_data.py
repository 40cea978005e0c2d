"""evaluate.py without --data on an export someone else made: its config.json records the data_dir of THEIR run
(a path of their machine, often relative), which here names whatever stands at that path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

from ngpt_ds.cli.evaluate import main


def _export_recording(small_export: Path, tmp_path: Path, training: dict) -> Path:  # noqa: F811
    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    config = json.loads((folder / "config.json").read_text())
    config["training"] = training
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _fingerprint(dataset: Path) -> str:
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.train.preflight import train_data_fingerprint

    digest = train_data_fingerprint(load_dataset_meta(dataset, verify_contents=False))
    assert digest is not None and len(digest) == 64
    return digest


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_recorded_data_dir_without_a_fingerprint_is_not_read(
    small_export,  # noqa: F811
    tiny_dataset,
    tmp_path,
    monkeypatch,
    capsys,
    where,
):
    """Fault: an export whose config.json records a data_dir but no train_data_sha256 (one from a version that
    did not record it, or an altered config.json) was evaluated on whatever dataset stood at that path here, a
    relative one resolved against the user's working folder: the table was printed, exit 0, with nothing showing
    it was the run's data. Now it is refused in one line asking for --data, and nothing is evaluated."""
    (tmp_path / "data").mkdir()
    shutil.copytree(tiny_dataset, tmp_path / "data" / "tiny")
    recorded = "data/tiny" if where == "relative" else str(tmp_path / "data" / "tiny")
    folder = _export_recording(small_export, tmp_path, {"data_dir": recorded})
    monkeypatch.chdir(tmp_path)
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 2
    out, err = capsys.readouterr()
    relative = ", a path relative to the folder training ran in" if where == "relative" else ""
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: {folder} records its training data as {recorded} (the run's data_dir{relative}) but not its "
        f"fingerprint (train_data_sha256), so nothing shows that the dataset {recorded} here is the one it was "
        "trained on. Pass --data DIR, the run's dataset (a copy elsewhere is fine), or another dataset on purpose"
    )
    # --data with the same folder is the user's own choice, and is evaluated.
    assert main([str(folder), "--data", recorded, "--multiples", "1", "--windows", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["32", "1.00x", "2", "64"]


def test_a_recorded_data_dir_with_a_matching_fingerprint_is_read(
    small_export,  # noqa: F811
    tiny_dataset,
    tmp_path,
    monkeypatch,
    capsys,
):
    """The recorded data_dir is still used where it holds the run's data (its fingerprint matches): a copy of the
    run's dataset at the recorded relative path evaluates without --data."""
    shutil.copytree(tiny_dataset, tmp_path / "data")
    folder = _export_recording(
        small_export, tmp_path, {"data_dir": "data", "train_data_sha256": _fingerprint(tiny_dataset)}
    )
    monkeypatch.chdir(tmp_path)
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 0
    out, err = capsys.readouterr()
    assert "on data (validation)" in err, err
    assert out.splitlines()[1].split()[:4] == ["32", "1.00x", "2", "64"]


def test_a_recorded_dataset_without_block_hashes_is_not_read(
    small_export,  # noqa: F811
    tiny_dataset,
    tmp_path,
    monkeypatch,
    capsys,
):
    """Fault: where the model records a fingerprint but the dataset at the recorded path has no block hashes
    (train_data_fingerprint is None), the check let it through: any dataset prepared without hashes under that
    name was evaluated, exit 0. Now refused like a dataset with other data."""
    shutil.copytree(tiny_dataset, tmp_path / "data")
    meta_path = tmp_path / "data" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("hash_block_bytes", None)  # a dataset prepared before ngpt_ds hashed blocks has neither
    for split in meta["splits"].values():
        for shard in split["shards"]:
            shard.pop("sha256_blocks", None)
    meta_path.write_text(json.dumps(meta))
    folder = _export_recording(
        small_export, tmp_path, {"data_dir": "data", "train_data_sha256": _fingerprint(tiny_dataset)}
    )
    monkeypatch.chdir(tmp_path)
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: {folder} records its training data as data (the run's data_dir, a path relative to the folder "
        "training ran in), and the dataset data here records no block hashes (its train split's shards, token "
        f"counts or block hashes differ from train_data_sha256 in {folder}): its validation split is not the "
        "run's. Pass --data DIR, the run's dataset (a copy elsewhere is fine), or another dataset on purpose"
    )


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "meta_fifo", "meta_huge"])
def test_a_recorded_data_dir_that_is_no_dataset_is_refused_in_one_line(
    small_export,  # noqa: F811
    tiny_dataset,
    tmp_path,
    monkeypatch,
    capsys,
    kind,
):
    """Guard (held before this session's change too): a recorded data_dir that is a named pipe or /dev/zero, or a
    folder whose meta.json is a named pipe or over the size cap, is a one-line refusal, no hang, no big read."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "data")
        recorded = "data"
    elif kind == "dev_zero":
        recorded = "/dev/zero"
    else:
        (tmp_path / "data").mkdir()
        recorded = "data"
        if kind == "meta_fifo":
            os.mkfifo(tmp_path / "data" / "meta.json")
        else:
            with open(tmp_path / "data" / "meta.json", "wb") as f:
                f.truncate(1 << 30)  # sparse: 1 GiB read would be the blow-up
    folder = _export_recording(
        small_export, tmp_path, {"data_dir": recorded, "train_data_sha256": _fingerprint(tiny_dataset)}
    )
    monkeypatch.chdir(tmp_path)
    assert main([str(folder), "--multiples", "1", "--windows", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = err.splitlines()[-1]
    assert "Traceback" not in err
    expected = {
        "fifo": "error: data dir data is a file, not a dataset folder: pass the folder that holds meta.json",
        "dev_zero": "error: data dir /dev/zero is a file, not a dataset folder: pass the folder that holds meta.json",
        "meta_fifo": "error: data/meta.json not found: data is not a prepared dataset",
        "meta_huge": "error: data/meta.json is over ",
    }[kind]
    assert last.startswith(expected), last
