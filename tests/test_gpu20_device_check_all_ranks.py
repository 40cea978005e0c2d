"""Device checks at startup that every rank must see, on 2 gloo ranks imitating GPU nodes on a CPU.

ngpt_ds.train.builder.init_process_group runs under an accelerator that says it is "cuda" but talks gloo and
has per-rank device counts, so a node with fewer visible devices than ranks, or two ranks of one host with the
same LOCAL_RANK, is reproduced without a GPU. NCCL's rule (one rank per device) is what the check enforces.
"""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

import conftest

RANK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from deepspeed.accelerator import set_accelerator
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
    from ngpt_ds import distributed
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import builder

    class FakeGpus(CPU_Accelerator):
        def device_name(self, device_index=None):
            return "cuda" if device_index is None else f"cuda:{device_index}"
        def device_count(self):
            return int(os.environ["FAKE_DEVICES"])
        def set_device(self, device_index):
            pass
        def communication_backend_name(self):
            return "gloo"

    set_accelerator(FakeGpus())
    try:
        builder.init_process_group(distributed.discover(dict(os.environ)), timeout_s=120)
    except NgptConfigError as err:
        print("REFUSED:", err, flush=True)
        sys.exit(2)
    print("STARTED", flush=True)
    """
)


def run_two_ranks(local_ranks: tuple[int, int], devices: tuple[int, int]) -> dict[int, str]:
    port = conftest.free_port()
    procs = {}
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(local_ranks[rank]),
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "FAKE_DEVICES": str(devices[rank]),
            "OMP_NUM_THREADS": "1",
        }
        procs[rank] = subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    out = {}
    try:
        with conftest.fails_after(90, "2 ranks of init_process_group"):
            for rank, proc in procs.items():
                out[rank] = proc.communicate()[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def refused(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("REFUSED: ")]
    assert lines, output
    return lines[-1].removeprefix("REFUSED: ")


HOST = socket.gethostname()


def test_a_rank_short_of_devices_stops_every_rank():
    """Fault: _check_device_for_local_rank raised only on the rank whose LOCAL_RANK had no device (rank 1 of a
    node whose process sees 1 device, under srun --gpus-per-task=1). Before: rank 1 exited with the message,
    rank 0 waited in the rendezvous until train.dist_timeout_s (here still running after 90 s). Now: both ranks
    raise the same message naming the rank, its host and the fix."""
    out = run_two_ranks((0, 1), (2, 1))
    expected = (
        f"rank 1 on host {HOST}: node-local rank 1 drives cuda:1, but this process sees 1 device(s)"
        + (
            f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
            if "CUDA_VISIBLE_DEVICES" in os.environ
            else ""
        )
        + ". Every rank must see all of its node's GPUs, with at most one rank per GPU: under Slurm ask for "
        "--gpus-per-node (not --gpus-per-task or --gpu-bind); with torchrun or deepspeed start at most one "
        "process per GPU (--nproc_per_node / --num_gpus)"
    )
    assert refused(out[0]) == expected
    assert refused(out[1]) == expected


def test_two_ranks_with_the_same_local_rank_are_refused_on_both():
    """Fault: two processes of one node with the same hand-set LOCAL_RANK (LOCAL_RANK=0 exported in an srun or
    mpirun line) both drove cuda:0. Before: both ranks started (printed STARTED here); on NCCL the first
    collective hangs or stops with 'Duplicate GPU detected'. Now: both ranks stop at startup naming both ranks,
    the host and the fix."""
    out = run_two_ranks((0, 0), (2, 2))
    expected = (
        f"ranks 0 and 1 on host {HOST} both have node-local rank 0 and would drive the same device cuda:0 (NCCL "
        "hangs or stops with 'Duplicate GPU detected'). Give each rank of a node its own LOCAL_RANK, 0 to the "
        "node's rank count - 1: start with torchrun or deepspeed, or under srun/mpirun leave LOCAL_RANK unset so "
        "it is read from SLURM_LOCALID / OMPI_COMM_WORLD_LOCAL_RANK"
    )
    assert refused(out[0]) == expected
    assert refused(out[1]) == expected


def test_good_local_ranks_start():
    out = run_two_ranks((0, 1), (2, 2))
    assert "STARTED" in out[0] and "STARTED" in out[1], out


if __name__ == "__main__":
    pytest.main([__file__])
