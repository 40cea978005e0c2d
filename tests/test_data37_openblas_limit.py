"""Fault: ngpt-prepare under a low address-space limit (`ulimit -v`) or a large `ulimit -s` ended on OpenBLAS's
"pthread_create failed" lines and "interrupted", exit status 130, though nothing interrupted it: numpy's OpenBLAS
starts a thread per core at numpy's import (ngpt_ds.data.prepare imports numpy), and where one cannot be started it
raises SIGINT in the process, which the command read as Ctrl-C. Now one line naming the limit and the fix
(OPENBLAS_NUM_THREADS=1, or the limit), exit status 2 (ngpt_ds.limits.blas_failure). OpenBLAS starts its threads only
on a machine of 2 cores or more (it starts no more than there are)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import run_limited, unmappable_stack

ROOT = Path(__file__).resolve().parents[1]


def _prepare(tmp_path: Path, limit_gib: int | None, stack_mib: int, threads: str) -> subprocess.CompletedProcess[str]:
    """ngpt-prepare (its main, as the console script runs it) under real limits set in the child before exec."""

    (tmp_path / "a.txt").write_text("one two three\n\nfour five six\n\n" * 50, encoding="utf-8")
    return run_limited(
        [sys.executable, "-m", "ngpt_ds.cli.prepare", "--input", "a.txt", "--out", "out", "--vocab-size", "300"],
        timeout=300,
        stack=stack_mib << 20,
        address=None if limit_gib is None else limit_gib << 30,
        address_hard=True,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": threads},
    )


def test_openblas_threads_that_cannot_start_are_one_line_not_interrupted(tmp_path):
    """`ulimit -v` 6 GiB with `ulimit -s` 8 GiB: no thread's stack fits. Before: 'assert 130 == 2', the last line
    'interrupted'. Now the one line naming both limits and the fixes; nothing written."""
    run = _prepare(tmp_path, 6, 8 << 10, threads="2")
    assert "pthread_create failed" in run.stderr  # OpenBLAS's own lines, printed before ours
    assert run.returncode == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: this process could not start numpy's OpenBLAS threads at numpy's import (the 'pthread_create failed' "
        "lines above; OpenBLAS then raises SIGINT, read as Ctrl-C) under its address-space limit (`ulimit -v`) of "
        "6.0 GiB, "
    ), last
    assert last.endswith(
        " of it mapped already and a stack of `ulimit -s`, 8.0 GiB, for each thread. Lower `ulimit -s` (8 MiB is the "
        "usual; datasets' threads map such a stack too) in the shell or job script before ngpt-prepare. Or: Raise "
        "the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script before ngpt-prepare)"
    ), last
    assert "interrupted" not in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_large_stack_alone_is_named_and_lowering_it_prepares(tmp_path):
    """`ulimit -s` of 64 GiB or more (conftest.unmappable_stack) and no `ulimit -v`: the stack is named, the limit is not (before: 'interrupted', 130).
    OPENBLAS_NUM_THREADS=1 then only moves the failure to datasets' first thread, which is named too (before: its
    traceback, exit 1); at 64 MiB the same command prepares the corpus."""
    stack = unmappable_stack()
    run = _prepare(tmp_path, None, stack >> 20, threads="2")
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "error: this process could not start numpy's OpenBLAS threads at numpy's import (the 'pthread_create failed' "
        f"lines above; OpenBLAS then raises SIGINT, read as Ctrl-C) under a stack of `ulimit -s`, {stack / 2**30:.1f} GiB, for each "
        "thread. Lower `ulimit -s` (8 MiB is the usual; datasets' threads map such a stack too) in the shell or job "
        "script before ngpt-prepare"
    )
    run = _prepare(tmp_path, None, stack >> 20, threads="1")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr  # others' lines come before it (jemalloc's, tqdm's): their own words
    assert run.stderr.strip().splitlines()[-1] == (
        "error: this process could not start a thread (datasets reads a corpus with threads, each of which maps a "
        f"stack of `ulimit -s`, here {stack / 2**30:.1f} GiB). Lower `ulimit -s` (8 MiB is the usual) in the shell or job script "
        "before ngpt-prepare"
    )
    assert not (tmp_path / "out").exists()
    run = _prepare(tmp_path, None, 64, threads="2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "meta.json").is_file()


def test_a_low_limit_alone_names_openblas_threads(tmp_path):
    """The line for a low `ulimit -v` with the usual stack (a many-core machine: a stack of 8 MiB for each of its
    OpenBLAS threads): OPENBLAS_NUM_THREADS=1, or the limit raised. Checked on the line's own words, in a child
    under a real limit, since a 2-core machine starts too few threads to fail."""
    script = (
        "from ngpt_ds.limits import blas_failure\n"
        "try:\n"
        "    exec(compile('raise KeyboardInterrupt', '/site-packages/numpy/_core/multiarray.py', 'exec'))\n"
        "except KeyboardInterrupt as err:\n"
        "    print(blas_failure(err))\n"
    )
    (tmp_path / "check.py").write_text(script, encoding="utf-8")
    run = _child(tmp_path, 5 << 30, 8 << 20)
    assert run.returncode == 0, run.stderr[-3000:]
    line = run.stdout.strip()
    assert line.startswith(
        "this process could not start numpy's OpenBLAS threads at numpy's import (the 'pthread_create failed' lines "
        "above; OpenBLAS then raises SIGINT, read as Ctrl-C) under its address-space limit (`ulimit -v`) of 5.0 GiB, "
    ), line
    assert line.endswith(
        " of it mapped already. Set OPENBLAS_NUM_THREADS=1 (numpy then starts no thread) in the shell or job script "
        "before ngpt-prepare. Or: Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job "
        "script before ngpt-prepare)"
    ), line


def _child(tmp_path: Path, limit: int, stack: int) -> subprocess.CompletedProcess[str]:
    """check.py in a child under a soft `ulimit -v` of `limit` and a `ulimit -s` of `stack` bytes."""

    return run_limited(
        [sys.executable, "check.py"],
        timeout=120,
        stack=stack,
        address=limit,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
    )


def test_ctrl_c_stays_interrupted(tmp_path):
    """Only a SIGINT raised inside numpy's import, with a limit that can explain it, is named; Ctrl-C anywhere else,
    or inside numpy's import without such a limit, stays KeyboardInterrupt ('interrupted', 130)."""
    script = (
        "import resource\n"
        "from ngpt_ds.limits import blas_failure\n"
        "def caught(code, where):\n"
        "    try:\n"
        "        exec(compile(code, where, 'exec'))\n"
        "    except KeyboardInterrupt as err:\n"
        "        return blas_failure(err)\n"
        "numpy_import = ('raise KeyboardInterrupt', '/site-packages/numpy/_core/multiarray.py')\n"
        "elsewhere = ('raise KeyboardInterrupt', '/work/corpus.py')\n"
        "print(caught(*numpy_import) is not None, caught(*elsewhere))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
        "print(caught(*numpy_import), caught(*elsewhere))\n"
    )
    (tmp_path / "check.py").write_text(script, encoding="utf-8")
    run = _child(tmp_path, 5 << 30, 8 << 20)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == ["True None", "None None"]
