"""Config files given by mistake or crafted: a file too large for a config, and a JSON of many keys
(ngpt_ds.model.config.read_config_text, ngpt_ds.train.ds_config.load_ds_config)."""

import json

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import MAX_CONFIG_FILE_BYTES
from ngpt_ds.train.config import load_model_and_train
from ngpt_ds.train.ds_config import load_ds_config

from conftest import fails_after, peak_python_bytes

SIZE = 64 * 2**20


@pytest.mark.parametrize("name, what", [("model.yaml", "config"), ("ds.json", "DeepSpeed config")])
def test_a_file_too_large_for_a_config_is_refused_unread(tmp_path, name, what):
    """Fault: a config file was read whole before any check, so a file given by mistake (a dataset shard, a
    checkpoint) held several times its size in memory on every rank: a 512 MiB file given to --deepspeed_config
    took 1.8 GB and 16 s to be called 'not valid JSON at line 1, column 1', and to --config 1.3 GB."""
    path = tmp_path / name
    with path.open("wb") as f:
        f.truncate(SIZE)  # sparse: no disk, reads as zeros
    read = load_model_and_train if name.endswith(".yaml") else load_ds_config
    errors = []

    def work():
        with pytest.raises(NgptConfigError) as err:
            read(str(path))
        errors.append(str(err.value))

    peak = peak_python_bytes(work)
    assert errors == [
        f"{what} {path} holds {SIZE} bytes, more than any config file ({MAX_CONFIG_FILE_BYTES} at most): it is some "
        "other file (a dataset shard, a checkpoint?); give the config file"
    ]
    assert peak < 2 * MAX_CONFIG_FILE_BYTES + 2**20, peak  # the bytes read, at most the cap + 1


def test_a_deepspeed_json_of_many_keys_is_read_in_linear_time(tmp_path):
    """Fault: the duplicate-key check counted each key among all the others (keys.count per key): a JSON object of
    40,000 keys (420 KB) took 23 s to read, 90,000 keys (980 KB, a file under the size cap) 125 s, on every rank
    before any message."""
    path = tmp_path / "many.json"
    path.write_text("{" + ",".join(f'"k{i}":0' for i in range(90_000)) + "}")

    with fails_after(20, "reading a JSON object of 90,000 keys"):
        config = load_ds_config(path)
    assert len(config) == 90_000
    path.write_text(json.dumps({"k0": 0})[:-1] + ', "k1": 1, "k0": 2, "k1": 3}')
    with pytest.raises(NgptConfigError, match=r"many.json: key\(s\) k0, k1 appear twice in one object; keep one"):
        load_ds_config(path)


def test_config_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    """Fault: a DeepSpeed JSON saved as "UTF-8 with BOM" (Windows editors) was refused as "not valid JSON at line 1,
    column 1: Unexpected UTF-8 BOM (decode using utf-8-sig)", advice for a programmer, while a YAML config saved so
    was read."""
    ds = tmp_path / "ds.json"
    ds.write_bytes(b'\xef\xbb\xbf{"train_micro_batch_size_per_gpu": 2}')
    assert load_ds_config(ds) == {"train_micro_batch_size_per_gpu": 2}
    config = tmp_path / "model.yaml"
    config.write_bytes(b"\xef\xbb\xbfmodel: {n_layer: 2}\n")
    assert load_model_and_train(str(config))[0].n_layer == 2
