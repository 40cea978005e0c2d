"""The default run folder (runs/<the config's name>, when --out is left out) is not shared by two config files
of the same name.

Fault (review): `--config exp1/model.yaml` and then `--config exp2/model.yaml`, both without --out, trained in
runs/model; the second resumed the first's checkpoint ("resumed from runs/model/checkpoints/step_00000002 ...
changed since the checkpoint: train.lr 0.01 -> 0.05") and trained on as if it were one experiment.
"""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import PRESET_DIR
from ngpt_ds.train.builder import TrainOptions, prepare

from conftest import fails_after, tiny_ngpt, tiny_train, write_ds_config, write_yaml


def trained_from(folder, source: str) -> None:
    """A run folder as the trainer leaves it: config.yaml (RunConfig.to_yaml, config_source first)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"config_source: {source}\nmodel:\n  arch: ngpt\n")


@pytest.fixture
def options(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("exp1", "exp2"):
        (tmp_path / name).mkdir()
        write_yaml(tmp_path / name / "model.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)

    def make(config: str, out: str | None = None) -> TrainOptions:
        return TrainOptions(config=config, deepspeed_config=str(ds), data=str(tiny_dataset), out=out, progress=False)

    return make


def test_a_config_of_the_same_name_from_another_folder_does_not_resume_its_run(tmp_path, options):
    trained_from(tmp_path / "runs" / "model", "exp1/model.yaml")
    with pytest.raises(NgptConfigError) as err:
        prepare(options("exp2/model.yaml"), resume=False)
    assert str(err.value) == (
        "--config exp2/model.yaml trains in runs/model when --out is left out (runs/<the config file's name>), and "
        "the run there was trained from another file, exp1/model.yaml: two configs of the same name share that "
        "folder, and this one would resume that run. Pass --out runs/<a name of its own> to start a new run, or "
        "--out runs/model to continue that run with this config"
    )
    # The same file, however written, goes on; so does an --out given on purpose.
    assert prepare(options("exp1/model.yaml"), resume=False).run.out_dir == "runs/model"
    assert prepare(options(str(tmp_path / "exp1" / "model.yaml")), resume=False).run.out_dir == "runs/model"
    assert prepare(options("exp2/model.yaml", out="runs/model"), resume=False).run.out_dir == "runs/model"


def test_the_folders_newest_checkpoint_tells_when_its_config_yaml_cannot(tmp_path, options):
    run = tmp_path / "runs" / "model"
    trained_from(run / "checkpoints" / "step_00000002", "exp1/model.yaml")
    (run / "config.yaml").write_text("config_sou")  # cut short by a kill
    with pytest.raises(NgptConfigError, match=r"trained from another file, exp1/model.yaml: "):
        prepare(options("exp2/model.yaml"), resume=False)


def test_a_preset_keeps_its_default_folder_wherever_ngpt_ds_was_installed(tmp_path, options):
    trained_from(tmp_path / "runs" / "ngpt_tiny", "/old/venv/site-packages/ngpt_ds/model/presets/ngpt_tiny.yaml")
    assert prepare(options("ngpt_tiny"), resume=False).run.config_source == str(PRESET_DIR / "ngpt_tiny.yaml")
    # A file of the preset's name is another config.
    (tmp_path / "ngpt_tiny.yaml").write_text((tmp_path / "exp1" / "model.yaml").read_text())
    with pytest.raises(NgptConfigError, match=r"^--config ngpt_tiny.yaml trains in runs/ngpt_tiny when --out is "):
        prepare(options("ngpt_tiny.yaml"), resume=False)


def test_a_named_pipe_at_the_run_folders_config_yaml_is_not_waited_on(tmp_path):
    """The check reads the folder's config.yaml before anything else of a run folder someone may have handed over:
    a named pipe there blocked the rank for good (a plain read waits for a writer)."""
    import os

    from ngpt_ds.train.config_identity import check_default_folder_is_this_configs

    folder = tmp_path / "runs" / "model"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "config.yaml")
    (tmp_path / "model.yaml").write_text("model: {}\n")

    with fails_after(5, "waiting on the named pipe"):
        check_default_folder_is_this_configs(folder, tmp_path / "model.yaml")  # no run recorded: nothing to refuse
