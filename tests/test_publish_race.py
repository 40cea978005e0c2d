"""Two jobs writing the same new folder at once: the second to finish stops with an NgptConfigError naming the
folder, the first's folder (even an empty one) stays as it is, and no staging folder is left. Each race is
made deterministic by creating the other job's folder at the point where it wins: after the caller's
existence check, or inside swap_in between its own check and the rename."""

from __future__ import annotations

import ctypes
import errno
import json
import os
from pathlib import Path

import pytest

from ngpt_ds.data import prepare, staging
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.errors import NgptConfigError


def _other_job_publishes(final: Path, files: dict[str, str]) -> None:
    other = final.parent / ".other-job"
    other.mkdir()
    for name, text in files.items():
        (other / name).write_text(text)
    os.rename(other, final)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def _staged(final: Path) -> Path:
    folder = staging.staging_dir(final)
    (folder / "meta.json").write_text("this job")
    return folder


def _publish_as_callers_do(folder: Path, final: Path, **kw) -> None:
    try:
        staging.swap_in(folder, final, **kw)
    finally:
        staging.remove_staging(folder)  # as prepare, parts and export do after any error


def _wins_after_the_check(monkeypatch, final: Path, files: dict[str, str]) -> None:
    """The other job publishes right after swap_in found no `final` (in its last step before the rename)."""
    real = staging._release

    def release_then_the_other_job_publishes(folder: Path, renamed_to: Path | None = None) -> None:
        real(folder, renamed_to)
        _other_job_publishes(final, files)

    monkeypatch.setattr(staging, "_release", release_then_the_other_job_publishes)


def _refused(final: Path, overwrite: bool) -> str:
    again = "run again to replace it" if overwrite else "run again with --overwrite to replace it"
    return (
        f"{final} appeared while this job was writing it (another job with the same --out finished first, or made "
        f"the folder); it is left as it is and this job's output removed: {again}, or choose another --out"
    )


# swap_in's default (overwrite=True) is for callers that checked --overwrite themselves (parts, export): an
# existing folder is exchanged, but one that appears during the rename is never theirs to replace.
@pytest.mark.parametrize("kw", [{}, {"overwrite": False}], ids=["caller-checked", "no-overwrite"])
def test_a_dataset_another_job_publishes_during_the_rename_is_kept(tmp_path, monkeypatch, kw):
    final = tmp_path / "ds"
    folder = _staged(final)
    _wins_after_the_check(monkeypatch, final, {"meta.json": "other job", "shard.bin": "tokens"})
    with pytest.raises(NgptConfigError) as e:
        _publish_as_callers_do(folder, final, **kw)
    assert str(e.value) == _refused(final, kw.get("overwrite", True))
    assert _files(final) == {"meta.json": "other job", "shard.bin": "tokens"}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_an_empty_folder_made_during_the_rename_is_not_replaced(tmp_path, monkeypatch):
    final = tmp_path / "ds"
    folder = _staged(final)
    _wins_after_the_check(monkeypatch, final, {})
    with pytest.raises(NgptConfigError) as e:
        _publish_as_callers_do(folder, final)
    assert str(e.value) == _refused(final, overwrite=True)
    assert final.is_dir() and _files(final) == {}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def _corpus(path: Path, docs: int) -> Path:
    rows = (json.dumps({"text": f"document {i} " + "some words to tokenize here " * 20}) for i in range(docs))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_a_dataset_published_after_prepares_own_check_is_kept(tmp_path, monkeypatch):
    """prepare checks --out, then another job publishes it before swap_in: the old swap_in found it there and
    exchanged it away, deleting the other job's dataset without --overwrite."""
    corpus = _corpus(tmp_path / "corpus.jsonl", 60)
    out = tmp_path / "data" / "ds"
    real = prepare.swap_in

    def the_other_job_publishes_first(folder: Path, final: Path, **kw) -> None:
        _other_job_publishes(final, {"meta.json": "other job"})
        real(folder, final, **kw)

    monkeypatch.setattr(prepare, "swap_in", the_other_job_publishes_first)
    cfg = PrepareConfig(inputs=(str(corpus),), out=out, workers=1, progress=False, vocab_size=300)
    with pytest.raises(NgptConfigError) as e:
        prepare_dataset(cfg)
    assert str(e.value) == _refused(out, overwrite=False)
    assert _files(out) == {"meta.json": "other job"}
    assert [p.name for p in out.parent.iterdir()] == ["ds"]


def _einval(*args) -> int:
    ctypes.set_errno(errno.EINVAL)
    return -1


@pytest.mark.parametrize("renameat2", [None, _einval], ids=["no-renameat2", "einval"])
def test_without_renameat2_a_taken_name_is_still_refused_and_a_free_one_taken(tmp_path, monkeypatch, renameat2):
    monkeypatch.setattr(staging, "_renameat2", renameat2)
    final = tmp_path / "ds"
    _publish_as_callers_do(_staged(final), final)  # a free name: os.rename publishes
    assert _files(final) == {"meta.json": "this job"}  # the lock file is not part of the dataset

    second = tmp_path / "ds2"
    folder = _staged(second)
    real = os.rename

    def the_other_job_publishes_first(src, dst, *args, **kw):  # past the fallback's check, before its rename
        if Path(dst) == second:
            monkeypatch.setattr(os, "rename", real)
            _other_job_publishes(second, {"meta.json": "other job"})
        real(src, dst, *args, **kw)

    monkeypatch.setattr(os, "rename", the_other_job_publishes_first)
    with pytest.raises(NgptConfigError) as e:
        _publish_as_callers_do(folder, second)
    assert str(e.value) == _refused(second, overwrite=True)
    assert _files(second) == {"meta.json": "other job"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds2"]


def test_a_part_another_job_writes_after_the_parts_own_check_is_kept(tmp_path, monkeypatch, tiny_dataset):
    """Two jobs preparing the same part of a sharded dataset without --overwrite: the part's check passed for
    both, and the second to finish exchanged the first's part away."""
    from ngpt_ds.data import parts

    corpus = _corpus(tmp_path / "corpus.jsonl", 60)
    out = tmp_path / "parts"
    real = parts.swap_in

    def the_other_job_writes_the_part_first(folder: Path, final: Path, **kw) -> None:
        _other_job_publishes(final, {"part.json": "other job"})
        real(folder, final, **kw)

    monkeypatch.setattr(parts, "swap_in", the_other_job_writes_the_part_first)
    cfg = PrepareConfig(
        inputs=(str(corpus),), out=out, tokenizer=tiny_dataset / "tokenizer.model", workers=1, progress=False
    )
    with pytest.raises(NgptConfigError) as e:
        parts.prepare_part(cfg, 2, 0, 40)
    final = parts.part_dir(out, 0, 2)
    assert str(e.value) == _refused(final, overwrite=False)
    assert _files(final) == {"part.json": "other job"}
    assert [p.name for p in out.iterdir()] == [final.name]
