"""Using the transformers models the ways transformers offers: save_pretrained(push_to_hub=True) uploads the
folder that loads (modeling code included), the KV cache is a DynamicCache or refused, and the HF Trainer's
gradient accumulation scales the loss as transformers documents. No network: the Hub API is stubbed."""

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _model(arch: str, seed: int = 0):
    """A random tiny model of the installed ngpt_ds classes (no export needed)."""
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config)).eval()


class _FakeHub:
    """transformers' shared HfApi, recording what would be sent: create_repo's arguments, and each commit's
    files (path in the repository -> bytes, read when the commit is made)."""

    def __init__(self):
        self.repos: list[tuple[str, dict]] = []
        self.commits: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}"})()

    def create_commit(self, *, repo_id, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})

    def __getattr__(self, name):
        raise AssertionError(f"the test's Hub stub has no {name}: the code under test called it")


def test_save_pretrained_with_push_to_hub_uploads_the_modeling_code(tmp_path, monkeypatch):
    """Fault: save_pretrained(dir, push_to_hub=True) uploaded config.json (whose auto_map names
    configuration_ngpt.py and modeling_ngpt.py), the weights and the model card, but none of the modeling
    files: transformers' save_pretrained uploads before it returns, and the override wrote them after. The
    Hub repository did not load without ngpt_ds. Now every file of the folder is in the one commit."""
    import transformers.modeling_utils
    import transformers.utils.hub
    from huggingface_hub import ModelCard

    from ngpt_ds.hf.export import write_code

    hub = _FakeHub()
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", hub)
    card = lambda repo_id, tags=None, token=None: ModelCard("---\nlibrary_name: transformers\n---\ncard\n")  # noqa: E731
    monkeypatch.setattr(transformers.modeling_utils, "create_and_tag_model_card", card)
    folder = tmp_path / "tiny-ngpt"
    _model("ngpt").save_pretrained(folder, push_to_hub=True, commit_message="first", private=True, token="t0k")

    assert hub.repos == [("tiny-ngpt", {"exist_ok": True, "private": True, "token": "t0k"})]
    (commit,) = hub.commits
    assert (commit["repo_id"], commit["commit_message"], commit["token"]) == ("someone/tiny-ngpt", "first", "t0k")
    (tmp_path / "code").mkdir()
    code = write_code(tmp_path / "code")  # the modeling files an export carries
    assert {"configuration_ngpt.py", "modeling_ngpt.py", "lm.py"} <= set(code)
    assert sorted(commit["files"]) == sorted(os.listdir(folder))
    assert sorted(commit["files"]) == sorted(
        [*code, "README.md", "config.json", "generation_config.json", "model.safetensors"]
    )
    for name, data in commit["files"].items():
        assert data == (folder / name).read_bytes(), name


def _static_cache(model):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=32)


def _sliding_cache(model):
    from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

    return Cache(layers=[DynamicSlidingWindowLayer(sliding_window=4) for _ in range(model.config.n_layer)])


CACHES = {
    "static": (_static_cache, "StaticCache"),
    "sliding": (_sliding_cache, r"Cache \(with DynamicSlidingWindowLayer layers\)"),
}


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@pytest.mark.parametrize("kind", sorted(CACHES))
def test_a_cache_that_is_not_dynamic_is_refused_naming_it(arch, kind):
    """Fault: a StaticCache (or a sliding-window one) passed as past_key_values gave wrong logits on every
    decode step without an error (the decode step's logits off the full pass's by up to 0.006 for nGPT and
    0.046 for the GPT with the static cache, 0.048 with a window of 4: the static layer returns its whole
    buffer, empty slots included, and the sliding one drops keys). Now it is refused before running, naming
    the cache class."""
    make, name = CACHES[kind]
    model = _model(arch)
    ids = torch.tensor([[5, 77, 300, 12, 9, 401, 17]])
    with torch.no_grad(), pytest.raises(ValueError, match=rf"{name}.*only DynamicCache \(the default\) is supported"):
        model(ids[:, :6], past_key_values=make(model))
        model(ids[:, 6:], past_key_values=make(model))  # not reached on the fixed code


@pytest.mark.parametrize("implementation", ["static", "sliding_window"])
def test_generate_with_a_static_cache_implementation_names_the_cache(implementation):
    """Fault: generate(cache_implementation="static") stopped on 'attention_mask has shape (1, 1, 6, 15); it
    must be 2D', blaming the 4D mask transformers builds for a static cache, not the cache."""
    model = _model("ngpt")
    with pytest.raises(ValueError, match=r"a StaticCache .*only DynamicCache \(the default\) is supported"):
        model.generate(torch.tensor([[5, 77, 300, 12, 9, 401]]), max_new_tokens=4, cache_implementation=implementation)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_dynamic_cache_beam_search_and_assisted_decoding_still_work(arch):
    """The DynamicCache and what generate does with it (beam search reorders it, prompt lookup and assisted
    decoding crop it) give the tokens and logits they give without a cache."""
    from transformers import DynamicCache

    model = _model(arch)
    ids = torch.tensor([[5, 77, 300, 12, 9, 401, 5, 77, 300, 12]])
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache(config=model.config)
        steps = [model(ids[:, :6], past_key_values=cache).logits]
        steps += [model(ids[:, i : i + 1], past_key_values=cache).logits for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    greedy = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    for kwargs in ({"num_beams": 3}, {"num_beams": 1}):
        with_cache = model.generate(ids, **greedy, **kwargs)
        assert torch.equal(with_cache, model.generate(ids, **greedy, **kwargs, use_cache=False)), kwargs
    reference = model.generate(ids, **greedy)
    assert torch.equal(model.generate(ids, **greedy, prompt_lookup_num_tokens=3), reference)
    assert torch.equal(model.generate(ids, **greedy, assistant_model=_model(arch)), reference)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_trainer_with_gradient_accumulation_backpropagates_the_whole_batch_loss(arch, tmp_path):
    """Fault: forward takes **kwargs, so transformers' Trainer counts on the model to divide the loss by
    num_items_in_batch (and does not divide it by the accumulation steps); the model ignored it, so each
    micro-batch backpropagated its whole mean loss: N times too large with N accumulation steps (6.234
    instead of 1.558 for the GPT with 4). Now the loss is the sum over the micro-batch's targets divided by
    num_items_in_batch, as in transformers' causal LMs: with equal micro-batches the model's loss / 4, and
    with unequal ones (ignored labels) the micro-steps' losses and gradients add up to the whole batch's."""
    from transformers import Trainer, TrainingArguments

    model = _model(arch)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs
    trainer.current_gradient_accumulation_steps = 4
    ids = torch.randint(3, 512, (8, 16), generator=torch.Generator().manual_seed(0))

    def num_items_of(labels: torch.Tensor) -> torch.Tensor:
        return (labels[:, 1:] != -100).sum()

    def steps(labels: torch.Tensor) -> tuple[list[float], list[float]]:
        """The Trainer's 4 micro-steps (the loss each backpropagates), and the model's loss on each."""
        batches = [{"input_ids": ids[i : i + 2], "labels": labels[i : i + 2]} for i in range(0, 8, 2)]
        num_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))  # as Trainer.train counts
        assert int(num_items) == int(num_items_of(labels))
        with torch.no_grad():
            plain = [float(model(**batch).loss) for batch in batches]
        return [float(trainer.training_step(model, batch, num_items)) for batch in batches], plain

    model.zero_grad()
    backpropagated, plain = steps(ids.clone())
    assert backpropagated == pytest.approx([loss / 4 for loss in plain], rel=1e-6)

    labels = ids.clone()
    labels[0, 9:] = -100  # micro-batches of 23, 30, 26 and 30 targets
    labels[5, 3:7] = -100
    model.zero_grad()
    backpropagated, _ = steps(labels)
    accumulated = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    whole = model(input_ids=ids, labels=labels).loss
    whole.backward()
    assert sum(backpropagated) == pytest.approx(float(whole.detach()), rel=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(accumulated[name], param.grad, rtol=1e-5, atol=1e-7, msg=name)

    model.zero_grad()
    none_counted = model(
        input_ids=ids[:2], labels=torch.full_like(ids[:2], -100), num_items_in_batch=num_items_of(labels)
    )
    none_counted.loss.backward()
    assert float(none_counted.loss.detach()) == 0.0  # not the mean's 0/0
    assert all(not bool(p.grad.any()) for p in model.parameters())
