"""The message of a record write that failed (metrics.jsonl, TensorBoard's events, summary.json). Faults: every
failure was told 'Free space on its filesystem (or fix the disk)', a read-only mount or a permission error
too; and TensorBoard's events file, which its writer names in bytes, was printed as b'/runs/x/tensorboard/...'."""

import errno
import os

import pytest

import ngpt_ds.train.metrics as metrics
from ngpt_ds.train.metrics import MetricsLogger, RecordWriteError, stop_all_if_unwritten, write_failure

LEFT = "No checkpoint was saved yet"


def _message_on_every_rank(monkeypatch, problem):
    """stop_all_if_unwritten's error in a one-rank job (the collectives are those of a world of one)."""
    monkeypatch.setattr(metrics, "all_reduce_on", lambda tensor, device, group=None: None)
    monkeypatch.setattr(metrics.dist, "broadcast_object_list", lambda message, src: None)
    with pytest.raises(RecordWriteError) as raised:
        stop_all_if_unwritten(problem, "cpu", LEFT)
    return str(raised.value)


def _failed_log(tmp_path, monkeypatch, err):
    """The problem a MetricsLogger keeps when TensorBoard's flush raises `err` (its writer thread met it)."""
    logger = MetricsLogger(tmp_path, enabled=True)

    def flush():
        raise err

    monkeypatch.setattr(logger.writer, "flush", flush)
    logger.log(3, {"train/loss": 1.5})
    logger.close()
    return logger.problem


def test_a_read_only_tensorboard_folder_is_named_as_text_and_told_to_remount(tmp_path, monkeypatch):
    events = os.fsencode(tmp_path / "tensorboard" / "events.out.tfevents.1.host")  # as TensorBoard names it
    problem = _failed_log(tmp_path, monkeypatch, OSError(errno.EROFS, os.strerror(errno.EROFS), events))
    assert _message_on_every_rank(monkeypatch, problem) == (
        f"the metrics of step 3 could not be written to {tmp_path}/tensorboard/events.out.tfevents.1.host "
        f"(Read-only file system). Its filesystem is mounted read-only: remount it read-write (or fix the disk). {LEFT}"
    )


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.ENOSPC, "Free space on its filesystem (or fix the disk)"),
        (errno.EDQUOT, "Free space within your disk quota there (or have the quota raised)"),
        (errno.EROFS, "Its filesystem is mounted read-only: remount it read-write (or fix the disk)"),
        (
            errno.EACCES,
            "Fix its permissions or ownership, or its folder's: the user the run goes as must be able to write it",
        ),
        (
            errno.EPERM,
            "Fix its permissions or ownership, or its folder's: the user the run goes as must be able to write it",
        ),
        (errno.EIO, "Check its filesystem and the disk, and what holds that name"),
        (errno.EISDIR, "Check its filesystem and the disk, and what holds that name"),
    ],
)
def test_each_write_error_gets_the_fix_for_its_reason(tmp_path, monkeypatch, code, fix):
    jsonl = tmp_path / "metrics.jsonl"
    problem = _failed_log(tmp_path, monkeypatch, OSError(code, os.strerror(code), str(jsonl)))
    assert _message_on_every_rank(monkeypatch, problem) == (
        f"the metrics of step 3 could not be written to {jsonl} ({os.strerror(code)}). {fix}. {LEFT}"
    )
    # summary.json's (ngpt_ds.train.loop): a bytes name, and an error that names no file (the path given instead).
    assert write_failure(OSError(code, os.strerror(code), os.fsencode(jsonl)), "x") == (
        str(jsonl),
        os.strerror(code),
        fix,
    )
    assert write_failure(OSError(code, os.strerror(code)), jsonl)[0] == str(jsonl)
