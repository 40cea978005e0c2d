"""An export's config.json edited so that every weight's shape still matches is refused, not loaded wrong.

Fault: load_export checked config.json's model section only against the weights' shapes, so n_head 2 -> 4 at
the same width, rope_base, norm_eps or a scaling constant's base value edited in config.json loaded silently
and gave other outputs. The export now records the model config in model.safetensors' header
(`__metadata__`), written with the weights, and the load compares the two.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from random_export import TOKENS, export_random_ngpt
from test_infer_export_load import small_export  # noqa: F401  (module fixture: an export without the record)

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer import load

from conftest import run_launch


@pytest.fixture(scope="module")
def recorded_export(tmp_path_factory, tiny_dataset) -> tuple[Path, torch.Tensor]:
    """A tiny random nGPT exported by export_model itself, and the model's logits on TOKENS."""
    return export_random_ngpt(tmp_path_factory.mktemp("infer23_record"), tiny_dataset / "tokenizer.model", "ngpt_ds")


def edited(folder: Path, tmp_path: Path, field: str, value) -> Path:
    copy = tmp_path / f"edited_{field}"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"][field] = value
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


def refusal(copy: Path, field: str, now, recorded) -> str:
    return (
        f"{copy / 'config.json'}: model.{field} = {now!r}, but the weights in model.safetensors were exported with "
        f"model.{field} = {recorded!r}: config.json was edited after the export, and these weights give wrong "
        f"outputs under it. Set model.{field} back to {recorded!r} in config.json, or export the checkpoint again"
    )


EDITS = [
    ("n_head", 4, 2),
    ("rope_base", 500.0, 10000.0),
    ("norm_eps", 1e-3, 1e-6),
    ("alpha_attn_init", 0.5, 0.05),
    ("s_z_init", 2.0, 1.0),
    ("seq_len", 64, 32),
]


@pytest.mark.parametrize("field,value,recorded", EDITS, ids=[e[0] for e in EDITS])
def test_config_json_edited_with_matching_shapes_is_refused(recorded_export, tmp_path, field, value, recorded):
    """Fault: these edits keep every weight's shape, and the export loaded silently with other outputs."""
    folder, _ = recorded_export
    copy = edited(folder, tmp_path, field, value)
    with pytest.raises(NgptConfigError) as err:
        load(copy, device="cpu")
    assert str(err.value) == refusal(copy, field, value, recorded)


def test_the_n_head_edit_did_change_the_outputs(recorded_export, tmp_path, monkeypatch):
    """Why the refusal matters: the same weights under n_head 4 give logits far from the model's."""
    import ngpt_ds.infer.loading as loading

    folder, logits = recorded_export
    copy = edited(folder, tmp_path, "n_head", 4)
    monkeypatch.setattr(loading, "check_recorded_config", lambda *a: None)
    with torch.no_grad():
        wrong = load(copy, device="cpu").model(TOKENS)[0]
    assert (wrong - logits).abs().max().item() > 1e-2


def test_an_unedited_or_reformatted_export_loads_with_the_models_outputs(recorded_export, tmp_path):
    """The record is in the header, and a config.json rewritten with equal values (10000 for 10000.0) still loads."""
    from safetensors import safe_open

    folder, logits = recorded_export
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        record = json.loads(f.metadata()["ngpt_ds_model_config"])
    assert record["n_head"] == 2 and record["rope_base"] == 10000.0 and record["norm_eps"] == 1e-6
    copy = edited(folder, tmp_path, "rope_base", 10000)
    for path in (folder, copy):
        with torch.no_grad():
            got = load(path, device="cpu").model(TOKENS)[0]
        torch.testing.assert_close(got, logits, rtol=0, atol=1e-6)


def test_an_export_from_before_the_record_still_loads(small_export):  # noqa: F811
    """small_export writes model.safetensors without the record, as exports before it did."""
    from safetensors import safe_open

    with safe_open(str(small_export / "model.safetensors"), "pt") as f:
        assert "ngpt_ds_model_config" not in (f.metadata() or {})
    loaded = load(small_export, device="cpu")
    assert loaded.config.n_head == 2 and loaded.config.n_embd == 32


def test_a_record_that_is_not_json_is_named(recorded_export, tmp_path):
    """A header record altered into something unreadable is one error naming the weights file."""
    from safetensors.torch import load_file, save_file

    folder, _ = recorded_export
    copy = tmp_path / "bad_record"
    shutil.copytree(folder, copy)
    weights = load_file(str(copy / "model.safetensors"))
    save_file(weights, str(copy / "model.safetensors"), metadata={"ngpt_ds_model_config": "[1, 2"})
    with pytest.raises(NgptConfigError) as err:
        load(copy, device="cpu")
    assert str(err.value) == (
        f"{copy / 'model.safetensors'}: its recorded model config (ngpt_ds_model_config) is not a JSON mapping; "
        "the file was altered. Export the checkpoint again"
    )


def test_generate_names_the_edited_field_in_one_error_line(recorded_export, tmp_path):
    """From the command line: exit 2, one 'error:' line naming config.json, the field, both values and the fix."""
    folder, _ = recorded_export
    copy = edited(folder, tmp_path, "n_head", 4)
    proc = run_launch("generate.py", copy, "--prompt", "The", "--device", "cpu", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {refusal(copy, 'n_head', 4, 2)}"]
    assert "Traceback" not in proc.stderr
