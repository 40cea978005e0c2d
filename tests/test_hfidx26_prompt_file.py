"""ngpt-generate --prompt-file reads a regular file of at most 16 MiB, and stdin no further than that.

Fault: the prompt file was read whole with open().read(): /dev/zero (or stdin from it) was read until memory ran
out, a named pipe kept the command waiting on its open forever, and a 10 GiB file was read whole before the model
loaded, to be refused then as longer than the context. Now a named pipe, a device or a folder is refused
unopened, and a larger file unread, with one line naming it, before the model is loaded (MODEL here does not
exist: a prompt that passes gets the model's error instead).
"""

from __future__ import annotations

import io
import sys

import pytest
from fed_pipe import fed_pipe

from ngpt_ds.cli.generate import MAX_PROMPT_BYTES, main

NO_MODEL = (
    "does not exist. Give an exported model folder, a checkpoint directory (<out>/checkpoints/step_N) or a training "
    "run's --out directory"
)
"""The error of the MODEL given (tmp_path/no_model): a prompt that passes gets this one."""
FIX = "a prompt is a regular file (or '-' for stdin) of at most 16 MiB of text"


def _error(capsys, tmp_path, *argv: str) -> str:
    """The one error line generate prints for MODEL tmp_path/no_model; its exit status must be 2."""
    assert main([str(tmp_path / "no_model"), *argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_the_cap_is_16_mib():
    assert MAX_PROMPT_BYTES == 16 * 2**20


def test_a_prompt_file_larger_than_16_mib_is_refused_unread(capsys, tmp_path):
    """Fault: the old code read it whole and went on to load the model (here: the model's error)."""
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(MAX_PROMPT_BYTES + 1)  # sparse: no disk used
    assert _error(capsys, tmp_path, "--prompt-file", str(big)) == (
        f"error: --prompt-file {big} holds {MAX_PROMPT_BYTES + 1} bytes: {FIX}"
    )


def test_a_prompt_file_of_16_mib_is_read(capsys, tmp_path):
    """At the cap the prompt passes: the error is the missing model's, after the prompt was read."""
    exact = tmp_path / "exact.txt"
    exact.write_bytes(b"a" * MAX_PROMPT_BYTES)
    line = _error(capsys, tmp_path, "--prompt-file", str(exact))
    assert line == f"error: {tmp_path / 'no_model'} {NO_MODEL}"


def test_a_named_pipe_as_the_prompt_file_is_refused_unopened(capsys, tmp_path):
    """Fault: the old code waited on the open until a writer came (forever, without one), then read the pipe."""
    fifo = tmp_path / "prompt.fifo"
    with fed_pipe(fifo, b"In the beginning"):
        line = _error(capsys, tmp_path, "--prompt-file", str(fifo))
    assert line == f"error: --prompt-file {fifo} is a named pipe: {FIX}"


@pytest.mark.parametrize("kind", ["device", "folder"])
def test_a_device_or_a_folder_as_the_prompt_file_is_refused_unopened(capsys, tmp_path, kind):
    """/dev/zero was read until memory ran out (not run on the old code here, for that reason)."""
    path = "/dev/zero" if kind == "device" else str(tmp_path)
    what = "a device" if kind == "device" else "a folder"
    assert _error(capsys, tmp_path, "--prompt-file", path) == f"error: --prompt-file {path} is {what}: {FIX}"


def test_stdin_is_read_no_further_than_16_mib(capsys, tmp_path, monkeypatch):
    """`--prompt-file - < /dev/zero` was read until memory ran out; stdin is read to the cap + 1 byte now."""

    class Endless(io.RawIOBase):
        read_bytes = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[:] = bytes(len(buffer))
            Endless.read_bytes += len(buffer)
            return len(buffer)

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Endless())))
    assert _error(capsys, tmp_path, "--prompt-file", "-") == (
        f"error: --prompt-file - (stdin) holds more than {MAX_PROMPT_BYTES} bytes: {FIX}"
    )
    assert MAX_PROMPT_BYTES < Endless.read_bytes <= MAX_PROMPT_BYTES + 2 * io.DEFAULT_BUFFER_SIZE


def test_stdin_within_the_cap_is_read(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"In the beginning")))
    line = _error(capsys, tmp_path, "--prompt-file", "-")
    assert line == f"error: {tmp_path / 'no_model'} {NO_MODEL}"
