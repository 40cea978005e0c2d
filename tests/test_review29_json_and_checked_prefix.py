"""Two faults review29 found in this session's changes.

1. read_capped_json (meta.json, part.json) opened a device before refusing it: opening a device can act (a watchdog
   arms, a tape rewinds), and the project's manifest reader stats before it opens for that reason. A link at
   meta.json to a device is now refused from its stat, unopened.
2. A checked metrics.jsonl prefix whose last 32 KiB held a record with one invalid UTF-8 byte (a disk error, a hand
   edit) was distrusted at every resume: the prefix check decoded strictly, while the lines it keeps are read with
   errors="replace" (summary.lines_of) and count as records. Every resume then read the whole file again.
"""

import json
import os

import pytest

from ngpt_ds.data import capped_json
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import metrics_jsonl
from ngpt_ds.train.metrics_jsonl import CHECKED_FILE, truncate_jsonl


def test_a_device_at_meta_json_is_refused_without_being_opened(tmp_path, monkeypatch):
    meta = tmp_path / "meta.json"
    meta.symlink_to(os.devnull)
    opened = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(capped_json.os, "open", recording_open)
    with pytest.raises(NgptConfigError, match=r"meta\.json is a device, not a regular file .*; prepare it again"):
        capped_json.read_capped_json(meta, "a dataset's meta.json", "prepare it again")
    assert opened == []


def test_a_named_pipe_at_meta_json_is_still_refused(tmp_path):
    meta = tmp_path / "meta.json"
    os.mkfifo(meta)
    with pytest.raises(NgptConfigError, match=r"meta\.json is a named pipe, not a regular file"):
        capped_json.read_capped_json(meta, "a dataset's meta.json", "prepare it again")


def _line(step: int, note: bytes = b"ok") -> bytes:
    return b'{"step": %d, "train/loss": %.2f, "note": "%s"}\n' % (step, 3.0 + step / 100, note)


def test_a_checked_prefix_with_an_invalid_byte_in_a_kept_record_stays_trusted(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(_line(step, b"\xff" if step == 18 else b"ok") for step in range(1, 21)))
    assert truncate_jsonl(path, 20) == []  # the first resume reads it whole and marks 20 records checked
    mark = json.loads(path.with_name(CHECKED_FILE).read_text())
    assert (mark["bytes"], mark["max_step"], mark["records"]) == (path.stat().st_size, 20, 20)

    with path.open("ab") as f:
        f.write(b"".join(_line(step) for step in range(21, 26)))
    whole_reads = []
    real = metrics_jsonl._ends_within

    def watched(end, whole, top):
        trusted = real(end, whole=whole, top=top)
        whole_reads.append(not trusted)
        return trusted

    monkeypatch.setattr(metrics_jsonl, "_ends_within", watched)
    assert truncate_jsonl(path, 25) == []
    assert whole_reads == [False]  # the prefix was trusted: only what follows it was read
    mark = json.loads(path.with_name(CHECKED_FILE).read_text())
    assert (mark["bytes"], mark["max_step"], mark["records"]) == (path.stat().st_size, 25, 25)
