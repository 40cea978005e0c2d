"""Checkpoints this run did not write are never deleted (helper save23, session 23).

Faults:
- A step_N folder put in checkpoints/ during the run (a user's copy) under the very step the run was about to
  save was moved to step_N.tmp-replaced by that save and deleted once the new one was in place: the copy was lost.
  A kill between that save's last renames left it as step_N.tmp-replaced, which the next save deleted too.
- Retention deleted every step_N-universal folder of a step older than every kept checkpoint, whoever made it: a
  universal checkpoint a user converted by hand (DeepSpeed's ds_to_universal) or copied in from another run.
- A resume at another world size whose conversion filled the disk said what was free, not what the conversion
  needs: no figure to free space or size a quota by (a save's disk-full message names both and the folder).

Run as a script (torchrun), this file is the 2-rank worker of the last test.
"""

import json
import re
import sys
from pathlib import Path

from rank0_saves import WEIGHTS, NoParamsEngine, checkpoint_files, complete_checkpoint, rank0_save
from stand_in_converter import convert_with_stand_in

from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.fs_errors import gib

from conftest import torchrun


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


KEPT = re.compile(r"step_00000004\.not-this-run-\d{8}T\d{6}Z")


def test_a_checkpoint_copied_in_under_the_step_being_saved_is_kept_not_deleted(tmp_path, capsys):
    """Fault 1: the user's step_00000004, put there while the run was about to save step 4, was deleted by it."""
    checkpoints = tmp_path / "run" / "checkpoints"
    rank0_save(checkpoints, 2, keep=3)
    users = complete_checkpoint(checkpoints / "step_00000004", 4, b"U" * 1500)
    digest = manifest.marker_digest(users)
    capsys.readouterr()
    placed = rank0_save(checkpoints, 4, keep=3)
    names = _names(checkpoints)
    kept = [n for n in names if KEPT.fullmatch(n)]
    assert len(kept) == 1 and names == sorted(["latest", "step_00000002", "step_00000004", kept[0]]), names
    kept_dir = checkpoints / kept[0]
    assert (kept_dir / WEIGHTS).read_bytes() == b"U" * 1500 and manifest.verify(kept_dir) is None
    assert manifest.marker_digest(kept_dir) == digest  # the user's folder whole, manifest and all
    assert (placed / WEIGHTS).read_bytes() == b"R" * 1000 and manifest.verify(placed) is None
    assert (checkpoints / "latest").read_text() == "step_00000004"
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {placed} was there before this run saved step 4, and this run did not write it (a copy put "
        f"there during the run?): it was moved to {kept_dir} and kept; the run's own checkpoint took the name "
        f"step_00000004. Move {kept[0]} elsewhere, or remove it yourself"
    ]
    # Never listed, resumed or deleted: retention at later saves passes it by.
    assert [p.name for p in checkpoint.complete_checkpoints(checkpoints)] == ["step_00000002", "step_00000004"]
    rank0_save(checkpoints, 6, keep=1)
    assert _names(checkpoints) == sorted(["latest", "step_00000006", kept[0]])
    assert (kept_dir / WEIGHTS).read_bytes() == b"U" * 1500


def test_a_second_save_of_a_step_this_process_saved_still_replaces_it(tmp_path, capsys):
    """What the fix keeps: a folder this process placed is replaced by a second save of its step, no copy kept."""
    checkpoints = tmp_path / "run" / "checkpoints"
    rank0_save(checkpoints, 4, keep=3, content=b"A" * 1000)
    capsys.readouterr()
    placed = rank0_save(checkpoints, 4, keep=3, content=b"B" * 1000)
    assert _names(checkpoints) == ["latest", "step_00000004"]
    assert (placed / WEIGHTS).read_bytes() == b"B" * 1000 and manifest.verify(placed) is None
    assert capsys.readouterr().err == ""


def test_a_copied_in_step_left_moved_aside_by_a_kill_is_kept_by_the_next_save(tmp_path, capsys):
    """Fault 1, killed variant: a kill right after the new step_4 took its name left the user's copy as
    step_00000004.tmp-replaced; the next save removed it as a leftover."""
    checkpoints = tmp_path / "run" / "checkpoints"
    complete_checkpoint(checkpoints / "step_00000004", 4, b"R" * 1000)  # placed by the killed process, not this one
    aside = complete_checkpoint(checkpoints / "step_00000004.tmp-replaced", 4, b"U" * 1500)
    digest = manifest.marker_digest(aside)
    capsys.readouterr()
    assert checkpoint._before_save(NoParamsEngine(), checkpoints, 6) is None  # type: ignore[arg-type]
    names = _names(checkpoints)
    kept = [n for n in names if KEPT.fullmatch(n)]
    assert len(kept) == 1 and names == sorted(["step_00000004", kept[0]]), names
    assert manifest.marker_digest(checkpoints / kept[0]) == digest
    assert (checkpoints / kept[0] / WEIGHTS).read_bytes() == b"U" * 1500
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {checkpoints / 'step_00000004'} was there before")


def _universal_of(checkpoints: Path, source: Path, content: bytes) -> Path:
    """A conversion the trainer sealed from `source` (ngpt_ds.train.checkpoint.finish_universal)."""
    converted = checkpoint_files(checkpoints / (source.name + "-universal.tmp-save"), content)
    (converted / "config.yaml").unlink()  # finish_universal copies the source's
    target = checkpoints / checkpoint.universal_name(source.name)
    checkpoint.finish_universal(converted, target, source)
    return target


def _left_alone(converted: Path) -> str:
    return (
        f"warning: {converted} is not a conversion this run made (its manifest names neither a checkpoint retention "
        "deleted nor the one the run grew from: converted by hand, or copied in), so retention leaves it alone. "
        "Remove it yourself once it is not needed"
    )


def test_retention_deletes_only_the_universal_twin_this_trainer_made_of_the_checkpoint_it_deletes(tmp_path, capsys):
    """Fault 2: step_00000010-universal, converted by hand with DeepSpeed (no manifest) or copied in from another
    run (a manifest naming another step_00000010), was deleted with the run's step 10. The run's own conversion
    of step 10 goes with it, before it."""
    checkpoints = tmp_path / "run" / "checkpoints"
    step10 = rank0_save(checkpoints, 10, keep=2)
    rank0_save(checkpoints, 20, keep=2)
    by_hand = checkpoint_files(checkpoints / "step_00000010-universal", b"H" * 700)
    capsys.readouterr()
    rank0_save(checkpoints, 30, keep=2)
    assert _names(checkpoints) == ["latest", "step_00000010-universal", "step_00000020", "step_00000030"]
    assert (by_hand / WEIGHTS).read_bytes() == b"H" * 700
    assert capsys.readouterr().err.splitlines() == [_left_alone(by_hand)]
    # Copied in from another run: sealed by ngpt_ds, but from another run's step_00000020.
    other = complete_checkpoint(tmp_path / "other" / "checkpoints" / "step_00000020", 20, b"O" * 1000)
    foreign = _universal_of(other.parent, other, b"F" * 700)
    foreign.rename(checkpoints / foreign.name)
    foreign = checkpoints / foreign.name
    assert manifest.verify(foreign) is None
    capsys.readouterr()
    rank0_save(checkpoints, 40, keep=2)
    assert "step_00000020-universal" in _names(checkpoints) and manifest.verify(foreign) is None
    assert "step_00000020" not in _names(checkpoints)
    assert capsys.readouterr().err.splitlines() == [_left_alone(foreign)]
    # The run's own conversion of step 30 goes with step 30.
    own = _universal_of(checkpoints, checkpoints / "step_00000030", b"C" * 700)
    assert manifest.verify(own) is None and not step10.exists()
    capsys.readouterr()
    rank0_save(checkpoints, 50, keep=2)
    assert _names(checkpoints) == [
        "latest",
        "step_00000010-universal",
        "step_00000020-universal",
        "step_00000040",
        "step_00000050",
    ]
    assert capsys.readouterr().err == ""


def test_retention_deletes_the_conversion_of_another_runs_checkpoint_the_run_grew_from(tmp_path, capsys):
    """What the fix keeps: a run resumed at another world size from another run's step_00000003 holds its
    conversion, step_00000003-universal, with no step_00000003 beside it; <out>/lineage.json names that origin,
    so retention deletes the conversion once step 3 is older than every kept checkpoint (at the first save). A conversion of
    another checkpoint of the same name, copied in, stays."""
    from ngpt_ds.train.lineage import record_origin

    other = complete_checkpoint(tmp_path / "other" / "checkpoints" / "step_00000003", 3, b"O" * 1000)
    elsewhere = complete_checkpoint(tmp_path / "third" / "checkpoints" / "step_00000003", 3, b"T" * 1000)
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True)
    record_origin(out, other)
    origin = _universal_of(other.parent, other, b"C" * 700)
    origin.rename(checkpoints / origin.name)
    assert manifest.verify(checkpoints / origin.name) is None
    rank0_save(checkpoints, 6, keep=1)  # the run's first checkpoint: the conversion is needed no more
    assert _names(checkpoints) == ["latest", "step_00000006"]
    copied = _universal_of(elsewhere.parent, elsewhere, b"C" * 700)
    copied.rename(checkpoints / copied.name)
    capsys.readouterr()
    rank0_save(checkpoints, 9, keep=1)
    assert _names(checkpoints) == ["latest", "step_00000003-universal", "step_00000009"]
    assert capsys.readouterr().err.splitlines() == [_left_alone(checkpoints / copied.name)]


# ---- fault 3: the conversion's disk-full message -------------------------------------------------------------

FILLS_THE_DISK = (
    "import sys; from pathlib import Path; out = Path(sys.argv[1]); out.mkdir(parents=True)\n"
    "with open(out / 'slice.pt', 'wb') as f:\n"
    "    while True:\n"
    "        f.write(b'x' * 65536); f.flush()\n"
)


def test_a_conversion_that_fills_the_disk_names_what_it_needs_what_was_free_and_the_folder(tmp_path, mount_tmpfs):
    """Fault 3: a real disk-full during the conversion (a stand-in converter writes until ENOSPC on a 4 MiB
    tmpfs, past the check before it starts) read '... MiB are free on the filesystem of <folder>': no figure
    of what the conversion needs."""
    checkpoints = mount_tmpfs(4 * 2**20) / "run" / "checkpoints"
    source = complete_checkpoint(checkpoints / "step_00000004", 4, b"W" * 2**20)
    size = manifest.checkpoint_bytes(source)
    assert size == 2**20 + len("model: {}\n")
    target = checkpoints / checkpoint.universal_name(source.name)
    out_json = tmp_path / "ranks.json"
    torchrun(Path(__file__).resolve(), out_json, source, target, timeout=180)
    ranks = json.loads(out_json.read_text())
    error = ranks[0]["error"]
    assert [r["error"] for r in ranks] == [error, error], ranks
    head = f"DeepSpeed's ds_to_universal could not convert {source} (exit 1): "
    # The converter's traceback could not be written either: its log lies on the full filesystem.
    assert error.startswith(head), error
    assert error.endswith(
        f". The conversion needs about {gib(2 * size)} (twice the size of step_00000004), 0.0 MiB were free on the "
        f"filesystem of {checkpoints} when it failed. Free space there (or raise the quota), then rerun, or resume "
        "at 2 data-parallel ranks instead"
    ), error
    assert gib(2 * size) == "2.0 MiB"
    assert _names(checkpoints) == ["step_00000004"]  # nothing under the universal name, no work folder


if __name__ == "__main__":
    convert_with_stand_in(*sys.argv[1:4], FILLS_THE_DISK)
