"""A periodic checkpoint says where it went: at steps 100 and 200 of the main command nothing had said a checkpoint
was written (newcomer30), while a stop's save and the last one did. One line per periodic save, none for the last
save (the closing summary names it) and none twice."""

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def test_each_periodic_checkpoint_is_announced_once_with_its_folder(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(5, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    proc = train_run(config, ds, tiny_dataset, out, forked=True)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "checkpoint saved in" in line]
    checkpoints = out / "checkpoints"
    assert said == [
        f"step 2: checkpoint saved in {checkpoints / 'step_00000002'}",
        f"step 4: checkpoint saved in {checkpoints / 'step_00000004'}",
    ]
    assert (checkpoints / "step_00000004" / "COMPLETE").is_file()  # step 2's was rotated out by keep_checkpoints
