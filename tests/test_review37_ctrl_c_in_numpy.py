"""A Ctrl-C that lands in numpy's Python code after numpy's import stays 'interrupted' under `ulimit -v`
(ngpt_ds/limits.blas_failure).

Fault (review of 1f816e3 and 09ab733): blas_failure took any KeyboardInterrupt with a numpy frame in its traceback,
raised under an address-space limit or a large `ulimit -s`, for OpenBLAS's SIGINT at numpy's import. Under a
cluster's `ulimit -v`, a Ctrl-C of ngpt-prepare (and, since 09ab733, of a training rank, ngpt-export, ngpt-generate or
ngpt-evaluate) that arrived while numpy's own Python code ran (np.vectorize, np.memmap, ...) ended on "error: this
process could not start numpy's OpenBLAS threads at numpy's import ..." with exit status 2 and advice to set
OPENBLAS_NUM_THREADS, instead of 'interrupted'. Now only numpy's import (its module-level code, frames named
'<module>') is read as OpenBLAS's; tests/test_data37_openblas_limit.py keeps that case."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import run_limited

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import numpy as np
from ngpt_ds.limits import TRAIN, limit_named

def pressed(x):
    raise KeyboardInterrupt  # Ctrl-C, arriving while numpy's vectorize (numpy's Python code) runs this
try:
    with limit_named(TRAIN):
        np.vectorize(pressed)(np.arange(3))
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_ctrl_c_inside_numpy_after_its_import_is_not_read_as_openblas_under_ulimit_v():
    """Old code: the child ended in 'NgptConfigError: this process could not start numpy's OpenBLAS threads at
    numpy's import ...' (exit 1 here, uncaught), where it printed 'interrupted'."""

    run = run_limited(
        [sys.executable, "-c", SCRIPT],
        timeout=120,
        address=48 << 30,  # a real address-space limit, roomy enough for Python and numpy
        address_hard=True,
        env=os.environ | {"PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
    )
    assert "OpenBLAS" not in run.stderr, run.stderr[-3000:]
    assert (run.returncode, run.stdout) == (0, "interrupted\n"), run.stderr[-3000:]
