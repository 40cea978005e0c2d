"""export.py given an exported folder (either format) instead of a checkpoint names the checkpoint the export
was made from, where the folder's config.json records it."""

import json

import pytest

from ngpt_ds.errors import NgptConfigError

CASES = {
    "ngpt_ds": (
        {"format": "ngpt_ds-export", "training": {"checkpoint": "runs/a/checkpoints/step_00000010"}},
        "runs/a/checkpoints/step_00000010, training.checkpoint in its config.json",
    ),
    "hf": (
        {"model_type": "ngpt", "ngpt_ds_export": {"training": {"checkpoint": "runs/a/checkpoints/step_00000010"}}},
        "runs/a/checkpoints/step_00000010, ngpt_ds_export.training.checkpoint in its config.json",
    ),
    "hf_without_provenance": (
        {"model_type": "ngpt", "ngpt_ds_export": {}},
        "its config.json names it under ngpt_ds_export.training.checkpoint",
    ),
    "not_json": ("{", "its config.json names it under training.checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_export_given_to_export_names_its_checkpoint(tmp_path, case):
    """Fault: export.py given a `--format hf` export said 'its config.json names it under training.checkpoint';
    an hf export records it under ngpt_ds_export.training.checkpoint, and has no `training` key. The message
    now quotes the checkpoint recorded, with its key."""
    from ngpt_ds.infer import resolve_checkpoint

    config, where = CASES[case]
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(NgptConfigError) as err:
        resolve_checkpoint(folder)
    assert str(err.value) == (
        f"{folder} is an exported model, and export.py reads a checkpoint (step_N with COMPLETE) or a training "
        f"run's folder: export from the checkpoint it was made from ({where})"
    )
