"""A failed save is blamed on the file-size limit only where a file of the checkpoint can be over it (helper review35,
session 35).

Fault (297b2f4): under any finite `ulimit -f`, a save that failed in torch's zip writer (no errno: a spent quota, an
I/O error) with the disk's free space above the checkpoint's need read "this process may write no file over 1024 GiB
(its file-size limit ...) ... Raise the limit (`ulimit -f unlimited` before the launch)" for a checkpoint of 1 MiB,
none of whose files can be over that limit; raising it changes nothing, and the line no longer named the quota.
(A quota spent is not seen in the filesystem's free space.) The limit is now named only when it is below what the
checkpoint needs; above it the failure reads as before 297b2f4.
"""

import resource
import types

import pytest

from ngpt_ds.train import checkpoint


def engine_of(parameters: int):
    """What _space_figures reads of an engine before a first save: its module's parameter count (ZeRO 3's ds_numel
    read first), without allocating them (as in tests/test_red35_file_size_limit.py)."""
    param = types.SimpleNamespace(ds_numel=parameters, numel=lambda: parameters)
    return types.SimpleNamespace(module=types.SimpleNamespace(parameters=lambda: [param]))


@pytest.fixture
def no_file_size_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert soft == resource.RLIM_INFINITY, "the test process runs under a file-size limit"
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_write_failure_under_a_limit_far_above_the_checkpoint_is_not_blamed_on_the_limit(
    tmp_path, no_file_size_limit
):
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**40, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))  # 1 TiB
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 15552 vs 15446")
    line = checkpoint._space_figures(err, engine_of(2**20 // 16), tmp_path, 2)  # needs 1 MiB, far less than is free
    # old code: "; this process may write no file over 1024.000 GiB (its file-size limit: ..."
    assert line == (
        f"; the checkpoint needs about 1.0 MiB (16 bytes per parameter) on the filesystem of {tmp_path} when the "
        "write failed. Free space there (or raise the quota), or lower keep_checkpoints, then resume"
    ), line


def test_a_write_failure_under_a_limit_below_the_checkpoint_names_the_limit(tmp_path, no_file_size_limit):
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**19, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))  # 0.5 MiB
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 15552 vs 15446")
    line = checkpoint._space_figures(err, engine_of(2**20 // 16), tmp_path, 2)
    assert line == (
        "; this process may write no file over 0.5 MiB (its file-size limit: `ulimit -f` in the shell or job script "
        f"that started it); the checkpoint needs about 1.0 MiB (16 bytes per parameter) on the filesystem of {tmp_path}. "
        "Raise the limit (`ulimit -f unlimited` before the launch), then resume"
    ), line
