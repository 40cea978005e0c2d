"""A checkpoint write refused by a file-size limit, not by a full disk (helper red35, session 35).

Fault: a job started under `ulimit -f N` (RLIMIT_FSIZE: some clusters set one for batch jobs; Python ignores SIGXFSZ,
so a write past it fails with EFBIG, and torch's zip writer with 'unexpected pos') stopped with exit 74 and the line
'... 71.506 GiB free on the filesystem; the checkpoint needs about 1.0 MiB ... Free space there (or raise the quota),
or lower keep_checkpoints, then resume': freeing space or lowering keep_checkpoints changes nothing, and the rerun
failed the same way at its next save. The line now names the limit and the fix (`ulimit -f unlimited`); a file too
large for the filesystem itself (EFBIG with no limit: FAT32's 4 GiB) is named as such.
"""

import errno
import resource
import subprocess
import sys
import types

import pytest
from launching import rank_env

from ngpt_ds.model import ModelConfig
from ngpt_ds.train import checkpoint, preflight
from ngpt_ds.train.memory_plan import parameters_at_least

from conftest import (
    REPO,
    assert_complete,
    free_port,
    tiny_ngpt,
    tiny_train,
    torchrun,
    train_cmd,
    write_ds_config,
    write_yaml,
)

LIMIT = (
    preflight.CHECKPOINT_FILE_BYTES_PER_PARAMETER * parameters_at_least(ModelConfig(**tiny_ngpt(), vocab_size=512)) // 2
    + 4096
)
"""4 KiB above what the startup check asks of a tiny 2-rank run (384 KiB: the fp32 master and moments of each rank's
half of 65,536 parameters at the least), below each rank's optimizer file of the real run (which also holds nGPT's
scaling vectors and the pickle's framing; asserted below), above every other file the run writes before its save."""


def ranks_under_limit(args: list, limit: int) -> list[tuple[int, str]]:
    """launch/train.py's `args` as 2 plain ranks, each started under RLIMIT_FSIZE `limit` (as `ulimit -f` in a job
    script sets it): each one's (exit status, output)."""
    port, procs = free_port(), []

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    for rank in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, *map(str, args)],
                env=rank_env(rank, 2, port),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=limited,
            )
        )
    return [(proc.wait(timeout=300), proc.communicate()[0]) for proc in procs]


def test_a_save_past_the_file_size_limit_names_the_limit_and_a_rerun_resumes_from_the_last_good(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    torchrun(*train_cmd(config, ds, tiny_dataset, out))  # steps 2 and 4 saved, no limit
    assert_complete(checkpoints / "step_00000004")
    assert max(f.stat().st_size for f in (checkpoints / "step_00000004").iterdir()) > LIMIT

    ranks = ranks_under_limit(train_cmd(config, ds, tiny_dataset, out, "--max-steps", "6"), LIMIT)
    assert [rc for rc, _ in ranks] == [checkpoint.WRITE_FAILED_EXIT_CODE] * 2, ranks[0][1][-3000:]
    output = ranks[0][1]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert errors[0].startswith("error: checkpoint of step 6 not saved: "), errors[0]
    assert "this process may write no file over 0.4 MiB (its file-size limit: `ulimit -f` in the shell" in errors[0]
    assert f"on the filesystem of {checkpoints}. Raise the limit (`ulimit -f unlimited` before the launch)" in errors[0]
    assert "Free space there" not in errors[0], errors[0]  # the old line: "... Free space there (or raise the quota)"
    # the last good checkpoint is whole, nothing half written is left
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_")) == [
        "step_00000002",
        "step_00000004",
    ]
    assert_complete(checkpoints / "step_00000004")

    rerun = torchrun(*train_cmd(config, ds, tiny_dataset, out, "--max-steps", "6"))  # the limit raised
    assert f"resumed from {checkpoints / 'step_00000004'} at step 4" in rerun.stdout, rerun.stdout[-3000:]
    assert_complete(checkpoints / "step_00000006")


@pytest.fixture
def no_file_size_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert soft == resource.RLIM_INFINITY, "the test process runs under a file-size limit"
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def engine_of(parameters: int):
    """What _space_figures reads of an engine before a first save: its module's parameter count (ZeRO 3's ds_numel
    read first), without allocating them."""
    param = types.SimpleNamespace(ds_numel=parameters, numel=lambda: parameters)
    return types.SimpleNamespace(module=types.SimpleNamespace(parameters=lambda: [param]))


def test_efbig_without_a_limit_names_the_filesystem_not_free_space(tmp_path, no_file_size_limit):
    err = OSError(errno.EFBIG, "File too large", str(tmp_path / "step_00000002.tmp-save" / "x.pt"))
    line = checkpoint._space_figures(err, engine_of(5 * 2**30 // 16), tmp_path, 2)  # 5 GiB
    assert line == (
        "; a file of the checkpoint (about 5.000 GiB in all, 16 bytes per parameter) is larger than the filesystem "
        f"of {tmp_path} takes. Put --out on another filesystem, then resume"
    ), line


def test_efbig_under_a_limit_names_the_limit_even_on_a_full_disk(tmp_path, no_file_size_limit):
    """EFBIG is the limit's own errno: named whatever the free space (a full disk gives ENOSPC)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    err = OSError(errno.EFBIG, "File too large", str(tmp_path / "x.pt"))
    line = checkpoint._space_figures(err, engine_of(2**30 // 16), tmp_path, 2)  # needs 1 GiB
    assert line.startswith(
        "; this process may write no file over 3.0 MiB (its file-size limit: `ulimit -f` in the shell or job script "
        "that started it); the checkpoint needs about 1.000 GiB (16 bytes per parameter), "
    ), line
    assert line.endswith("Raise the limit (`ulimit -f unlimited` before the launch), then resume"), line


def test_a_full_disk_under_a_generous_limit_still_says_to_free_space(tmp_path, no_file_size_limit):
    """torch's failure (no errno) with less free than the checkpoint needs: the disk, as before."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**40, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    err = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
    line = checkpoint._space_figures(err, engine_of(2**50 // 16), tmp_path, 2)  # needs 1 PiB: more than is free
    assert "file-size limit" not in line
    assert line.endswith("Free space there (or raise the quota), or lower keep_checkpoints, then resume"), line
