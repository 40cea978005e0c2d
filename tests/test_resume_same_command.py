"""The same command run again continues the run it started (fault: a run started with `--resume PATH` --
a fine-tune from another run's checkpoint, or a rollback to an older step -- started over from PATH each
time it was rerun with the same arguments, as the trainer's stop message, its summary and the Slurm
scripts' requeue do, and moved everything the earlier session trained into abandoned-*: under Slurm the
job never got past one time limit). <out>/lineage.json records the checkpoint the lineage grew from;
--restart-lineage starts over from it on purpose.
"""

import json
import os

import pytest

from conftest import read_metrics, run_launch, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

MODEL = tiny_ngpt()


def step_names(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def abandoned_folders(out):
    return sorted(p for p in (out / "checkpoints").iterdir() if p.name.startswith("abandoned-"))


def train(tmp_path, data, out, *extra, keep=5, max_steps=8):
    config = write_yaml(
        tmp_path / f"keep{keep}.yaml", MODEL, tiny_train(max_steps, checkpoint_interval=1, keep_checkpoints=keep)
    )
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    return run_launch("train.py", *train_flags(config, ds, data, out, *extra))


def checkpoint_at(folder, manifest: str):
    """`folder` made, with a COMPLETE marker holding `manifest`: a checkpoint as the lineage record tells them apart
    (by the manifest's digest), without its files."""
    from ngpt_ds.train.checkpoint import COMPLETE

    folder.mkdir(parents=True)
    (folder / COMPLETE).write_text(manifest)
    return folder


def test_the_same_fine_tune_command_continues_its_run_and_restart_lineage_starts_over(tmp_path, tiny_dataset):
    base = tmp_path / "base"
    train(tmp_path, tiny_dataset, base, max_steps=2)
    origin = base / "checkpoints" / "step_00000002"
    out = tmp_path / "tuned"
    # --max-time 0: each session trains one step, saves it and stops, as a Slurm time limit does.
    command = ("--resume", origin, "--max-steps", "8", "--max-time", "0")

    first = train(tmp_path, tiny_dataset, out, *command)
    assert f"resumed from {origin} at step 2" in first.stdout
    assert step_names(out / "checkpoints") == ["step_00000003"]

    second = train(tmp_path, tiny_dataset, out, *command)
    assert [line for line in second.stdout.splitlines() if "already started" in line] == [
        f"--resume {origin} already started this run ({out / 'lineage.json'}); continuing from its newest "
        f"checkpoint, step_00000003. Pass --resume {origin} --restart-lineage to start over from it"
    ]
    assert f"resumed from {out / 'checkpoints' / 'step_00000003'} at step 3" in second.stdout
    assert abandoned_folders(out) == []  # before: step_3 moved aside, and step 3 trained again
    assert step_names(out / "checkpoints") == ["step_00000003", "step_00000004"]
    assert [m["step"] for m in read_metrics(out)] == [3, 4]
    record = json.loads((out / "lineage.json").read_text())  # the lineage grows from step 2
    assert record["resumed_from"] == str(origin)
    assert record["step"] == 2
    assert len(record["complete_blake2b"]) == 32

    # Finished at step 8, the summary's "the same command with --max-steps 16" trains on from step 8.
    finish = ("--resume", origin, "--max-steps", "8")
    train(tmp_path, tiny_dataset, out, *finish)
    assert step_names(out / "checkpoints")[-1] == "step_00000008"
    again = train(tmp_path, tiny_dataset, out, "--resume", origin, "--max-steps", "9")
    assert f"resumed from {out / 'checkpoints' / 'step_00000008'} at step 8" in again.stdout
    assert [m["step"] for m in read_metrics(out)] == list(range(3, 10))

    # Going back on purpose: the lineage trained since goes aside, whole, and the record stays.
    restart = train(tmp_path, tiny_dataset, out, *command, "--restart-lineage")
    assert "already started" not in restart.stdout
    assert f"resumed from {origin} at step 2" in restart.stdout
    (abandoned,) = abandoned_folders(out)
    assert step_names(abandoned) == [f"step_{s:08d}" for s in range(5, 10)]
    assert json.loads((abandoned / "lineage.json").read_text()) == record
    assert step_names(out / "checkpoints") == ["step_00000003"]
    assert json.loads((out / "lineage.json").read_text()) == record


def test_a_rollback_rerun_continues_after_retention_deleted_the_step_it_named(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    train(tmp_path, tiny_dataset, out, max_steps=5, keep=2)
    assert step_names(out / "checkpoints") == ["step_00000004", "step_00000005"]
    origin = out / "checkpoints" / "step_00000004"
    command = ("--resume", origin, "--max-steps", "8", "--max-time", "0")
    train(tmp_path, tiny_dataset, out, *command, keep=2)  # step 5 again, the first lineage's step 5 aside
    (abandoned,) = abandoned_folders(out)
    assert step_names(abandoned) == ["step_00000005"]
    second = train(tmp_path, tiny_dataset, out, *command, keep=2)  # step 6; retention deletes step_4
    assert "continuing from its newest checkpoint, step_00000005" in second.stdout
    assert not origin.exists()
    # Before: "--resume .../step_00000004: does not exist" (exit 2), the requeued job failed for good.
    third = train(tmp_path, tiny_dataset, out, *command, keep=2)
    assert "continuing from its newest checkpoint, step_00000006" in third.stdout
    assert step_names(out / "checkpoints") == ["step_00000006", "step_00000007"]
    assert abandoned_folders(out) == [abandoned]


def test_only_the_checkpoint_that_started_the_lineage_continues_it(tmp_path):
    from ngpt_ds.train import lineage

    origin = checkpoint_at(tmp_path / "base/checkpoints/step_00000002", '{"step": 2}')
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    lineage.record_origin(out, origin)
    checkpoint_at(out / "checkpoints/step_00000005", '{"step": 5}')

    same = lineage.same_command_resume(out, str(origin), origin, restart=False)
    assert same[0] == "auto"
    moved = origin.rename(tmp_path / "step_00000002")  # the manifest digest, not the path, names it
    assert lineage.same_command_resume(out, str(moved), moved, restart=False)[0] == "auto"
    other = checkpoint_at(tmp_path / "other/checkpoints/step_00000002", '{"step": 2, "other": 1}')
    assert lineage.same_command_resume(out, str(other), other, restart=False) == (str(other), None)
    assert lineage.same_command_resume(out, str(moved), moved, restart=True) == (str(moved), None)
    assert lineage.same_command_resume(out, "auto", None, restart=False) == ("auto", None)
    # Gone: only the recorded path itself continues.
    assert lineage.same_command_resume(out, str(origin), None, restart=False)[0] == "auto"
    assert lineage.same_command_resume(out, str(tmp_path / "elsewhere"), None, restart=False)[1] is None
    # Nothing saved since the lineage started: PATH as given.
    os.rename(out / "checkpoints/step_00000005", out / "step_00000005")
    assert lineage.same_command_resume(out, str(moved), moved, restart=False) == (str(moved), None)
    # A fresh lineage forgets the record.
    lineage.record_origin(out, None)
    assert not (out / "lineage.json").exists()


def test_restart_lineage_needs_a_resume_path(capsys):
    from ngpt_ds.cli.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--deepspeed_config", "z2.json", "--restart-lineage"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --restart-lineage goes with --resume PATH (the checkpoint to start over from), not --resume auto; "
        "--help lists the options"
    )
