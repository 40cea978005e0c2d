"""Fault (session 31): a run folder recorded its config file as --config was written, relative to the folder
training ran in, and the next run resolved that path against ITS working folder. Two faults followed when the same
--out was trained from two working folders (a Slurm requeue from another folder, a colleague's shell):

- another file taken for the same: run A from folder A with `--config configs/a.yaml`, then run B from folder B
  with ITS own configs/a.yaml (another file): no warning, and retention deleted A's checkpoints as B's own;
- the same file taken for another: run A again from folder B as `--config ../A/configs/a.yaml`: a false
  "trained from another file" warning, and retention kept every checkpoint of the run forever.

The run config now records the file made absolute (config_source_absolute), compared wherever the next run starts.
"""

from ngpt_ds.train.config_identity import read_config_source

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

MODEL = tiny_ngpt()
FOREIGN = "holds a run trained from"


def steps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_") and "." not in p.name)


def two_folders(tmp_path, lr_b: float):
    """Working folders A and B, each with its own configs/a.yaml (B's at another learning rate)."""
    for name in ("A", "B"):
        (tmp_path / name / "configs").mkdir(parents=True)
    a = write_yaml(tmp_path / "A/configs/a.yaml", MODEL, tiny_train(8, checkpoint_interval=2, keep_checkpoints=2))
    b = tiny_train(12, checkpoint_interval=2, keep_checkpoints=2, lr=lr_b)
    write_yaml(tmp_path / "B/configs/a.yaml", MODEL, b)
    return a


def test_another_file_of_the_same_relative_name_keeps_the_first_runs_checkpoints(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    two_folders(tmp_path, lr_b=2e-3)
    out, checkpoints = tmp_path / "run", tmp_path / "run/checkpoints"
    train_run("configs/a.yaml", ds, tiny_dataset, out, cwd=tmp_path / "A", forked=True)
    assert steps(checkpoints) == ["step_00000006", "step_00000008"]

    second = train_run("configs/a.yaml", ds, tiny_dataset, out, cwd=tmp_path / "B", forked=True)
    # The old code: ['step_00000010', 'step_00000012'], A's step_6 and step_8 deleted as B's own, and no warning.
    assert steps(checkpoints) == ["step_00000006", "step_00000008", "step_00000010", "step_00000012"]
    expected = f"--out {out} holds a run trained from {tmp_path / 'A/configs/a.yaml'}; this run continues it with"
    assert expected in second.stdout + second.stderr


def test_the_same_file_named_from_another_folder_still_rotates(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    a = two_folders(tmp_path, lr_b=2e-3)
    out, checkpoints = tmp_path / "run", tmp_path / "run/checkpoints"
    train_run("configs/a.yaml", ds, tiny_dataset, out, cwd=tmp_path / "A", forked=True)
    write_yaml(a, MODEL, tiny_train(12, checkpoint_interval=2, keep_checkpoints=2))

    again = train_run("../A/configs/a.yaml", ds, tiny_dataset, out, cwd=tmp_path / "B", forked=True)
    # The old code: a false warning and ['step_00000006', 'step_00000008', 'step_00000010', 'step_00000012'].
    assert FOREIGN not in again.stdout + again.stderr
    assert steps(checkpoints) == ["step_00000010", "step_00000012"]


def test_a_folder_saved_before_the_absolute_path_is_read_by_its_relative_path(tmp_path):
    """A run folder written by an older ngpt_ds records config_source alone: compared as before, from here."""
    saved = tmp_path / "config.yaml"
    saved.write_text("config_source: configs/a.yaml\nmodel:\n  arch: ngpt\n")
    assert read_config_source(saved) == "configs/a.yaml"
    saved.write_text("config_source: configs/a.yaml\nconfig_source_absolute: /x/configs/a.yaml\nmodel: {}\n")
    assert read_config_source(saved) == "/x/configs/a.yaml"
