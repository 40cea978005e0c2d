"""A kill at the end of a run's last save: DeepSpeed's `latest` file (README "Atomic saves": it always names
the newest complete checkpoint), and summary.json.

Fault: a SIGKILL between the rename of step_N into place and the rewrite of `latest` left `latest` on
the step before. When step_N was the run's last step, the rerun the README promises found the run
finished and wrote nothing, so `latest` named the older checkpoint for good: DeepSpeed's zero_to_fp32.py,
which the checkpoints folder holds and which reads `latest` by default, consolidated the older weights.
"""

import json
import sys

from conftest import REPO, read_metrics, run, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

WORKER = REPO / "tests" / "workers" / "preemption_latest_worker.py"


def test_a_kill_before_latest_names_the_new_step_is_repaired_by_the_rerun(tmp_path):
    out = tmp_path / "run"
    latest = out / "checkpoints" / "latest"
    torchrun(WORKER, out, "save", 2)
    killed = torchrun(WORKER, out, "save-killed-in-place", 4, check=False)
    assert killed.returncode != 0
    assert (out / "checkpoints" / "step_00000004" / "COMPLETE").is_file()
    assert latest.read_text() == "step_00000002"  # what the kill left

    chosen = torchrun(WORKER, out, "resume", 0)
    assert sorted(line for line in chosen.stdout.splitlines() if "chose" in line) == [
        "rank 0 chose: step_00000004",
        "rank 1 chose: step_00000004",
    ]
    assert latest.read_text() == "step_00000004"
    assert chosen.stdout.count("warning: checkpoints/latest named step_00000002") == 2, chosen.stdout


def test_a_rerun_with_nothing_to_train_writes_the_finished_summary_a_kill_left_out(tmp_path, tiny_dataset):
    """Fault: a kill after the last checkpoint was in place and before summary.json was written (retention
    deletes old checkpoints in between) left the summary of an earlier stop; the rerun found nothing to
    train and wrote nothing, so summary.json said 'stopped' at step 2 for good."""
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp_path / "out"
    run([sys.executable, *train_cmd(yaml, ds, tiny_dataset, out)])
    finished = json.loads((out / "summary.json").read_text())
    stale = {**finished, "status": "stopped", "step": 2, "checkpoint": str(out / "checkpoints" / "step_00000002")}
    (out / "summary.json").write_text(json.dumps(stale))  # what the kill left

    rerun = run([sys.executable, *train_cmd(yaml, ds, tiny_dataset, out)])
    assert "is already trained to step 4/4: nothing to do" in rerun.stdout + rerun.stderr
    mended = json.loads((out / "summary.json").read_text())
    last = read_metrics(out)[-1]
    assert mended["status"] == "finished" and mended["step"] == 4 and mended["max_steps"] == 4
    assert mended["checkpoint"] == finished["checkpoint"] and mended["out_dir"] == finished["out_dir"]
    assert mended["train_loss"] == last["train/loss"] and mended["tokens"] == finished["tokens"]
    before = (out / "summary.json").stat().st_mtime_ns
    run([sys.executable, *train_cmd(yaml, ds, tiny_dataset, out)])  # a finished summary is left as it is
    assert (out / "summary.json").stat().st_mtime_ns == before


def test_a_finished_summary_that_cannot_be_written_is_a_warning_not_a_traceback_on_rank_0(tmp_path, capfd):
    """Fault (review): mending summary.json raised OSError on rank 0 only (an --out it cannot write), which
    ended that rank in a traceback while the others returned 'already-finished'."""
    from ngpt_ds.train.summary import mend_finished_summary

    (tmp_path / "summary.json").mkdir()  # cannot be replaced by a file
    mend_finished_summary(tmp_path, 4, 4)
    out, err = capfd.readouterr()
    assert f"warning: could not write the finished summary to {tmp_path / 'summary.json'}" in out + err
    assert (tmp_path / "summary.json").is_dir()
