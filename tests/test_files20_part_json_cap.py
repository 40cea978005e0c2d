"""--merge reads each part's part.json no further than MAX_PART_BYTES (ngpt_ds.data.parts._read_part).

Fault: part.json was read whole (Path.read_text) and held twice over, as bytes and as text, before it was
refused: a damaged or crafted part.json of 128 MiB (or a link to a large file) held 256 MiB, GBs for a larger
one. meta.json has had its cap (shards.MAX_META_BYTES) for this; part.json had none.
"""

from ngpt_ds.data import parts

from conftest import peak_python_bytes


def test_a_part_json_larger_than_any_part_is_refused_after_the_cap(tmp_path):
    """Before: 'unreadable (JSONDecodeError: Expecting value: line 1 column 1 (char 0))' after 256 MiB held.
    Now: the size is named, at most MAX_PART_BYTES + 1 bytes are read."""
    folder = parts.part_dir(tmp_path, 0, 1)
    folder.mkdir()
    with open(folder / "part.json", "wb") as f:
        f.truncate(128 << 20)  # sparse: no disk used
    errors = []

    def merge():
        try:
            parts.merge_parts(tmp_path, 1, progress=False)
        except parts.NgptConfigError as err:
            errors.append(str(err))

    peak = peak_python_bytes(merge)
    assert errors == [
        f"{folder / 'part.json'} is over 67,108,864 bytes (a part's part.json holds a few MB even at hundreds of "
        "GB of shards): the file is damaged or was not written by ngpt_ds; prepare that part again with --overwrite"
    ]
    assert parts.MAX_PART_BYTES == 64 << 20
    assert peak < parts.MAX_PART_BYTES + (2 << 20)


def test_a_part_json_within_the_cap_is_still_read_and_checked(tmp_path):
    """The cap changes nothing for a file under it: not JSON is refused as before."""
    folder = parts.part_dir(tmp_path, 0, 1)
    folder.mkdir()
    (folder / "part.json").write_bytes(b"\xff not json")
    try:
        parts.merge_parts(tmp_path, 1, progress=False)
    except parts.NgptConfigError as err:
        message = str(err)
    assert message == (
        f"{folder / 'part.json'}: unreadable (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position "
        "0: invalid start byte); prepare that part again with --overwrite"
    )
