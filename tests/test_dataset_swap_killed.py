"""An --overwrite killed while it swaps the new dataset in loses nothing: `final` names a complete dataset at
every instant where renameat2(RENAME_EXCHANGE) works; where it does not (forced here by a renameat2 that answers
EINVAL, as some filesystems do) the old dataset set aside is named by the loader and put back by the next
preparation. Each kill is a real SIGKILL of a child `ngpt-prepare --overwrite` at the named point."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ngpt_ds.data import staging
from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.errors import NgptConfigError

REPO = Path(__file__).parents[1]

# The child prepares with --overwrite and SIGKILLs itself right after any rename that leaves no folder under
# the --out name (the window of the old two-rename swap_in), or, with kill-in-delete, as it starts deleting
# the replaced folder. no-exchange: renameat2 answers EINVAL, as on a filesystem without RENAME_EXCHANGE.
CHILD = """
import ctypes, errno, os, shutil, signal, sys
from pathlib import Path
final, mode = Path(sys.argv[1]), sys.argv[2]
from ngpt_ds.data import staging
if mode == "no-exchange":
    def _einval(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1
    staging._renameat2 = _einval
def _kill_when_gone(real):
    def wrapped(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if not os.path.lexists(final):
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped
os.replace, os.rename = _kill_when_gone(os.replace), _kill_when_gone(os.rename)
if mode == "kill-in-delete":
    real_rmtree = shutil.rmtree
    def _rmtree(path, *args, **kwargs):
        if ".old-" in Path(path).name:
            os.kill(os.getpid(), signal.SIGKILL)
        real_rmtree(path, *args, **kwargs)
    shutil.rmtree = _rmtree
from ngpt_ds.cli.prepare import main
sys.exit(main(sys.argv[3:]))
"""


def _corpus(path: Path, word: str, docs: int = 60) -> Path:
    rows = (json.dumps({"text": f"{word} {i} " + f"{word} words to tokenize here " * 20}) for i in range(docs))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _prepare(corpus: Path, out: Path, **kw) -> Path:
    return prepare_dataset(PrepareConfig(inputs=(str(corpus),), out=out, workers=1, progress=False, **kw))


@pytest.fixture
def old_dataset(tmp_path) -> tuple[Path, Path, Path]:
    """(dataset prepared from corpus 'alpha', a copy of its tokenizer, corpus 'beta' to replace it with)."""
    final = _prepare(_corpus(tmp_path / "alpha.jsonl", "alpha"), tmp_path / "ds", vocab_size=300)
    tok = tmp_path / "tok.model"
    shutil.copyfile(final / "tokenizer.model", tok)
    return final, tok, _corpus(tmp_path / "beta.jsonl", "beta")


def _overwrite_in_child(final: Path, tok: Path, corpus: Path, mode: str) -> int:
    args = ["--input", str(corpus), "--out", str(final), "--tokenizer", str(tok), "--workers", "1"]
    args += ["--no-progress", "--overwrite"]
    cmd = [sys.executable, "-c", CHILD, str(final), mode, *args]
    return subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120).returncode


def _source(final: Path) -> str:
    return load_dataset_meta(final).source


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".ds."))


def test_an_overwrite_killed_mid_swap_never_leaves_the_name_empty(old_dataset):
    """The old swap_in renamed the dataset aside, then the new one in: SIGKILLed between the two (rc -9), no
    `ds` was left and training said it did not exist. With RENAME_EXCHANGE the name is never empty."""
    final, tok, beta = old_dataset
    assert _overwrite_in_child(final, tok, beta, "exchange") == 0
    assert "beta.jsonl" in _source(final)
    assert _hidden(final.parent) == []


def test_without_rename_exchange_the_set_aside_copy_is_named_and_put_back(old_dataset, capsys):
    """Where renameat2 answers EINVAL the two renames remain; a kill between them left the old dataset hidden
    as .ds.old-XXXXXXXX, the loader said only "does not exist; prepare it", and the next prepare wrote a new
    dataset beside the hidden one. Now the loader names it and the next preparation puts it back first."""
    final, tok, beta = old_dataset
    assert _overwrite_in_child(final, tok, beta, "no-exchange") == -signal.SIGKILL
    assert not final.exists()
    [aside] = [p.name for p in final.parent.glob(".ds.old-*")]
    with pytest.raises(NgptConfigError) as e:
        load_dataset_meta(final)
    assert str(e.value) == (
        f"dataset {final} does not exist, but {aside} is the copy a killed --overwrite set aside: "
        f"mv it back (mv {final.parent / aside} {final})"
    )
    new = ".ds.new-" + aside[-32:]  # the complete new dataset, renamed out of its staging name
    assert _hidden(final.parent) == [new, aside]
    capsys.readouterr()
    assert staging.restore_set_aside(final) == [final.parent / new]  # what the next preparation does first
    assert "alpha.jsonl" in _source(final) and _hidden(final.parent) == []
    assert capsys.readouterr().err.splitlines() == [
        f"put {final} back: {aside} held it, set aside by an --overwrite killed before the new one took its name",
        f"removed {final.parent / new}: a copy of {final} left by an interrupted --overwrite",
    ]

    _prepare(beta, final, tokenizer=tok, overwrite=True)
    assert "beta.jsonl" in _source(final) and _hidden(final.parent) == []


def test_a_killed_overwrite_is_put_back_by_the_next_preparation_itself(old_dataset):
    """The rerun of the killed command (ngpt-prepare --overwrite) finds the set-aside copy, puts it back and
    replaces it: one `ds`, holding the new dataset, and nothing hidden left."""
    final, tok, beta = old_dataset
    assert _overwrite_in_child(final, tok, beta, "no-exchange") == -signal.SIGKILL
    assert not final.exists()
    _prepare(beta, final, tokenizer=tok, overwrite=True)
    assert "beta.jsonl" in _source(final) and _hidden(final.parent) == []


def test_a_rerun_without_overwrite_after_a_killed_swap_is_refused_before_tokenizing(old_dataset):
    """The rerun without --overwrite passed the checks (no `ds`), tokenized the whole corpus, then failed to
    publish: "--out ds appeared while preparing", the old copy put back meanwhile by the staging step. The copy
    is now put back before the checks, which refuse at once as for any existing dataset."""
    final, tok, beta = old_dataset
    assert _overwrite_in_child(final, tok, beta, "no-exchange") == -signal.SIGKILL
    with pytest.raises(NgptConfigError) as e:
        _prepare(beta, final, tokenizer=tok)
    assert "appeared while preparing" not in str(e.value) and "--overwrite" in str(e.value), str(e.value)
    assert "alpha.jsonl" in _source(final) and _hidden(final.parent) == []


def test_a_replaced_dataset_left_by_a_kill_during_its_deletion_is_removed(old_dataset):
    """Killed while deleting the replaced folder, the old swap_in left it hidden beside the new one for good
    (a second copy of the dataset on disk); the next preparation of the folder now removes it."""
    final, tok, beta = old_dataset
    assert _overwrite_in_child(final, tok, beta, "kill-in-delete") == -signal.SIGKILL
    assert "beta.jsonl" in _source(final)
    [aside] = _hidden(final.parent)
    assert aside.startswith(".ds.old-")
    _prepare(beta, final, tokenizer=tok, overwrite=True)
    assert _hidden(final.parent) == []


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "meta.json").write_text(text)
    return path


def test_several_set_aside_copies_and_no_dataset_are_refused_not_guessed(tmp_path):
    final = tmp_path / "ds"
    a = _folder(tmp_path / (".ds.old-" + "a" * 32), "a")
    b = _folder(tmp_path / (".ds.old-" + "b" * 32), "b")
    with pytest.raises(NgptConfigError) as e:
        staging.staging_dir(final)
    assert str(e.value) == (
        f"--out {final} does not exist, but {a.name}, {b.name} are copies killed replacements set aside: "
        "mv the one to keep back, or delete them"
    )
    assert not final.exists() and a.is_dir() and b.is_dir()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_a_persons_dated_backups_beside_the_dataset_are_never_taken_for_copies_a_swap_left(tmp_path):
    """Fault: a swap's leftovers were recognized by their name alone, `.ds.old-` or `.ds.new-` and 8 hex
    digits, which a dated backup also has: `.ds.old-20261201` was deleted by the next preparation of `ds`
    ("removed ...: a copy of ds left by an interrupted --overwrite"), and with no `ds` renamed to `ds`. The
    tags are now 32 hex digits (a whole uuid4), a name no person gives a backup."""
    final = tmp_path / "ds"
    old, new = _folder(tmp_path / ".ds.old-20261201", "backup"), _folder(tmp_path / ".ds.new-20261202", "next")
    assert staging.restore_set_aside(final) == [] and not final.exists()
    _folder(final, "dataset")
    assert staging.restore_set_aside(final) == []
    assert [(p / "meta.json").read_text() for p in (old, new, final)] == ["backup", "next", "dataset"]
    assert staging.missing_hint(final) == ""  # the loader's "but .ds.old-... is the copy ... set aside"


def test_a_dataset_missing_from_a_folder_one_cannot_list_is_the_usual_one_line_error(tmp_path, monkeypatch):
    """Fault: looking for a set-aside copy, the loader listed the missing dataset's folder; where that folder
    may be entered but not listed (mode 0711, as many home folders; faked here, as root reads any folder)
    `--data ~alice/ds` ended in a PermissionError traceback instead of "does not exist; prepare it"."""
    real = Path.iterdir

    def unlistable(self):
        if self == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", unlistable)
    with pytest.raises(NgptConfigError, match=r"^data dir \S+ does not exist; ") as e:
        load_dataset_meta(tmp_path / "ds")
    assert str(tmp_path / "ds") in str(e.value)


def test_a_copy_another_node_put_back_first_is_not_a_traceback(tmp_path, monkeypatch):
    """Fault: where flock does not reach other nodes, two preparations (the parts of one dataset, started
    together) both found `ds` missing and one set-aside copy; the second's rename of the copy, gone by then,
    ended in FileNotFoundError, a traceback. Now it finds `ds` put back and goes on."""
    final = tmp_path / "ds"
    copy = _folder(tmp_path / (".ds.old-" + "c" * 32), "old")
    real = os.rename

    def the_other_node_renames_first(src, dst):
        if Path(src) == copy and not final.exists():
            real(copy, final)  # the other node, just before this one
        real(src, dst)

    monkeypatch.setattr(os, "rename", the_other_node_renames_first)
    assert staging.restore_set_aside(final) == []
    assert (final / "meta.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_swap_in_falls_back_to_two_renames_where_exchange_answers_einval(tmp_path, monkeypatch):
    def einval(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    final = _folder(tmp_path / "ds", "old")
    new = staging.staging_dir(final)
    (new / "meta.json").write_text("new")
    monkeypatch.setattr(staging, "_renameat2", einval)
    assert staging.exchange(new, final) is False
    staging.swap_in(new, final)
    assert (final / "meta.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_exchange_swaps_two_folders_in_one_call(tmp_path):
    a, b = _folder(tmp_path / "a", "A"), _folder(tmp_path / "b", "B")
    assert staging.exchange(a, b) is True
    assert (a / "meta.json").read_text() == "B" and (b / "meta.json").read_text() == "A"
    with pytest.raises(FileNotFoundError):
        staging.exchange(a, tmp_path / "missing")
