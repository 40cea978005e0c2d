"""metrics.jsonl and metrics.replaced.jsonl are written as regular files of the run folder, never through a
link. Faults: metrics.replaced.jsonl was appended with a plain open, so a link planted there in a run folder
someone handed over made a resume append to the file it named (any file, for a trainer run as root); a
metrics.jsonl that was a link to nothing was left in place (is_file() is false for it) and the first log line
created the file it named; one that was a named pipe blocked rank 0 in its first log line for good.
As for config.yaml.tmp and summary.json.tmp (test_run_files_no_follow.py), a link is replaced, not followed:
a regular file takes its name, holding the records read through it, and what it names is left as it was."""

import json
import os
import threading

from ngpt_ds.train.metrics import MetricsLogger


def _lines(steps, loss=5.0):
    return "".join(json.dumps({"step": s, "train/loss": loss - s}) + "\n" for s in steps)


def _regular(path):
    assert path.is_file() and not path.is_symlink(), path
    return path.read_text()


def test_a_link_at_metrics_replaced_jsonl_is_replaced_not_appended_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(_lines(range(1, 6)))
    (run / "metrics.replaced.jsonl").symlink_to(victim)

    MetricsLogger(run, enabled=True, resume_step=3).close()

    assert victim.read_text() == "precious\n"  # old code: the records of steps 4-5 appended to it
    assert _regular(run / "metrics.replaced.jsonl") == _lines([4, 5])
    assert _regular(run / "metrics.jsonl") == _lines([1, 2, 3])


def test_a_run_copied_as_links_keeps_its_records_and_leaves_the_original_as_it_was(tmp_path):
    """`cp -rs run copy`: both files are links to the original's; the copy's resume writes its own."""
    original = tmp_path / "run"
    original.mkdir()
    (original / "metrics.jsonl").write_text(_lines(range(1, 6)))
    (original / "metrics.replaced.jsonl").write_text(_lines([9], loss=20.0))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("metrics.jsonl", "metrics.replaced.jsonl"):
        (copy / name).symlink_to(original / name)

    logger = MetricsLogger(copy, enabled=True, resume_step=3)
    logger.log(4, {"train/loss": 0.5})
    logger.close()

    assert (original / "metrics.jsonl").read_text() == _lines(range(1, 6))
    assert (original / "metrics.replaced.jsonl").read_text() == _lines([9], loss=20.0)
    assert _regular(copy / "metrics.jsonl") == _lines([1, 2, 3]) + json.dumps({"step": 4, "train/loss": 0.5}) + "\n"
    assert _regular(copy / "metrics.replaced.jsonl") == _lines([9], loss=20.0) + _lines([4, 5])


def test_a_link_to_nothing_at_metrics_jsonl_does_not_create_what_it_names(tmp_path):
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(target)

    logger = MetricsLogger(run, enabled=True)
    logger.log(1, {"train/loss": 2.5})
    logger.close()

    assert logger.problem is None
    assert not target.exists()  # old code: created by the first log line, holding it
    assert _regular(run / "metrics.jsonl") == json.dumps({"step": 1, "train/loss": 2.5}) + "\n"


def test_a_named_pipe_at_metrics_jsonl_does_not_block_the_first_log_line(tmp_path):
    pipe = tmp_path / "metrics.jsonl"
    os.mkfifo(pipe)
    logger = MetricsLogger(tmp_path, enabled=True)
    logging = threading.Thread(target=logger.log, args=(1, {"train/loss": 2.5}), daemon=True)
    logging.start()
    logging.join(timeout=20)
    if logging.is_alive():  # the old code: blocked in the open, waiting for a reader; release it, then fail
        os.close(os.open(pipe, os.O_RDONLY | os.O_NONBLOCK))
        logging.join(timeout=20)
        raise AssertionError("MetricsLogger.log blocked on a named pipe at metrics.jsonl")
    logger.close()
    assert logger.problem is None
    assert _regular(pipe) == json.dumps({"step": 1, "train/loss": 2.5}) + "\n"


def test_a_link_planted_at_metrics_jsonl_during_the_run_stops_it_unfollowed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    logger = MetricsLogger(run, enabled=True)
    logger.log(1, {"train/loss": 2.5})
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    logger.log(2, {"train/loss": 2.25})
    logger.close()

    assert victim.read_text() == "precious\n"  # old code: step 2's record appended to it
    assert logger.problem == (
        f"the metrics of step 2 could not be written to {run / 'metrics.jsonl'} (not a regular file: a symbolic "
        "link, a named pipe or a device holds its name). Check its filesystem and the disk, and what holds that name"
    )
