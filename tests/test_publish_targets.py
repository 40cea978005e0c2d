"""What a preparation, a merge or an export publishes into: `--out` given as a symbolic link, as `.`, or with a
file or link at the name, and a kill in the last step before the rename. Outputs are renamed into their name
(ngpt_ds.data.staging.swap_in); each of these had failed only after all the work, with advice that led nowhere,
or left something behind for good."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ngpt_ds.data import staging
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.errors import NgptConfigError

from conftest import REPO

DATASET_FILES = ["meta.json", "tokenizer.model", "train_000000.bin", "validation_000000.bin"]


def corpus(path: Path) -> Path:
    path.write_text(
        "".join(json.dumps({"text": f"note {i}: " + "a small text to tokenize " * 30}) + "\n" for i in range(40))
    )
    return path


def config(inputs: Path, out: Path | str, **fields) -> PrepareConfig:
    fields = {"vocab_size": 300, "val_fraction": 0.1, "workers": 1, "progress": False, **fields}
    return PrepareConfig(inputs=(str(inputs),), out=Path(out), **fields)


def shard_files(meta: dict) -> list[str]:
    return [shard["file"] for split in meta["splits"].values() for shard in split["shards"]]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def link_refused(option: str, link: Path) -> str:
    return (
        f"{option} {link} is a symbolic link (to {os.readlink(link)}): the output is written beside it and renamed into "
        "its name, which would replace the link instead of filling the folder it points to. Pass that folder itself, "
        "or another path"
    )


@pytest.mark.parametrize("target", ["empty folder", "nothing"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_a_symlinked_out_is_refused_before_any_tokenizing(tmp_path, target, overwrite):
    """Fault: a link to an empty folder passed the checks, and after the whole tokenizing the run ended with
    "--out ... appeared while preparing; pass --overwrite" (which then refused the link); a link to nothing with
    "... appeared while this job was writing it (another job with the same --out finished first ...)". Now the
    option check names the link and its target, and nothing is written (with --overwrite, as before, the link
    was refused at the start; the message is now the same)."""
    text = corpus(tmp_path / "corpus.jsonl")
    (tmp_path / "scratch").mkdir()
    link = tmp_path / "data"
    link.symlink_to(tmp_path / ("scratch" if target == "empty folder" else "absent"))
    cfg = config(text, link, overwrite=overwrite)
    with pytest.raises(NgptConfigError) as checked:
        cfg.validate()
    assert str(checked.value) == link_refused("--out", link)
    with pytest.raises(NgptConfigError) as prepared:
        prepare_dataset(cfg)
    assert str(prepared.value) == str(checked.value)
    assert listing(tmp_path) == ["corpus.jsonl", "data", "scratch"] and listing(tmp_path / "scratch") == []


def test_out_dot_prepares_into_the_working_folder_and_replaces_it_with_overwrite(tmp_path, monkeypatch):
    """Fault: `--out .` from an empty folder ended, after the tokenizing, with "--out . appeared while preparing";
    with --overwrite over a dataset there, in a raw OSError (EBUSY, renaming into '.'), the new dataset deleted."""
    text = corpus(tmp_path / "corpus.jsonl")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert prepare_dataset(config(text, ".")) == work
    assert listing(work) == DATASET_FILES
    first = json.loads((work / "meta.json").read_text())

    os.chdir(work)  # the published folder took the name of the empty one the process was in
    assert prepare_dataset(config(text, ".", overwrite=True, shard_tokens=500)) == work
    meta = json.loads((work / "meta.json").read_text())
    shards = shard_files(meta)
    assert len(shards) > len(shard_files(first)) and listing(work) == sorted(["meta.json", "tokenizer.model", *shards])
    assert listing(tmp_path) == ["corpus.jsonl", "work"]


def test_a_merge_into_a_symlinked_out_is_refused_before_the_first_part(tmp_path):
    """Fault: parts prepared into a link to a folder were merged into a dataset beside the link (copied when the
    link crossed filesystems), the link replaced by it, and the parts left in the folder it pointed to for good,
    with a hidden `.data.old-<id>` link beside the dataset."""
    from ngpt_ds.data.parts import merge_parts, prepare_part

    text = corpus(tmp_path / "corpus.jsonl")
    tokenizer = prepare_dataset(config(text, tmp_path / "sample")) / "tokenizer.model"
    (tmp_path / "scratch").mkdir()
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "scratch")
    with pytest.raises(NgptConfigError) as part:
        prepare_part(config(text, link, tokenizer=tokenizer, vocab_size=None), 2, 0)
    assert str(part.value) == link_refused("--out", link)
    with pytest.raises(NgptConfigError) as merge:
        merge_parts(link, 2, progress=False)
    assert str(merge.value) == link_refused("--out", link)
    assert listing(tmp_path) == ["corpus.jsonl", "data", "sample", "scratch"] and listing(tmp_path / "scratch") == []


@pytest.mark.parametrize("kind", ["link", "file"])
def test_swap_in_never_replaces_a_link_or_a_file_at_the_name(tmp_path, kind):
    """Fault: with overwrite, a link or a file at the name was moved to `.NAME.old-<id>`, which rmtree could not
    remove and no later run looked for: it stayed hidden beside the output for good."""
    final = tmp_path / "ds"
    if kind == "link":
        (tmp_path / "elsewhere").mkdir()
        final.symlink_to(tmp_path / "elsewhere")
    else:
        final.write_text("someone's file")
    folder = staging.staging_dir(final)
    (folder / "meta.json").write_text("this job")
    with pytest.raises(NgptConfigError) as refused:
        try:
            staging.swap_in(folder, final, overwrite=True)
        finally:
            staging.remove_staging(folder)  # as every caller does after an error
    what = "a symbolic link" if kind == "link" else "a file"
    assert str(refused.value) == f"{final} is {what}, not a folder: it is left as it is and this job's output removed"
    assert listing(tmp_path) == (["ds", "elsewhere"] if kind == "link" else ["ds"])
    assert final.is_symlink() if kind == "link" else final.read_text() == "someone's file"


def test_a_kill_just_before_the_rename_leaves_nothing_the_next_run_keeps(tmp_path):
    """Fault: swap_in deleted the staging folder's lock file, then renamed the folder into place. A kill between
    the two left a folder (a whole dataset's size) that no later run judged abandoned, since it had no lock file:
    each such kill kept one more. Now the folder is renamed to `.NAME.new-<id>` while still locked, and the next
    preparation of NAME removes that."""
    final = tmp_path / "ds"
    child = f"""
import os
from pathlib import Path
from ngpt_ds.data import staging
folder = staging.staging_dir(Path({str(final)!r}))
(folder / "train_000000.bin").write_bytes(bytes(4096))
def killed(*args, **kwargs):
    os._exit(9)
staging.rename_noreplace = killed  # the last step of swap_in before the name is taken
staging.swap_in(folder, Path({str(final)!r}), overwrite=False)
"""
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    left = listing(tmp_path)
    assert len(left) == 1 and left[0].startswith(".ds.")
    staging.remove_staging(staging.staging_dir(final))  # the next preparation starts, then stops
    assert listing(tmp_path) == []
