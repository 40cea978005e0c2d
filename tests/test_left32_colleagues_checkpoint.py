"""Fault (left32): a colleague's checkpoint copied into this run's checkpoints/ was resumed as this run's own.

Between two jobs of a run, someone copies a checkpoint of another run (a colleague's --out, trained otherwise: here
another lr, and two steps further) into the run's checkpoints/. The next job, the same command (--resume auto, the
default), took it as the run's newest checkpoint and trained on from it with no word that it was another run's: the
only lines were the lr change and "checkpoints/latest named step_00000004: a save was killed before updating it",
a cause that never happened. The checkpoint's manifest records the COMPLETE files of the step folders it was sealed
beside (sealed_among): the colleague's step_2 and step_4, which differ from this run's. Now auto says so, naming
them and the fix, and still resumes (a copy may be meant); a checkpoint of the run's own raises no such warning.
"""

import shutil
import sys

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_auto_says_the_newest_checkpoint_was_sealed_beside_another_runs(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    checkpoints = mine / "checkpoints"
    a = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2))
    b = write_yaml(tmp_path / "b.yaml", tiny_ngpt(), {**tiny_train(6, checkpoint_interval=2), "lr": 5e-3})
    run([sys.executable, *train_cmd(a, ds, tiny_dataset, mine)])
    run([sys.executable, *train_cmd(b, ds, tiny_dataset, theirs)])
    shutil.copytree(theirs / "checkpoints/step_00000006", checkpoints / "step_00000006", symlinks=True)

    again = run([sys.executable, *train_cmd(a, ds, tiny_dataset, mine), "--max-steps", "8"])
    said = again.stdout + again.stderr
    warning = (
        f"warning: --resume auto continues from step_00000006, which was not saved beside this run's checkpoints: "
        f"its manifest records step_00000002, step_00000004 with other contents than {checkpoints} holds under that "
        f"name (a checkpoint copied in from another run). If that is not meant, stop now and move step_00000006 out "
        f"of {checkpoints}: --resume auto then takes this run's own newest"
    )
    # Old code: resumed from it with no such line.
    assert said.count(warning) == 1, said[-3000:]
    assert f"resumed from {checkpoints / 'step_00000006'} at step 6" in said

    # The run's own step 8, sealed beside the copy: no warning at the next resume.
    own = run([sys.executable, *train_cmd(a, ds, tiny_dataset, mine), "--max-steps", "10"])
    assert "was not saved beside" not in own.stdout + own.stderr, (own.stdout + own.stderr)[-3000:]
    assert f"resumed from {checkpoints / 'step_00000008'} at step 8" in own.stdout + own.stderr
