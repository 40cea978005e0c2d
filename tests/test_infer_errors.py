"""Bad inputs give clear errors: missing or partial checkpoints, missing shards, a tokenizer that is
not the model's, a corrupt export. (A prompt longer than the context: test_infer_generate.py.)"""

import json
import re
import shutil
import sys

import pytest
import torch
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, run


def copy_checkpoint(trained, dest, *, complete=True):  # noqa: F811
    target = dest / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], target)
    if not complete:
        (target / "COMPLETE").unlink()
    return target


def test_missing_model_path_cli(tmp_path):
    for script in ("generate.py", "evaluate.py", "export.py"):
        extra = {"generate.py": ["--prompt", "x"], "export.py": ["--out", tmp_path / "e"], "evaluate.py": []}[script]
        proc = run([sys.executable, REPO / "launch" / script, tmp_path / "nowhere", *extra], check=False)
        assert proc.returncode == 2, script
        assert proc.stderr.startswith(f"error: {tmp_path / 'nowhere'} does not exist"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_partial_checkpoint_is_refused_and_skipped(trained, tmp_path):  # noqa: F811
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load, resolve_checkpoint

    partial = copy_checkpoint(trained, tmp_path / "run", complete=False)
    with pytest.raises(NgptConfigError, match=r"step_00000006 is a partial checkpoint: it has no COMPLETE marker"):
        load(partial)
    with pytest.raises(NgptConfigError, match=r"holds no complete checkpoint: step_00000006 lack the COMPLETE"):
        load(tmp_path / "run")
    # A complete older checkpoint next to it is what a run directory resolves to, and the error names it.
    older = partial.parent / "step_00000003"
    shutil.copytree(trained["checkpoint"], older)
    # Its manifest names step 3, as the trainer's save of step 3 would (a folder under another step's name
    # than its manifest's is damaged: ngpt_ds.train.manifest).
    manifest = json.loads((older / "COMPLETE").read_text())
    (older / "COMPLETE").write_text(json.dumps({**manifest, "step": 3}))
    assert resolve_checkpoint(tmp_path / "run") == older
    with pytest.raises(NgptConfigError, match="complete checkpoints next to it: step_00000003"):
        resolve_checkpoint(partial)
    assert resolve_checkpoint(older) == older  # a complete checkpoint dir is taken as is


def test_missing_zero_shard_or_config_is_a_clear_error(trained, tmp_path):  # noqa: F811
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load

    broken = copy_checkpoint(trained, tmp_path / "run")
    (optim_rank1,) = broken.glob("*zero_pp_rank_1_*optim_states.pt")
    optim_rank1.unlink()
    # The COMPLETE manifest names the missing file before anything is read.
    missing = f"is damaged: {re.escape(str(optim_rank1))} is missing \\(listed in the COMPLETE"
    with pytest.raises(NgptConfigError, match=missing):
        load(broken)
    # Without a manifest (a plain-text marker of an older ngpt_ds) the loaders still refuse clearly.
    (broken / "COMPLETE").write_text("step 6\n")
    with pytest.raises(NgptConfigError, match="DeepSpeed could not consolidate the ZeRO shards .* incomplete"):
        load(broken)
    (broken / "config.yaml").unlink()
    with pytest.raises(NgptConfigError, match="config.yaml not found: .* not written by the ngpt_ds trainer"):
        load(broken)


@pytest.fixture(scope="module")
def other_tokenizers(tmp_path_factory, trained):  # noqa: F811
    """A tokenizer with another vocabulary size, and one with the model's size but other pieces."""
    import pydoc_data.topics

    from ngpt_ds.data.tokenizer import train_tokenizer

    tmp = tmp_path_factory.mktemp("tokenizers")
    texts = list(pydoc_data.topics.topics.values())
    bigger = train_tokenizer(iter(texts), tmp / "v600.model", vocab_size=600)
    same_size = train_tokenizer(iter(texts[: len(texts) // 3]), tmp / "v512.model", vocab_size=512)
    assert bigger.vocab_size == 600 and same_size.vocab_size == 512
    return bigger.path, same_size.path


def test_tokenizer_that_does_not_match_the_model(trained, exported, other_tokenizers):  # noqa: F811
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load

    bigger, same_size = other_tokenizers
    for source in (exported, trained["checkpoint"]):
        with pytest.raises(NgptConfigError, match=r"has a vocabulary of 600 pieces, but .* vocab_size 512"):
            load(source, tokenizer=bigger)
        with pytest.raises(NgptConfigError, match=r"is not the one .* was trained with .* both have 512 pieces"):
            load(source, tokenizer=same_size)
    proc = run(
        [sys.executable, REPO / "launch/generate.py", exported, "--prompt", "x", "--tokenizer", same_size], check=False
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: tokenizer ")
    # The export's own tokenizer file replaced by another one: caught by the recorded hash.
    swapped = exported.parent / "export_swapped_tokenizer"
    shutil.copytree(exported, swapped)
    shutil.copyfile(same_size, swapped / "tokenizer.model")
    with pytest.raises(NgptConfigError, match="is not the one"):
        load(swapped)


def test_corrupt_export_is_refused(exported, tmp_path):  # noqa: F811
    from safetensors.torch import load_file, save_file

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load

    def variant(name, change_weights=None, change_config=None):
        folder = tmp_path / name
        shutil.copytree(exported, folder)
        if change_weights:
            weights = load_file(str(folder / "model.safetensors"))
            change_weights(weights)
            save_file(weights, str(folder / "model.safetensors"))
        if change_config:
            config = json.loads((folder / "config.json").read_text())
            change_config(config)
            (folder / "config.json").write_text(json.dumps(config))
        return folder

    def scale_one_column(w):
        w["blocks.1.attn.out.weight"][:, 3] *= 1.01  # a column of W_o: its declared unit-norm dim is 0

    with pytest.raises(
        NgptConfigError, match=r"not unit norm along its declared dim \(largest \| \|\|w\|\| - 1 \| = 0.01"
    ):
        load(variant("not_unit", scale_one_column))
    with pytest.raises(NgptConfigError, match="the weights do not match the model config .*missing head.weight"):
        load(variant("missing", lambda w: w.pop("head.weight")))
    with pytest.raises(NgptConfigError, match=r"shape mismatch embed.weight \(512, 16\) vs config \(512, 32\)"):
        load(variant("shape", lambda w: w.__setitem__("embed.weight", w["embed.weight"][:, :16].contiguous())))
    with pytest.raises(NgptConfigError, match="expected 'ngpt_ds-export'"):
        load(variant("format", change_config=lambda c: c.__setitem__("format", "something-else")))
    nan = variant("nan", lambda w: w["embed.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(NgptConfigError, match="embed.weight hold NaN or infinite values"):
        load(nan)
    (tmp_path / "truncated").mkdir()
    shutil.copytree(exported, tmp_path / "truncated" / "x")
    data = (tmp_path / "truncated" / "x" / "model.safetensors").read_bytes()
    (tmp_path / "truncated" / "x" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(NgptConfigError, match="model.safetensors cannot be read"):
        load(tmp_path / "truncated" / "x")
    assert torch.isfinite(load(exported).model.embed.weight).all()  # the original is untouched
