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


BOUND_TO_ONE_GPU = """
import deepspeed.accelerator

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train.builder import init_process_group


class OneVisibleGpu:  # what DeepSpeed's CUDA accelerator answers in a task bound to one GPU
    def device_name(self, index=None):
        return "cuda"

    def device_count(self):
        return 1

    def set_device(self, index):
        raise RuntimeError(f"CUDA error: invalid device ordinal {index}")


import deepspeed.ops

deepspeed.ops.__compatible_ops__  # probed with the real accelerator: the op builders ask it
deepspeed.accelerator.get_accelerator = OneVisibleGpu
try:
    init_process_group(distributed.discover(), timeout_s=3)
except NgptConfigError as err:
    print("refused:", err)
"""


def test_a_rank_that_sees_fewer_gpus_than_its_local_rank_is_named_before_the_rendezvous():
    """Fault: under per-task GPU binding (srun --gpus-per-task=1, --gpu-bind) each rank sees one GPU, and every
    local rank but 0 died inside init_process_group with a traceback ("device_id cuda:3 is out of range") while
    the others waited for it. Now the rank says what it needs and how to start the job, before the rendezvous
    (imitated: DeepSpeed's accelerator answers "cuda" with one device; local rank 3 of 4)."""
    env = cpu_env(RANK=3, WORLD_SIZE=4, LOCAL_RANK=3, LOCAL_WORLD_SIZE=4, MASTER_ADDR="127.0.0.1")
    env.update(MASTER_PORT=str(free_port()), CUDA_VISIBLE_DEVICES="5")
    proc = subprocess.run(
        [sys.executable, "-c", BOUND_TO_ONE_GPU], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        "refused: node-local rank 3 drives cuda:3, but this process sees 1 device(s) (CUDA_VISIBLE_DEVICES=5). "
        "Every rank must see all of its node's GPUs, with at most one rank per GPU: under Slurm ask for "
        "--gpus-per-node (not --gpus-per-task or --gpu-bind); with torchrun or deepspeed start at most one process "
        "per GPU (--nproc_per_node / --num_gpus)"
    ), proc.stdout + proc.stderr[-2000:]
