"""Token ids the model has no row for: a tokenizer given tokens by add_tokens before the model was resized,
or labels (-100) passed as input_ids. They must be refused by name before the embedding lookup, whose
IndexError says nothing on a CPU and whose device-side assert leaves a GPU's CUDA context unusable."""

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

ADDED = (
    "input_ids hold 512, which is no token id of this model: it has 512 (0 to 511, config.vocab_size); after "
    "tokenizer.add_tokens (or add_special_tokens), call model.resize_token_embeddings(len(tokenizer))"
)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tiny_dataset):
    """A random tiny nGPT export (tokenizer included), from ngpt_ds's own writer."""
    from ngpt_ds.data.tokenizer import Tokenizer
    from ngpt_ds.hf.export import write_hf_export
    from ngpt_ds.infer import LoadedModel
    from ngpt_ds.model import ModelConfig, build_model

    root = tmp_path_factory.mktemp("eco19_ids")
    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    tok = Tokenizer.load(tiny_dataset / "tokenizer.model")
    loaded = LoadedModel(
        model=build_model(config).eval(), config=config, tokenizer=tok, tokenizer_sha256="-", source=root, kind="export"
    )
    (root / "hf").mkdir()
    write_hf_export(loaded, root / "hf", name="hf")
    return root / "hf"


def test_a_token_added_to_the_tokenizer_without_resizing_is_named(hf_folder):
    """Fault: tokenizer.add_tokens(["<tool>"]) gives id 512 to a model of 512 token ids; model(**tokenizer(text))
    and generate stopped in the embedding with "IndexError: index out of range in self" (on a GPU: "CUDA error:
    device-side assert triggered", after which every CUDA call of the process fails). Now a ValueError naming
    the id, the model's range and the fix; after resize_token_embeddings the same call runs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ngpt_ds  # noqa: F401  (registers model_type "ngpt")

    model = AutoModelForCausalLM.from_pretrained(hf_folder)
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    tokenizer.add_tokens(["<tool>"])
    batch = tokenizer("hello <tool>", return_tensors="pt")
    assert batch.input_ids[0, -1].item() == 512
    with pytest.raises(ValueError) as err:
        model(**batch)
    assert str(err.value) == ADDED
    with pytest.raises(ValueError) as err:
        model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert str(err.value) == ADDED
    model.resize_token_embeddings(len(tokenizer))
    assert tuple(model(**batch).logits.shape) == (1, batch.input_ids.shape[1], 513)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"input_ids": torch.tensor([[3, -100, 4]])},
            "input_ids hold -100, which is no token id of this model: it has 512 (0 to 511, config.vocab_size) "
            "(-100 marks a label to ignore; it is no input)",
        ),
        (
            {"input_ids": torch.tensor([[3, 5, 4]]), "labels": torch.tensor([[3, 700, -100]])},
            "labels hold 700, which is no token id of this model: it has 512 (0 to 511, config.vocab_size) and takes "
            "-100 for a label to ignore; after tokenizer.add_tokens (or add_special_tokens), call "
            "model.resize_token_embeddings(len(tokenizer))",
        ),
        (
            {"input_ids": torch.tensor([[3, 5, 4]]), "labels": torch.tensor([[3, -1, 4]])},
            "labels hold -1, which is no token id of this model: it has 512 (0 to 511, config.vocab_size) and takes "
            "-100 for a label to ignore",
        ),
    ],
)
def test_ids_outside_the_vocabulary_are_named(kwargs, message):
    """Fault: input_ids holding -100 (labels passed as inputs) stopped in "IndexError: index out of range in self",
    labels past the vocabulary in the loss's gather (a device-side assert on a GPU), and a label of -1 was
    ignored as -100 is, without a word (transformers' models ignore only -100). Now each is a ValueError."""
    from ngpt_ds.hf.configuration_ngpt import NGPTConfig
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=1, n_embd=32, n_head=2, seq_len=32)
    model = NGPTForCausalLM(NGPTConfig.from_model_config(config)).eval()
    with pytest.raises(ValueError) as err:
        model(**kwargs)
    assert str(err.value) == message
    ok = model(input_ids=torch.tensor([[3, 5, 4]]), labels=torch.tensor([[3, 511, -100]]))
    assert ok.loss is not None and bool(torch.isfinite(ok.loss))


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        (
            lambda ids: ids[:, :3],
            {},
            "labels has shape (2, 3) and input_ids (2, 4): labels must have the shape of input_ids, one per input "
            "position (the input ids, shifted inside the model; -100 where no loss)",
        ),
        (
            lambda ids: ids[0],
            {},
            "labels has shape (4,) and input_ids (2, 4): labels must have the shape of input_ids, one per input "
            "position (the input ids, shifted inside the model; -100 where no loss)",
        ),
        (
            lambda ids: ids,
            {"logits_to_keep": 1},
            "labels with logits_to_keep=1: the loss needs the logits of every position; pass logits_to_keep=0 "
            "(the default) with labels",
        ),
    ],
)
def test_labels_that_do_not_match_the_inputs_are_named(labels, kwargs, message):
    """Fault: labels of another shape than input_ids stopped in the loss with "The expanded size of the tensor (6)
    must match the existing size (4) at non-singleton dimension 0" (or "too many indices for tensor of dimension
    1" for a 1-D row), and labels with logits_to_keep=1 with "The size of tensor a (0) must match the size of
    tensor b (6)". Now a ValueError naming both shapes, or logits_to_keep."""
    from ngpt_ds.hf.configuration_ngpt import NGPTConfig
    from ngpt_ds.hf.modeling_ngpt import NGPTForCausalLM
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=1, n_embd=32, n_head=2, seq_len=32)
    model = NGPTForCausalLM(NGPTConfig.from_model_config(config)).eval()
    ids = torch.tensor([[5, 17, 99, 4], [1, 2, 3, 4]])
    with pytest.raises(ValueError) as err:
        model(ids, labels=labels(ids), **kwargs)
    assert str(err.value) == message
