"""meta.json numbers that are not JSON integers (a crafted or hand-edited dataset folder) are named in one
line, never a traceback, and never read as another number."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.errors import NgptConfigError


def _edit(tiny_dataset: Path, tmp_path: Path, edit) -> Path:
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "ds"))
    meta = json.loads((data / "meta.json").read_text())
    edit(meta)
    (data / "meta.json").write_text(json.dumps(meta).replace("Infinity", "1e400"))
    return data


def _set_vocab(value):
    return lambda meta: meta.__setitem__("vocab_size", value)


def _set_tokens(value):
    return lambda meta: meta["splits"]["train"]["shards"][0].__setitem__("tokens", value)


@pytest.mark.parametrize(
    "edit, shown",
    [
        (_set_vocab(float("inf")), "vocab_size = inf"),  # 1e400 in the file: OverflowError traceback before
        (_set_tokens(float("inf")), "tokens = inf"),
        (lambda m: m.__setitem__("eos_id", float("inf")), "eos_id = inf"),
        (lambda m: m["splits"]["train"].__setitem__("documents", float("inf")), "documents = inf"),
    ],
    ids=["vocab_size", "tokens", "eos_id", "documents"],
)
def test_a_number_too_large_for_an_integer_is_named(tiny_dataset, tmp_path, edit, shown):
    data = _edit(tiny_dataset, tmp_path, edit)
    with pytest.raises(NgptConfigError) as e:
        load_dataset_meta(data)
    assert str(e.value) == (
        f"{data / 'meta.json'}: missing or malformed field (TypeError: {shown} is not an integer); the file is "
        "damaged or was not written by ngpt_ds; prepare it with `python launch/prepare_data.py --input CORPUS "
        "--out DIR`"
    )


@pytest.mark.parametrize("value", [True, "12", 12.5])
def test_a_count_that_is_not_an_integer_is_not_read_as_one(tiny_dataset, tmp_path, value):
    """int() took true, "12" and 12.5 for 1, 12 and 12: a vocab_size of 12.5 loaded as 12."""
    data = _edit(tiny_dataset, tmp_path, _set_vocab(value))
    with pytest.raises(NgptConfigError, match=rf"TypeError: vocab_size = {value!r} is not an integer"):
        load_dataset_meta(data)
