"""An --out moved to another filesystem (`mv` copies, then deletes) while a save runs: the copy may hold that save's
staging folder, checkpoints/step_N.tmp-save, with only part of its files (those written, or listed, when the copy
read them). A user then resumes with --out at the copy. Real 1-rank runs: a run trained to step 6 (checkpoints at 3
and 6) is copied by hand as the move would have left it during the save of step 6 (step_00000003 whole, `latest`
naming it, step_00000006.tmp-save holding part of the real step 6's files), and resumed.

Nothing may be lost (step_00000003 stays whole), no traceback; `--resume auto` goes on from step 3 and the save of
step 6 replaces the partial folder; `--resume` naming the partial folder is refused in one line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ngpt_ds.train.manifest import verify

from conftest import assert_complete, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

STEP3, STEP6 = "step_00000003", "step_00000006"


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_dataset) -> tuple[Path, Path, Path]:
    """A run trained to step 6, checkpoints at 3 and 6: (its --out, config, DeepSpeed config)."""
    work = tmp_path_factory.mktemp("source")
    config = write_yaml(work / "t.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=3))
    ds = write_ds_config(work / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, work / "run")])
    assert_complete(work / "run" / "checkpoints" / STEP6)
    return work / "run", config, ds


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _copy_mid_save(out: Path, copy: Path, keep: str) -> list[str]:
    """`out` copied to `copy` as a move during the save of step 6 leaves it: step_00000006 as step_00000006.tmp-save
    holding some of its files ("first-half": the first half in name order, no COMPLETE; "sealed-without-states": every
    file but the model states, COMPLETE included, a copier that listed a subfolder before its file was written;
    "whole": every file), and
    `latest` naming step_00000003. Returns the files put in the partial folder."""
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(STEP6))
    (copy / "checkpoints" / "latest").write_text(STEP3)
    whole = out / "checkpoints" / STEP6
    names = _files(whole)
    if keep == "first-half":
        part = [n for n in names if n != "COMPLETE"][: len(names) // 2]
    elif keep == "whole":  # the copier listed it after its seal, before its rename
        part = names
    else:
        part = [n for n in names if "model_states" not in n]
    assert part and (len(part) < len(names) or keep == "whole"), names
    partial = copy / "checkpoints" / f"{STEP6}.tmp-save"
    for name in part:
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(whole / name, partial / name)
    return part


@pytest.mark.parametrize("keep", ["first-half", "sealed-without-states"])
def test_resume_auto_at_a_copy_holding_a_partial_save_goes_on_from_the_last_whole_checkpoint(
    tmp_path, tiny_dataset, source, keep
):
    out, config, ds = source
    copy = tmp_path / "copy"
    part = _copy_mid_save(out, copy, keep)
    resumed = run([sys.executable, *train_cmd(config, ds, tiny_dataset, copy, "--resume", "auto")])
    assert "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    assert f"resumed from {copy / 'checkpoints' / STEP3} at step 3" in said, said[-3000:]
    assert verify(copy / "checkpoints" / STEP3) is None  # nothing lost
    assert_complete(copy / "checkpoints" / STEP6)  # the save of step 6 replaced the partial folder
    left = sorted(p.name for p in (copy / "checkpoints").iterdir() if p.name.startswith("step_"))
    if keep == "first-half":  # never sealed: removed by the save of step 6
        assert left == [STEP3, STEP6], left
    else:  # sealed, but not whole: kept aside with the files the copy held, said in one line, never deleted
        assert left[:2] == [STEP3, STEP6] and len(left) == 3, left
        assert left[2].startswith(f"{STEP6}.interrupted-save-"), left
        assert _files(copy / "checkpoints" / left[2]) == sorted(part)
        kept = f"{STEP6}.tmp-save, a save sealed complete but interrupted before its rename, was not put in place ("
        said_kept = [line for line in said.splitlines() if kept in line]
        assert len(said_kept) == 1 and said_kept[0].endswith(
            f"kept as {left[2]}, not deleted. Move it elsewhere or remove it yourself"
        ), said[-3000:]
    assert _files(copy / "checkpoints" / STEP6) == _files(out / "checkpoints" / STEP6)


@pytest.mark.parametrize("keep", ["first-half", "sealed-without-states", "whole"])
def test_resume_naming_the_partial_save_is_refused_in_one_line(tmp_path, tiny_dataset, source, keep):
    """Old code (sealed-without-states): 'error: --resume .../step_00000006.tmp-save: does not exist. Give a checkpoint
    directory ...': the start-up had just kept the folder aside, and the line called the folder the user named
    missing; (whole) the same, the start-up having put it in place as step_00000006."""
    out, config, ds = source
    copy = tmp_path / "copy"
    part = _copy_mid_save(out, copy, keep)
    checkpoints = copy / "checkpoints"
    partial = checkpoints / f"{STEP6}.tmp-save"
    refused = run([sys.executable, *train_cmd(config, ds, tiny_dataset, copy, "--resume", partial)], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    if keep == "whole":  # sealed and whole: put in place by the start-up (checkpoint_interrupted)
        assert last == (
            f"error: --resume {partial}: a save's staging folder, never resumed from; {checkpoints / STEP6} holds "
            "that step's complete checkpoint: resume from it"
        ), refused.stderr[-3000:]
        assert_complete(checkpoints / STEP6)
    else:
        assert last == (
            f"error: --resume {partial}: a save's staging folder (a save in progress, or one interrupted or copied "
            "in its middle; any warning above says what this start-up did with it), never resumed from. Resume with "
            f"--resume {checkpoints / STEP3} (the newest complete checkpoint beside it), or --resume auto"
        ), refused.stderr[-3000:]
        kept = [p for p in checkpoints.iterdir() if p.name.startswith(f"{STEP6}.")]
        assert len(kept) == 1 and _files(kept[0]) == sorted(part), kept  # never deleted
        assert not (checkpoints / STEP6).exists()
    assert verify(checkpoints / STEP3) is None  # nothing lost
