"""export and generate reading a checkpoint that the training run's retention deletes meanwhile (helper red36, s36).

Fault: with train.keep_checkpoints: 1, a run saving step 4 deletes step 2 while `export.py .../step_00000002` reads it;
the export stopped on 'error: DeepSpeed could not consolidate the ZeRO shards in .../step_00000002: Directory ...
doesn't exist. The checkpoint is incomplete or damaged; use another one': it was neither, and no newer checkpoint was
named. generate.py of a step retention had already deleted said '... does not exist. Give an exported model folder, a
checkpoint directory (<out>/checkpoints/step_N) or a training run's --out directory'. Both now say that retention
deletes older checkpoints and name the newest complete one left. No export folder (nor its staging folder) is left.

The reader is a real export.py / generate.py process paused between its check of the ZeRO files and DeepSpeed's
zero_to_fp32 read of them (a small wrapper below); the deletion is a real training run's retention (--resume auto).
"""

import subprocess
import sys
import time

from conftest import REPO, cpu_env, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

_PAUSED = r"""
import sys, time
from pathlib import Path
from ngpt_ds import deepspeed_files
paused, go, cli = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real = deepspeed_files.check_zero_to_fp32_files
def check_then_wait(checkpoint):
    real(checkpoint)
    paused.write_text("paused")
    while not go.exists():
        time.sleep(0.05)
deepspeed_files.check_zero_to_fp32_files = check_then_wait
from ngpt_ds.cli.export import main as export
from ngpt_ds.cli.generate import main as generate
sys.exit((export if cli == "export" else generate)(sys.argv[4:]))
"""

RETENTION = "(a training run's retention (train.keep_checkpoints) deletes its older checkpoints as it saves newer ones)"


def _read_while_training(tmp_path, cli, args, train):
    """`cli` ARGS paused inside its read of the checkpoint while `train` runs to its end; its result."""
    paused, go = tmp_path / f"paused-{cli}", tmp_path / f"go-{cli}"
    reader = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, str(paused), str(go), cli, *map(str, args)],
        env=cpu_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240  # a hang guard only
    while not paused.exists():
        assert reader.poll() is None and time.monotonic() < deadline, reader.communicate(timeout=10)
        time.sleep(0.05)
    train()
    go.write_text("go")
    stdout, stderr = reader.communicate(timeout=240)
    return reader.returncode, stdout, stderr


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_export_and_generate_of_a_checkpoint_retention_deletes_name_the_newest(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(8, checkpoint_interval=2, keep_checkpoints=1))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)

    def train_to(step):
        return lambda: run([sys.executable, *train_cmd(config, ds, tiny_dataset, out, "--max-steps", step)])

    train_to(2)()
    step2, step4, step6 = (checkpoints / f"step_0000000{n}" for n in (2, 4, 6))
    export_to = tmp_path / "exports" / "ngpt"
    export_to.parent.mkdir()

    code, _, stderr = _read_while_training(tmp_path, "export", [step2, "--out", export_to], train_to(4))
    assert not step2.exists() and step4.is_dir()  # the run's retention deleted step 2 during the read
    assert code == 2, stderr[-3000:]
    # old code: 'error: DeepSpeed could not consolidate the ZeRO shards in .../step_00000002: Directory ... doesn't
    # exist. The checkpoint is incomplete or damaged; use another one'
    assert _errors(stderr) == [
        f"error: {step2} was deleted while it was read {RETENTION}. The newest complete checkpoint there is now "
        f"{step4}: pass it, or the run folder {out}, which takes the newest"
    ], stderr[-3000:]
    assert sorted(p.name for p in export_to.parent.iterdir()) == []  # no export folder, no staging folder

    code, _, stderr = _read_while_training(
        tmp_path, "generate", [step4, "--prompt", "a", "--max-new-tokens", "2"], train_to(6)
    )
    assert not step4.exists() and step6.is_dir()
    assert code == 2, stderr[-3000:]
    assert _errors(stderr) == [
        f"error: {step4} was deleted while it was read {RETENTION}. The newest complete checkpoint there is now "
        f"{step6}: pass it, or the run folder {out}, which takes the newest"
    ], stderr[-3000:]

    # a step retention deleted before the command started; old code: "... does not exist. Give an exported model
    # folder, a checkpoint directory (<out>/checkpoints/step_N) or a training run's --out directory"
    gone = run(
        [sys.executable, REPO / "launch/generate.py", step2, "--prompt", "a", "--max-new-tokens", "2"], check=False
    )
    assert gone.returncode == 2, gone.stderr[-3000:]
    assert _errors(gone.stderr) == [
        f"error: {step2} does not exist {RETENTION}. The newest complete checkpoint there is now {step6}: pass it, or "
        f"the run folder {out}, which takes the newest"
    ], gone.stderr[-3000:]

    # the newest, as the message says, exports whole
    run([sys.executable, REPO / "launch/export.py", out, "--out", export_to])
    assert sorted(p.name for p in export_to.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.model",
    ]
