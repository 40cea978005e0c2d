"""Export/generate (run_checkpoint.removed_checkpoint) and resume (resume.newer_beside) blame a missing step_N on
retention by one rule (checkpoint_layout.newer_complete): only where a complete checkpoint of a later step stands
beside it, since retention deletes a checkpoint only once a newer one is saved complete (helper out37, session 37).

Fault: removed_checkpoint took any step_N folder at or above N, a half-written one (no COMPLETE: a save's folder
copied in part, a copy in progress) included, as retention's sign, where newer_beside wanted a complete one. Given
step_00000004 beside a complete step_00000002 and a half-written step_00000006, `ngpt-generate` said step 4 'does not
exist (a training run's retention ... deletes its older checkpoints as it saves newer ones)' and named step 2 as the
newest, while `--resume` of the same path said nothing of retention. A checkpoint removed while it was read with no
newer complete one beside it (removed by hand) was blamed on retention too.
"""

from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.run_checkpoint import removed_checkpoint, resolve_checkpoint
from ngpt_ds.train.checkpoint_layout import RETENTION, newer_complete
from ngpt_ds.train.resume import newer_beside, resolve_resume


def _checkpoints(tmp_path: Path, complete: list[int], half_written: list[int] = ()) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    for step in [*complete, *half_written]:
        (folder / f"step_{step:08d}").mkdir(parents=True)
        (folder / f"step_{step:08d}" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    for step in complete:
        (folder / f"step_{step:08d}" / "COMPLETE").write_text("{}")
    return folder


def test_a_half_written_newer_step_is_no_sign_of_retention_in_export_or_resume(tmp_path):
    folder = _checkpoints(tmp_path, complete=[2], half_written=[6])
    missing = folder / "step_00000004"
    assert newer_complete(missing) is None
    # old code: ".../step_00000004 does not exist (a training run's retention (train.keep_checkpoints) deletes its
    # older checkpoints as it saves newer ones). The newest complete checkpoint there is now .../step_00000002: ..."
    assert removed_checkpoint(missing) == (
        f"{missing} does not exist: no checkpoint of that step has been saved there. The newest complete checkpoint "
        f"there is now {folder / 'step_00000002'}: pass it, or the run folder {folder.parent}, which takes the newest"
    )
    with pytest.raises(NgptConfigError) as generate:
        resolve_checkpoint(missing)
    assert RETENTION not in str(generate.value)
    # the newest complete checkpoint beside it, not the advice for any path (out38)
    none_newer = (
        " (no newer complete checkpoint stands beside it, so the run's retention did not delete it). The newest "
        f"complete checkpoint beside it is {folder / 'step_00000002'}: resume from it, or pass that run's folder "
        f"{folder.parent}, which takes its newest"
    )
    assert newer_beside(missing) == none_newer
    with pytest.raises(NgptConfigError) as resume:
        resolve_resume(tmp_path / "other", str(missing))
    assert str(resume.value) == f"--resume {missing}: does not exist{none_newer}"


def test_removed_while_read_with_no_newer_complete_checkpoint_is_not_blamed_on_retention(tmp_path):
    folder = _checkpoints(tmp_path, complete=[2], half_written=[6])
    removed = folder / "step_00000004"  # read, then removed by hand: nothing newer is complete
    # old code: '... was deleted while it was read (a training run's retention ...)'
    assert removed_checkpoint(removed, while_read=True) == (
        f"{removed} was deleted while it was read (no newer complete checkpoint stands beside it). The newest "
        f"complete checkpoint there is now {folder / 'step_00000002'}: pass it, or the run folder {folder.parent}, "
        "which takes the newest"
    )


@pytest.mark.parametrize("while_read", [False, True])
def test_a_newer_complete_checkpoint_is_named_by_both_with_the_retention_sentence(tmp_path, while_read):
    folder = _checkpoints(tmp_path, complete=[6], half_written=[8])
    missing = folder / "step_00000004"
    newest = folder / "step_00000006"
    assert newer_complete(missing) == newest
    gone = "was deleted while it was read" if while_read else "does not exist"
    assert removed_checkpoint(missing, while_read=while_read) == (
        f"{missing} {gone} ({RETENTION}). The newest complete checkpoint there is now {newest}: pass it, or the run "
        f"folder {folder.parent}, which takes the newest"
    )
    assert newer_beside(missing) == (
        f" ({RETENTION}). The newest complete checkpoint beside it is {newest}: resume from it, or pass that run's "
        f"folder {folder.parent}, which takes its newest"
    )


def test_a_step_above_every_complete_one_is_never_saved_for_both(tmp_path):
    folder = _checkpoints(tmp_path, complete=[2, 4])
    missing = folder / "step_00000006"
    assert newer_complete(missing) is None
    assert removed_checkpoint(missing).startswith(f"{missing} does not exist: no checkpoint of that step")
    assert newer_beside(missing).endswith(  # not the advice for any path (out38)
        f"The newest complete checkpoint beside it is {folder / 'step_00000004'}: resume from it, or pass that run's "
        f"folder {folder.parent}, which takes its newest"
    )
