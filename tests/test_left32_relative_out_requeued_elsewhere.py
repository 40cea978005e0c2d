"""Fault (left32): a job requeued from another working folder with a relative --out started over without a word.

A week-long run started as `--out runs/x` in folder A is preempted; its requeue (an sbatch from another folder, a
new shell) runs the same command, as the trainer's own summary suggests ("the same command with --max-steps N
trains further"), in folder B. runs/x there holds no run, so --resume auto (the default) found nothing and trained
from step 0 into B/runs/x: the checkpoints in A unused, hours of compute spent again, nothing said. Now a new run
under a relative --out says where it is and that the same command elsewhere starts over; an absolute --out, or a
run folder that already holds a run, says nothing.
"""

import sys

from conftest import REPO, run, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


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

    def warning(folder):
        return (
            f"warning: --out runs/x is relative: this new run is in {folder / 'runs/x'}, from the working folder "
            f"{folder}. Started from another working folder, the same command (a requeue, --resume auto) finds no "
            "run there and starts over from step 0 in another folder: pass an absolute --out"
        )

    first = run(cmd, cwd=here)
    assert words(first).count(warning(here)) == 1, words(first)[-3000:]
    assert sorted(p.name for p in (here / "runs/x/checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_00000002",
        "step_00000004",
    ]
    again = run([*cmd, "--max-steps", "8"], cwd=there)  # the requeue, in another folder
    # Old code: trained steps 1-8 in B/runs/x and said nothing of it ("warning: --out runs/x is relative" absent).
    assert words(again).count(warning(there)) == 1, words(again)[-3000:]
    assert (there / "runs/x/checkpoints/step_00000008").is_dir()

    # The same folder again: the run it holds goes on, with no warning.
    resumed = run([*cmd, "--max-steps", "6"], cwd=here)
    assert "is relative" not in words(resumed), words(resumed)[-3000:]
    assert (here / "runs/x/checkpoints/step_00000006").is_dir()
    # An absolute --out: nothing to warn of.
    absolute = run([sys.executable, REPO / "launch/train.py", *train_flags(config, ds, tiny_dataset, there / "y")])
    assert "is relative" not in words(absolute), words(absolute)[-3000:]
