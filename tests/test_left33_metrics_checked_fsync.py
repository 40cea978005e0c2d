"""metrics.checked.json marks a length of metrics.jsonl only once those bytes are on disk.

The fault (left33): `_mark_checked` recorded that the first N bytes of metrics.jsonl were records without an
fsync of metrics.jsonl (the run appends its records unsynced) nor of the folder the mark was renamed into. After a
power loss the mark could survive while the file's marked length held a block of NULs, and the next resume reads on
from the mark: the NULs inside it would never be read again (the mark checks only the file's last bytes).

A test cannot cut the power. It checks instead, on a real resume of a real file, the order of the durability calls
(os.fsync counted through a monkeypatch that still calls it): metrics.jsonl's inode fsynced before the mark is
renamed into place, and the folder fsynced after that rename, as `write_manifest` does for COMPLETE.
"""

import json
import os

from ngpt_ds.train.metrics import MetricsLogger
from ngpt_ds.train.metrics_jsonl import CHECKED_FILE


def test_the_marked_bytes_are_fsynced_before_the_mark_and_the_folder_after(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    good = "".join(json.dumps({"step": step, "train/loss": 6.0 - step / 10}) + "\n" for step in range(1, 7))
    path.write_text(good)
    metrics_inode = os.stat(path).st_ino
    folder_inode = os.stat(tmp_path).st_ino
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    MetricsLogger(tmp_path, enabled=True, resume_step=6).close()  # nothing goes: only the mark is written
    monkeypatch.undo()

    mark = json.loads((tmp_path / CHECKED_FILE).read_text())
    assert (mark["bytes"], mark["max_step"], mark["records"]) == (len(good.encode()), 6, 6)
    assert path.read_text() == good
    renamed = events.index(("replace", CHECKED_FILE))
    assert ("fsync", metrics_inode) in events[:renamed]  # the marked bytes, before the mark
    assert ("fsync", folder_inode) in events[renamed + 1 :]  # the mark's name, after its rename
