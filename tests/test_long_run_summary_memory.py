"""A long run's final lines (ngpt_ds.train.summary.describe) read metrics.jsonl holding a bounded number of
records, whatever the number of logged steps."""

import json

from ngpt_ds.train.summary import Summary, describe

from conftest import peak_python_bytes

STEPS = 50_000


def test_the_final_lines_of_a_long_run_hold_no_record_per_logged_step(tmp_path):
    """Fault: `describe` kept every logged step's train loss in a dict, then every step's validation loss in
    another, reading metrics.jsonl once per key, to print the first and the last of each: about 95 bytes per
    record (measured: 24 MiB for 200,000 records, 95 MiB for 1,000,000), 570 MB at the end of a week at 10
    steps/s with train.log_interval 1. One pass now holds the two ends of each key."""
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "metrics.jsonl", "w") as f:
        for step in range(1, STEPS + 1):
            record = {"step": step, "train/loss": 8.0 - step * 1e-4}
            if step % 1000 == 0:
                record["eval/loss"] = 9.0 - step * 1e-4
            f.write(json.dumps(record) + "\n")
        # a stopped session's record of the last step, logged again by its resume: the later record counts
        f.write(json.dumps({"step": STEPS, "train/loss": 2.5, "eval/loss": 3.25}) + "\n")
        f.write(json.dumps({"step": 1, "train/loss": 7.5}) + "\n")  # step 1 logged again after a rollback
        f.write(json.dumps({"step": STEPS + 7, "train/loss": 0.5}) + "\n")  # past the summary's step: not shown
    summary = Summary("finished", STEPS, STEPS, 10**12, 2.5, 3.25, 61.0, None, str(out))
    lines: list[str] = []
    peak = peak_python_bytes(lambda: lines.extend(describe(summary).splitlines()))
    assert lines[1:3] == [
        f"  train loss:      7.500 at step 1 -> 2.500 at step {STEPS}",
        f"  validation loss: 8.900 at step 1000 -> 3.250 at step {STEPS} (perplexity 25.8)",
    ]
    assert peak < 2**20, f"describe held {peak / 2**20:.1f} MiB for {STEPS} records"
