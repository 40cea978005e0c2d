"""The trainer's reads of summary.json, metrics.jsonl and config.yaml take only (links to) regular files, and
never hold more than a bounded amount. Faults: they were read whole with no check (Path.read_text,
read_bytes): a named pipe at summary.json blocked rank 0 of a rerun for good, a link to /dev/zero filled its
memory until the OOM killer came, and a file of gigabytes (one long line) was held whole, twice."""

import json
import os
import threading

from ngpt_ds.train.metrics import truncate_jsonl
from ngpt_ds.train.summary import Summary, describe, mend_finished_summary

from conftest import peak_python_bytes

HUGE = 256 * 2**20  # sparse: takes no disk


def _records(out, steps):
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train/loss": 5.0 - s, "train/tokens": 128.0 * s}) + "\n" for s in steps)
    )


def _summary(out):
    path = out / "summary.json"
    assert path.is_file() and not path.is_symlink()
    return json.loads(path.read_text())


def test_a_named_pipe_at_summary_json_does_not_block_the_rerun_that_mends_it(tmp_path):
    _records(tmp_path, [1, 2])
    pipe = tmp_path / "summary.json"
    os.mkfifo(pipe)
    mending = threading.Thread(target=mend_finished_summary, args=(tmp_path, 2, 2), daemon=True)
    mending.start()
    mending.join(timeout=20)
    if mending.is_alive():  # the old code: blocked in the open, waiting for a writer; release it, then fail
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        mending.join(timeout=20)
        raise AssertionError("mend_finished_summary blocked on a named pipe at summary.json")
    assert _summary(tmp_path) == {
        "status": "finished",
        "step": 2,
        "max_steps": 2,
        "tokens": 256,
        "train_loss": 3.0,
        "val_loss": None,
        "seconds": None,
        "checkpoint": str(tmp_path / "checkpoints" / "step_00000002"),
        "out_dir": str(tmp_path),
    }


def test_links_to_dev_zero_are_not_read(tmp_path):
    """(The old code read each of them until memory ran out: not run on it.)"""
    for name in ("summary.json", "metrics.jsonl", "config.yaml"):
        (tmp_path / name).symlink_to("/dev/zero")
    lines = describe(Summary("finished", 2, 2, 256, 3.0, 3.5, 1.0, None, str(tmp_path))).splitlines()
    assert lines[0] == "Done: the model to step 2/2, 0.3k tokens in all (this session: 0m01.0s)"
    assert not any("loss" in line for line in lines)
    mend_finished_summary(tmp_path, 2, 2)  # the summary it cannot read is replaced, not followed
    assert _summary(tmp_path)["status"] == "finished"
    assert truncate_jsonl(tmp_path / "metrics.jsonl", 2) == []  # replaced by an empty file (no_follow tests)
    assert (tmp_path / "metrics.jsonl").read_bytes() == b"" and not (tmp_path / "metrics.jsonl").is_symlink()


def test_a_huge_summary_json_is_replaced_unread(tmp_path):
    _records(tmp_path, [1, 2])
    with open(tmp_path / "summary.json", "wb") as f:  # 256 MiB: a summary, then NULs
        f.write(json.dumps({"status": "finished", "step": 2}).encode())
        f.truncate(HUGE)
    peak = peak_python_bytes(lambda: mend_finished_summary(tmp_path, 2, 2))
    assert _summary(tmp_path)["train_loss"] == 3.0  # not JSON, so not the finished summary it would keep
    assert peak < 2**20, peak  # the old code held all 256 MiB, then a str of them


def test_a_huge_line_in_metrics_jsonl_is_skipped_a_line_at_a_time(tmp_path):
    _records(tmp_path, [1, 2])
    with open(tmp_path / "metrics.jsonl", "ab") as f:  # a line of 256 MiB of NULs (a bad disk, a crash)
        f.truncate(f.tell() + HUGE)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + json.dumps({"step": 3, "train/loss": 2.0}).encode() + b"\n")
    lines = []
    peak = peak_python_bytes(
        lambda: lines.extend(describe(Summary("finished", 3, 3, 384, 2.0, 3.5, 1.0, None, str(tmp_path))).splitlines())
    )
    assert lines[1] == "  train loss:      4.000 at step 1 -> 2.000 at step 3"
    assert peak < 8 * 2**20, peak  # at most a line of 1 MiB read at a time; the old code held 256 MiB twice
    peak = peak_python_bytes(lambda: truncate_jsonl(tmp_path / "metrics.jsonl", 2))
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(
        json.dumps({"step": s, "train/loss": 5.0 - s, "train/tokens": 128.0 * s}) + "\n" for s in (1, 2)
    )
    assert (tmp_path / "metrics.replaced.jsonl").read_text() == json.dumps({"step": 3, "train/loss": 2.0}) + "\n"
    assert peak < 8 * 2**20, peak
