"""The container entrypoint's exit code and message for a command it cannot start (cli20 review).

Fault: launch/entrypoint.py exited 127 for every command it could not start. A shell (and `docker run`)
exits 127 only when the command is not found and 126 when it is found but cannot be run (a script
without the execute bit, a folder), so a job scheduler or a wrapper script that tells the two apart was
told 'not found' for a script that is there. Before: 127 and 'error: cannot run ./train.sh: Permission
denied'. Now: 126, and the message says what to do (chmod +x, or name its interpreter)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

ENTRY = str(REPO / "launch/entrypoint.py")


def _run(cwd, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, ENTRY, *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def _shell_status(cwd, command: str) -> int:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, timeout=60).returncode


def test_a_script_without_the_execute_bit_exits_126_as_the_shell_does(tmp_path):
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    proc = _run(tmp_path, "./train.sh")
    assert _shell_status(tmp_path, "./train.sh") == 126
    assert (proc.returncode, proc.stdout) == (126, "")
    assert proc.stderr == (
        "error: cannot run ./train.sh: Permission denied (not executable: chmod +x ./train.sh, or name its "
        "interpreter first: python3 ./train.sh, bash ./train.sh)\n"
    )


def test_a_folder_exits_126_naming_it_a_folder(tmp_path):
    (tmp_path / "launch").mkdir()
    proc = _run(tmp_path, "./launch")
    assert _shell_status(tmp_path, "./launch") == 126
    assert (proc.returncode, proc.stderr) == (
        126,
        "error: cannot run ./launch: Permission denied (it is a folder: name the program or script inside it)\n",
    )


def test_a_file_that_is_no_program_exits_126(tmp_path):
    """An executable text file without a #! line: exec refuses it (ENOEXEC), where a shell would have read
    it as a shell script; 126 and the way out, not 127 'not found'."""
    script = tmp_path / "run"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    proc = _run(tmp_path, "./run")
    assert (proc.returncode, proc.stderr) == (
        126,
        "error: cannot run ./run: Exec format error (not a program, and no #! line: name its interpreter "
        "first: python3 ./run, bash ./run)\n",
    )


def test_a_command_not_found_still_exits_127(tmp_path):
    proc = _run(tmp_path, "deepspeedd", "launch/train.py")
    assert _shell_status(tmp_path, "deepspeedd") == 127
    assert (proc.returncode, proc.stderr) == (
        127,
        "error: cannot run deepspeedd: No such file or directory (not on PATH or no such file: check the name, "
        "or give its path)\n",
    )
    script = tmp_path / "old.sh"
    script.write_text("#!/opt/missing/bin/python\nprint(1)\n")
    script.chmod(0o755)
    proc = _run(tmp_path, "./old.sh")
    assert (proc.returncode, proc.stderr) == (
        127,
        "error: cannot run ./old.sh: No such file or directory (its #! line names an interpreter that is not "
        "installed: install it, or run the script with one that is)\n",
    )
