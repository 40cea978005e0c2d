"""Damaged or crafted metadata files are a clear error naming the file, never a traceback.

Fault: json.loads and yaml.safe_load raise more than their own error types. A number of more than
4300 digits is a plain ValueError (Python's int conversion limit) and nesting thousands deep is a
RecursionError; the readers caught only JSONDecodeError / YAMLError, so a shared checkpoint's
config.yaml, a dataset's meta.json or an export's config.json crafted that way stopped the command
with a traceback (at --resume, on every rank). ngpt_ds.errors.UNPARSABLE names both; every reader of
a file a user may have been given catches them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError

PAYLOADS = {
    "json": {"deep": "[" * 100_000, "huge-number": '{"format": ' + "7" * 5000 + "}"},
    "yaml": {"deep": "[" * 100_000, "huge-number": "model: " + "7" * 5000 + "\n"},
}


def _resume_config(folder: Path) -> object:
    from ngpt_ds.train.preflight import saved_run_config

    return saved_run_config(folder)


def _inference_config(folder: Path) -> object:
    from ngpt_ds.infer.run_checkpoint import read_run_config

    return read_run_config(folder)


def _export_config(folder: Path) -> object:
    from ngpt_ds.infer.loading import read_export_config

    return read_export_config(folder)


def _dataset_meta(folder: Path) -> object:
    from ngpt_ds.data.shards import load_dataset_meta

    return load_dataset_meta(folder)


def _part(folder: Path) -> object:
    from ngpt_ds.data.parts import _read_part

    return _read_part(folder)


def _deepspeed_json(folder: Path) -> object:
    from ngpt_ds.train.ds_config import load_ds_config

    return load_ds_config(folder / "ds.json")


def _model_yaml(folder: Path) -> object:
    from ngpt_ds.model.config import load_yaml

    return load_yaml(folder / "run.yaml")


READERS = {
    "checkpoint config.yaml, --resume": (_resume_config, "config.yaml", "yaml"),
    "checkpoint config.yaml, export and generate": (_inference_config, "config.yaml", "yaml"),
    "export config.json": (_export_config, "config.json", "json"),
    "dataset meta.json": (_dataset_meta, "meta.json", "json"),
    "prepared part.json": (_part, "part.json", "json"),
    "DeepSpeed JSON": (_deepspeed_json, "ds.json", "json"),
    "model YAML": (_model_yaml, "run.yaml", "yaml"),
}


@pytest.mark.parametrize("payload", ["deep", "huge-number"])
@pytest.mark.parametrize("reader", list(READERS))
def test_a_crafted_metadata_file_is_an_error_naming_it(reader, payload, tmp_path):
    read, name, kind = READERS[reader]
    (tmp_path / name).write_text(PAYLOADS[kind][payload], encoding="utf-8")
    with pytest.raises(NgptConfigError) as caught:
        read(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert ("recursion" if payload == "deep" else "4300") in str(caught.value).lower()


@pytest.mark.parametrize("payload", ["deep", "huge-number"])
def test_the_folder_probes_read_a_crafted_file_as_not_theirs(payload, tmp_path):
    """The checks that only ask whether a folder is an export or a run (--overwrite, --out) answer no."""
    from ngpt_ds.infer.export import _is_export_folder
    from ngpt_ds.train.out_folder import _config_sections

    (tmp_path / "config.json").write_text(PAYLOADS["json"][payload], encoding="utf-8")
    (tmp_path / "config.yaml").write_text(PAYLOADS["yaml"][payload], encoding="utf-8")
    assert _is_export_folder(tmp_path) is False
    assert _config_sections(tmp_path / "config.yaml") is None


def _aliases(levels: int) -> str:
    """YAML anchors nesting 9**levels items in `levels` lines: `*a<levels>` names the whole tree."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


CHECKPOINT_FIELDS = {
    "data_dir a list": ("data_dir: [1, 2]", r"data_dir = \[1, 2\] must be a folder path"),
    "data_dir aliases": ("data_dir: *a7", r"data_dir = \[\[\[\[\[\[.* must be a folder path"),
    "model field aliases": (
        "model: {vocab_size: 512, n_layer: *a7}",
        r"model\.n_layer = \[\[\[\[\[\[.* must be a number",
    ),
    "stage a list": ("deepspeed: {zero_optimization: {stage: [x]}}", r"zero_optimization\.stage = \['x'\] is not"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_FIELDS))
def test_a_crafted_checkpoint_config_field_is_an_error_naming_it(case, tmp_path, tiny_dataset):
    """Fault: config.yaml fields the loaders read besides the model (data_dir, the DeepSpeed stage) were
    used as they came: a list stopped generate, evaluate and export with a TypeError traceback. And a value
    the error message shows was shown whole: YAML aliases nest 9^7 items in 8 lines (9^9 in 10 made a
    message of gigabytes, minutes before it printed). The message names the file and shows the value abridged."""
    from ngpt_ds.infer import load

    field, expected = CHECKPOINT_FIELDS[case]
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    checkpoint.mkdir(parents=True)
    base = {"model": "model: {vocab_size: 512}", "data_dir": f"data_dir: {tiny_dataset}", "deepspeed": ""}
    base[field.split(":")[0]] = field
    (checkpoint / "config.yaml").write_text(_aliases(7) + "\n".join(base.values()) + "\n", encoding="utf-8")
    (checkpoint / "COMPLETE").write_text("step 2\n", encoding="utf-8")  # an older trainer's marker: no manifest
    with pytest.raises(NgptConfigError, match=expected) as caught:
        load(checkpoint, device="cpu")
    assert str(checkpoint / "config.yaml") in str(caught.value) and len(str(caught.value)) < 1000


def test_an_export_recording_no_evaluation_batches_is_evaluated_with_the_default_windows():
    """Fault: evaluate divided by the micro-batch an export's config.json records (training.eval), so an
    altered one holding 0 stopped `ngpt-evaluate` with ZeroDivisionError; it now counts as not recorded."""
    from ngpt_ds.infer.evaluate import trainer_eval_windows

    for micro in (0, -4, "inf", None):
        assert trainer_eval_windows({"eval": {"batches": 2, "micro_batch": micro, "data_parallel": 1}}, 100) is None
    assert trainer_eval_windows({"eval": {"batches": 2, "micro_batch": 4, "data_parallel": 2}}, 100) == 16


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"training": [1, 2]}, r"training = \[1, 2\] must be a mapping"),
        ({"training": {"data_dir": [1]}}, r"training\.data_dir = \[1\] must be a folder path"),
        ({"tokenizer": [3]}, r"tokenizer = \[3\] must be a mapping"),
        ({"tokenizer": {"sha256": 5}}, r"tokenizer\.sha256 = 5 must be a sha256"),
    ],
)
def test_a_crafted_export_config_section_is_an_error_naming_it(section, expected, tmp_path):
    """Fault: an export's config.json sections besides the model were used as they came: a `training` list
    stopped generate and evaluate with a TypeError traceback (dict() of it), a `training.data_dir` list
    stopped evaluate with one, and a `tokenizer` list with an AttributeError."""
    import json

    from ngpt_ds.infer.loading import EXPORT_FORMAT, EXPORT_VERSION, read_export_config

    config = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "model": {"vocab_size": 512}, **section}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(NgptConfigError, match=expected) as caught:
        read_export_config(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value)


STATES = {
    "not a mapping": ([1, 2], "holds a list, not the mapping DeepSpeed saves"),
    "a module weight that is a number": (
        {"module": {"embed.weight": 5}},
        "holds module weights that are not all tensors",
    ),
    "a rank count that is a list": ({"module": {}, "dp_world_size": [2]}, r"dp_world_size = \[2\] is not a rank count"),
}


@pytest.mark.parametrize("case", list(STATES))
def test_a_crafted_model_states_file_is_an_error_naming_it(case, tmp_path):
    """Fault: the DeepSpeed model states were used as they unpickled: a file holding a list, a weight that
    is a number, or a rank count that is a list stopped generate, evaluate and export with an AttributeError
    or TypeError traceback."""
    import torch

    from ngpt_ds import deepspeed_files

    states, expected = STATES[case]
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save(states, path)
    with pytest.raises(NgptConfigError, match=f"{path}:? {expected}"):
        deepspeed_files.read_weights(tmp_path, 0, [], lambda shards: shards[0])


def test_a_checkpoint_config_of_nested_aliases_is_refused_by_the_resume_at_once(tmp_path):
    """Fault: the trainer's resume read a checkpoint's config.yaml whose data_dir nests 9^9 items through YAML
    aliases (10 lines) in a blink, as shared references; then each message that showed data_dir or a model
    field that differs expanded it (9^8: 46 s and 4.1 GB; 9^9 exhausted memory). Refused when read now, and a
    config value shown in any startup message is abridged."""
    from ngpt_ds.errors import Problems
    from ngpt_ds.train.preflight import saved_run_config

    checkpoint = tmp_path / "step_00000002"
    checkpoint.mkdir()
    (checkpoint / "config.yaml").write_text(_aliases(9) + "model: {vocab_size: 512}\ndata_dir: *a9\n")
    with pytest.raises(NgptConfigError, match=r"expands to more than 100000 values \(YAML aliases") as caught:
        saved_run_config(checkpoint)
    assert str(checkpoint / "config.yaml") in str(caught.value)
    import yaml

    problems = Problems("train config (x.yaml)")
    problems.add("train.lr", yaml.safe_load(_aliases(9) + "b: *a9\n")["b"], "must be a number")
    problems.add("train.out", "/a/path/" + "d" * 200, "must be writable")
    with pytest.raises(NgptConfigError) as caught:
        problems.raise_if_any()
    message = str(caught.value)
    assert (
        len(message) < 1000
        and "train.lr = [[[...], [...], [...], [...], [...], [...], [...], [...], ...], [[" in message
    )
    assert f"train.out = '/a/path/{'d' * 200}': must be writable" in message  # short enough to stay whole


UNREADABLE = {
    "model YAML (--config)": (_model_yaml, "run.yaml", "config {}"),
    "DeepSpeed JSON (--deepspeed_config)": (_deepspeed_json, "ds.json", "DeepSpeed config {}"),
    "checkpoint config.yaml, export and generate": (_inference_config, "config.yaml", "{}"),
}


@pytest.mark.parametrize(
    "error, reason",
    [
        (
            OSError(5, "Input/output error"),
            "Input/output error; check the file and the disk that holds it, or give another file",
        ),
        (
            PermissionError(13, "Permission denied"),
            "Permission denied; give the user running the trainer read access to it",
        ),
    ],
)
@pytest.mark.parametrize("reader", list(UNREADABLE))
def test_a_config_file_that_cannot_be_read_is_an_error_naming_it(reader, error, reason, tmp_path, monkeypatch):
    """Fault: a config file that exists but cannot be read (no read permission, EIO: --config a link to
    /proc/self/mem) stopped the trainer with a PermissionError or OSError traceback."""
    read, name, prefix = UNREADABLE[reader]
    (tmp_path / name).write_text("model: {}\n")
    for method in ("read_text", "open"):  # each reader's way in (read_config_text opens the file)
        original = getattr(Path, method)

        def fail(path, *args, original=original, **kwargs):
            if path.name == name:
                raise error
            return original(path, *args, **kwargs)

        monkeypatch.setattr(Path, method, fail)
    with pytest.raises(NgptConfigError) as caught:
        read(tmp_path)
    assert str(caught.value) == prefix.format(f"{tmp_path / name} cannot be read: {reason}")


def test_a_config_linked_to_a_file_the_kernel_refuses_to_read_is_named(tmp_path):
    """The reviewer's reproduction: --config and --deepspeed_config a link to /proc/self/mem (EIO on read)."""
    from ngpt_ds.model.config import load_yaml
    from ngpt_ds.train.ds_config import load_ds_config

    for name, read, prefix in (("c.yaml", load_yaml, "config"), ("ds.json", load_ds_config, "DeepSpeed config")):
        (tmp_path / name).symlink_to("/proc/self/mem")
        with pytest.raises(NgptConfigError, match=rf"^{prefix} {tmp_path / name} cannot be read: Input/output error"):
            read(tmp_path / name)


def test_a_deepspeed_config_that_is_a_folder_is_named_a_folder(tmp_path):
    """Fault: --deepspeed_config naming a folder said it 'does not exist'."""
    from ngpt_ds.train.ds_config import load_ds_config

    with pytest.raises(NgptConfigError, match=rf"^DeepSpeed config {tmp_path} is a folder, not a JSON file: "):
        load_ds_config(tmp_path)
