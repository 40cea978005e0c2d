"""A dataset's meta.json is read only up to a size no real one reaches."""

import shutil

import pytest

from ngpt_ds.data.shards import MAX_META_BYTES, load_dataset_meta
from ngpt_ds.errors import NgptConfigError


def test_a_meta_json_larger_than_any_dataset_writes_is_refused_unread(tmp_path, tiny_dataset):
    """Fault: meta.json was read and parsed whole on every rank, whatever its size (a 100 MB file held 521 MB
    for 2.3 s before it was refused for a missing field; one of valid JSON padded with spaces loaded). Now a
    file over MAX_META_BYTES is refused after reading that much, naming the file."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    meta = data / "meta.json"
    text = meta.read_text()
    meta.write_text(text + " " * (MAX_META_BYTES + 1 - len(text.encode())))
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert str(err.value).startswith(
        f"{meta} is over 67,108,864 bytes (a dataset's meta.json holds a few MB even at hundreds of GB of shards): "
        "the file is damaged or was not written by ngpt_ds; "
    )
    meta.write_text(text + " " * (MAX_META_BYTES - len(text.encode())))  # exactly the cap: read as before
    assert load_dataset_meta(data).vocab_size > 0
