"""A rank that is process 1 of its PID namespace, as `python launch/train.py` is when it is a container's command
(a Kubernetes pod, `docker run --entrypoint python3`): its parent lives outside the namespace, so getppid() is 0."""

import json
import os
import shutil
import sys

from conftest import (
    REPO,
    cpu_env,
    free_port,
    require_system,
    run,
    tiny_ngpt,
    tiny_train,
    train_flags,
    write_ds_config,
    write_yaml,
)


def test_a_rank_started_as_process_1_of_a_pid_namespace_trains_to_the_end(tmp_path, tiny_dataset):
    """Fault: the launcher watch took parent pid 0 for a parent that had exited and stopped every such run about
    0.5 s into training ("stopping at step 13 (the parent process (pid 0) exited)"), with exit status 0 and a
    "stopped" summary: the pod completed "successfully" on every start. Now there is nothing to watch there."""
    require_system(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root and unshare(1)")
    steps = 40
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(steps, checkpoint_interval=steps))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    env = cpu_env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1, MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(free_port())
    out = tmp_path / "run"
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c"]
    # Prints its own pid and parent pid first: 1 and 0, or the test is not testing this.
    command.append(
        "import os, runpy, sys; print('pids', os.getpid(), os.getppid(), flush=True); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    command += [REPO / "launch/train.py", *train_flags(config, ds, tiny_dataset, out)]
    proc = run(command, env=env, timeout=300)
    assert proc.stdout.splitlines()[0] == "pids 1 0"
    assert "stopping at step" not in proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("finished", steps)
