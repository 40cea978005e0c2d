"""Fault: ngpt-export, ngpt-generate, ngpt-evaluate and a training rank under a large `ulimit -s` (or a low `ulimit -v`
with stacks that cannot fit) ended on a traceback of 36 to 59 lines, exit status 1, naming neither the limit nor the
fix: the three commands on the pool of threads that hashes a checkpoint's files ("RuntimeError: can't start new
thread"), a training rank on torch's rendezvous store, whose C++ thread failed with "RuntimeError: Resource
temporarily unavailable". 1f816e3 had named these limits for ngpt-prepare only. Now each is one line naming the limit
and the fix, exit status 2, through the same function as ngpt-prepare's (ngpt_ds.limits.limit_named). OpenBLAS's own
"pthread_create failed" lines (numpy's import inside torch's) come before it: torch swallows OpenBLAS's SIGINT there."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    cpu_env,
    free_port,
    run_limited,
    run_ranks,
    tiny_ngpt,
    tiny_train,
    train_run,
    unmappable_stack,
    write_run_configs,
)

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset) -> dict:
    """A finished 2-step run (one checkpoint) and its two config files."""
    root = tmp_path_factory.mktemp("limits37")
    files = write_run_configs(root, tiny_ngpt(), tiny_train(2))
    train_run(files["yaml"], files["ds"], tiny_dataset, root / "run", forked=True)
    return {"run": root / "run", "data": tiny_dataset, **files}


def _limited(cmd: list, cwd: Path, *, stack: int, address: int | None = None) -> subprocess.CompletedProcess[str]:
    """`cmd` under a real `ulimit -s` of `stack` bytes (and `ulimit -v` of `address`), set in the child before exec."""
    return run_limited(
        cmd,
        timeout=300,
        stack=stack,
        address=address,
        address_hard=True,
        cwd=cwd,
        env=cpu_env(OPENBLAS_NUM_THREADS="2"),
    )


def _last(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    return run.stderr.strip().splitlines()[-1]


HASHED = "a checkpoint's files are hashed by a pool of threads, each of which maps a stack of `ulimit -s`"


@pytest.mark.parametrize(
    "command, argv",
    [
        ("export", ["--out", "exported"]),
        ("generate", ["--prompt", "a", "--max-new-tokens", "2"]),
        ("evaluate", []),
    ],
)
def test_a_large_stack_is_one_line_for_the_model_commands(trained, tmp_path, command, argv):
    """`ulimit -s` of 64 GiB or more (conftest.unmappable_stack), no `ulimit -v`: before, 'assert 1 == 2' and the
    traceback ending "RuntimeError: can't start new thread". Now the line naming the stack and the fix, and nothing
    exported."""
    run = _limited(
        [sys.executable, "-m", f"ngpt_ds.cli.{command}", trained["run"], *argv], tmp_path, stack=unmappable_stack()
    )
    assert _last(run) == (
        f"error: this process could not start a thread ({HASHED}, here {_gib(unmappable_stack())}). Lower `ulimit -s` (8 MiB is the "
        f"usual) in the shell or job script before ngpt-{command}"
    )
    assert not (tmp_path / "exported").exists() and run.stdout == ""


def test_a_low_address_limit_is_one_line_for_export(trained, tmp_path):
    """`ulimit -v` 6 GiB with `ulimit -s` 8 GiB (no thread's stack fits): the limit, what is mapped, both fixes."""
    run = _limited(
        [sys.executable, "-m", "ngpt_ds.cli.export", trained["run"], "--out", "exported"],
        tmp_path,
        stack=8 * GIB,
        address=6 * GIB,
    )
    last = _last(run)
    assert last.startswith(
        f"error: this process could not start a thread ({HASHED}, here 8.0 GiB) under its address-space limit "
        "(`ulimit -v`) of 6.0 GiB, "
    ), last
    assert last.endswith(
        " of it mapped already. Raise the limit (`ulimit -v unlimited`, or a few GiB more, in the shell or job script "
        "before ngpt-export), or lower `ulimit -s`"
    ), last
    assert not (tmp_path / "exported").exists()


def _train_line() -> str:
    return (
        "error: this process could not start a thread (a training rank starts threads for its rendezvous, its "
        "collectives and its checks of a checkpoint's files, each of which maps a stack of `ulimit -s`, here "
        f"{_gib(unmappable_stack())}). Lower `ulimit -s` (8 MiB is the usual) in the shell or job script before the "
        "training command"
    )


def test_a_large_stack_is_one_line_for_a_training_rank(trained, tmp_path):
    """`python launch/train.py` alone (its rendezvous store's thread: C++, "RuntimeError: Resource temporarily
    unavailable"). Before: 'assert 1 == 2' and that traceback. Now the line, exit status 2, no checkpoint."""
    cmd = [ROOT / "launch/train.py", "--config", trained["yaml"], "--deepspeed_config", trained["ds"]]
    cmd += ["--data", trained["data"], "--out", tmp_path / "run", "--no-progress"]
    run = _limited([sys.executable, *cmd], tmp_path, stack=unmappable_stack())
    assert _last(run) == _train_line()
    assert not (tmp_path / "run" / "checkpoints").exists()


LIMITED_RANK = """\
import os, resource, sys
if os.environ["RANK"] == "1":  # this rank alone under a stack no thread can map
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, resource.RLIM_INFINITY))
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_a_limited_rank_of_two_is_one_line_and_the_job_ends(trained, tmp_path):
    """torchrun, 2 ranks, rank 1 alone under the large stack (a per-rank wrapper): rank 1 says the line and exits 2,
    and the job ends well within train.dist_timeout_s (600 s), rank 0 not left waiting for it. Before: rank 1's
    traceback, exit status 1."""
    wrapper = tmp_path / "limited_rank.py"
    wrapper.write_text(LIMITED_RANK.replace("STACK_BYTES", str(unmappable_stack())), encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", free_port(), "--no-python", sys.executable, wrapper, ROOT / "launch/train.py"]
    cmd += ["--config", trained["yaml"], "--deepspeed_config", trained["ds"], "--data", trained["data"]]
    cmd += ["--out", tmp_path / "run", "--no-progress"]
    start = time.monotonic()
    run = subprocess.run(
        [str(c) for c in cmd], cwd=tmp_path, env=cpu_env(), capture_output=True, text=True, timeout=300, check=False
    )
    took = time.monotonic() - start
    assert run.returncode != 0
    lines = run.stderr.splitlines()
    assert lines.count(_train_line()) == 1, run.stderr[-4000:]
    assert "exitcode  : 2" in run.stderr  # torchrun's report of rank 1
    assert "RuntimeError: can't start new thread" not in run.stderr  # the old code's last line
    assert took < 200, took


def test_a_limited_rank_of_two_plain_processes_is_one_line_and_rank_0_waits_no_longer_than_its_timeout(
    trained, tmp_path
):
    """The same ranks as plain processes (srun without --kill-on-bad-exit: nothing tears the job down): rank 1 says
    the line, exit 2, and sets it in rank 0's store (rendezvous_peers.tell_the_job); rank 0 stops with it, not
    after train.dist_timeout_s (120 s here) naming a rank that 'never arrived', as before rdv38. Before 09ab733: rank
    1's traceback, exit status 1."""
    wrapper = tmp_path / "limited_rank.py"
    wrapper.write_text(LIMITED_RANK.replace("STACK_BYTES", str(unmappable_stack())), encoding="utf-8")
    files = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(2, dist_timeout_s=120))
    args = [wrapper, ROOT / "launch/train.py", "--config", files["yaml"], "--deepspeed_config", files["ds"]]
    args += ["--data", trained["data"], "--out", tmp_path / "run", "--no-progress"]
    start = time.monotonic()
    codes, outputs = run_ranks(args, nproc=2, timeout=240)
    took = time.monotonic() - start
    assert codes == [1, 2], outputs
    assert outputs[1].strip().splitlines()[-1] == _train_line()
    told = _train_line().replace("error: this process", "error: rank 0 stops: rank 1: this process")
    assert outputs[0].strip().splitlines()[-1] == told, outputs[0][-2000:]
    assert took < 120, took  # the ranks' startup, then rank 1's line at once: not rank 0's timeout and more
