"""A step folder that is a symbolic link to a shared checkpoint (`ln -s /shared/run/checkpoints/step_4
runP/checkpoints/`) is one of the run's own checkpoints (fault: the lineage check resolved the step folder
itself, took it for another run's checkpoint and moved it aside before it was loaded: DeepSpeed failed
with a bare AssertionError, and the rerun trained from step 0 without a word).
"""

from conftest import read_metrics, run_launch, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml


def test_resuming_a_linked_step_folder_keeps_it_and_trains_on(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(3, checkpoint_interval=1, keep_checkpoints=5))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    shared = tmp_path / "shared"
    run_launch("train.py", *train_flags(config, ds, tiny_dataset, shared, "--max-steps", "2"))
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    linked = out / "checkpoints" / "step_00000002"
    linked.symlink_to(shared / "checkpoints" / "step_00000002")

    proc = run_launch("train.py", *train_flags(config, ds, tiny_dataset, out, "--resume", linked))
    assert "moved" not in proc.stdout  # before: "resuming from ..., outside ...: moved its 1 checkpoint folder(s)"
    assert f"resumed from {linked} at step 2" in proc.stdout
    assert linked.is_symlink() and linked.resolve() == shared / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(("step_", "abandoned-"))) == [
        "step_00000002",
        "step_00000003",
    ]
    assert [m["step"] for m in read_metrics(out)] == [3]


def test_a_divergence_after_resuming_a_linked_step_names_the_run_folder(tmp_path):
    from ngpt_ds.train.divergence import checkpoints_left

    shared = tmp_path / "shared" / "checkpoints" / "step_00000004"
    shared.mkdir(parents=True)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    linked = out / "checkpoints" / "step_00000004"
    linked.symlink_to(shared)
    assert checkpoints_left(out, linked, checkpoint_interval=2) == (
        f"Checkpoints up to step 4 are intact in {out / 'checkpoints'} "
        "(--resume auto continues from the newest, step_00000004)"
    )
