"""The process group's start skips DeepSpeed's shared-memory collective without probing every op builder."""

import json
import subprocess
import sys
import types

from ngpt_ds.train.builder import skip_shared_memory_collective_build

from conftest import REPO, cpu_env, free_port

ONE_RANK = """
import json, sys
import deepspeed.comm
from ngpt_ds import distributed
from ngpt_ds.train.builder import init_process_group

init_process_group(distributed.discover(), timeout_s=60)
ops = vars(sys.modules["deepspeed.ops"])
print(json.dumps({"compatible_ops": ops.get("__compatible_ops__"), "setuptools": "setuptools" in sys.modules,
                  "shm_comm_op": deepspeed.comm.comm.cdb.shm_comm_op is not None}))
"""


def test_starting_the_process_group_probes_no_op_builder():
    """Fault: reading deepspeed.ops.__compatible_ops__ to set the shm entry made DeepSpeed 0.19.7+ probe every op
    builder first (async_io compiles and links a C program with gcc, setuptools is imported): 1-2 s of every rank's
    start-up on CPU, for the one entry the run reads."""
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.run(
        [sys.executable, "-c", ONE_RANK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {
        "compatible_ops": {"deepspeed_shm_comm": False},
        "setuptools": False,
        "shm_comm_op": False,  # still not built
    }


def test_a_probed_dict_keeps_its_entries():
    """DeepSpeed 0.19.6 makes __compatible_ops__ at import, and an earlier read makes it in 0.19.7+: only the shm
    entry changes."""
    ops = types.ModuleType("ops")
    ops.__compatible_ops__ = {"cpu_adam": True, "deepspeed_shm_comm": True}
    skip_shared_memory_collective_build(ops)
    assert ops.__compatible_ops__ == {"cpu_adam": True, "deepspeed_shm_comm": False}
