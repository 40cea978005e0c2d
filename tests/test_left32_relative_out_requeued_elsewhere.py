"""Fault (left32): a job requeued from another working folder with a relative --out started over without a word.

A week-long run started as `--out runs/x` in folder A is preempted; its requeue (an sbatch from another folder, a
new shell) runs the same command, as the trainer's own summary suggests ("the same command with --max-steps N
trains further"), in folder B. runs/x there holds no run, so --resume auto (the default) found nothing and trained
from step 0 into B/runs/x: the checkpoints in A unused, hours of compute spent again, nothing said. Now a new run
under a relative --out in a batch job (SLURM_JOB_ID set) warns where it is and that the same command elsewhere
starts over; run by hand (the README's first command has the relative default --out runs/<name>), it says where the
run is in one line, no warning. An absolute --out, or a run folder that already holds a run, says nothing.
"""

import sys

from ngpt_ds.train.run_lock import BATCH_JOB_VARIABLES

from conftest import REPO, cpu_env, run, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def words(proc):
    return proc.stdout + proc.stderr


def test_a_relative_out_run_again_from_another_folder_is_told_it_starts_over(tmp_path, tiny_dataset):
    tmp_path = tmp_path.resolve()
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    config = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    here, there = tmp_path / "A", tmp_path / "B"
    here.mkdir()
    there.mkdir()
    cmd = [sys.executable, REPO / "launch/train.py", *train_flags(config, ds, tiny_dataset, "runs/x")]
    batch_job = cpu_env(SLURM_JOB_ID="4711")

    def warning(folder):
        return (
            f"warning: --out runs/x is relative: this new run is in {folder / 'runs/x'}, from the working folder "
            f"{folder}. Started from another working folder, the same command (a requeue, --resume auto) finds no "
            "run there and starts over from step 0 in another folder: pass an absolute --out"
        )

    first = run(cmd, cwd=here, env=batch_job)
    assert words(first).count(warning(here)) == 1, words(first)[-3000:]
    assert sorted(p.name for p in (here / "runs/x/checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_00000002",
        "step_00000004",
    ]
    again = run([*cmd, "--max-steps", "8"], cwd=there, env=batch_job)  # the requeue, in another folder
    # Old code: trained steps 1-8 in B/runs/x and said nothing of it ("warning: --out runs/x is relative" absent).
    assert words(again).count(warning(there)) == 1, words(again)[-3000:]
    assert (there / "runs/x/checkpoints/step_00000008").is_dir()

    # The same folder again: the run it holds goes on, with no warning.
    resumed = run([*cmd, "--max-steps", "6"], cwd=here, env=batch_job)
    assert "is relative" not in words(resumed), words(resumed)[-3000:]
    assert (here / "runs/x/checkpoints/step_00000006").is_dir()
    # An absolute --out: nothing to warn of.
    absolute = run(
        [sys.executable, REPO / "launch/train.py", *train_flags(config, ds, tiny_dataset, there / "y")], env=batch_job
    )
    assert "is relative" not in words(absolute), words(absolute)[-3000:]


def test_a_relative_out_run_by_hand_says_where_the_run_is_without_a_warning(tmp_path, tiny_dataset):
    tmp_path = tmp_path.resolve()
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    config = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2))
    cmd = [sys.executable, REPO / "launch/train.py", *train_flags(config, ds, tiny_dataset, "runs/x")]
    env = {k: v for k, v in cpu_env().items() if k not in BATCH_JOB_VARIABLES}
    by_hand = run(cmd, cwd=tmp_path, env=env)
    line = (
        f"new run in {tmp_path / 'runs/x'}, from the working folder {tmp_path} (--out runs/x is relative: the same "
        "command continues it from there)"
    )
    assert words(by_hand).count(line) == 1, words(by_hand)[-3000:]
    assert "warning: --out runs/x is relative" not in words(by_hand)
