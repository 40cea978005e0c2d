"""A run that diverges says so in summary.json. Fault: it raised TrainingDiverged (exit 2) and left
summary.json as the previous session wrote it: 'finished' at the old step and max_steps, so whoever reads the
run folder (a script, a dashboard, a requeue) saw a finished run, not the divergence."""

import json
import sys
import time

from conftest import run, train_cmd, write_diverging_configs


def strict(text):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_run_that_diverges_writes_a_diverged_summary_and_exits_2(tmp_path, tiny_dataset):
    # The GPT baseline at lr 1e30 and no clipping: a nan loss within a few steps (test_divergence_message.py).
    config, ds = write_diverging_configs(tmp_path, checkpoint_interval=100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.lock").write_text("host=earlier pid=1\n")  # a run folder: an earlier session's, finished
    earlier = {"status": "finished", "step": 2, "max_steps": 2, "tokens": 256, "train_loss": 6.0, "val_loss": 6.1}
    (out / "summary.json").write_text(json.dumps({**earlier, "seconds": 1.0, "checkpoint": None, "out_dir": str(out)}))

    started = time.monotonic()
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)], check=False)
    whole_process = time.monotonic() - started

    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the training loss became nan at step "), error
    step = int(error.split(" at step ", 1)[1].split(";", 1)[0])
    assert 1 <= step <= 6
    summary = strict((out / "summary.json").read_text())  # old code: the earlier session's 'finished' summary
    seconds = summary.pop("seconds")
    assert summary == {
        "status": "diverged",
        "step": step,
        "max_steps": 6,
        "tokens": (step - 1) * 4 * 32,  # the steps before the divergence
        "train_loss": None,  # nan
        "val_loss": None,  # no evaluation in this session
        "checkpoint": None,  # none saved: the rerun starts from step 0
        "out_dir": str(out),
    }
    assert 0 < seconds < whole_process  # a time within the process's life; no wall-clock bound
