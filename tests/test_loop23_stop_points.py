"""A stop request (SIGTERM: preemption, scancel) that arrives during an evaluation or a periodic save is obeyed
right after it, on every rank of a real 2-rank gloo job, instead of after one more step."""

import json

from ngpt_ds.train import checkpoint

from conftest import (
    read_metrics,
    run_ranks,
    tiny_ngpt,
    tiny_train,
    train_cmd,
    write_ds_config,
    write_yaml,
)

WORKER = """
import os, signal, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import loop

PHASE, RANK = sys.argv[1].split(":")
original = getattr(loop.Trainer, PHASE)
sent = []


def wrapped(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if os.environ["RANK"] == RANK and not sent:  # the first evaluation or save ends as the signal comes
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    return result


setattr(loop.Trainer, PHASE, wrapped)
from ngpt_ds.cli.train import main

sys.exit(main(sys.argv[2:]))
"""


def signalled_run(tmp_path, data, train: dict, phase: str) -> tuple[list[int], str]:
    """Both ranks of a run in which rank 1 gets SIGTERM at the end of its first `phase` ("evaluate" or "save");
    (each rank's exit status, rank 0's output)."""
    worker = tmp_path / "stop_worker.py"
    worker.write_text(WORKER)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), train)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    flags = train_cmd(config, ds, data, tmp_path / "run")[1:]
    codes, outputs = run_ranks([str(worker), f"{phase}:1", *flags], timeout=240)
    return codes, outputs[0]


def _checkpoints(out) -> list[str]:
    return [d.name for d in checkpoint.complete_checkpoints(out / "checkpoints")]


def test_sigterm_during_an_evaluation_stops_at_that_step_with_its_checkpoint(tmp_path, tiny_dataset):
    """Fault: a SIGTERM that came during an evaluation (minutes at scale) waited for the next step's
    all-reduce: the run trained step 3 on the signal's grace before saving, where a long step or save then
    stopped unsaved (exit 75) or was killed. Now the ranks agree right after the evaluation and save step 2;
    the steps of the unfinished log interval get their record (log_interval 4)."""
    codes, output = signalled_run(tmp_path, tiny_dataset, tiny_train(6, eval_interval=2, log_interval=4), "evaluate")
    out = tmp_path / "run"
    assert codes == [0, 0], output
    assert "stopping at step 2 (rank 1: signal SIGTERM); checkpoint saved in" in output
    assert _checkpoints(out) == ["step_00000002"]
    assert checkpoint.verify(out / "checkpoints" / "step_00000002") is None
    assert [m["step"] for m in read_metrics(out)] == [2]
    assert [m["step"] for m in read_metrics(out, "eval/loss")] == [2]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("stopped", 2)
    assert summary["train_loss"] == read_metrics(out)[0]["train/loss"]


def test_sigterm_during_a_periodic_save_stops_with_that_checkpoint_not_a_second_one(tmp_path, tiny_dataset):
    """Fault: a SIGTERM during the periodic save of step 2 trained step 3 and saved again on the signal's
    grace (a save of minutes at scale: stopped unsaved, exit 75). Now the checkpoint just saved is the stop's."""
    codes, output = signalled_run(tmp_path, tiny_dataset, tiny_train(6, checkpoint_interval=2), "save")
    out = tmp_path / "run"
    assert codes == [0, 0], output
    assert "stopping at step 2 (rank 1: signal SIGTERM); checkpoint saved in" in output
    assert _checkpoints(out) == ["step_00000002"]
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"], summary["checkpoint"]) == (
        "stopped",
        2,
        str(out / "checkpoints" / "step_00000002"),
    )
