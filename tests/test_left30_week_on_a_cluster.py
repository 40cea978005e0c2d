"""A week on a cluster, end to end (left30): a 2-rank gloo run (ZeRO 2, fp32) saving every 3 steps, stopped by
SIGTERM in the middle of a save (a preemption: every rank gets it), then each thing a user does next:

- the same command again (the requeue) continues to the end;
- a copy of the stopped run's folder (`cp -a`) resumed in its new place continues to the end;
- `--resume <out>/checkpoints/step_3` (an older checkpoint than the newest, README "Lineage") trains from step 3,
  moving the later checkpoints and records aside into abandoned-*, none deleted;
- a second run pointed at the first's `--out` while the first runs is refused, naming the holder.

Each continuation's losses equal an uninterrupted run's bit for bit, each step is logged once, and the lines say
what happened. The SIGTERM comes from inside the save (each rank signals itself once DeepSpeed has written the
step 6 files and before they are hashed), a point no outside signal can be timed to.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from ngpt_ds.train import checkpoint

from conftest import (
    REPO,
    assert_complete,
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

STEPS = 12
TRAIN = tiny_train(STEPS, checkpoint_interval=3, keep_checkpoints=20, dist_timeout_s=60)
SIGTERM_IN_SAVE = """
import os, signal, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from ngpt_ds.train import checkpoint
hash_on_all_ranks = checkpoint._hash_on_all_ranks

def signalled(folder, step, seal):
    if folder.name == "step_00000006.tmp-save":
        os.kill(os.getpid(), signal.SIGTERM)  # as a preemption's: every rank, in the middle of the save
    return hash_on_all_ranks(folder, step, seal)

checkpoint._hash_on_all_ranks = signalled
from ngpt_ds.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


def two_ranks(args: list, cwd=REPO) -> list[tuple[int, str]]:
    """launch/train.py's `args` (or the SIGTERM worker's) as 2 plain ranks: each one's (exit status, output)."""
    port, procs = free_port(), []
    for rank in range(2):
        env = cpu_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
        cmd = [sys.executable, *map(str, args)]
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    return [(proc.wait(timeout=300), proc.communicate()[0]) for proc in procs]


def losses(out) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset):
    """The uninterrupted run, and the run stopped by SIGTERM in its step 6 save (each test copies it)."""
    root = tmp_path_factory.mktemp("week")
    config = write_yaml(root / "tiny.yaml", tiny_ngpt(), TRAIN)
    ds = write_ds_config(root / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    reference, stopped = root / "reference", root / "stopped"
    torchrun(*train_cmd(config, ds, tiny_dataset, reference))
    flags = train_cmd(config, ds, tiny_dataset, stopped)[1:]
    ranks = two_ranks(["-c", SIGTERM_IN_SAVE, *flags])
    assert [rc for rc, _ in ranks] == [0, 0], ranks[0][1][-3000:] + ranks[1][1][-3000:]
    return {
        "config": config,
        "ds": ds,
        "data": tiny_dataset,
        "reference": reference,
        "stopped": stopped,
        "output": ranks[0][1],
    }


def cmd(runs, out, *extra):
    return train_cmd(runs["config"], runs["ds"], runs["data"], out, *extra)


def test_sigterm_in_a_save_keeps_that_save_and_stops(runs):
    stopped, reference = runs["stopped"], runs["reference"]
    checkpoints = stopped / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_"))
    assert names == ["step_00000003", "step_00000006"], names
    assert_complete(checkpoints / "step_00000006")
    assert json.loads((stopped / "summary.json").read_text())["status"] == "stopped"
    assert losses(stopped) == losses(reference)[:6]
    assert (
        f"stopping at step 6 (signal SIGTERM); checkpoint saved in {checkpoints / 'step_00000006'}. Run the same "
        "command again to resume."
    ) in runs["output"], runs["output"][-3000:]


def test_the_same_command_again_continues_to_the_uninterrupted_losses(runs, tmp_path):
    out = tmp_path / "stopped"
    shutil.copytree(runs["stopped"], out, symlinks=True)
    torchrun(*cmd(runs, out))
    assert losses(out) == losses(runs["reference"])  # bit for bit, each step once
    assert_complete(out / "checkpoints" / "step_00000012")
    assert json.loads((out / "summary.json").read_text())["status"] != "stopped"


def test_a_copy_of_the_run_folder_resumes_in_its_new_place(runs, tmp_path):
    copy = tmp_path / "elsewhere" / "copied"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(runs["stopped"]), str(copy)], check=True)
    proc = torchrun(*cmd(runs, copy))
    assert losses(copy) == losses(runs["reference"])
    assert f"resumed from {copy / 'checkpoints' / 'step_00000006'} at step 6" in proc.stdout + proc.stderr
    # The original is as it was: nothing of the copy's run reached it.
    assert sorted(p.name for p in (runs["stopped"] / "checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_00000003",
        "step_00000006",
    ]
    assert losses(runs["stopped"]) == losses(runs["reference"])[:6]


def test_resuming_an_older_checkpoint_then_requeues_and_a_copy_continue_that_lineage(runs, tmp_path):
    """--resume step_3 (README "Lineage"), preempted again in its step 6 save; then the same command (a requeue,
    --resume step_3 still on it) continues from the new step 6 rather than rolling back again, and so does a copy
    of that folder run with the command unchanged but --out."""
    out = tmp_path / "stopped"
    shutil.copytree(runs["stopped"], out, symlinks=True)
    older = out / "checkpoints" / "step_00000003"
    ranks = two_ranks(["-c", SIGTERM_IN_SAVE, *cmd(runs, out, "--resume", older)[1:]])
    said = ranks[0][1]
    assert [rc for rc, _ in ranks] == [0, 0], said[-3000:]
    (abandoned,) = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(checkpoint.ABANDONED_PREFIX)]
    assert (
        "resuming from step 3: moved the 1 newer checkpoint folder(s) of the earlier lineage (step_00000006) and its "
        f"summary.json to {abandoned} (kept, not deleted), with a copy of its metrics.jsonl and tensorboard/"
    ) in said, said[-3000:]
    assert_complete(abandoned / "step_00000006")  # the earlier lineage's step 6: moved, not deleted
    assert losses(abandoned) == losses(runs["reference"])[:6]  # its records stay readable there
    assert losses(out) == losses(runs["reference"])[:6]  # steps 4-6 trained again, each logged once
    assert "stopping at step 6 (signal SIGTERM)" in said

    copy = tmp_path / "copied"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    for folder in (out, copy):
        proc = torchrun(*cmd(runs, folder, "--resume", older))  # the requeue's command: --resume step_3 kept
        assert (
            f"--resume {older} already started this run ({folder / 'lineage.json'}); continuing from its newest "
            f"checkpoint, step_00000006. Pass --resume {older} --restart-lineage to start over from it"
        ) in proc.stdout + proc.stderr
        assert losses(folder) == losses(runs["reference"]), folder  # bit for bit, each step once
        assert_complete(folder / "checkpoints" / "step_00000012")
        assert sorted(p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith("abandoned-")) == [
            abandoned.name
        ]


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(runs, tmp_path):
    out = tmp_path / "stopped"
    shutil.copytree(runs["stopped"], out, symlinks=True)
    port, first = free_port(), []
    for rank in range(2):
        env = cpu_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(port)
        first.append(
            subprocess.Popen(
                [sys.executable, *map(str, cmd(runs, out))],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        lock = out / "train.lock"
        import time

        for _ in range(600):  # until the first run's rank 0 holds the lock (its pid in train.lock)
            if lock.is_file() and f"pid={first[0].pid}" in lock.read_text():
                break
            time.sleep(0.2)
        # The first run is held still while the second starts: its six steps had ended before the second's ranks
        # were up on a loaded machine (CI run 78: "already trained to step 12/12"). A stopped process keeps its lock.
        for proc in first:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            second = two_ranks(cmd(runs, out))
        finally:
            for proc in first:
                os.kill(proc.pid, signal.SIGCONT)
    finally:
        outputs = [proc.communicate(timeout=300)[0] for proc in first]
    assert [rc for rc, _ in second] == [2, 2], second
    assert "is in use by another trainer (host=" in second[0][1] and f"pid={first[0].pid}" in second[0][1]
    assert [proc.returncode for proc in first] == [0, 0], outputs[0][-3000:]
    assert losses(out) == losses(runs["reference"])  # the first run went on undisturbed
