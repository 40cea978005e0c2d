"""The run's config.yaml records --data as given and made absolute (data_dir_absolute): a resume from another
folder names the dataset the run trained on, not what the relative data_dir names in that folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

from conftest import REPO, run, tiny_ngpt, tiny_train, write_ds_config, write_yaml


def test_a_resume_from_another_folder_names_the_runs_dataset_by_its_absolute_path(tmp_path, tiny_dataset):
    """Fault: config.yaml recorded data_dir as given (`--data data`, relative to the folder training ran in), so a
    resume refused from another folder told the user to resume with "data_dir data", a folder that there is
    another one or none. Before: the message named `data_dir data` and config.yaml had no data_dir_absolute.
    Now: config.yaml has both, and the refusal names the absolute path of the run's dataset."""
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(tiny_dataset, here / "data")
    there.mkdir()
    with (there / "corpus.jsonl").open("w") as f:  # another vocabulary: the model no longer fits
        import pydoc_data.topics

        for text in list(pydoc_data.topics.topics.values())[:200]:
            f.write(json.dumps({"text": text}) + "\n")
    prepare_dataset(
        PrepareConfig(
            inputs=(str(there / "corpus.jsonl"),),
            out=there / "data",
            vocab_size=400,
            val_fraction=0.1,
            workers=1,
            progress=False,
        )
    )
    config = write_yaml(here / "tiny.yaml", tiny_ngpt(), tiny_train(1))
    ds = write_ds_config(here / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    cmd = [sys.executable, REPO / "launch/train.py", "--config", config, "--deepspeed_config", ds, "--no-progress"]
    run([*cmd, "--data", "data", "--out", "runs/x"], cwd=here)
    checkpoint = here / "runs" / "x" / "checkpoints" / "step_00000001"
    for saved in (here / "runs" / "x" / "config.yaml", checkpoint / "config.yaml"):
        recorded = yaml.safe_load(saved.read_text())
        assert (recorded["data_dir"], recorded["data_dir_absolute"]) == ("data", str(here / "data"))
    proc = run([*cmd, "--data", "data", "--out", here / "runs" / "x", "--max-steps", "2"], cwd=there, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"error: --out {here / 'runs' / 'x'} holds a run, and --resume auto (the default) continues it from its "
        f"newest checkpoint, {checkpoint}: the checkpoint does not fit this run: model.vocab_size = 512 in the "
        "checkpoint, 400 now (vocab_size comes from the tokenizer of --data data). Resume with the checkpoint's "
        f"config and data (data_dir {here / 'data'}), or start a new run with another --out"
    )
    assert Path(recorded["data_dir_absolute"]).is_absolute()
