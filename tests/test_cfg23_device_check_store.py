"""The GPU startup device check (ngpt_ds.train.device_check.check_devices_on_all_ranks) exchanges its records
through the rendezvous's store, not a second process group: on NCCL runs that group was a gloo one, which needs
GLOO_SOCKET_IFNAME on clusters whose default interface the nodes cannot reach each other on.

Two real ranks on gloo, each told that the backend is "nccl" and refused any new process group, as an NCCL job
whose gloo group could not start would be."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import conftest

RANK_SCRIPT = textwrap.dedent(
    """
    import os, sys, types
    from datetime import timedelta
    import torch.distributed as dist
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import device_check

    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    dist.get_backend = lambda group=None: "nccl"

    def no_group(*args, **kwargs):
        raise RuntimeError("a second process group was asked for")

    dist.new_group = no_group
    problem = os.environ.get("PROBLEM") or None
    env = types.SimpleNamespace(local_rank=int(os.environ["LOCAL_RANK"]))
    code = 0
    try:
        device_check.check_devices_on_all_ranks(env, problem, "cuda")
        print("CHECKED", flush=True)
    except NgptConfigError as err:
        print("REFUSED:", err, flush=True)
        code = 2
    finally:
        dist.destroy_process_group()
    from ngpt_ds.distributed import exit_process

    exit_process(code, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
    """
)


def run_two_ranks(local_ranks: tuple[int, int], problems: tuple[str, str] = ("", "")) -> list[tuple[int, str]]:
    port = conftest.free_port()
    procs = []
    for rank in (0, 1):
        env = conftest.cpu_env(
            RANK=rank,
            WORLD_SIZE=2,
            LOCAL_RANK=local_ranks[rank],
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            PROBLEM=problems[rank],
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        with conftest.fails_after(90, "2 ranks of the device check"):
            outputs = [proc.communicate()[0] for proc in procs]
            return [(proc.returncode, out) for proc, out in zip(procs, outputs, strict=True)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def test_the_device_check_of_an_nccl_run_needs_no_second_process_group():
    """Fault: on NCCL runs the check opened a gloo group (dist.new_group(backend="gloo")) for its all-gather.
    Before: both ranks stopped in that call (here: RuntimeError, a traceback, exit 1). Now: the store carries the
    records and both ranks pass."""
    results = run_two_ranks((0, 1))
    assert [(code, last_line(out)) for code, out in results] == [(0, "CHECKED"), (0, "CHECKED")], results


def test_the_store_exchange_still_refuses_a_repeated_local_rank_and_a_rank_without_its_device_on_every_rank():
    """The check's two refusals reach both ranks through the store, with the same message on each."""
    host = socket.gethostname()
    results = run_two_ranks((0, 0))
    assert [code for code, _ in results] == [2, 2], results
    expected = (
        f"REFUSED: ranks 0 and 1 on host {host} both have node-local rank 0 and would drive the same device cuda:0"
    )
    assert [last_line(out)[: len(expected)] for _, out in results] == [expected, expected]
    results = run_two_ranks((0, 1), ("", "no cuda:1 here"))
    assert [(code, last_line(out)) for code, out in results] == [
        (2, f"REFUSED: rank 1 on host {host}: no cuda:1 here")
    ] * 2
