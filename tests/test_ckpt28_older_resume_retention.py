"""Red-team (helper ckpt28, session 28): --resume of an older checkpoint of the current lineage after a preemption,
on 2 gloo ranks through launch/train.py, with keep_checkpoints 1 and 2. Question: is any complete checkpoint of
the lineage rolled back from ever deleted rather than moved to abandoned-*? No: pinned here.

The preemption is the one that leaves the most behind: a save sealed complete and killed before its rename
(step_8.tmp-save; ngpt_ds.train.checkpoint_interrupted puts it in place at the next start-up). The older resume
then moves it, whole and verified, into abandoned-*, and retention deletes only the new lineage's own older
steps (step_6 itself, the step resumed from, once keep_checkpoints newer ones stand)."""

import os

import pytest

from ngpt_ds.train import manifest

from conftest import tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()


def steps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_"))


@pytest.mark.parametrize("keep", [1, 2])
def test_an_older_resume_after_a_killed_save_moves_the_newer_steps_aside_and_retention_deletes_none_of_them(
    tmp_path, tiny_dataset, keep
):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    first = write_yaml(tmp_path / "a.yaml", MODEL, tiny_train(8, checkpoint_interval=2, keep_checkpoints=2))
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(*train_cmd(first, ds, tiny_dataset, out))
    assert steps(checkpoints) == ["step_00000006", "step_00000008"]
    # The preemption: step 8's save sealed, killed before its rename (its COMPLETE written after step_6's).
    os.rename(checkpoints / "step_00000008", checkpoints / "step_00000008.tmp-save")
    sealed = manifest.marker_digest(checkpoints / "step_00000008.tmp-save")

    config = write_yaml(tmp_path / "a.yaml", MODEL, tiny_train(12, checkpoint_interval=2, keep_checkpoints=keep))
    second = torchrun(*train_cmd(config, ds, tiny_dataset, out, "--resume", checkpoints / "step_00000006"))
    (abandoned,) = [p for p in checkpoints.iterdir() if p.name.startswith("abandoned-")]
    assert steps(abandoned) == ["step_00000008"]
    assert manifest.marker_digest(abandoned / "step_00000008") == sealed
    assert manifest.verify(abandoned / "step_00000008") is None
    assert "put step_00000008 in place from step_00000008.tmp-save" in second.stdout + second.stderr
    kept = ["step_00000012"] if keep == 1 else ["step_00000010", "step_00000012"]
    assert steps(checkpoints) == kept
    assert not [p.name for p in checkpoints.iterdir() if ".tmp-" in p.name or ".interrupted-save-" in p.name]

    # The requeue runs the same command again: it continues the new lineage, moving and deleting nothing else.
    again = torchrun(
        *train_cmd(config, ds, tiny_dataset, out, "--resume", checkpoints / "step_00000006", "--max-steps", "14")
    )
    assert "already started this run" in again.stdout + again.stderr
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith("abandoned-")] == [abandoned.name]
    assert steps(abandoned) == ["step_00000008"]
    assert steps(checkpoints) == (["step_00000014"] if keep == 1 else ["step_00000012", "step_00000014"])
