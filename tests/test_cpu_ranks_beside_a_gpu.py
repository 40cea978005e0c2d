"""CPU training chosen on a machine that has a GPU (DS_ACCELERATOR=cpu, which ngpt_ds.cli.default_accelerator
leaves to the user), with the GPU imitated on a CPU by tests/workers/cpu_ranks_beside_a_gpu_worker.py."""

import json
import os
import subprocess
import sys

from conftest import REPO, cpu_env, free_port

WORKER = REPO / "tests/workers/cpu_ranks_beside_a_gpu_worker.py"


def test_cpu_ranks_on_a_one_gpu_machine_start_and_split_the_cores():
    """Fault: init_process_group asked torch.cuda.is_available(), not the accelerator the run trains on.
    With DS_ACCELERATOR=cpu on a machine with one GPU, every rank called torch.cuda.set_device(LOCAL_RANK):
    rank 1 stopped with "CUDA error: invalid device ordinal" while rank 0 waited for it in the first
    collective, and the ranks did not split the cores (each took them all). Now the accelerator decides:
    no set_device on CPU ranks, and 2 ranks get half of the cores each."""
    port, procs = free_port(), []
    for rank in range(2):
        env = cpu_env(RANK=rank, WORLD_SIZE=2, LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1")
        env.pop("OMP_NUM_THREADS")  # unset, as a plain launch leaves it: the trainer splits the cores
        env["MASTER_PORT"] = str(port)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=120))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            outputs.append(proc.communicate())
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(err[-1000:] for _, err in outputs)
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    expected_threads = max(1, (os.cpu_count() or 1) // 2)
    for rank, result in enumerate(results):
        assert result == {
            "rank": rank,
            "backend": "gloo",
            "set_device_calls": [],
            "threads": expected_threads,
            "cpu_count": os.cpu_count(),
            "gathered": [0, 1],
        }
