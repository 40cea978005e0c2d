"""A file-size limit too small for any checkpoint of the run is refused at startup (lead, session 35).

Fault: a run started under `ulimit -f N` (RLIMIT_FSIZE) with N below the size of one rank's checkpoint file trained
up to its first save and only then stopped (exit 74, "checkpoint of step K not saved"), and a rerun under the same
job script trained from the last checkpoint to the same failure: the compute between them was spent for nothing.
Every save writes, on some rank, a file of at least 12 bytes per parameter over the ranks (the fp32 master weights
and Adam's two moments), and every run saves at its last step, so a limit below that is now refused before the
output folder, the process group or the model exist. The bound is checked here against the files real runs write,
so that the refusal cannot refuse a run whose checkpoints would fit.
"""

import resource
import subprocess
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.train import preflight
from ngpt_ds.train.memory_plan import parameters_at_least

from conftest import REPO, tiny_ngpt, tiny_train, train_cmd, train_run, write_ds_config, write_yaml

VOCAB = 512
"""tiny_dataset's vocabulary."""


def bound(world_size: int) -> int:
    """The startup check's lower bound on one rank's largest checkpoint file for tiny_ngpt over `world_size` ranks."""
    parameters = parameters_at_least(ModelConfig(**tiny_ngpt(), vocab_size=VOCAB))
    return preflight.CHECKPOINT_FILE_BYTES_PER_PARAMETER * parameters // world_size


def test_a_limit_below_one_checkpoint_file_is_refused_before_anything_starts(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    limit = 64 * 1024
    assert limit < bound(1)  # 768 KiB: the fp32 master and moments of 65,536 parameters at the least

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, *map(str, train_cmd(config, ds, tiny_dataset, out))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited,
    )
    output = result.stdout + result.stderr
    # old code: it trained its 4 steps and exited 74 at the final save ("checkpoint of step 4 not saved")
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: this process may write no file over 0.1 MiB (its file-size limit: `ulimit -f` in the shell or job "
        f"script that started it), and every checkpoint of this run writes a file of at least 0.8 MiB into {out} "
        "(the fp32 master weights and Adam's two moments of one rank's share of at least 65,536 parameters over 1 "
        "rank), so no checkpoint could be saved. Raise the limit (`ulimit -f unlimited` before the launch)"
    ], output[-3000:]
    assert "Traceback" not in output
    assert not out.exists()  # refused before --out was made


@pytest.mark.parametrize(
    ("stage", "bf16", "ranks"),
    [(0, False, 1), (2, False, 2), (3, True, 2)],
    ids=["zero0-fp32-1rank", "zero2-fp32-2ranks", "zero3-bf16-2ranks"],
)
def test_the_bound_is_below_the_largest_file_a_real_checkpoint_writes(tmp_path, tiny_dataset, stage, bf16, ranks):
    """The refusal is only right if every run writes a file at least that large: a bound above DeepSpeed's real
    files would refuse runs whose checkpoints fit (checked at ZeRO 0, whose optimizer state is inside the model states
    file, and at ZeRO 2 and 3 over 2 ranks, whose shares are per-rank optimizer files)."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "ds.json", stage=stage, bf16=bf16, micro=4, accum=1)
    out = tmp_path / "run"
    train_run(config, ds, tiny_dataset, out, nproc=ranks)
    files = [f for f in (out / "checkpoints" / "step_00000002").iterdir() if f.suffix == ".pt"]
    largest = max(f.stat().st_size for f in files)
    assert bound(ranks) <= largest, (bound(ranks), sorted((f.name, f.stat().st_size) for f in files))
    # and not far below it: the bound is the optimizer state itself, not a loose guess
    assert largest < 1.25 * bound(ranks), (bound(ranks), largest)


def test_the_limit_is_refused_below_the_bound_only(tmp_path):
    """No limit takes any size; a limit of exactly the bound passes; one byte less is refused."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert soft == resource.RLIM_INFINITY, "the test process runs under a file-size limit"
    preflight.check_file_size_limit(10**12, 1, tmp_path)
    parameters, ranks = 1_000_000, 4
    need = preflight.CHECKPOINT_FILE_BYTES_PER_PARAMETER * parameters // ranks  # 3,000,000 bytes
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (need, hard))
        preflight.check_file_size_limit(parameters, ranks, tmp_path)
        resource.setrlimit(resource.RLIMIT_FSIZE, (need - 1, hard))
        with pytest.raises(NgptConfigError, match=r"no file over 2\.9 MiB .* at least 2\.9 MiB into "):
            preflight.check_file_size_limit(parameters, ranks, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
