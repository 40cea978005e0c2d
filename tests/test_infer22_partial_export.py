"""An export folder copied in part (a file missing, or a symbolic link to nothing in its place) is named with
the file and the fix, by generate.py, evaluate.py and export.py alike: one error line, exit 2, no traceback.

Fault: such a folder was "neither an exported model (config.json + model.safetensors) nor a checkpoint directory
(step_N with COMPLETE) nor a training run (checkpoints/step_N)", naming neither the file missing nor a fix; a
missing tokenizer.model was "not found; pass an existing sentencepiece .model file", as if the user had named it.
"""

import shutil

import pytest
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer import load

from conftest import run_launch

FIX = "Copy the whole export folder again, or export the checkpoint again"


def partial(small_export, tmp_path, damage: str):  # noqa: F811
    folder = tmp_path / damage
    shutil.copytree(small_export, folder)
    if damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "weights_link_to_nothing":
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").symlink_to(tmp_path / "moved.safetensors")
    elif damage == "config_link_to_nothing":
        (folder / "config.json").unlink()
        (folder / "config.json").symlink_to(tmp_path / "moved.json")
    elif damage == "no_tokenizer":
        (folder / "tokenizer.model").unlink()
    elif damage == "tokenizer_link_to_nothing":
        (folder / "tokenizer.model").unlink()
        (folder / "tokenizer.model").symlink_to(tmp_path / "moved.model")
    return folder


def expected(folder, tmp_path, damage: str) -> str:
    return {
        "no_weights": f"{folder / 'model.safetensors'} is missing: {folder} is an exported model without its weights "
        f"(an export copied in part). {FIX}",
        "no_config": f"{folder} holds model.safetensors but no config.json: an export copied in part. {FIX}",
        "weights_link_to_nothing": f"{folder / 'model.safetensors'} is a symbolic link to {tmp_path / 'moved.safetensors'}"
        f", which does not exist: the export's file it leads to was moved or deleted. {FIX}",
        "config_link_to_nothing": f"{folder / 'config.json'} is a symbolic link to {tmp_path / 'moved.json'}, which "
        f"does not exist: the export's file it leads to was moved or deleted. {FIX}",
        "no_tokenizer": f"{folder / 'tokenizer.model'} is missing: the export {folder} has no tokenizer (an export "
        "copied in part). Copy the whole export folder again, export the checkpoint again, or pass the model's own "
        "tokenizer.model with --tokenizer FILE",
        "tokenizer_link_to_nothing": f"{folder / 'tokenizer.model'} is missing (a symbolic link to "
        f"{tmp_path / 'moved.model'}, which does not exist): the export {folder} has no tokenizer (an export copied "
        "in part). Copy the whole export folder again, export the checkpoint again, or pass the model's own "
        "tokenizer.model with --tokenizer FILE",
    }[damage]


DAMAGES = [
    "no_weights",
    "no_config",
    "weights_link_to_nothing",
    "config_link_to_nothing",
    "no_tokenizer",
    "tokenizer_link_to_nothing",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_partly_copied_export_names_the_missing_file_and_the_fix(small_export, tmp_path, damage):  # noqa: F811
    """Fault: the folder was 'neither an exported model nor a checkpoint directory ...' (the tokenizer: 'not
    found; pass an existing sentencepiece .model file'), naming no file of the export and no fix."""
    folder = partial(small_export, tmp_path, damage)
    with pytest.raises(NgptConfigError) as err:
        load(folder, device="cpu")
    assert str(err.value) == expected(folder, tmp_path, damage)


def test_generate_and_export_name_a_missing_weights_file_in_one_error_line(small_export, tmp_path):  # noqa: F811
    """The same message from the command lines: exit 2, one 'error:' line, no traceback."""
    folder = partial(small_export, tmp_path, "no_weights")
    for script, argv in (
        ("generate.py", [folder, "--prompt", "The", "--device", "cpu"]),
        ("export.py", [folder, "--out", tmp_path / "again"]),
    ):
        proc = run_launch(script, *argv, check=False)
        assert proc.returncode == 2, (script, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {expected(folder, tmp_path, 'no_weights')}"], (script, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "again").exists()
