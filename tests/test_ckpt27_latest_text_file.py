"""A text file named `latest` is no evidence of a checkpoints folder (helper ckpt27, session 27).

Fault: out_folder took any regular file named `latest` for DeepSpeed's tag pointer, so a user's project folder
holding notes in a file `latest` was refused as 'a checkpoints folder (it holds latest directly)', both as --out
and as a parent of --out (`--out ~/proj/runs/x`); a folder named checkpoints holding such a file was refused as
another run's checkpoints/. Now `latest` counts only when it names a tag, as DeepSpeed and ngpt_ds write it
(step_N, global_stepN, or a folder beside it); every real case stays refused."""

from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import out_folder, run_lock

NOTES = "latest release: 0.4.1\nsee CHANGES.md\n"


def accepted(out: Path) -> None:
    run_lock.acquire(out).release()
    assert (out / "train.lock").read_text() == ""


def refusal(out: Path) -> str:
    with pytest.raises(NgptConfigError) as err:
        out_folder.check_out_folder(out)
    return str(err.value)


def test_a_project_folder_holding_a_text_file_latest_is_a_parent_of_runs(tmp_path):
    """Old code: '--out <proj>/runs/x is inside <proj>, a checkpoints folder (it holds latest directly)'."""
    proj = tmp_path.resolve() / "proj"
    proj.mkdir()
    (proj / "latest").write_text(NOTES)
    accepted(proj / "runs" / "x")
    assert sorted(p.name for p in proj.iterdir()) == ["latest", "runs"]
    assert (proj / "latest").read_text() == NOTES


def test_a_folder_holding_a_text_file_latest_is_accepted_as_out(tmp_path):
    """Old code: '--out <notes> holds latest directly: it is a checkpoints folder, not a run folder'."""
    notes = tmp_path.resolve() / "notes"
    notes.mkdir()
    (notes / "latest").write_text(NOTES)
    accepted(notes)
    assert (notes / "latest").read_text() == NOTES


def test_a_folder_named_checkpoints_holding_a_text_file_latest_is_no_runs_checkpoints(tmp_path):
    """Old code: '--out <work>/checkpoints/run is inside <work>/checkpoints, the checkpoints folder of the run'."""
    work = tmp_path.resolve() / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "latest").write_text("")  # an empty file: no tag
    accepted(work / "checkpoints" / "run")


@pytest.mark.parametrize(
    ("content", "beside"),
    [("step_00000004", None), ("global_step100\n", None), ("my_tag", "my_tag"), ("step_00000002", "step_00000002")],
)
def test_a_latest_naming_a_tag_still_marks_a_checkpoints_folder(tmp_path, content, beside):
    """DeepSpeed's tag pointer (its default global_stepN, ngpt_ds's step_N, or a custom tag whose folder is there)."""
    store = tmp_path.resolve() / "store"
    store.mkdir()
    (store / "latest").write_text(content)
    if beside:
        (store / beside).mkdir()
    assert refusal(store).startswith(f"--out {store} holds latest directly: it is a checkpoints folder")
    assert refusal(store / "new").startswith(
        f"--out {store / 'new'} is inside {store}, a checkpoints folder (it holds latest directly)"
    )
    work = tmp_path.resolve() / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "latest").write_text(content)
    if beside:
        (work / "checkpoints" / beside).mkdir()
    assert refusal(work / "checkpoints" / "run").startswith(
        f"--out {work / 'checkpoints' / 'run'} is inside {work / 'checkpoints'}, the checkpoints folder of the run"
    )


def test_a_latest_that_is_a_pipe_or_huge_is_no_evidence_and_never_read(tmp_path):
    """A named pipe `latest` is never opened (no hang); a 1 MiB one is not a tag pointer."""
    import os

    fifo = tmp_path.resolve() / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "latest")
    accepted(fifo / "runs" / "x")
    big = tmp_path.resolve() / "big"
    big.mkdir()
    (big / "latest").write_text("step_00000004" + " " * 2**20)
    accepted(big / "runs" / "x")


@pytest.mark.parametrize("content", ["a" * 3000, "\udcff"])
def test_a_latest_holding_a_name_too_long_or_not_utf8_is_no_evidence_and_no_traceback(tmp_path, content):
    """A name longer than a folder name may be (or bytes that are no UTF-8) is no tag: this check's own first version
    raised OSError 'File name too long' from check_out_folder."""
    folder = tmp_path.resolve() / "notes"
    folder.mkdir()
    (folder / "latest").write_bytes(content.encode("utf-8", errors="surrogateescape"))
    accepted(folder / "runs" / "x")
    accepted(folder)
