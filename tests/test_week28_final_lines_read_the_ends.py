"""The closing lines of a session (`summary.describe`: the first and last logged losses) read the start and the end
of metrics.jsonl, not all of it.

The fault (a week-long run's review, session 28): every session's end read and parsed the whole metrics.jsonl on
rank 0, 5 s of CPU for a week's 380 MB (24-layer nGPT, train.log_interval 10), after a stop's save, where the
launcher's SIGKILL follows a SIGTERM within seconds (a rank killed there exits 137, not 0, and train.sbatch then
reports a failed step). The part read from the start is DESCRIBE_HEAD_BYTES (64 MiB), set to 256 KiB here so that
a 10 MB file shows it; bytes read are counted (/proc/self/io's rchar), not seconds.
"""

import json

import pytest
from bytes_read import bytes_read

from ngpt_ds.train import summary as summary_module
from ngpt_ds.train.summary import Summary, describe

WIDE = {f"ngpt/alpha_attn/layer_{i:02d}": 0.05 for i in range(60)}


def _write_run(out, steps: int, eval_every: int | None, tail: str = "") -> None:
    with open(out / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "train/loss": 6.0 - step / 1000, **WIDE}) + "\n")
            if eval_every and step % eval_every == 0:
                f.write(json.dumps({"step": step, "eval/loss": 7.0 - step / 1000, "eval/perplexity": 9.0}) + "\n")
        f.write(tail)


def _describe(out, step: int) -> str:
    return describe(Summary("stopped", step, 10_000, 1, 1.0, float("nan"), 1.0, None, str(out)))


@pytest.fixture
def small_head(monkeypatch):
    monkeypatch.setattr(summary_module, "DESCRIBE_HEAD_BYTES", 256 * 1024, raising=False)


def test_the_closing_lines_of_a_long_run_read_its_start_and_end_only(tmp_path, small_head):
    """Fault: the closing lines read all 10 MB of metrics.jsonl (a week's file: hundreds of MB)."""
    _write_run(tmp_path, 6000, eval_every=50, tail='{"step": 6001, "tr')  # and a line torn by a kill
    assert (tmp_path / "metrics.jsonl").stat().st_size > 10 * 2**20
    lines: list[str] = []
    read = bytes_read(lambda: lines.extend(_describe(tmp_path, 6000).splitlines()))
    assert read < 2 * 2**20, read
    assert lines[1] == "  train loss:      5.999 at step 1 -> 0.000 at step 6000"
    assert lines[2] == "  validation loss: 6.950 at step 50 -> 1.000 at step 6000 (perplexity 2.7)"


def test_records_past_the_summary_step_and_damaged_lines_at_the_end_are_passed_by(tmp_path, small_head):
    """A summary of step 5990 (a stop without a save, records logged after it) names the last record up to it."""
    _write_run(tmp_path, 6000, eval_every=50, tail="\x00" * 300 + "\n" + "[" * 5000 + "\n")
    lines = _describe(tmp_path, 5990).splitlines()
    assert lines[1] == "  train loss:      5.999 at step 1 -> 0.010 at step 5990"
    assert lines[2] == "  validation loss: 6.950 at step 50 -> 1.050 at step 5950 (perplexity 2.9)"


def test_a_key_that_the_start_lacks_shows_its_last_record_and_one_the_end_lacks_its_first_and_last(
    tmp_path, small_head
):
    """Evaluations turned on late show their last record alone; turned off late, their last is looked for back to
    the part read from the start."""
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 6001):
            f.write(json.dumps({"step": step, "train/loss": 6.0 - step / 1000, **WIDE}) + "\n")
            if step >= 5000 and step % 100 == 0:
                f.write(json.dumps({"step": step, "eval/loss": 2.5}) + "\n")
    lines = _describe(tmp_path, 6000).splitlines()
    assert lines[2] == "  validation loss: 2.500 at step 6000 (perplexity 12.2)"

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 6001):
            f.write(json.dumps({"step": step, "train/loss": 6.0 - step / 1000, **WIDE}) + "\n")
            if step <= 3000 and step % 100 == 0:
                f.write(json.dumps({"step": step, "eval/loss": 3.0 + step / 1000}) + "\n")
    lines = _describe(tmp_path, 6000).splitlines()
    assert lines[2] == "  validation loss: 3.100 at step 100 -> 6.000 at step 3000 (perplexity 403.4)"


def test_a_short_run_reads_as_before(tmp_path):
    """Below DESCRIBE_HEAD_BYTES the file is read from its start to its end, once."""
    _write_run(tmp_path, 30, eval_every=10)
    lines = _describe(tmp_path, 30).splitlines()
    assert lines[1] == "  train loss:      5.999 at step 1 -> 5.970 at step 30"
    assert lines[2] == "  validation loss: 6.990 at step 10 -> 6.970 at step 30 (perplexity 1064.2)"


def test_the_summary_mended_after_a_finished_run_reads_the_end_of_metrics_jsonl(tmp_path):
    """Fault: a rerun of a finished run whose summary.json was not written (a kill after its last save) read all of
    metrics.jsonl for the last step's records. They are at its end: it is read backward to the step before."""
    from ngpt_ds.train.summary import mend_finished_summary

    _write_run(tmp_path, 6000, eval_every=50, tail='{"step": 6001, "tr')
    (tmp_path / "train.lock").touch()
    read = bytes_read(lambda: mend_finished_summary(tmp_path, 6000, 6000))
    assert read < 2 * 2**20, read
    mended = json.loads((tmp_path / "summary.json").read_text())
    assert (mended["status"], mended["step"], mended["train_loss"], mended["val_loss"]) == ("finished", 6000, 0.0, 1.0)
