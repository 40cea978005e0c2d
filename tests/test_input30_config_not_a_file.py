"""A config path that is a named pipe or a device (input30): `--deepspeed_config <(jq ... ds.json)` (a shell's
process substitution, a pipe at /dev/fd/63), a `mkfifo`, /dev/zero given by mistake. No hang, but every rank said
"DeepSpeed config X does not exist" (and "config file X does not exist" for the YAML), which sends the operator to
look for a file that is there. Now it is named as what it is, unopened, with the fix."""

import os

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import load_model_config
from ngpt_ds.train.ds_config import load_ds_config

from conftest import REPO, run_ranks, tiny_ngpt, tiny_train, write_yaml

FIX = "not a regular file (a shell's <(...) gives a pipe): write the settings to a file and give that file"


def test_named_pipes_named_as_pipes(tmp_path):
    """Fault: a FIFO given as either config was 'does not exist'."""
    yaml_pipe, json_pipe = tmp_path / "c.yaml", tmp_path / "ds.json"
    os.mkfifo(yaml_pipe)
    os.mkfifo(json_pipe)
    with pytest.raises(NgptConfigError) as yaml_err:
        load_model_config(str(yaml_pipe))
    assert str(yaml_err.value) == f"config {yaml_pipe} is a named pipe, {FIX}"
    with pytest.raises(NgptConfigError) as json_err:
        load_ds_config(json_pipe)
    assert str(json_err.value) == f"DeepSpeed config {json_pipe} is a named pipe, {FIX}"


def test_devices_named_as_devices():
    """Fault: /dev/null or /dev/zero as a config was 'does not exist'."""
    with pytest.raises(NgptConfigError) as yaml_err:
        load_model_config("/dev/null")
    assert str(yaml_err.value) == f"config /dev/null is a character device, {FIX}"
    with pytest.raises(NgptConfigError) as json_err:
        load_ds_config("/dev/zero")
    assert str(json_err.value) == f"DeepSpeed config /dev/zero is a character device, {FIX}"


def test_missing_files_still_missing(tmp_path):
    """A path with nothing there keeps its message."""
    with pytest.raises(NgptConfigError, match=r"^DeepSpeed config .*ds\.json does not exist\. The shipped ones"):
        load_ds_config(tmp_path / "ds.json")
    with pytest.raises(NgptConfigError, match=r"^config file .*c\.yaml does not exist\. Give a YAML file"):
        load_model_config(str(tmp_path / "c.yaml"))


def test_train_refuses_a_process_substitution_on_both_ranks(tmp_path, tiny_dataset):
    """launch/train.py on 2 gloo ranks, each given a pipe for --deepspeed_config as a process substitution gives it:
    both exit 2 with the one line, no traceback, no --out; nothing writes the pipe, so a rank that opened it would
    hang until the timeout."""
    config = write_yaml(tmp_path / "c.yaml", tiny_ngpt(), tiny_train(2))
    pipe = tmp_path / "fd63"
    os.mkfifo(pipe)
    args = [REPO / "launch/train.py", "--config", config, "--deepspeed_config", pipe, "--data", tiny_dataset]
    codes, outputs = run_ranks([*args, "--out", tmp_path / "out", "--no-progress"], timeout=240)
    assert codes == [2, 2]
    for output in outputs:
        assert "Traceback" not in output
        assert f"error: DeepSpeed config {pipe} is a named pipe, {FIX}" in output
    assert not (tmp_path / "out").exists()
