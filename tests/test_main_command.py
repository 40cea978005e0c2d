"""The README's main command, exactly as a newcomer types it: trains the tiny nGPT on the
default corpus (downloaded through pip on a fresh machine), logs to TensorBoard, checkpoints."""

import json
import shutil

from conftest import REPO, cpu_env, run


def test_readme_main_command_end_to_end(tmp_path):
    command = "deepspeed launch/train.py --deepspeed_config ds_configs/zero2.json"
    assert command in (REPO / "README.md").read_text()
    # Run it in a scratch directory that looks like the repo, so runs/ lands there.
    for name in ("launch", "ds_configs"):
        (tmp_path / name).symlink_to(REPO / name)
    env = cpu_env()
    env.pop("OMP_NUM_THREADS")  # as a user's shell: one rank uses both cores
    env.pop("NGPT_DS_CPU_BF16")  # and the JSON's bf16 becomes fp32 on a CPU without native bf16
    proc = run(command.split(), cwd=tmp_path, env=env, timeout=1200)
    out = tmp_path / "runs" / "ngpt_tiny"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == summary["max_steps"] == 300
    assert summary["val_loss"] < 4.6, summary  # ln(4096) = 8.3 at the start
    assert (out / "checkpoints" / "step_00000300" / "COMPLETE").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "Done: nGPT (ngpt_tiny.yaml) to step 300/300" in proc.stdout
    # Running it again resumes, finds nothing to do, and says so.
    again = run(command.split(), cwd=tmp_path, env=env, timeout=600)
    assert "already trained to step 300/300: nothing to do" in again.stdout
    shutil.rmtree(out)
