"""Fault: the universal converter child (DeepSpeed's ds_to_universal, which a resume at another world size runs on
rank 0 while the other ranks poll) had no bound at all. A converter that stopped working (a read on a hung
network mount, a deadlock) kept every rank polling for good: the resume hung, silently, until the job's time
limit. A wall-clock deadline cannot be right (a large checkpoint converts for hours), so what bounds it is work:
the converter is stopped once it has used no CPU time and read or written no byte for CONVERTER_STALL_S (30
minutes). Before: convert() never returned (here: still waiting when the 120 s hang guard ended the child). Now:
every rank stops with one message naming the stall, the converter's last lines and the fix; nothing is left
under the step_N-universal names. A slow converter that keeps working is never stopped.
"""

import json
import subprocess
import sys

import psutil

from conftest import REPO, cpu_env

DRIVER = """
import json, logging, os, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import reshape_convert
from ngpt_ds.train.manifest import build_manifest, write_manifest

folder, stand_in, stall_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
source = folder / "run" / "checkpoints" / "step_00000004"
source.mkdir(parents=True)
(source / "config.yaml").write_text("model: {}\\n")
write_manifest(source, build_manifest(source, 4))
target = source.with_name("step_00000004-universal")
reshape_convert.CONVERTER_STALL_S = stall_s
started = []
said = []  # what the trainer's log got, and whether the converter was still running then


class Keep(logging.Handler):
    def emit(self, record):
        said.append([record.getMessage(), bool(started) and started[-1].poll() is None])


logging.getLogger("ngpt_ds").addHandler(Keep())
logging.getLogger("ngpt_ds").setLevel(logging.INFO)


def start_stand_in(source, output, log):
    with open(log, "w", encoding="utf-8") as f:
        started.append(subprocess.Popen([sys.executable, "-c", stand_in, str(output)], stdout=f, stderr=f))
    return started[-1]


reshape_convert._start_converter = start_stand_in
plan = SimpleNamespace(source=source, target=target, saved=SimpleNamespace(describe=lambda: "2 data-parallel ranks"))
try:
    found = {"reused": reshape_convert.convert(plan, torch.device("cpu")), "error": None}
except NgptConfigError as err:
    found = {"reused": None, "error": str(err)}
found.update(said=said, pid=started[0].pid, exit=started[0].poll(), left=sorted(p.name for p in source.parent.iterdir()))
print(json.dumps(found))
dist.destroy_process_group()
from ngpt_ds.distributed import exit_process

exit_process(0, joined=True)  # no interpreter teardown under gloo's threads (its docstring)
"""

HUNG = (  # it ends with the driver (Linux's parent-death signal), as the real converter does
    "import ctypes, signal, time; ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "print('stand-in: reading a shard on a hung mount', flush=True); time.sleep(3600)"
)
SLOW = (
    "import sys, time; from pathlib import Path; out = Path(sys.argv[1])\n"
    "for i in range(60):\n"
    "    print('merged', i, flush=True); time.sleep(0.1)\n"
    "(out / 'zero' / 'x').mkdir(parents=True); (out / 'zero' / 'x' / 'fp32.pt').write_bytes(b'x' * 300)\n"
    "(out.parent / 'latest_universal').write_text('converted')\n"
)


def convert(tmp_path, stand_in, stall_s):
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, tmp_path, stand_in, str(stall_s)],
        capture_output=True,
        text=True,
        env=cpu_env(),
        cwd=REPO,
        timeout=120,  # a hang guard: the old code never returned
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_converter_that_does_no_work_is_stopped_and_every_rank_is_told(tmp_path):
    found = convert(tmp_path, HUNG, 2)
    source = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert found["error"] == (
        f"DeepSpeed's ds_to_universal, converting {source}, did no work for 2 seconds (no CPU time, no byte read "
        "or written: a hung filesystem or a deadlock), so it was stopped. Its last lines: stand-in: reading a "
        f"shard on a hung mount. Check the filesystems of {source} and {source.parent}, then rerun to convert "
        "again, or resume at 2 data-parallel ranks instead"
    )
    assert found["exit"] == -9 and not psutil.pid_exists(found["pid"])
    assert found["left"] == ["step_00000004"]  # no work folder, no step_N-universal


def test_a_slow_converter_that_keeps_working_is_not_stopped(tmp_path):
    """6 s of output every 0.1 s against a 2 s bound: it converts."""
    found = convert(tmp_path, SLOW, 2)
    assert (found["reused"], found["error"], found["exit"]) == (False, None, 0)
    assert found["left"] == ["step_00000004", "step_00000004-universal"]


def test_the_conversion_is_announced_when_it_starts(tmp_path):
    """Fault: a resume that converted printed nothing until the conversion had ended (the tiny run's first line
    came after 9 s, at its end), so hours of a large conversion looked like a hung job, which an operator kills,
    losing the conversion. Now rank 0 says at once what it converts, where its progress is, and what stops it."""
    found = convert(tmp_path, SLOW, 2)
    checkpoints = tmp_path / "run" / "checkpoints"
    log = checkpoints / "step_00000004-universal.tmp-save" / "convert.log"
    assert found["said"] == [
        [
            f"converting {checkpoints / 'step_00000004'} (saved at 2 data-parallel ranks) to DeepSpeed's universal "
            f"format in {checkpoints / 'step_00000004-universal'} with its ds_to_universal, once: this can take hours "
            f"for a large checkpoint (its progress: {log}; stopped if it does no work for 2 seconds)",
            True,
        ]
    ]
