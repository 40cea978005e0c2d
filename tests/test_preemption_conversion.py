"""Preemption during the universal conversion of a resume at another world size (ngpt_ds.train.reshape).

Fault: rank 0 runs DeepSpeed's ds_to_universal as a child process. A rank SIGKILLed while it converted (a
launcher that kills each rank by pid, the OOM killer), or one killed by a SIGTERM there (the stop handlers
are installed only after the engine starts), left the converter running on, writing into
checkpoints/step_N-universal.tmp-save. The rerun the README promises removed that folder and made it anew
under the orphan, which went on writing into it: the rerun stopped with "could not start DeepSpeed's
ds_to_universal in ...tmp-save: [Errno 17] File exists", or hashed a folder two converters wrote.
"""

import signal
import sys
import time

import psutil
from stop_helpers import (
    HANG_GUARD_S,
)

from ngpt_ds.train import checkpoint

from conftest import (
    read_metrics,
    run,
    start_ranks,
    tiny_ngpt,
    tiny_train,
    torchrun,
    train_cmd,
    write_ds_config,
    write_yaml,
)


def converters_of(out) -> list[psutil.Process]:
    """The ds_to_universal processes converting a checkpoint of the run folder `out`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ngpt_ds.train.reshape" in cmdline and str(out) in cmdline:
            found.append(proc)
    return found


def test_a_rank_killed_during_the_conversion_leaves_no_converter_behind(tmp_path, tiny_dataset):
    """SIGKILL to the 1-rank run converting a 2-rank checkpoint, as soon as its converter started: the
    converter ends with it, before it finishes (the orphan finished its conversion, writing into the
    folder the rerun makes anew). The rerun then converts, and trains to the end."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    torchrun(*train_cmd(config, ds, tiny_dataset, out, "--max-steps", "2"))
    assert [d.name for d in checkpoint.complete_checkpoints(out / "checkpoints")] == ["step_00000002"]

    (rank,) = start_ranks(train_cmd(config, ds, tiny_dataset, out), nproc=1, logs=tmp_path)
    deadline = time.monotonic() + HANG_GUARD_S  # a hang guard only
    try:
        while not (converters := converters_of(out)):
            assert rank.poll() is None, (tmp_path / "rank0.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the conversion never started"
            time.sleep(0.02)
        rank.send_signal(signal.SIGKILL)
        assert rank.wait(timeout=HANG_GUARD_S) == -signal.SIGKILL
        gone, alive = psutil.wait_procs(converters, timeout=HANG_GUARD_S)
        assert not alive
    finally:
        for left in converters_of(out):
            left.kill()
        if rank.poll() is None:
            rank.kill()
    work = out / "checkpoints" / ("step_00000002" + checkpoint.UNIVERSAL_SUFFIX + checkpoint.TEMP_SUFFIX)
    log = (work / "convert.log").read_text()
    assert "*** Done!" not in log, log[-2000:]  # DeepSpeed's last line of a finished conversion

    rerun = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    assert "converted it once into the universal checkpoint" in rerun.stdout + rerun.stderr
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]
    assert checkpoint.verify(out / "checkpoints" / "step_00000004") is None
