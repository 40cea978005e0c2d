"""meta.json and part.json are read by one size-capped reader (ngpt_ds.data.capped_json), and each message still
names its file and its own fix. Not a fault of the old code: guards the shared reader."""

import shutil

import pytest

from ngpt_ds.data import capped_json, part_files
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.errors import NgptConfigError


def test_the_reader_reads_at_most_the_cap_and_names_file_kind_and_fix(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": [1, 2]}')
    assert capped_json.read_capped_json(path, "a test's x.json", "fix it", max_bytes=13) == {"a": [1, 2]}
    with pytest.raises(NgptConfigError) as err:
        capped_json.read_capped_json(path, "a test's x.json", "fix it", max_bytes=12)
    assert str(err.value) == (
        f"{path} is over 12 bytes (a test's x.json holds a few MB even at hundreds of GB of shards): the file is "
        "damaged or was not written by ngpt_ds; fix it"
    )
    with pytest.raises(NgptConfigError) as err:
        capped_json.read_capped_json(tmp_path / "none.json", "a test's x.json", "fix it")
    assert str(err.value) == (
        f"{tmp_path / 'none.json'}: unreadable (FileNotFoundError: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'none.json'}'); fix it"
    )
    assert capped_json.MAX_JSON_BYTES == 64 << 20 == part_files.MAX_PART_BYTES


def test_a_meta_json_that_is_not_json_names_the_dataset_to_prepare_again(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "meta.json").write_text('{"format": ')
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert str(err.value) == (
        f"{data / 'meta.json'}: unreadable (JSONDecodeError: Expecting value: line 1 column 12 (char 11)); delete "
        f"{data} and prepare it again"
    )


def test_a_part_json_that_is_not_json_names_the_part_to_prepare_again(tmp_path):
    folder = part_files.part_dir(tmp_path, 0, 1)
    folder.mkdir()
    (folder / "part.json").write_text("[1,")
    with pytest.raises(NgptConfigError) as err:
        part_files.read_part(folder)
    assert str(err.value) == (
        f"{folder / 'part.json'}: unreadable (JSONDecodeError: Expecting value: line 1 column 4 (char 3)); prepare "
        "that part again with --overwrite"
    )
