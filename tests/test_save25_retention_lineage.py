"""Retention deletes only the run's own checkpoints, of every step (helper save25).

Fault: retention counted every complete step_N of a step at most the one just saved as the run's: another run's
checkpoint of an earlier step copied into checkpoints/ during the run (to compare, or to resume from later) was
among the oldest and deleted at the next save. Retention now counts and deletes only the folders the run's
lineage held when the process started (ngpt_ds.train.lineage.start_lineage records them) and those the process
saved; any other is left alone with one warning, as a copied-in checkpoint of a higher step already was.
"""

from pathlib import Path

from rank0_saves import WEIGHTS, complete_checkpoint, rank0_save

from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.lineage import start_lineage


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "latest")


def test_a_checkpoint_of_an_earlier_step_copied_in_during_the_run_is_not_deleted_by_retention(tmp_path, capsys):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    complete_checkpoint(checkpoints / "step_00000002", 2, b"A" * 1000)  # the run's earlier sessions
    step4 = complete_checkpoint(checkpoints / "step_00000004", 4, b"B" * 1000)
    assert start_lineage(out, step4) is None  # resumed from step 4: the lineage is steps 2 and 4
    copied = complete_checkpoint(checkpoints / "step_00000003", 3, b"U" * 1500)  # another run's, copied in meanwhile
    digest = manifest.marker_digest(copied)
    capsys.readouterr()
    rank0_save(checkpoints, 6, keep=2)
    assert _names(checkpoints) == ["step_00000003", "step_00000004", "step_00000006"]
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {copied} was not in checkpoints/ when this run started, and this run did not write it (put there "
        "during the run): it is not of the run's lineage, and retention neither counts nor deletes it. Move it "
        "elsewhere, or remove it yourself"
    ]
    rank0_save(checkpoints, 8, keep=2)
    assert _names(checkpoints) == ["step_00000003", "step_00000006", "step_00000008"]
    assert manifest.marker_digest(copied) == digest and (copied / WEIGHTS).read_bytes() == b"U" * 1500
    assert capsys.readouterr().err == ""  # one warning per folder


def test_the_runs_lineage_and_its_own_saves_are_still_retained_to_keep(tmp_path):
    """What the fix keeps: the checkpoints of earlier sessions (the lineage) go as before."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    for step in (2, 4, 6):
        complete_checkpoint(checkpoints / checkpoint.tag_for(step), step, b"A" * 1000)
    assert start_lineage(out, checkpoints / "step_00000006") is None
    rank0_save(checkpoints, 8, keep=2)
    assert _names(checkpoints) == ["step_00000006", "step_00000008"]
    rank0_save(checkpoints, 10, keep=2)
    assert _names(checkpoints) == ["step_00000008", "step_00000010"]
