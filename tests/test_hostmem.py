"""The host allocator setting of CPU processes: training ranks, generate and evaluate (ngpt_ds/hostmem.py).

The fault: under glibc's defaults every buffer above 32 MiB is a fresh memory mapping, page-faulted
in at first touch, every step (the default preset's 32 MiB fp32 logits; a 32k-vocabulary head's
weight-sized temporaries). The fix keeps freed buffers in the heap for reuse.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from ngpt_ds import hostmem

from conftest import cpu_env, run

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests/workers/hostmem_worker.py"
PAGES_OF_64_MIB = (64 << 20) // 4096


def _faults_of_a_reused_64_mib_buffer(**env: str) -> int:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "NGPT_DS_HOST_MALLOC"))}
    run_env.update(env, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(WORKER)], env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [line for line in done.stdout.splitlines() if line.startswith("minor page faults:")][-1]
    return int(line.split(":")[1])


@pytest.mark.skipif(hostmem.keep_freed_memory({}) == "left as it is (not glibc)", reason="glibc's malloc only")
def test_a_training_process_reuses_a_freed_64_mib_buffer_without_page_faults():
    glibc_defaults = _faults_of_a_reused_64_mib_buffer(NGPT_DS_HOST_MALLOC="system")
    kept = _faults_of_a_reused_64_mib_buffer()
    # The old behaviour: every 4 KiB page of the fresh mapping faults again.
    assert glibc_defaults >= 0.9 * PAGES_OF_64_MIB, glibc_defaults
    assert kept < 0.02 * PAGES_OF_64_MIB, kept


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"NGPT_DS_HOST_MALLOC": "system"}, "left at glibc's defaults (NGPT_DS_HOST_MALLOC=system)"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "left to the user's settings (MALLOC_MMAP_THRESHOLD_)"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "left to the user's settings (GLIBC_TUNABLES)"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "left to the preloaded jemalloc"),
    ],
)
def test_a_users_own_allocator_settings_are_left_alone(env, expected):
    assert hostmem.keep_freed_memory(env) == expected


@pytest.mark.skipif(hostmem.keep_freed_memory({}) == "left as it is (not glibc)", reason="glibc's malloc only")
@pytest.mark.parametrize("script", ["generate.py", "evaluate.py"])
def test_cpu_inference_commands_keep_freed_memory_too(exported, script):  # noqa: F811
    """The fault: generate and evaluate on the CPU kept glibc's defaults, so each batch's logits were
    mapped and page-faulted anew (17-19% of an evaluation forward at 32k vocabulary, 4 x 1024 tokens)."""
    args = ["--prompt", "The", "--max-new-tokens", "2"] if script == "generate.py" else ["--windows", "2"]
    cmd = [sys.executable, REPO / "launch" / script, exported, "--device", "cpu", "--log-level", "debug", *args]
    kept = run(cmd, env=cpu_env())
    assert "host allocator: freed buffers below 1024 MiB kept for reuse" in kept.stderr, kept.stderr[-3000:]
    opted_out = run(cmd, env=cpu_env(NGPT_DS_HOST_MALLOC="system"))
    assert "host allocator: left at glibc's defaults (NGPT_DS_HOST_MALLOC=system)" in opted_out.stderr
