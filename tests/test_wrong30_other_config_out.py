"""Fault (helper wrong30, session 30): `--out` pointed at another run's folder with a different config file continued
that run, and retention then deleted the first run's checkpoints as its own: after two saves of run B (b.yaml)
in run A's folder, A's step_6 and step_8 were gone. Now rank 0 warns at startup, and retention never deletes a
step_N whose config.yaml records another config_source, across restarts of B too. The same file edited rotates
as before."""

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

MODEL = tiny_ngpt()


def steps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_") and "." not in p.name)


def test_out_at_another_configs_run_keeps_its_checkpoints_across_restarts(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    a = write_yaml(tmp_path / "a.yaml", MODEL, tiny_train(8, checkpoint_interval=2, keep_checkpoints=2))
    out = tmp_path / "runA"
    checkpoints = out / "checkpoints"
    train_run(a, ds, tiny_dataset, out, forked=True)
    assert steps(checkpoints) == ["step_00000006", "step_00000008"]

    b = write_yaml(tmp_path / "b.yaml", MODEL, tiny_train(12, checkpoint_interval=2, keep_checkpoints=2, lr=2e-3))
    second = train_run(b, ds, tiny_dataset, out, forked=True)
    expected = (
        f"--out {out} holds a run trained from {a}; this run continues it with {b}. Its checkpoints are kept "
        "(retention deletes only this config's own); to start a new run pass another --out"
    )
    # The old code: ["step_00000010", "step_00000012"], A's step_6 and step_8 deleted as B's own.
    assert steps(checkpoints) == ["step_00000006", "step_00000008", "step_00000010", "step_00000012"]
    assert expected in second.stdout + second.stderr

    # B restarted: <out>/config.yaml now records b.yaml; A's folders still record a.yaml and stay.
    train_run(b, ds, tiny_dataset, out, "--max-steps", "16", forked=True)
    assert steps(checkpoints) == ["step_00000006", "step_00000008", "step_00000014", "step_00000016"]


def test_same_config_file_edited_still_rotates(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    a = write_yaml(tmp_path / "a.yaml", MODEL, tiny_train(8, checkpoint_interval=2, keep_checkpoints=2))
    out = tmp_path / "runA"
    train_run(a, ds, tiny_dataset, out, forked=True)
    write_yaml(a, MODEL, tiny_train(12, checkpoint_interval=2, keep_checkpoints=2, lr=2e-3))
    again = train_run(a, ds, tiny_dataset, out, forked=True)
    assert "holds a run trained from" not in again.stdout + again.stderr
    assert steps(out / "checkpoints") == ["step_00000010", "step_00000012"]
