"""--resume naming an older step of the run's own folder (a rollback) that turns out damaged."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.resume import resolve_resume

MODEL_FILE = "mp_rank_00_model_states.pt"


def _saved(folder, step):
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(bytes([step % 256]) * 64)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def test_a_damaged_step_named_for_a_rollback_names_the_one_before_it_not_only_auto(tmp_path):
    """Fault: `--resume run/checkpoints/step_8` to roll back from a diverged step_12, with step_8 damaged, was refused
    with the one advice "use --resume auto to take the newest intact one": auto takes step_12, the step rolled back
    from. Before: '... Resume from another checkpoint (use --resume auto to take the newest intact one)'. Now the
    one before it is named first: '(the one before it: --resume .../step_00000004, or --resume auto ...)'."""
    checkpoints = tmp_path / "run" / checkpoint.CHECKPOINTS
    older = _saved(checkpoints / "step_00000004", 4)
    named = _saved(checkpoints / "step_00000008", 8)
    _saved(checkpoints / "step_00000012", 12)
    (named / MODEL_FILE).write_bytes(b"\1\2" * 32)
    with pytest.raises(NgptConfigError) as refused:
        resolve_resume(tmp_path / "run", str(named), warn=lambda line: None)
    assert str(refused.value) == (
        f"--resume {named}: the checkpoint is damaged: {named / MODEL_FILE} does not match its blake2b-128 digest in "
        f"the COMPLETE manifest (corrupted). Resume from another checkpoint (the one before it: --resume {older}, or "
        "--resume auto to take the newest intact one)"
    )


def test_the_one_before_is_chosen_by_step_not_by_name_and_the_oldest_keeps_the_auto_advice(tmp_path):
    """Step numbers of more than 8 digits: 'step_100000000' < 'step_99999999' as strings, so the name comparison
    named no checkpoint before step 100,000,000 of another run ('none is older there'), where step 99,999,999 is."""
    other = tmp_path / "other" / checkpoint.CHECKPOINTS
    before = _saved(other / "step_99999999", 99_999_999)
    named = _saved(other / "step_100000000", 100_000_000)
    (named / MODEL_FILE).write_bytes(b"\1\2" * 32)
    with pytest.raises(NgptConfigError) as refused:
        resolve_resume(tmp_path / "new", str(named), warn=lambda line: None)
    assert str(refused.value).endswith(f"Resume from another checkpoint (the one before it there: --resume {before})")
    # The oldest step of the run's own folder: nothing before it, auto as before.
    checkpoints = tmp_path / "run" / checkpoint.CHECKPOINTS
    oldest = _saved(checkpoints / "step_00000004", 4)
    _saved(checkpoints / "step_00000008", 8)
    (oldest / MODEL_FILE).write_bytes(b"\1\2" * 32)
    with pytest.raises(NgptConfigError) as refused:
        resolve_resume(tmp_path / "run", str(oldest), warn=lambda line: None)
    assert str(refused.value).endswith(
        "Resume from another checkpoint (use --resume auto to take the newest intact one)"
    )
