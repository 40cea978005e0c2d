"""A crafted checkpoint cannot make --resume read an unbounded config.yaml.

Fault: ngpt_ds.train.preflight.saved_run_config read a checkpoint's config.yaml whole before parsing it (a crafted
checkpoint can carry a manifest that matches it), as the inference loaders did (tests/test_attack26_config_size.py).
It now reads no further than MAX_CONFIG_FILE_BYTES, and a larger file, or one that is no regular file (a named pipe
would block the read), is one error naming the checkpoint and the file's size.
"""

from __future__ import annotations

import os

import pytest
from test_attack26_config_size import sized_yaml  # a valid run config of an exact size

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import MAX_CONFIG_FILE_BYTES
from ngpt_ds.train.preflight import saved_run_config


def test_a_resumed_checkpoints_config_yaml_over_the_cap_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text(sized_yaml(MAX_CONFIG_FILE_BYTES + 1), encoding="utf-8")
    with pytest.raises(NgptConfigError) as caught:  # old code: DID NOT RAISE (read and parsed whole)
        saved_run_config(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"--resume {tmp_path}: its config.yaml cannot be read (")
    assert f"holds {MAX_CONFIG_FILE_BYTES + 1} bytes" in message


def test_a_resumed_checkpoints_config_yaml_of_the_cap_is_read(tmp_path):
    (tmp_path / "config.yaml").write_text(sized_yaml(MAX_CONFIG_FILE_BYTES), encoding="utf-8")
    assert (tmp_path / "config.yaml").stat().st_size == MAX_CONFIG_FILE_BYTES
    saved = saved_run_config(tmp_path)
    assert saved["model"] == {"arch": "ngpt", "vocab_size": 64, "d_model": 32, "n_layer": 1, "n_head": 2}


def test_a_resumed_checkpoints_config_yaml_that_is_a_named_pipe_is_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "config.yaml")  # opened for reading, the old code blocked until a writer came
    with pytest.raises(NgptConfigError) as caught:
        saved_run_config(tmp_path)
    assert str(caught.value).startswith(f"--resume {tmp_path}: its config.yaml cannot be read (")
