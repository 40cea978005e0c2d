"""Preemption at any phase of a save or an evaluation: a 2-rank run SIGKILLed there (all ranks, or one,
with no cleanup of any kind) and rerun with the same command continues exactly. Each step's training and
validation loss appears once in metrics.jsonl, equal bit for bit to the uninterrupted run's (fp32,
ZeRO 2); the final checkpoint verifies; no .tmp-save folder is left; the run lock never blocks the rerun.

The kills come from tests/workers/preemption_worker.py, at points no signal can be timed to. The
stand-in engine's kills inside a save are in tests/test_checkpoint_integrity.py, a rank lost between
saves in tests/test_launch_faults.py; this is the real trainer's state (optimizer, data loader, random
generators, metrics) across kills inside a save and an evaluation.
"""

import json
import signal
import subprocess
import sys

from ngpt_ds.train import checkpoint

from conftest import (
    REPO,
    cpu_env,
    free_port,
    read_metrics,
    tiny_ngpt,
    tiny_train,
    torchrun,
    train_cmd,
    write_ds_config,
    write_yaml,
)

WORKER = REPO / "tests" / "workers" / "preemption_worker.py"
TRAIN = tiny_train(4, checkpoint_interval=1, eval_interval=2, keep_checkpoints=2, dist_timeout_s=60)


def killed_run(kill: str, flags: list) -> list[int]:
    """Both ranks of a run with preemption_worker's kill `kill`; each rank's exit status."""
    port, ranks = free_port(), []
    for rank in range(2):
        env = cpu_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
        cmd = [sys.executable, str(WORKER), kill, *map(str, flags)]
        ranks.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return [rank.wait(timeout=240) for rank in ranks]


def test_a_run_killed_in_a_save_or_an_evaluation_reruns_to_the_uninterrupted_losses(tmp_path, tiny_dataset):
    """Two kills, the rerun resuming from what the first left: rank 0 between the manifest of step 2's
    save and its rename into place (step_00000002.tmp-save holds a COMPLETE, which the second run puts in
    place and resumes from: ngpt_ds/train/checkpoint_interrupted.py); rank 1 in that run's first evaluation,
    of the last step (4), after the save of step 3. The third run is the plain command."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), TRAIN)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    reference, out = tmp_path / "reference", tmp_path / "run"
    torchrun(*train_cmd(config, ds, tiny_dataset, reference))
    flags = train_cmd(config, ds, tiny_dataset, out)[1:]
    checkpoints = out / "checkpoints"

    assert killed_run("save-manifest:2:0", flags)[0] == -signal.SIGKILL
    assert (checkpoints / "step_00000002.tmp-save" / checkpoint.COMPLETE).is_file()
    assert [d.name for d in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000001"]
    assert killed_run("eval:1:1", flags)[1] == -signal.SIGKILL  # resumed at step 2: its first evaluation is step 4
    assert [d.name for d in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000002", "step_00000003"]

    rerun = torchrun(*train_cmd(config, ds, tiny_dataset, out))
    assert f"resumed from {checkpoints / 'step_00000003'} at step 3" in rerun.stdout + rerun.stderr
    for key in ("train/loss", "eval/loss"):
        got = [(m["step"], m[key]) for m in read_metrics(out, key)]
        assert got == [(m["step"], m[key]) for m in read_metrics(reference, key)], key
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step_00000003", "step_00000004"]
    assert checkpoint.verify(checkpoints / "step_00000004") is None
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("finished", 4)
