"""A rollback copies the earlier lineage's tensorboard/ into checkpoints/abandoned-*/ (lineage
._keep_lineage_logs). Fault: shutil.copytree followed the links inside it, so a run folder someone handed
over with tensorboard/ holding a link to /dev/zero filled the disk at the rollback, and one holding a link
to a file outside the run (a key, a password file) copied that file into the run; a named pipe there
stopped the rollback with shutil.Error."""

import os

from ngpt_ds.train.lineage import start_lineage


def _run_with_a_newer_lineage(tmp_path):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    for step in (6, 8):
        (checkpoints / f"step_{step:08d}").mkdir(parents=True)
        (checkpoints / f"step_{step:08d}" / "COMPLETE").write_text(f"step {step}\n")
    board = out / "tensorboard"
    board.mkdir()
    (board / "events.out.tfevents.1.host").write_bytes(b"events\n")
    (out / "metrics.jsonl").write_text('{"step": 8, "train/loss": 1.0}\n')
    return out, board


def _abandoned(out):
    (abandoned,) = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    return abandoned


def test_a_rollback_copies_the_links_in_tensorboard_as_links_not_what_they_name(tmp_path):
    out, board = _run_with_a_newer_lineage(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's\n")
    (board / "secret").symlink_to(secret)
    (board / "device").symlink_to("/dev/null")  # stands in for /dev/zero, which the old code copied forever

    start_lineage(out, out / "checkpoints" / "step_00000006")

    copy = _abandoned(out) / "tensorboard"
    assert sorted(os.listdir(copy)) == ["device", "events.out.tfevents.1.host", "secret"]
    assert (copy / "events.out.tfevents.1.host").read_bytes() == b"events\n"
    for name, target in (("secret", str(secret)), ("device", "/dev/null")):
        assert (copy / name).is_symlink(), name  # old code: secret and device became regular files
        assert os.readlink(copy / name) == target
    assert secret.read_text() == "not the run's\n"
    assert (board / "secret").is_symlink()  # the run's own tensorboard/ is left as it was


def test_a_rollback_leaves_a_named_pipe_in_tensorboard_out_of_its_copy_and_copies_a_dangling_link(tmp_path):
    out, board = _run_with_a_newer_lineage(tmp_path)
    os.mkfifo(board / "pipe")
    (board / "nothing").symlink_to(tmp_path / "gone")

    line = start_lineage(out, out / "checkpoints" / "step_00000006")  # old code: shutil.Error naming both

    copy = _abandoned(out) / "tensorboard"
    assert sorted(os.listdir(copy)) == ["events.out.tfevents.1.host", "nothing"]
    assert os.readlink(copy / "nothing") == str(tmp_path / "gone")
    assert line is not None and line.endswith("with a copy of its metrics.jsonl and tensorboard/")
