"""A stop at the edges of a run (README "Stopping a run"): the launcher dies while its ranks still
start, and a stop with no grace time to save in.

Real 2-rank jobs (tiny nGPT, CPU, gloo), checked like the stop paths of test_launch_stop_paths.py
(their helpers are in tests/stop_helpers.py): the exit status, what the checkpoints folder holds afterwards, the
log's stop line, and that the rendezvous port is free again. The too-short grace starts from the
checkpoint the last stop path left when that file ran first (the suite's order), so it shows that
checkpoint kept as it was; run alone it starts from scratch.
"""

import json
import re
import signal
import subprocess
import time

import psutil
from stop_helpers import (
    HANG_GUARD_S,
    children_named,
    kill_leftovers,
    launch_stoppable,
    port_released,
    rendezvous_port,
    signal_one_trainer,
    sockets_on,
    start_from_chain,
    stop_train_args,
    trainer_processes,
    wait_for_steps,
    wait_until_gone,
)

from conftest import (
    STOP_STEPS,
    assert_complete,
    start_ranks,
)

STOP_EXIT_UNSAVED = 75  # launch/train.py: stopped, but the grace was too short to save (README)


def ranks_importing_torch(proc: subprocess.Popen) -> bool:
    """Both ranks have loaded torch's library: launch/train.py notes its parent just before that, so
    from here on (imports, process group, engine, about 5 s) a dead parent must be noticed."""
    try:
        ranks = [
            p for p in children_named(proc, "launch/train.py") if "deepspeed.launcher" not in " ".join(p.cmdline())
        ]
        return len(ranks) == 2 and all(any("libtorch" in m.path for m in rank.memory_maps()) for rank in ranks)
    except psutil.Error:
        return False


def test_launcher_killed_during_the_startup_still_stops_its_ranks(stop_configs, tiny_dataset, tmp_path):
    """DeepSpeed's launch.py is SIGKILLed while its ranks still import torch and build the engine:
    they were started by it, so they stop at their first step, with a checkpoint, and leave."""
    out, log, port = tmp_path / "run", tmp_path / "job.log", rendezvous_port()
    proc = launch_stoppable("deepspeed", stop_configs, tiny_dataset, out, port, log)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not ranks_importing_torch(proc):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.01)
        known = trainer_processes(out)
        children_named(proc, "deepspeed.launcher.launch")[0].kill()
        assert proc.wait(timeout=HANG_GUARD_S) == 0  # the runner reports its child's -9 as success
        wait_until_gone(out, known)
    finally:
        kill_leftovers(out, proc)
    text = log.read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["step"] < STOP_STEPS, (summary, text[-4000:])
    # Rank 0 prints the reason: its own watch's, or that of the rank that noticed first. A launcher
    # killed before the watch starts is already gone when the watch looks (a loaded machine makes the
    # startup slow): it is then named by its pid alone.
    assert re.search(
        rf"stopping at step {summary['step']} \((rank \d+: )?(its launcher DeepSpeed's launch.py \(pid \d+\) exited"
        r"|the parent process \(pid \d+\) exited)\)",
        text,
    ), text[-4000:]
    assert_complete(out / "checkpoints" / f"step_{summary['step']:08d}")
    assert port_released(port), sockets_on(port)


def test_slurm_time_limit_warning_during_the_startup_stops_with_a_checkpoint(stop_configs, tiny_dataset, tmp_path):
    """Fault: SIGUSR1 (Slurm's warning before the time limit, train.sbatch's --signal=USR1@180) reaching a
    rank while it still imported torch or started the engine killed it ("User defined signal 1", exit -10),
    and the batch script, seeing a failed step, did not requeue. It is now kept from the rank's first line
    and obeyed at the first step boundary: a checkpoint, summary.json "stopped", exit 0."""
    out, log = tmp_path / "run", tmp_path / "rank0.log"

    def importing_torch(proc) -> bool:
        if not any("libtorch" in m.path for m in psutil.Process(proc.pid).memory_maps()):
            return False
        assert not (out / "metrics.jsonl").exists()  # still starting: nothing trained yet
        return True

    code = signal_one_trainer(stop_configs, tiny_dataset, out, log, importing_torch, signal.SIGUSR1)
    text = log.read_text()
    assert code == 0, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("stopped", 1), summary
    assert "stopping at step 1 (signal SIGUSR1, received during the startup)" in text, text[-4000:]
    assert_complete(out / "checkpoints" / "step_00000001")


def listing(folder):
    """The names in `folder`; none when it was never made (run alone, this test stops its run before the
    first checkpoint: the earlier tests of the chain made them)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_grace_too_short_keeps_the_previous_checkpoint_and_exits_75(stop_configs, tiny_dataset, tmp_path):
    """train.stop_grace_s 0: a SIGTERM is obeyed at once, without a save. The previous complete
    checkpoint is left as it was, and the exit status says no checkpoint was written."""
    out = tmp_path / "run"
    start = start_from_chain(out)
    before = listing(out / "checkpoints")
    port = rendezvous_port()  # plain processes: each rank's own exit status is seen
    procs = start_ranks(stop_train_args(stop_configs, tiny_dataset, out, "no_grace"), port=port, logs=tmp_path)
    try:
        wait_for_steps(out, start, procs[0], tmp_path / "rank0.log")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=HANG_GUARD_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = (tmp_path / "rank0.log").read_text()
    assert codes == [STOP_EXIT_UNSAVED, STOP_EXIT_UNSAVED], text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    assert re.search(r"no time left to save \(train\.stop_grace_s = 0", text), text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped-unsaved"
    assert listing(out / "checkpoints") == before  # nothing written, nothing lost
    if start:
        assert_complete(out / "checkpoints" / f"step_{start:08d}")
        assert f"The newest complete checkpoint ({out / 'checkpoints' / f'step_{start:08d}'}) is intact" in text
    else:  # run alone: none yet (it said "The newest complete checkpoint (none yet) is intact; ... resume from it")
        assert "No checkpoint was saved yet: running the same command again starts from step 0." in text, text[-4000:]
    assert port_released(port), sockets_on(port)
