"""Fault: ngpt-prepare under a low address-space limit (`ulimit -v`) ended on a 40-line traceback whose last line was
"RuntimeError: can't start new thread" (datasets resolves a corpus's files with a pool of threads, and each thread
maps a stack of `ulimit -s` bytes) or "ImportError: libtorch_cpu.so: failed to map segment from shared object"
(torch, imported by datasets when it opens a stream), exit status 1, naming neither the limit nor the fix. Now one
line naming the limit, what is mapped and the fix, exit status 2 (ngpt_ds.limits)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # OpenBLAS (numpy's import) starts its own threads first, and its failure is its own message (see the report).
    env = os.environ | {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_thread_datasets_cannot_start_under_ulimit_v_is_one_line(tmp_path):
    """A real `ulimit -v` of 6 GiB on the command's shell, with `ulimit -s` at 8 GiB so that the first thread's
    stack cannot fit whatever the rest of the process maps (the shape of a lower limit with 8 MiB stacks, where
    which mapping fails first depends on the machine). Before: 'assert 1 == 2' and the traceback. Now the one line,
    and nothing written."""
    (tmp_path / "a.txt").write_text("one two three\n\nfour five six\n\n" * 50, encoding="utf-8")
    run = _shell(
        f"ulimit -s {8 << 20} && ulimit -v {6 << 20} && exec {sys.executable} {ROOT / 'launch' / 'prepare_data.py'} "
        "--input a.txt --out out --vocab-size 300",
        tmp_path,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: this process could not start a thread (datasets reads a corpus with threads, each of which maps a "
        "stack of `ulimit -s`, here 8.0 GiB) under its address-space limit (`ulimit -v`) of 6.0 GiB, "
    ), last
    assert last.endswith(
        " GiB of it mapped already. Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job "
        "script before ngpt-prepare), or lower `ulimit -s`"
    ), last
    assert not (tmp_path / "out").exists()


def test_only_a_mapping_failure_under_a_finite_limit_is_named(tmp_path):
    """The library that cannot be mapped gets its line too (its message as the loader words it); any other
    RuntimeError or ImportError, and any failure without an address-space limit, stays a traceback (None)."""
    script = (
        "import resource\n"
        "from ngpt_ds.limits import limit_failure\n"
        "lib = ImportError('libtorch_cpu.so: failed to map segment from shared object')\n"
        "print(limit_failure(lib), limit_failure(RuntimeError('CUDA error')), limit_failure(ImportError('no x')))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # the soft limit\n"
        'print(limit_failure(lib), limit_failure(RuntimeError("can\'t start new thread")))\n'
    )
    (tmp_path / "check.py").write_text(script, encoding="utf-8")
    run = _shell(f"ulimit -S -v {5 << 20} && {sys.executable} check.py", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    named, unlimited = run.stdout.splitlines()
    assert named.startswith(
        "this process could not load a library (libtorch_cpu.so: failed to map segment from shared object) under "
        "its address-space limit (`ulimit -v`) of 5.0 GiB, "
    ), named
    assert named.endswith(
        " of it mapped already. Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script "
        "before ngpt-prepare) None None"
    ), named
    assert unlimited == "None None"
