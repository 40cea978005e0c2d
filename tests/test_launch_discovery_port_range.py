"""A MASTER_PORT that no rank 0 can listen on is refused by rank discovery, naming it (ngpt_ds/distributed.py).

The fault: MASTER_PORT was read as any integer. A typo (295000 for 29500) or a port of 0 passed discovery,
the configs and the data checks, and then torch refused it as the process group started, on every rank:
a ValueError traceback ('port must have value from 0 to 65535 but was 295000') that names no variable.
Port 0, which lets rank 0 listen on any port, left a multi-rank job's other ranks nowhere to connect.
"""

import subprocess
import sys

import pytest

from ngpt_ds.distributed import discover
from ngpt_ds.errors import NgptConfigError

from conftest import REPO, cpu_env, tiny_ngpt, tiny_train, train_cmd, write_run_configs

TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
SRUN = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_NUM_NODES": "1"}


def refusal(port: str, world: int) -> str:
    return (
        f"environment variable MASTER_PORT={port!r} is not a port rank 0 can listen on for a job of {world} "
        "rank(s): set it to a free port from 1 to 65535, or unset it"
    )


@pytest.mark.parametrize(
    ("env", "world"),
    [
        ({**TORCHRUN, "MASTER_PORT": "295000"}, 2),
        ({**TORCHRUN, "MASTER_PORT": "-1"}, 2),
        ({**TORCHRUN, "MASTER_PORT": "0"}, 2),
        ({**SRUN, "MASTER_PORT": "65536"}, 2),
        ({**SRUN, "MASTER_PORT": "0"}, 2),
        ({"MASTER_PORT": "70000"}, 1),
    ],
)
def test_a_port_out_of_range_is_refused_naming_master_port(env, world):
    """Fault: discover() returned these ports; torch refused them later in a ValueError traceback."""
    with pytest.raises(NgptConfigError) as err:
        discover(env)
    assert str(err.value) == refusal(env["MASTER_PORT"], world)


def test_ports_that_work_are_kept():
    """The bounds: 1 and 65535 for a job of ranks; 0 for a single process, which nobody has to meet."""
    assert discover({**TORCHRUN, "MASTER_PORT": "1"}).master_port == 1
    assert discover({**SRUN, "MASTER_PORT": "65535"}).master_port == 65535
    assert discover({"MASTER_PORT": "0"}).master_port == 0


def test_the_trainer_stops_in_one_line_before_training(tiny_dataset, tmp_path):
    """Fault: launch/train.py with MASTER_PORT=295000 ended in torch's ValueError traceback (exit 1)."""
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(2))
    env = cpu_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="295000")
    proc = subprocess.run(
        [sys.executable, *train_cmd(configs["yaml"], configs["ds"], tiny_dataset, tmp_path / "run")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {refusal('295000', 1)}" in proc.stderr
    assert "Traceback" not in proc.stderr
