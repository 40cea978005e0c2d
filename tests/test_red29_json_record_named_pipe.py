"""A named pipe at a dataset's part.json (or meta.json) is refused, never waited on.

The fault (red29, session 29): ngpt_ds.data.capped_json opened the file with a plain open, which on a named pipe
waits for a writer for good: a part folder handed over with a pipe at part.json hung the merge (read_part makes no
check of its own). Here a writer stands by, so the old code does not hang: it reads the writer's '{}' and refuses
that as 'not a part written by ngpt_ds', the wrong reason, after waiting on the pipe.
"""

import errno
import os
import threading
import time

import pytest

from ngpt_ds.data import capped_json, part_files
from ngpt_ds.errors import NgptConfigError


def _writer(fifo, stop: threading.Event) -> None:
    """Write '{}' to `fifo` once a reader has it open; give up when `stop` is set."""
    while not stop.is_set():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:  # no reader yet
                raise
            time.sleep(0.01)
            continue
        os.write(fd, b"{}")
        os.close(fd)
        return


@pytest.mark.parametrize("reader", ["read_part", "read_capped_json"])
def test_a_named_pipe_at_part_json_is_refused_unread(tmp_path, reader):
    fifo = tmp_path / part_files.PART_FILE
    os.mkfifo(fifo)
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(fifo, stop), daemon=True)
    writer.start()
    try:
        with pytest.raises(NgptConfigError) as err:
            if reader == "read_part":
                part_files.read_part(tmp_path)
            else:
                capped_json.read_capped_json(fifo, "a part's part.json", "prepare that part again")
    finally:
        stop.set()
        writer.join()
    assert str(err.value).startswith(f"{fifo} is a named pipe, not a regular file (a part's part.json is one); ")


def test_a_folder_and_a_device_are_refused_by_kind(tmp_path):
    (tmp_path / "meta.json").mkdir()
    with pytest.raises(NgptConfigError, match=r"meta\.json is a folder, not a regular file \(x is one\); fix$"):
        capped_json.read_capped_json(tmp_path / "meta.json", "x", "fix")
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # read to the cap before: 64 MiB held, then refused
    with pytest.raises(NgptConfigError, match=r"zero\.json is a device, not a regular file \(x is one\); fix$"):
        capped_json.read_capped_json(tmp_path / "zero.json", "x", "fix")
