"""--resume of another run's checkpoint that the run's retention has deleted names the newest one left (helper red36).

Fault: run A (train.keep_checkpoints: 1) saved step 4 and its retention deleted step 2; `--resume A/checkpoints/
step_00000002 --out B` said "--resume ...: does not exist. Give a checkpoint directory (…/checkpoints/step_N), a run's
--out directory, 'auto' or 'none'": nothing said that retention had deleted it, nor which checkpoint A holds now. The
line now names both; a step that was never saved (above every checkpoint there) keeps the old line.
"""

import sys

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_a_resume_of_a_step_retention_deleted_names_the_newest_checkpoint_of_that_run(tmp_path, tiny_dataset):
    run_a, run_b = tmp_path / "A", tmp_path / "B"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=1))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, run_a)])
    checkpoints = run_a / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000004"]  # retention deleted step 2

    def refused(step: str) -> list[str]:
        proc = run(
            [sys.executable, *train_cmd(config, ds, tiny_dataset, run_b, "--resume", checkpoints / step)], check=False
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        return [line for line in proc.stderr.splitlines() if line.startswith("error:")]

    # old code: "error: --resume .../A/checkpoints/step_00000002: does not exist. Give a checkpoint directory
    # (…/checkpoints/step_N), a run's --out directory, 'auto' or 'none'"
    assert refused("step_00000002") == [
        f"error: --resume {checkpoints / 'step_00000002'}: does not exist (a training run's retention "
        "(train.keep_checkpoints) deletes its older checkpoints as it saves newer ones). The newest complete "
        f"checkpoint beside it is {checkpoints / 'step_00000004'}: resume from it, or pass that run's folder {run_a}, "
        "which takes its newest"
    ]
    assert refused("step_00000006") == [  # never saved: not blamed on retention; the newest named (out38)
        f"error: --resume {checkpoints / 'step_00000006'}: does not exist (no newer complete checkpoint stands beside "
        "it, so the run's retention did not delete it). The newest complete checkpoint beside it is "
        f"{checkpoints / 'step_00000004'}: resume from it, or pass that run's folder {run_a}, which takes its newest"
    ]
    assert not (run_b / "checkpoints").exists()
