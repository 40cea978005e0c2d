"""A checkpoint opened on another machine than the one that trained it.

Its config.yaml records data_dir as a path of the training machine, where the loaders find the
tokenizer. Elsewhere that path may be missing, or hold another dataset, or the same folder prepared
again with another tokenizer of the same size. And a checkpoint trained on GPUs tags its tensors
'cuda:N', which a CPU machine cannot place.
"""

import json
import shutil

import pytest
import torch
import yaml
from test_infer_export import trained  # noqa: F401  (session fixture)

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer import load
from ngpt_ds.train import checkpoint as layout


def moved_copy(trained, dest, data_dir):  # noqa: F811
    """A copy of the run's checkpoint whose config.yaml names `data_dir` (as given and absolute), with a
    matching manifest."""
    checkpoint = dest / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], checkpoint)
    run = yaml.safe_load((checkpoint / "config.yaml").read_text())
    run["data_dir"] = run["data_dir_absolute"] = str(data_dir)
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    (checkpoint / layout.COMPLETE).write_text(
        json.dumps(layout.build_manifest(checkpoint, layout.step_of(checkpoint.name)))
    )
    return checkpoint


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """A dataset prepared from other text with the model's vocabulary size: its tokenizer has 512
    pieces too, but other ones."""
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("other_data")
    texts = list(pydoc_data.topics.topics.values())
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[: len(texts) // 3]))
    return prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),), out=root / "data", vocab_size=512, val_fraction=0.1, workers=1, progress=False
        )
    )


def test_a_moved_checkpoint_refuses_a_tokenizer_that_is_not_its_own(trained, other_data, tmp_path):  # noqa: F811
    """Fault: with its data_dir missing, the tokenizer given by --tokenizer was checked against nothing but
    the vocabulary size, though config.yaml records the model's tokenizer_sha256: another tokenizer of
    the same size was accepted (generate, evaluate and export ran on ids that mean other text, and the
    export recorded the wrong tokenizer as the model's)."""
    checkpoint = moved_copy(trained, tmp_path / "run", tmp_path / "gone")
    with pytest.raises(NgptConfigError, match=r"is not the one .* was trained with .* both have 512 pieces"):
        load(checkpoint, device="cpu", tokenizer=other_data / "tokenizer.model")
    own = load(checkpoint, device="cpu", tokenizer=trained["data"] / "tokenizer.model")
    assert own.tokenizer_sha256 == yaml.safe_load((checkpoint / "config.yaml").read_text())["tokenizer_sha256"]


def test_a_data_dir_prepared_again_with_another_tokenizer_is_not_used(trained, other_data, tmp_path):  # noqa: F811
    """Fault: the tokenizer was taken from whatever dataset data_dir holds now and checked against that
    dataset's own hash, so a checkpoint whose data_dir names a folder prepared again (or another dataset
    at the same path on this machine) loaded with a tokenizer of the same size that is not the model's."""
    checkpoint = moved_copy(trained, tmp_path / "run", other_data)
    expected = f"no tokenizer for {checkpoint}: the tokenizer of its dataset {other_data} .* is not the one"
    with pytest.raises(NgptConfigError, match=expected):
        load(checkpoint, device="cpu")
    assert load(checkpoint, device="cpu", tokenizer=trained["data"] / "tokenizer.model").tokenizer.vocab_size == 512


def test_a_checkpoint_saved_on_gpus_loads_on_the_cpu(trained, tmp_path, monkeypatch):  # noqa: F811
    """Every DeepSpeed file rewritten with the storage location a GPU run records ('cuda:<rank>'): the
    loaders map it to the CPU and give the same weights (a guard, not a fault found)."""
    checkpoint = tmp_path / "run" / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], checkpoint)
    files = sorted(checkpoint.glob("*.pt"))
    for f in files:
        states = torch.load(f, map_location="cpu", weights_only=False)
        rank = 1 if "zero_pp_rank_1" in f.name else 0
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage, r=rank: f"cuda:{r}")
        torch.save(states, f)
        monkeypatch.undo()
    (checkpoint / layout.COMPLETE).write_text(
        json.dumps(layout.build_manifest(checkpoint, layout.step_of(checkpoint.name)))
    )
    if not torch.cuda.is_available():  # the copy is what a CPU machine cannot load as it is
        with pytest.raises(RuntimeError, match="deserialize object on a CUDA device"):
            torch.load(files[0], weights_only=True)
    moved = load(checkpoint, device="cpu").model.state_dict()
    original = load(trained["checkpoint"], device="cpu").model.state_dict()
    assert all(torch.equal(moved[name], t) for name, t in original.items())
