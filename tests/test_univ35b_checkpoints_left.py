"""Fault: a divergence's hint named a checkpoint step that was never saved. A resume of step 3 (checkpoint_interval
3) whose training loss became NaN at step 5 said 'Checkpoints up to step 4 are intact in <out>/checkpoints
(--resume auto continues from the newest, step_00000003)': no step 4 existed. The step named is now the newest
checkpoint's own. (The whole run, a NaN validation loss at step 4 naming step 2: tests/test_loop20_nan_validation.py.)"""

from ngpt_ds.train.divergence import checkpoints_left


def test_the_hint_names_the_newest_checkpoints_step_not_the_step_before_the_divergence(tmp_path):
    out = tmp_path / "run"
    newest = out / "checkpoints" / "step_00000003"
    newest.mkdir(parents=True)
    assert checkpoints_left(out, newest, checkpoint_interval=3) == (
        f"Checkpoints up to step 3 are intact in {out / 'checkpoints'} "
        "(--resume auto continues from the newest, step_00000003)"
    )
