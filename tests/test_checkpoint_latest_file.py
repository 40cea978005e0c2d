"""DeepSpeed's `latest` file as a crafted or damaged checkpoint folder may hold it, read by the repair of a
`latest` left on an older step (ngpt_ds.train.resume._repair_latest) at the start of every resume.

Faults (crafted-file audit): a 1 GB `latest` was read whole (2.3 GB resident, 6.4 s) and its first 80
characters, NUL bytes included, went raw to the terminal; a named pipe there made the resume wait forever."""

import os
import subprocess
import sys

from ngpt_ds.train import checkpoint, resume

from conftest import REPO, cpu_env


def _complete_steps(folder, *steps):
    for step in steps:
        (folder / f"{checkpoint.TAG_PREFIX}{step:08d}").mkdir(parents=True)
        (folder / f"{checkpoint.TAG_PREFIX}{step:08d}" / checkpoint.COMPLETE).write_text("{}")
    return folder


def test_an_oversized_latest_is_not_read_whole_nor_printed(tmp_path):
    folder = _complete_steps(tmp_path / "checkpoints", 2, 4)
    (folder / checkpoint.LATEST).write_bytes(b"\x00\x1b[2J" * 3_000_000)  # 12 MB of NULs and escapes
    said = resume._repair_latest(folder)
    assert said == (
        f"checkpoints/{checkpoint.LATEST} named more than {resume.LATEST_MAX_BYTES} bytes: no complete checkpoint "
        f"has that name here (moved or deleted by hand, or never one); it names {checkpoint.TAG_PREFIX}00000004 now"
    )
    assert (folder / checkpoint.LATEST).read_text() == f"{checkpoint.TAG_PREFIX}00000004"


def test_control_characters_in_a_short_latest_are_shown_escaped(tmp_path):
    folder = _complete_steps(tmp_path / "checkpoints", 2)
    (folder / checkpoint.LATEST).write_bytes(b"step_1\x00\x1b[2J")
    said = resume._repair_latest(folder)
    assert said is not None and "named 'step_1\\x00\\x1b[2J':" in said and "\x00" not in said


def test_a_named_pipe_for_latest_is_left_alone_not_waited_on(tmp_path):
    folder = _complete_steps(tmp_path / "checkpoints", 2)
    os.mkfifo(folder / checkpoint.LATEST)
    code = f"from pathlib import Path; from ngpt_ds.train import resume; print(resume._repair_latest(Path({str(folder)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cpu_env(), cwd=REPO,
                          timeout=60)  # fmt: skip
    assert (proc.returncode, proc.stdout.strip()) == (0, "None"), proc.stderr[-2000:]


def test_a_named_pipe_swapped_in_after_the_check_is_not_waited_on(tmp_path, monkeypatch):
    """Fault: `latest` was checked to be a regular file, then opened with a plain open: a named pipe put in its
    place between the two (here: the check answers for the file that was there) made the resume wait for a
    writer for good. The open now refuses it without waiting, and `latest` is left as it is."""
    from pathlib import Path

    from conftest import fails_after

    folder = _complete_steps(tmp_path / "checkpoints", 2)
    latest = folder / checkpoint.LATEST
    os.mkfifo(latest)
    checked = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: True if self == latest else checked(self))
    with fails_after(10, "reading a named pipe at latest"):
        assert resume._repair_latest(folder) is None
    assert latest.is_fifo()
