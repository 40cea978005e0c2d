"""--resume of an older checkpoint killed (SIGKILL) while it copies the earlier lineage's logs (helper red36, session 36).

Fault: resuming from step k copies the run's metrics.jsonl and tensorboard/ into checkpoints/abandoned-<time>/ before it
moves the newer checkpoints there (ngpt_ds.train.lineage). A SIGKILL during that copy (a node lost, an OOM kill, scancel
--signal=KILL) left abandoned-<time>/ holding a metrics.jsonl cut short and part of tensorboard/, and no checkpoint: the
same command run again made a second abandoned-<time>-2/ with the complete copy and the checkpoints, and the first stayed
for good, an abandoned lineage of logs cut short that no checkpoint belongs to, with the space its copy took. The copy
now goes into a staging folder named for what it is (checkpoints/.copying-abandoned-<time>), renamed into place once
complete; the rerun removes a staging folder left by a killed copy (it only ever holds copies of logs still in --out).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from ngpt_ds.train.checkpoint import step_dirs as checkpoint_steps

from conftest import assert_complete, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

# A real process (rank 0's startup of the rollback, as the trainer runs it) killed with SIGKILL once the copy of
# metrics.jsonl has written half of the file: copy2 is wrapped to write half and kill the process, as a node lost
# in the middle of a big copy does.
_KILLED_COPY = r"""
import os, shutil, signal, sys
from pathlib import Path
from ngpt_ds.train import lineage

real_copy2 = shutil.copy2
def copy_half_then_die(src, dst, *a, **k):
    data = Path(src).read_bytes()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
lineage.shutil.copy2 = copy_half_then_die
out = Path(sys.argv[1])
lineage.start_lineage(out, out / "checkpoints" / "step_00000004", named=True)
"""


def test_a_rollback_killed_in_its_log_copy_leaves_no_abandoned_folder_and_the_rerun_keeps_one(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=2, keep_checkpoints=3))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])  # steps 2, 4, 6
    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "summary.json")}

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    }
    killed = subprocess.run([sys.executable, "-c", _KILLED_COPY, str(out)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # the kill left the run folder as it was: its checkpoints, its logs, no lineage recorded, no abandoned lineage
    # old code: [abandoned-<time>] holding half of metrics.jsonl; now the copy's staging folder, named for what it is
    assert [p.name for p in checkpoints.glob("abandoned-*")] == []
    (staging,) = checkpoints.glob(".copying-abandoned-*")
    assert (staging / "metrics.jsonl").stat().st_size == len(before["metrics.jsonl"]) // 2
    assert [p.name for p in checkpoint_steps(checkpoints)] == ["step_00000002", "step_00000004", "step_00000006"]
    assert not (out / "lineage.json").exists()
    assert {name: (out / name).read_bytes() for name in before} == before

    rollback = train_cmd(config, ds, tiny_dataset, out, "--resume", checkpoints / "step_00000004")
    rerun = run([sys.executable, *rollback])
    assert "resuming from step 4: moved the 1 newer checkpoint folder(s) of the earlier lineage (step_00000006)" in (
        rerun.stdout + rerun.stderr
    ), rerun.stdout[-3000:]
    # one abandoned lineage, whole; old code: [abandoned-<time>, abandoned-<time>-2] (or two stamps), the first holding
    # half of metrics.jsonl and no checkpoint
    abandoned = sorted(checkpoints.glob("abandoned-*"))
    assert len(abandoned) == 1, [(p.name, sorted(q.name for q in p.iterdir())) for p in abandoned]
    assert (abandoned[0] / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    assert (abandoned[0] / "summary.json").read_bytes() == before["summary.json"]
    assert_complete(abandoned[0] / "step_00000006")
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".")] == []  # the killed copy's staging, removed
    assert_complete(checkpoints / "step_00000006")  # the new lineage's
