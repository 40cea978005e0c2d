"""The startup refusal of a small file-size limit refused pipelines whose checkpoints fit (helper review35, session 35).

Fault: preflight.check_file_size_limit (7d2bae7) refuses a `ulimit -f` below 12 bytes per parameter over the ranks,
as the fp32 master and Adam's two moments of one rank's share. A pipeline at ZeRO 0 (fp32, torch's Adam: no master
copy) writes its weights into one layer_NN-model_states.pt per layer and only Adam's two moments into each stage's
mp_rank_NN_model_states.pt: 8 bytes per parameter of the stage. A 2-stage tiny run's largest file is 296 KB, the
12-byte bound 393 KB: under `ulimit -f 320` (KiB) every checkpoint fits, yet the run was refused at startup (exit 2,
"every checkpoint of this run writes a file of at least 0.4 MiB"). Such a pipeline is now held to 8 bytes.
"""

import resource
import subprocess
import sys

import pytest
from launching import rank_env

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.train import preflight
from ngpt_ds.train.memory_plan import parameters_at_least

from conftest import REPO, assert_complete, free_port, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

PARAMETERS = parameters_at_least(ModelConfig(**tiny_ngpt(), vocab_size=512))
"""65,536 for tiny_ngpt over tiny_dataset's vocabulary of 512."""
LIMIT = 320 * 1024
"""`ulimit -f 320`: above every file of the 2-stage run (the largest 296 KB, asserted below), below the 12-byte bound
(393,216 bytes over 2 ranks), above the 8-byte one (262,144)."""


def test_a_pipeline_at_zero0_whose_files_fit_the_limit_trains_and_saves(tmp_path, tiny_dataset):
    assert PARAMETERS == 65_536
    assert 8 * PARAMETERS // 2 < LIMIT < preflight.CHECKPOINT_FILE_BYTES_PER_PARAMETER * PARAMETERS // 2
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, pipeline_parallel_size=2))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=2)
    out = tmp_path / "run"
    port = free_port()

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    procs = [
        subprocess.Popen(
            [sys.executable, *map(str, train_cmd(config, ds, tiny_dataset, out))],
            env=rank_env(rank, 2, port),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=limited,
        )
        for rank in range(2)
    ]
    ranks = [(proc.wait(timeout=300), proc.communicate()[0]) for proc in procs]
    # old code: [2, 2], "error: this process may write no file over 0.3 MiB ... a file of at least 0.4 MiB into ..."
    assert [rc for rc, _ in ranks] == [0, 0], ranks[0][1][-3000:]
    step = out / "checkpoints" / "step_00000002"
    assert_complete(step)
    sizes = {f.name: f.stat().st_size for f in step.iterdir()}
    assert {"layer_00-model_states.pt", "mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"} <= set(sizes)
    largest = max(sizes.values())
    # the new bound is still a lower bound on the largest file, and not a loose one
    assert 8 * PARAMETERS // 2 <= largest < LIMIT, sizes
    assert largest < 1.25 * (8 * PARAMETERS // 2), sizes


def test_a_pipeline_at_zero0_is_refused_below_its_own_bound_only(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    assert soft == resource.RLIM_INFINITY, "the test process runs under a file-size limit"
    parameters, ranks = 1_000_000, 4
    need = preflight.PIPELINE_ZERO0_CHECKPOINT_FILE_BYTES_PER_PARAMETER * parameters // ranks  # 2,000,000 bytes
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (need, hard))
        preflight.check_file_size_limit(parameters, ranks, tmp_path, pipeline_zero0=True)
        with pytest.raises(NgptConfigError, match=r"at least 2\.9 MiB into .* \(the fp32 master weights and Adam"):
            preflight.check_file_size_limit(parameters, ranks, tmp_path)  # any other run: 12 bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (need - 1, hard))
        with pytest.raises(NgptConfigError) as refused:
            preflight.check_file_size_limit(parameters, ranks, tmp_path, pipeline_zero0=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(refused.value) == (
        "this process may write no file over 1.9 MiB (its file-size limit: `ulimit -f` in the shell or job script "
        f"that started it), and every checkpoint of this run writes a file of at least 1.9 MiB into {tmp_path} "
        "(Adam's two moments of one rank's share of at least 1,000,000 parameters over 4 ranks), so no checkpoint "
        "could be saved. Raise the limit (`ulimit -f unlimited` before the launch)"
    )
