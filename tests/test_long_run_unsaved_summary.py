"""summary.json of a resumed session that stops without a checkpoint (train.stop_grace_s too short to save)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from ngpt_ds.train.stopping import STOPPED_UNSAVED_EXIT_CODE

from conftest import cpu_env, tiny_ngpt, tiny_train, train_cmd, train_run, write_ds_config, write_yaml

GUARD_S = 240


def test_a_resumed_session_stopped_unsaved_names_the_checkpoint_it_resumed_from(tiny_dataset, tmp_path):
    """Fault: a resumed session stopped before its first save (SIGTERM with train.stop_grace_s 0) wrote
    summary.json with "checkpoint": null, while its last line said 'The newest complete checkpoint
    (.../step_00000002) is intact; run the same command again to resume from it': summary.json named only a
    checkpoint this session saved. It now names the newest complete one, what the rerun resumes from, as a
    diverged run's summary does."""
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    first = write_yaml(tmp_path / "first.yaml", tiny_ngpt(), tiny_train(2))
    out = tmp_path / "run"
    train_run(first, ds, tiny_dataset, out, env=cpu_env(), timeout=GUARD_S, forked=True)
    saved = out / "checkpoints" / "step_00000002"
    assert json.loads((out / "summary.json").read_text())["checkpoint"] == str(saved)

    records_before = len((out / "metrics.jsonl").read_text().splitlines())
    no_grace = write_yaml(tmp_path / "no_grace.yaml", tiny_ngpt(), tiny_train(2, stop_grace_s=0))
    log = tmp_path / "resumed.log"
    cmd = [sys.executable, *train_cmd(no_grace, ds, tiny_dataset, out, "--max-steps", "100000")]
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=cpu_env())
    try:
        deadline = time.monotonic() + GUARD_S
        while len((out / "metrics.jsonl").read_text().splitlines()) < records_before + 3:  # 3 steps of this session
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the resumed session logged no 3 steps: " + log.read_text()[-4000:])
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == STOPPED_UNSAVED_EXIT_CODE, text[-4000:]
    assert f"The newest complete checkpoint ({saved}) is intact" in text, text[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["checkpoint"]) == ("stopped-unsaved", str(saved)), summary
    assert summary["step"] > 2
