"""The main command started a second time while the first still trains: the second one's rendezvous port is taken,
and its one line must name the fix that works (ngpt_ds.cli.train.port_in_use_advice)."""

from __future__ import annotations

import subprocess
import sys

from ngpt_ds.cli.train import port_in_use_advice
from ngpt_ds.distributed import DistEnv, rendezvous_failure

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.write(fd, b"host=somehost pid=4242")
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def _port_taken() -> str:
    env = DistEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        master_addr="127.0.0.1",
        master_port=29500,
        source="torch",
    )
    return str(
        rendezvous_failure(
            RuntimeError(
                "The server socket has failed to listen on any local network address. "
                "port: 29500, useIpv6: 0, code: -98, name: EADDRINUSE"
            ),
            env,
            600,
        )
    )


def test_a_second_main_command_is_told_the_deepspeed_port_option_and_the_trainer_holding_its_out(tmp_path):
    """Fault: `deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json` run twice at once ended the
    second with 'another process on this host holds that port (another job?). Set MASTER_PORT to a free port': under
    DeepSpeed's launcher MASTER_PORT is overwritten (its --master_port, 29500), so the same error came back, and the
    other job was the trainer on the same --out, which a free port only led to. The old code had no
    port_in_use_advice (ImportError)."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / "train.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        message = port_in_use_advice(_port_taken(), out, {"CROSS_RANK": "0"})
    finally:
        holder.kill()
        holder.wait()
    assert message == (
        "rank 0 cannot listen for the job's rendezvous on 127.0.0.1:29500: another process on this host holds that "
        "port (another job?). Give the deepspeed launcher a free port (deepspeed --master_port 29501 launch/train.py "
        "...; it sets MASTER_PORT itself), or stop the other job. The other job may be the trainer already running on "
        f"this --out: {out} is in use (host=somehost pid=4242); wait for it to finish, or choose another --out"
    )
    # The holder gone (its lock with it), under torchrun (no CROSS_RANK): the line as ngpt_ds.distributed wrote it.
    assert port_in_use_advice(_port_taken(), out, {}) == _port_taken()
    assert "Set MASTER_PORT to a free port, or stop the other job" in _port_taken()


def test_other_rendezvous_errors_are_left_as_they_are(tmp_path):
    env = DistEnv(0, 2, 0, 2, "127.0.0.1", 29500, "torch")
    waited = str(
        rendezvous_failure(
            RuntimeError("Timed out after 601 seconds waiting for clients. 1/2 clients joined."), env, 600
        )
    )
    assert port_in_use_advice(waited, tmp_path, {"CROSS_RANK": "0"}) == waited
