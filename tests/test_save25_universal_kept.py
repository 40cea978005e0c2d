"""A resume's conversion never deletes a step_N-universal folder ngpt_ds did not make (helper save25).

Fault: checkpoint.finish_universal (the conversion a resume at another data-parallel size makes) deleted
whatever stood at step_N-universal before renaming its own conversion there: a universal checkpoint a user
converted by hand with DeepSpeed's ds_to_universal (no manifest), or one copied in from another run (a
manifest naming another checkpoint of the same step). Retention leaves exactly those alone (helper save23);
the conversion deleted them. They are now kept under step_N-universal.not-this-run-<UTC time>.
"""

import re
from pathlib import Path

from rank0_saves import checkpoint_files, complete_checkpoint

from ngpt_ds.train import checkpoint, checkpoint_delete, manifest

KEPT = re.compile(r"step_00000004-universal\.not-this-run-\d{8}T\d{6}Z")


def _convert(checkpoints: Path, source: Path, content: bytes) -> Path:
    converted = checkpoint_files(checkpoints / (source.name + "-universal.tmp-save"), content, "fp32.pt")
    (converted / "config.yaml").unlink()  # finish_universal copies the source's
    target = checkpoints / checkpoint.universal_name(source.name)
    checkpoint.finish_universal(converted, target, source)
    return target


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _warning(target: Path, kept: Path) -> str:
    return (
        f"warning: {target} was there and is not a conversion ngpt_ds made of step_00000004 (converted by hand "
        f"with DeepSpeed's ds_to_universal, or copied in): it was moved to {kept} and kept; the run's own "
        f"conversion took the name {target.name}. Move {kept.name} elsewhere, or remove it yourself"
    )


def test_a_conversion_made_by_hand_is_kept_when_the_resume_converts_the_step_again(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    source = complete_checkpoint(checkpoints / "step_00000004", 4, b"S" * 1000)
    by_hand = checkpoint_files(
        checkpoints / "step_00000004-universal", b"H" * 700, "fp32.pt"
    )  # ds_to_universal's: no manifest
    capsys.readouterr()
    target = _convert(checkpoints, source, b"C" * 900)
    names = _names(checkpoints)
    kept = [n for n in names if KEPT.fullmatch(n)]
    assert len(kept) == 1 and names == sorted(["step_00000004", "step_00000004-universal", kept[0]]), names
    assert (checkpoints / kept[0] / "fp32.pt").read_bytes() == b"H" * 700
    assert (target / "fp32.pt").read_bytes() == b"C" * 900 and checkpoint.is_converted_from(target, source)
    assert capsys.readouterr().err.splitlines() == [_warning(by_hand, checkpoints / kept[0])]
    # Never listed as a conversion, a checkpoint or a leftover
    assert checkpoint.universal_dirs(checkpoints) == [target]
    assert checkpoint.complete_checkpoints(checkpoints) == [source]
    assert not checkpoint.is_leftover_name(kept[0])


def test_another_runs_conversion_of_the_same_step_is_kept(tmp_path, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    other_source = complete_checkpoint(tmp_path / "other" / "checkpoints" / "step_00000004", 4, b"O" * 1000)
    theirs = _convert(other_source.parent, other_source, b"T" * 800)
    source = complete_checkpoint(checkpoints / "step_00000004", 4, b"S" * 1000)
    copied = checkpoints / theirs.name
    copied.parent.mkdir(parents=True, exist_ok=True)
    theirs.rename(copied)  # copied in: a manifest naming their step_00000004, not this run's
    digest = manifest.marker_digest(copied)
    capsys.readouterr()
    target = _convert(checkpoints, source, b"C" * 900)
    kept = [n for n in _names(checkpoints) if KEPT.fullmatch(n)]
    assert len(kept) == 1 and manifest.marker_digest(checkpoints / kept[0]) == digest
    assert manifest.verify(checkpoints / kept[0]) is None
    assert (checkpoints / kept[0] / "fp32.pt").read_bytes() == b"T" * 800
    assert checkpoint.is_converted_from(target, source)
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_damaged_conversion_of_the_same_checkpoint_is_replaced_without_a_copy(tmp_path, capsys):
    """What the fix keeps: ngpt_ds's own conversion of this very checkpoint, damaged, is converted again and
    replaced whole, by this process or a later one (the same data: nothing kept, no warning)."""
    checkpoints = tmp_path / "run" / "checkpoints"
    source = complete_checkpoint(checkpoints / "step_00000004", 4, b"S" * 1000)
    target = _convert(checkpoints, source, b"C" * 900)
    (target / "fp32.pt").write_bytes(b"X" * 900)  # damaged
    checkpoint_delete._WRITTEN.discard(target.absolute())  # as seen by a later process
    assert not checkpoint.is_converted_from(target, source)
    capsys.readouterr()
    _convert(checkpoints, source, b"D" * 900)
    assert _names(checkpoints) == ["step_00000004", "step_00000004-universal"]
    assert (target / "fp32.pt").read_bytes() == b"D" * 900 and checkpoint.is_converted_from(target, source)
    assert capsys.readouterr().err == ""
