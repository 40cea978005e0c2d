"""--resume of a step_N that is gone from a run's checkpoints with no newer complete one beside it (so not deleted by
the run's retention: never saved, removed by hand, deleted while it was read) names the checkpoints that are there
and what to do, not the advice for any path (helper out38, session 38).

Fault: on a real run with step_00000002 and step_00000004, `--resume .../checkpoints/step_00000006` (a step the run
never saved) said 'error: --resume .../step_00000006: does not exist. Give a checkpoint directory
(…/checkpoints/step_N), a run's --out directory, 'auto' or 'none'', naming neither step_00000004 nor the run folder;
so did a checkpoint deleted while the run loaded it (ngpt_ds.train.checkpoint_load), the same `newer_beside`.
"""

import sys
from pathlib import Path

from ngpt_ds.train.resume import newer_beside

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

GENERIC = ". Give a checkpoint directory (…/checkpoints/step_N), a run's --out directory, 'auto' or 'none'"
WHY = " (no newer complete checkpoint stands beside it, so the run's retention did not delete it)"


def test_a_never_saved_step_names_the_newest_complete_checkpoint_and_the_run_folder(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    first = tmp_path / "first"
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, first)])
    missing = first / "checkpoints" / "step_00000006"
    other = tmp_path / "other"
    refused = run([sys.executable, *train_cmd(config, ds, tiny_dataset, other, "--resume", missing)], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    # old code: ["error: --resume .../step_00000006: does not exist. Give a checkpoint directory (…/checkpoints/step_N),
    # a run's --out directory, 'auto' or 'none'"]
    assert errors == [
        f"error: --resume {missing}: does not exist{WHY}. The newest complete checkpoint beside it is "
        f"{first / 'checkpoints' / 'step_00000004'}: resume from it, or pass that run's folder {first}, which takes "
        "its newest"
    ], refused.stderr[-3000:]


def test_a_gone_step_in_a_checkpoints_folder_with_no_complete_one_says_what_to_do(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    (folder / "step_00000004").mkdir(parents=True)  # half-written: no COMPLETE
    missing = folder / "step_00000002"
    # old code: GENERIC
    assert newer_beside(missing) == (
        f"{WHY}. {folder} holds no complete checkpoint: resume from a checkpoint of another run, or pass --resume "
        "none to start from step 0"
    )


def test_a_mistyped_path_keeps_the_advice_for_any_path(tmp_path):
    assert newer_beside(tmp_path / "nowhere" / "checkpoints" / "step_00000002") == GENERIC
    (tmp_path / "notes").mkdir()
    assert newer_beside(tmp_path / "notes" / "step_00000002") == GENERIC
    assert newer_beside(Path("/proc") / "step_00000002") == GENERIC
