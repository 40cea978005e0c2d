"""A `--format hf` export's config.json edited so that every weight's shape still matches is refused by
from_pretrained, not loaded wrong.

Fault: the hf export's config.json (ngpt_ds.hf.export.write_hf_export, through save_pretrained) was checked only
against the weights' shapes, so n_head (transformers' num_attention_heads) 2 -> 4 at the same width, rope_base,
norm_eps or a scaling constant edited there loaded silently through AutoModelForCausalLM.from_pretrained (with
trust_remote_code or ngpt_ds's registered classes) and gave other outputs. The export now records the model config
in model.safetensors' header (`__metadata__` ngpt_ds_model_config, as the native export does), and from_pretrained
compares the config it loaded with it (ngpt_ds.hf.recorded_config). A folder without the record (an older export or
save_pretrained folder) loads as before.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_exports import edited_copy
from random_export import TOKENS
from without_ngpt_ds import load_without_ngpt_ds

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.fixture
def hf_export(random_hf_export_logits) -> tuple[Path, torch.Tensor]:
    """A tiny random nGPT exported by export_model(format="hf") itself, and the native model's logits on TOKENS (the session's export, read only: tests/hf_exports.py)."""
    return random_hf_export_logits


ALIASES = {"n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_embd": "hidden_size"}
"""transformers' names of the fields, which the message gives with them (n_head however config.json names it)."""


def refusal(copy: Path, field: str, now, recorded, *, weights="model.safetensors") -> str:
    shown = f"{field} ({ALIASES[field]})" if field in ALIASES else field
    return (
        f"{copy / 'config.json'}: {shown} = {now!r}, but the weights in {weights} were exported with {field} = "
        f"{recorded!r}: config.json was edited after the export (or from_pretrained was given another value), and "
        f"these weights give wrong outputs under it. Set {field} back to {recorded!r} in config.json, or export the "
        "checkpoint again"
    )


def logits_of(folder: Path, **kwargs) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    with torch.no_grad():
        return model(TOKENS, use_cache=False).logits


EDITS = [
    ("n_head", 4, 2, "num_attention_heads"),
    ("n_head", 4, 2, None),
    ("rope_base", 500.0, 10000.0, None),
    ("norm_eps", 1e-3, 1e-6, None),
    ("alpha_attn_init", 0.5, 0.05, None),
    ("s_z_init", 2.0, 1.0, None),
]


@pytest.mark.parametrize("field,value,recorded,alias", EDITS, ids=[e[3] or e[0] for e in EDITS])
def test_hf_config_json_edited_with_matching_shapes_is_refused(hf_export, tmp_path, field, value, recorded, alias):
    """Fault: these edits keep every weight's shape, and from_pretrained loaded the export silently with other
    outputs. Now one error naming config.json (full path), the field, both values and the fix."""
    from ngpt_ds.errors import NgptConfigError

    folder, _ = hf_export
    copy = edited_copy(folder, tmp_path, field, value, alias=alias)
    with pytest.raises(NgptConfigError) as err:
        logits_of(copy, trust_remote_code=True)
    assert str(err.value) == refusal(copy, field, value, recorded)


def test_the_hf_n_head_edit_did_change_the_outputs(hf_export, tmp_path, monkeypatch):
    """Why the refusal matters: the same weights under num_attention_heads 4 give logits far from the model's."""
    import ngpt_ds.hf.weight_files as weight_files

    folder, logits = hf_export
    copy = edited_copy(folder, tmp_path, "n_head", 4, alias="num_attention_heads")
    monkeypatch.setattr(weight_files, "check_recorded_config", lambda *a: None, raising=False)  # none before the fix
    assert (logits_of(copy) - logits).abs().max().item() > 1e-2


def test_an_unedited_or_reformatted_hf_export_loads_with_the_native_logits(hf_export, tmp_path):
    """The record is the native export's (same key, same JSON); an unedited export, and one whose config.json
    was rewritten with equal values (10000 for 10000.0), load with the native model's logits."""
    from safetensors import safe_open

    from ngpt_ds.hf.recorded_config import RECORD_KEY
    from ngpt_ds.infer.export_config import RECORD_KEY as NATIVE_KEY

    folder, logits = hf_export
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert RECORD_KEY == NATIVE_KEY and metadata["format"] == "pt"
    record = json.loads(metadata[RECORD_KEY])
    assert (record["arch"], record["n_head"], record["rope_base"], record["norm_eps"]) == ("ngpt", 2, 10000.0, 1e-6)
    assert (folder / "recorded_config.py").is_file()
    copy = edited_copy(folder, tmp_path, "rope_base", 10000)
    for path in (folder, copy):
        for kwargs in ({}, {"trust_remote_code": True}):
            torch.testing.assert_close(logits_of(path, **kwargs), logits, rtol=0, atol=1e-6)


def test_an_hf_export_without_the_record_still_loads(hf_export, tmp_path):
    """An export from before the record (its header holds {"format": "pt"} alone) loads as before, edited or not:
    nothing to compare with."""
    from safetensors.torch import load_file, save_file

    folder, logits = hf_export
    copy = tmp_path / "old_export"
    shutil.copytree(folder, copy)
    save_file(load_file(str(copy / "model.safetensors")), str(copy / "model.safetensors"), metadata={"format": "pt"})
    torch.testing.assert_close(logits_of(copy, trust_remote_code=True), logits, rtol=0, atol=1e-6)
    old_edited = edited_copy(copy, tmp_path, "rope_base", 500.0)
    assert (logits_of(old_edited) - logits).abs().max().item() > 1e-4


def test_save_pretrained_after_a_fine_tune_loads(hf_export, tmp_path):
    """A fine-tune of the export (weights changed, config the same) saved by save_pretrained loads, with the
    fine-tuned model's logits: the record save_pretrained writes is of the same config."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from ngpt_ds.hf.recorded_config import RECORD_KEY

    folder, logits = hf_export
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(TOKENS, labels=TOKENS, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        tuned = model(TOKENS, use_cache=False).logits
    assert (tuned - logits).abs().max().item() > 1e-3
    model.save_pretrained(tmp_path / "tuned")
    with safe_open(str(tmp_path / "tuned" / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()[RECORD_KEY])["n_head"] == 2  # save_pretrained records the config too (hf25)
    for kwargs in ({}, {"trust_remote_code": True}):
        torch.testing.assert_close(logits_of(tmp_path / "tuned", **kwargs), tuned, rtol=0, atol=1e-6)


def test_without_ngpt_ds_the_edited_hf_export_is_refused_and_the_unedited_one_loads(hf_export, tmp_path):
    """The check is in the modeling code the folder carries: trust_remote_code without ngpt_ds installed refuses
    the edit with the same message and loads the unedited export (the script prints only an exception)."""
    folder, _ = hf_export
    copy = edited_copy(folder, tmp_path, "n_head", 4, alias="num_attention_heads")
    proc = load_without_ngpt_ds(copy, cwd=tmp_path)
    assert proc.stdout.strip() == "NgptConfigError " + refusal(copy, "n_head", 4, 2), (
        proc.stdout,
        proc.stderr[-2000:],
    )
    proc = load_without_ngpt_ds(folder, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "", (proc.stdout, proc.stderr[-2000:])


def test_a_record_that_is_not_json_is_named(hf_export, tmp_path):
    """A header record altered into something unreadable is one error naming the weights file."""
    from safetensors.torch import load_file, save_file

    from ngpt_ds.errors import NgptConfigError

    folder, _ = hf_export
    copy = tmp_path / "bad_record"
    shutil.copytree(folder, copy)
    weights = load_file(str(copy / "model.safetensors"))
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt", "ngpt_ds_model_config": "[1, 2"})
    with pytest.raises(NgptConfigError) as err:
        logits_of(copy)
    assert str(err.value) == (
        f"{copy / 'model.safetensors'}: its recorded model config (ngpt_ds_model_config) is not a JSON mapping; "
        "the file was altered. Export the checkpoint again"
    )


def test_every_shard_of_a_sharded_folder_carries_the_record_and_is_checked(hf_export, tmp_path):
    """write_hf_export records the config in every safetensors file it finds (a sharded save too), the tensor data
    unchanged; an edit is refused naming the first shard read."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.hf.export import add_metadata
    from ngpt_ds.infer.export_config import config_record

    folder, logits = hf_export
    model = AutoModelForCausalLM.from_pretrained(folder)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="60KB")
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 1
    before = {p.name: load_file(str(p)) for p in shards}
    for path in shards:
        add_metadata(path, config_record(model.config.to_model_config()))
    for path in shards:
        after = load_file(str(path))
        assert after.keys() == before[path.name].keys()
        assert all(torch.equal(after[k], before[path.name][k]) for k in after)
        with safe_open(str(path), "pt") as f:
            assert json.loads(f.metadata()["ngpt_ds_model_config"])["n_head"] == 2 and f.metadata()["format"] == "pt"
    torch.testing.assert_close(logits_of(sharded), logits, rtol=0, atol=1e-6)
    copy = edited_copy(sharded, tmp_path, "s_z_init", 2.0)
    with pytest.raises(NgptConfigError) as err:
        logits_of(copy)
    assert str(err.value) == refusal(copy, "s_z_init", 2.0, 1.0, weights=shards[0].name)
