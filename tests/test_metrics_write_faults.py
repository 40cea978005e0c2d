"""A disk that fills up (or fails) under the run's logs: metrics.jsonl and tensorboard/ are written by
rank 0 alone, so a write error there must reach every rank as one message, as a checkpoint's does."""

import contextlib
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

PAGE = 4096
FREE_PAGES_LEFT = 8


def _fill_once_training(out: Path, ranks: list[subprocess.Popen]) -> None:
    """Once `out`/metrics.jsonl holds a record (the startup's free-space check is behind), fill `out`'s disk up to
    FREE_PAGES_LEFT pages; nothing where the ranks ended first (their exit statuses say why)."""
    deadline = time.monotonic() + 300  # a hang guard only
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0):
        if time.monotonic() > deadline or any(proc.poll() is not None for proc in ranks):
            return
        time.sleep(0.05)
    room = shutil.disk_usage(out).free - FREE_PAGES_LEFT * PAGE
    if room > 0:
        with contextlib.suppress(OSError), open(out.parent / "filler", "wb") as filler:
            filler.write(bytes(room))  # an ENOSPC here: the logs filled the disk first, as they should


def test_disk_full_under_the_metrics_stops_every_rank_with_74_and_one_message(tmp_path, tiny_dataset, mount_tmpfs):
    """Fault: a write of metrics.jsonl or of the TensorBoard events that failed (disk full) raised an
    OSError on rank 0 alone: a traceback naming no fix, exit 1, and the other rank died on 'Connection
    closed by peer' in its next all-reduce (with NCCL it waits there until train.dist_timeout_s)."""
    # Room for the run's checkpoint as the startup check counts it (16 bytes for each of at least 65,536 parameters:
    # a disk with less is refused before the first step) and 16 pages more. Once the first step's record is written
    # (the startup check passed), a file of this test takes all but FREE_PAGES_LEFT of the free space: the logs
    # (about 1.6 KiB a step) fill the rest within a few dozen steps, long before the last step saves (they had
    # filled the checkpoint's room too: 700 steps on two busy ranks).
    out = mount_tmpfs(16 * 65536 + 16 * PAGE) / "run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4000, dist_timeout_s=60))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    ranks = start_ranks(train_cmd(config, ds, tiny_dataset, out))
    with ThreadPoolExecutor(len(ranks)) as pool:  # the ranks' output pipes read while the test waits to fill the disk
        reading = [pool.submit(proc.communicate, timeout=300) for proc in ranks]
        _fill_once_training(out, ranks)
        results = [future.result() for future in reading]
    messages = []
    for rank, (proc, (_, stderr)) in enumerate(zip(ranks, results)):
        assert proc.returncode == 74, (rank, stderr[-3000:])
        assert "Traceback" not in stderr, (rank, stderr[-3000:])
        (message,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        messages.append(message)
    assert messages[0] == messages[1], messages  # rank 0's failure, word for word on rank 1
    message = messages[0]
    # The file named as text: metrics.jsonl, TensorBoard's events file (which its writer names in bytes, printed
    # as b'...' before; the whole line is matched, so no b'...' can pass), or both when the error names none.
    run = re.escape(str(out))
    named = re.fullmatch(
        rf"error: the metrics of step (\d+) could not be written to {run}/(metrics\.jsonl|metrics\.jsonl or "
        rf"{run}/tensorboard|tensorboard/events\.out\.tfevents\.[\w.-]+) \(No space left on device\)\. Free space on its "
        r"filesystem \(or fix the disk\)\. No checkpoint was saved yet \(train\.checkpoint_interval 0\): running the "
        r"same command again starts from step 0",
        message,
    )
    assert named is not None, message
    assert 1 <= int(named[1]) < 4000
    assert not (out / "summary.json").exists()  # train.sbatch does not requeue a job that cannot log


def test_summary_that_cannot_be_written_stops_every_rank_with_74_and_one_message(tmp_path, tiny_dataset):
    """Fault: the last save may fill the disk (its free-space check compares with the previous checkpoint's
    size), and then summary.json, written by rank 0 alone after it, failed with an OSError traceback and
    exit 1 on rank 0 while rank 1 exited 0, and its empty summary.json.tmp stayed behind. (Reproduced
    on a tmpfs one page short; here a folder in the temporary file's place fails the write the same way,
    whatever the sizes of this DeepSpeed's files.)"""
    out = tmp_path / "run"
    (out / "summary.json.tmp").mkdir(parents=True)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=60))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    ranks = start_ranks(train_cmd(config, ds, tiny_dataset, out))
    results = [proc.communicate(timeout=300) for proc in ranks]
    for rank, (proc, (_, stderr)) in enumerate(zip(ranks, results)):
        assert proc.returncode == 74, (rank, stderr[-3000:])
        assert "Traceback" not in stderr, (rank, stderr[-3000:])
        (message,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert message == (
            f"error: the run ended at step 2 (finished), but {out / 'summary.json.tmp'} could not be written "
            "(Is a directory). Check its filesystem and the disk, and what holds that name. Checkpoints up to step 2 "
            "are intact "
            f"in {out / 'checkpoints'} (--resume auto continues from the newest, step_00000002)"
        ), (rank, message)
    assert not (out / "summary.json").exists()
    assert (out / "checkpoints" / "latest").read_text() == "step_00000002"
