"""save_pretrained records the model config in the weights it writes, as the `--format hf` export does, so
from_pretrained of a re-saved folder refuses a config.json edited afterwards.

Fault: a model loaded with from_pretrained, fine-tuned and saved with save_pretrained wrote model.safetensors with
transformers' `__metadata__` {"format": "pt"} alone (the export added its record after its own save_pretrained,
ngpt_ds.hf.export.write_hf_export). An edit of the re-saved config.json keeping every weight's shape (n_head /
num_attention_heads 2 -> 4 at width 32, rope_base) then loaded without a word and gave other outputs. Now
save_pretrained adds the record (ngpt_ds.hf.recorded_config.record_in_saved_weights) to the files it wrote, and
leaves other safetensors files in the folder as they were.
"""

import json
from pathlib import Path

import pytest
import torch
from hf_exports import edited_copy
from random_export import TOKENS

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


@pytest.fixture
def hf_export(random_hf_export_logits) -> tuple[Path, torch.Tensor]:
    """A tiny random nGPT exported with format="hf", and the native model's logits on TOKENS (the session's export, read only: tests/hf_exports.py)."""
    return random_hf_export_logits


def fine_tuned(folder: Path, **kwargs):
    """The export loaded with from_pretrained(**kwargs) and trained 3 AdamW steps at lr 1e-2."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        model(TOKENS, labels=TOKENS, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def record_of(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    assert metadata.get("format") == "pt"
    return json.loads(metadata["ngpt_ds_model_config"]) if "ngpt_ds_model_config" in metadata else {}


def load(folder: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


@pytest.mark.parametrize("remote", [False, True], ids=["ngpt_ds_classes", "trust_remote_code"])
def test_an_edited_config_of_a_re_saved_fine_tune_is_refused(hf_export, tmp_path, remote):
    """Fault: the fine-tune's save_pretrained wrote no record, so its config.json edited to n_head 4
    (num_attention_heads) or rope_base 500 loaded and gave other logits. Now both are refused, naming the re-saved
    folder's config.json, the field and both values; the unedited folder loads with the fine-tuned logits (exactly)."""
    from ngpt_ds.errors import NgptConfigError

    folder, logits = hf_export
    kwargs = {"trust_remote_code": True} if remote else {}
    model = fine_tuned(folder, **kwargs)
    with torch.no_grad():
        tuned = model(TOKENS, use_cache=False).logits
    assert (tuned - logits).abs().max().item() > 1e-3
    saved = tmp_path / "tuned"
    model.save_pretrained(saved)
    with torch.no_grad():
        assert torch.equal(load(saved, **kwargs)(TOKENS, use_cache=False).logits, tuned)
    for field, value, was, alias in (("n_head", 4, 2, "num_attention_heads"), ("rope_base", 500.0, 10000.0, None)):
        copy = edited_copy(saved, tmp_path, field, value, alias=alias)
        with pytest.raises(NgptConfigError) as err:
            load(copy, **kwargs)
        shown = f"{field} ({alias})" if alias else field
        assert str(err.value) == (
            f"{copy / 'config.json'}: {shown} = {value!r}, but the weights in model.safetensors were exported with "
            f"{field} = {was!r}: config.json was edited after the export (or from_pretrained was given another "
            f"value), and these weights give wrong outputs under it. Set {field} back to {was!r} in config.json, or "
            "export the checkpoint again"
        )
    record = record_of(saved / "model.safetensors")
    assert record == model.config.to_model_config().to_dict()
    assert (record["n_head"], record["rope_base"], record["n_embd"]) == (2, 10000.0, 32)


def test_the_export_records_what_save_pretrained_records(hf_export):
    """The export's record (the native export's JSON of the checkpoint's ModelConfig) is the one save_pretrained
    writes for the same model, so an export and a re-save of it carry the same record."""
    from ngpt_ds.hf.recorded_config import RECORD_KEY, config_record

    folder, _ = hf_export
    model = load(folder)
    assert record_of(folder / "model.safetensors") == model.config.to_model_config().to_dict()
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata()[RECORD_KEY] == config_record(model.config)[RECORD_KEY]


def test_every_shard_is_recorded_and_other_safetensors_files_are_left_alone(hf_export, tmp_path):
    """A sharded save records the config in every shard, tensors unchanged; a safetensors file the save did not
    write (another model's weights in the same folder) keeps its bytes; a second save over the first records again."""
    from safetensors.torch import load_file, save_file

    folder, logits = hf_export
    model = load(folder)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    other = sharded / "other_model.safetensors"
    save_file({"x": torch.arange(6.0)}, str(other), metadata={"format": "pt"})
    other_bytes = other.read_bytes()
    for _ in range(2):
        model.save_pretrained(sharded, max_shard_size="60KB")
        shards = sorted(sharded.glob("model-*.safetensors"))
        assert len(shards) > 1
        state = model.state_dict()
        for path in shards:
            assert record_of(path)["n_head"] == 2
            assert all(torch.equal(t, state[name]) for name, t in load_file(str(path)).items())
        assert other.read_bytes() == other_bytes
    with torch.no_grad():
        torch.testing.assert_close(load(sharded)(TOKENS, use_cache=False).logits, logits, rtol=0, atol=1e-6)


def test_a_save_on_a_rank_that_does_not_save_writes_nothing(hf_export, tmp_path):
    """is_main_process=False (the other ranks of a distributed job) writes no weights, so nothing is recorded."""
    folder, _ = hf_export
    model = load(folder)
    model.save_pretrained(tmp_path / "not_main", is_main_process=False)
    assert sorted(p.name for p in (tmp_path / "not_main").glob("*.safetensors")) == []
