"""--resume PATH naming a checkpoint folder that is damaged, misnamed, or marked by an older ngpt_ds under another
step's name (ngpt_ds.train.resume.resolve_resume, as the trainer and its dry run call it)."""

from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.resume import resolve_resume


def saved(folder: Path, step: int, legacy: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(bytes([step]) * 64)
    if legacy:
        (folder / manifest.COMPLETE).write_text(f"step {step}\n")
    else:
        manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def test_a_damaged_checkpoint_of_another_run_is_refused_naming_the_one_before_it_there(tmp_path):
    """Fault: the advice was "or use --resume auto to take the newest intact one", but auto looks in the new --out,
    which held nothing: following it trained from step 0."""
    other = tmp_path / "other" / checkpoint.CHECKPOINTS
    older, newest = saved(other / "step_00000004", 4), saved(other / "step_00000008", 8)
    (newest / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 64)
    with pytest.raises(NgptConfigError) as refused:
        resolve_resume(tmp_path / "new", str(newest), warn=lambda line: None)
    assert str(refused.value) == (
        f"--resume {newest}: the checkpoint is damaged: {newest / 'mp_rank_00_model_states.pt'} does not match its "
        f"blake2b-128 digest in the COMPLETE manifest (corrupted). Resume from another checkpoint (the one before "
        f"it there: --resume {older})"
    )


def test_a_checkpoint_folder_not_named_step_n_is_refused_naming_the_name_to_give_it(tmp_path):
    """Fault: `--resume backup/good_ckpt` (a copy under another name) passed the checks, and the trainer ended in a
    ValueError traceback (int('ckpt')) reading the step from the name; its dry run said it would resume."""
    copy = saved(tmp_path / "backup" / "good_ckpt", 4)
    with pytest.raises(NgptConfigError) as refused:
        resolve_resume(tmp_path / "run", str(copy), warn=lambda line: None)
    assert str(refused.value) == (
        f"--resume {copy}: the trainer reads a checkpoint's step from its folder's name, step_N, and good_ckpt is "
        "none; rename it (or copy it) as step_00000004"
    )


def test_an_older_ngpt_ds_marker_under_another_steps_name_is_skipped(tmp_path):
    """Fault: the check that a step_N folder holds step N read only manifests, so an older ngpt_ds's `step 2` marker
    copied as step_8 was resumed as step 8, with step 2's weights."""
    checkpoints = tmp_path / "run" / checkpoint.CHECKPOINTS
    saved(checkpoints / "step_00000002", 2, legacy=True)
    saved(checkpoints / "step_00000004", 4, legacy=True)
    renamed = saved(checkpoints / "step_00000008", 2, legacy=True)
    warned: list[str] = []
    assert resolve_resume(tmp_path / "run", "auto", warn=warned.append) == checkpoints / "step_00000004"
    assert warned[0] == (
        f"warning: skipping checkpoint step_00000008: {renamed} holds the checkpoint of step 2 (its COMPLETE marker) "
        "under the name of step 8: renamed, or copied under another step's name. Using the one before it"
    )


def test_naming_an_older_step_with_nothing_to_train_leaves_the_runs_summary(tmp_path, reference_runs):
    """Fault: `--resume RUN/checkpoints/step_10 --max-steps 10` in a run finished at step 20 said "RUN is already
    trained to step 10/10" and replaced its summary.json with "finished at step 10", step_20 still there."""
    import json
    import shutil

    from conftest import run_launch, train_flags

    run = tmp_path / "run"
    shutil.copytree(reference_runs["z0_ws1"], run)
    before = (run / "summary.json").read_text()
    assert json.loads(before)["step"] == 20
    older = run / checkpoint.CHECKPOINTS / "step_00000010"
    flags = train_flags(reference_runs.config, reference_runs.ds["z0_ws1"], reference_runs.data, run)
    proc = run_launch("train.py", *flags, "--resume", older, "--max-steps", 10)
    assert (
        f"--resume names {older} (step 10) and --max-steps is 10: nothing to train. Pass --max-steps N above 10 to "
        "train on from it"
    ) in proc.stdout + proc.stderr
    assert "already trained" not in proc.stdout + proc.stderr
    assert (run / "summary.json").read_text() == before
