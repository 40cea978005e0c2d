"""bench/gpu_check.sh on its GPU path, with the GPUs imitated on a CPU.

tests/workers/gpu_check_stand_in.py stands in for the script's PYTHON: it reports N CUDA GPUs,
so the script takes the path a GPU machine takes (N ranks, the GPU-size trainer config), and it
runs, for each trainer launch, the checks every rank makes before its first step that need no GPU
(startup checks for N ranks, each rank's training loader and validation batches). What only a GPU
can check (the workers, the export) is not run.
"""

import json
import sys

import pytest

from conftest import REPO, cpu_env, run


def gpu_path(tmp_path, gpus: int):
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO}/tests/workers/gpu_check_stand_in.py" "$@"\n')
    shim.chmod(0o755)
    work, calls = tmp_path / "work", tmp_path / "calls.jsonl"
    env = cpu_env(PYTHON=shim, FAKE_GPUS=gpus, FAKE_GPU_CALLS=calls)
    proc = run(["bash", REPO / "bench/gpu_check.sh", "--workdir", work], env=env, check=False, timeout=300)
    summary = {line.split()[1]: line for line in (work / "summary.txt").read_text().splitlines()}
    return proc, summary, [json.loads(line) for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("gpus", [1, 8])
def test_the_trainer_check_gets_past_startup_on_a_gpu_machine(tmp_path, gpus):
    """Fault: on every GPU machine the trainer_zero2 check failed at startup, and export_on_sphere and
    trainer_compile_zero2 were SKIPPED with it. The script's corpus (pydoc's topics, about 80 documents)
    at --val-fraction 0.02 left one validation document of 365 tokens: 1 window of 257 tokens at the
    GPU config's seq_len 256, fewer than one validation batch (8 windows per rank, ds_configs/zero2.json),
    and the trainer refused the dataset. --dry-run (seq_len 32, 11 windows, 1 rank) passed."""
    proc, summary, calls = gpu_path(tmp_path, gpus)
    assert summary["trainer_zero2"].split()[0] == "PASS", summary["trainer_zero2"]
    assert summary["export_on_sphere"].split()[0] == "PASS", summary["export_on_sphere"]
    assert summary["trainer_compile_zero2"].split()[0] == "PASS", summary["trainer_compile_zero2"]
    launches = [c for c in calls if c[:2] == ["-m", "torch.distributed.run"] and "launch/train.py" in c]
    assert len(launches) == 2  # trainer_zero2, then trainer_compile_zero2
    assert all(c[c.index("--nproc_per_node") + 1] == str(gpus) for c in launches)
    assert proc.returncode == 0, proc.stdout[-3000:]
