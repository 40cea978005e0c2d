"""ngpt_ds.train.out_moved's lines for each state of a held --out, without a training run (helper out38, session 38):
the branches the real runs of test_out38_moved_out.py do not reach (removed before the first save, a write outside
--out, a folder of the same path made again before the next run's lock)."""

import os
import shutil

from ngpt_ds.train import out_moved


def _run_folder(tmp_path, *steps):
    out = tmp_path / "run"
    for step in steps:
        (out / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
        (out / "checkpoints" / f"step_{step:08d}" / "COMPLETE").write_text("{}")
    out.mkdir(exist_ok=True)
    return out


def test_in_place_every_answer_is_none(tmp_path):
    out = _run_folder(tmp_path, 2)
    out_moved.hold(out, anew=True)
    assert out_moved.gone(out) is None
    assert out_moved.new_place(out) is None
    assert out_moved.left_line(out, "step_00000002", 2) is None
    assert out_moved.moved_from(out / "metrics.jsonl") is None


def test_removed_before_the_first_save_says_step_0_and_names_no_place(tmp_path):
    out = _run_folder(tmp_path)
    out_moved.hold(out, anew=True)
    shutil.rmtree(out)
    assert out_moved.new_place(out) is None
    assert out_moved.moved_from(out / "tensorboard" / "events.out.tfevents.1") == out
    assert out_moved.moved_from(tmp_path / "runner" / "metrics.jsonl") is None  # a sibling sharing the prefix
    assert out_moved.left_line(out, None, 4) == (
        f"{out} was removed while the run trained: deleted, or moved to another filesystem (mv copies the folder "
        "there, then deletes it here), and where a copy is cannot be known from here. No complete checkpoint was in "
        "it (train.checkpoint_interval 4): the same command (with --out at a copy's place, if there is one) starts "
        "from step 0"
    )


def test_the_save_line_of_a_removed_folder_names_the_newest_checkpoint_noted_at_the_lock(tmp_path):
    out = _run_folder(tmp_path, 2, 4)
    out_moved.hold(out, anew=True)  # notes step_00000004, which the removal takes with it
    shutil.rmtree(out)
    assert out_moved.gone(out).startswith(f"{out} was removed while the run trained: ")
    assert "The newest complete checkpoint the run had in it was step_00000004: " in out_moved.gone(out)


def test_a_folder_made_again_at_the_same_path_is_the_next_runs_folder(tmp_path):
    """A process that runs twice at one --out (the folder removed and made again in between) held the first folder:
    every save of the second run then read as a move. The lock holds the folder anew."""
    out = _run_folder(tmp_path, 2)
    out_moved.hold(out, anew=True)
    shutil.rmtree(out)
    out.mkdir()
    assert out_moved.gone(out) is not None
    out_moved.hold(out)  # a save's hold keeps the folder held first
    assert out_moved.gone(out) is not None
    out_moved.hold(out, anew=True)
    assert out_moved.gone(out) is None


def test_moved_on_one_filesystem_names_the_new_place(tmp_path):
    out = _run_folder(tmp_path, 2)
    out_moved.hold(out, anew=True)
    moved = tmp_path / "moved"
    os.rename(out, moved)
    assert out_moved.new_place(out) == moved
    assert out_moved.left_line(out, None, 4) == (
        f"{out} was moved to {moved} while the run trained, before its first checkpoint (train.checkpoint_interval "
        f"4): run the same command with --out {moved} to go on there, from step 0"
    )
