"""What transformers users ask of a causal LM beyond logits: output_hidden_states (features, probing),
output_attentions (refused: SDPA computes no weights), and resize_token_embeddings after adding tokens to the
tokenizer, which must keep nGPT's embeddings and head on the sphere and the old tokens' logits unchanged."""

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")


def _model(arch: str, seed: int = 0):
    """A random tiny model of the installed ngpt_ds classes (no export needed)."""
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=3, n_embd=32, n_head=2, seq_len=32)
    return MODELS[arch](CONFIGS[arch].from_model_config(config)).eval()


IDS = torch.tensor([[5, 17, 99, 4, 300, 2], [7, 7, 8, 9, 10, 11]])


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
@torch.no_grad()
def test_output_hidden_states_gives_the_embedding_and_every_blocks_output(arch):
    """Fault: forward took output_hidden_states=True (in **kwargs) and returned hidden_states=None, in forward and
    in generate(output_hidden_states=True, return_dict_in_generate=True) alike ((None, None) for two steps): code
    that reads features or probes layers got nothing, or a TypeError far from the cause. Before: None. Now:
    n_layer + 1 tensors, as transformers' Llama gives them: the first block's input (the embedding), each block's
    output, the last after the GPT baseline's final norm (nGPT has none), from which the head gives the logits."""
    model = _model(arch)
    inner = model.model
    out = model(IDS, output_hidden_states=True)
    states = out.hidden_states
    assert isinstance(states, tuple) and len(states) == 4
    cos, sin = inner.rotary.tables(IDS.shape[1], IDS.device, torch.float32, 0)
    h = inner.embed_tokens(IDS)
    assert torch.equal(states[0], h)
    for index, block in enumerate(inner.blocks):
        h = block(h, cos, sin)
        want = inner.final_norm(h) if arch == "gpt" and index == 2 else h
        assert torch.equal(states[index + 1], want), index
    head = inner.head(states[-1], row_scale=inner.s_z()) if arch == "ngpt" else inner.head(states[-1])
    assert torch.equal(head, out.logits)
    assert model(IDS).hidden_states is None  # only when asked: the block hooks record nothing otherwise

    generated = model.generate(
        IDS[:1], max_new_tokens=2, do_sample=False, return_dict_in_generate=True, output_hidden_states=True
    )
    assert [len(step) for step in generated.hidden_states] == [4, 4]
    assert [tuple(step[0].shape) for step in generated.hidden_states] == [(1, 6, 32), (1, 1, 32)]


def test_output_attentions_is_refused_naming_it():
    """Fault: output_attentions=True returned attentions=None without a word. Now a ValueError that says why."""
    model = _model("ngpt")
    with pytest.raises(ValueError) as err:
        model(IDS, output_attentions=True)
    assert str(err.value) == (
        "NGPTForCausalLM cannot return attention weights (output_attentions=True): its attention runs in torch's "
        "scaled_dot_product_attention, which computes none. Pass output_attentions=False"
    )


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_resize_token_embeddings_keeps_old_logits_and_the_sphere(arch, tmp_path):
    """Fault: model.resize_token_embeddings(520), the usual step after tokenizer.add_tokens, stopped in
    transformers with "TypeError: Old embeddings are of type <class 'ngpt_ds.model.layers.TokenEmbedding'>, which is
    not an instance of <class 'torch.nn.modules.sparse.Embedding'>", and the head (no get_output_embeddings) and
    nGPT's per-token logit scale s_z were never resized. Now the embedding, the head and s_z get the new rows
    (the mean of the old ones, unit norm in nGPT), the old tokens' logits are unchanged, config.vocab_size
    follows, and save_pretrained/from_pretrained round-trips the model (the sphere check included)."""
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model.sphere import max_norm_deviation

    model = _model(arch)
    with torch.no_grad():
        before = model(IDS).logits
    embed = model.resize_token_embeddings(520)
    assert embed is model.get_input_embeddings()
    assert (model.config.vocab_size, model.model.config.vocab_size) == (520, 520)
    assert tuple(model.model.embed.weight.shape) == tuple(model.model.head.weight.shape) == (520, 32)
    new_ids = torch.tensor([[5, 17, 519, 4, 300, 513]])
    with torch.no_grad():
        after = model(IDS).logits
        assert torch.equal(after[..., :512], before)
        assert tuple(model(new_ids).logits.shape) == (1, 6, 520)
    mean = model.model.head.weight[:512].mean(0)
    if arch == "ngpt":
        assert tuple(model.model.s_z.param.shape) == (520,)
        assert max_norm_deviation(model.model) <= 2e-7
        assert torch.allclose(model.model.head.weight[515], mean / mean.norm(), atol=1e-7, rtol=0)
    else:
        assert torch.equal(model.model.head.weight[515], mean)
    # All new tokens start alike, so each gets the same logit.
    assert torch.equal(after[..., 512:], after[..., 512:513].expand(-1, -1, 8))

    model.save_pretrained(tmp_path / "resized")
    loaded = type(model).from_pretrained(tmp_path / "resized")
    assert isinstance(loaded, MODELS[arch]) and loaded.config.vocab_size == 520
    with torch.no_grad():
        assert torch.equal(loaded(new_ids).logits, model(new_ids).logits)

    model.resize_token_embeddings(None, pad_to_multiple_of=64)
    assert model.config.vocab_size == 576
    model.resize_token_embeddings(500, mean_resizing=False)
    assert tuple(model.model.head.weight.shape) == (500, 32) and model.config.vocab_size == 500
    if arch == "ngpt":
        assert tuple(model.model.s_z.param.shape) == (500,) and max_norm_deviation(model.model) <= 2e-7
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, before[..., :500])


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_resize_token_embeddings_to_a_size_that_is_no_positive_integer_is_named(value):
    model = _model("ngpt")
    with pytest.raises(ValueError) as err:
        model.resize_token_embeddings(value)
    assert str(err.value) == f"resize_token_embeddings: new_num_tokens must be a positive integer, not {value!r}"
    assert model.config.vocab_size == 512


def test_return_dict_false_gives_a_tuple_as_transformers_models_do():
    """Fault: forward ignored return_dict=False (and config.return_dict = False) and returned its dict-like output,
    whose unpacking yields its keys: `loss, logits = model(ids, labels=ids, use_cache=False, return_dict=False)`
    gave loss == 'loss' and logits == 'logits', strings, without an error. Now the tuple of the fields that are
    not None, as transformers' can_return_tuple gives it."""
    model = _model("ngpt")
    with torch.no_grad():
        out = model(IDS, labels=IDS, use_cache=False)
        loss, logits = model(IDS, labels=IDS, use_cache=False, return_dict=False)
        assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)
        (alone,) = model(IDS, use_cache=False, return_dict=False)
        assert torch.equal(alone, out.logits)
        with_cache = model(IDS, return_dict=False)
        assert isinstance(with_cache, tuple) and len(with_cache) == 2 and torch.equal(with_cache[0], out.logits)
        model.config.return_dict = False
        assert isinstance(model(IDS, use_cache=False), tuple)
        assert model(IDS, use_cache=False, return_dict=True).logits.shape == (2, 6, 512)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_attn_implementation_sdpa_is_taken_and_reported(arch, tmp_path):
    """Fault: the attention runs in torch's scaled_dot_product_attention, yet from_pretrained(...,
    attn_implementation="sdpa") was refused ("... does not support an attention implementation through
    torch.nn.functional.scaled_dot_product_attention yet. Please request the support ...") and a default load
    reported config._attn_implementation == "eager". Now "sdpa" is taken and reported, with the same logits;
    flash_attention_2, which the model does not run, is still refused."""
    model = _model(arch)
    model.save_pretrained(tmp_path / "m")
    cls = type(model)
    default = cls.from_pretrained(tmp_path / "m")
    sdpa = cls.from_pretrained(tmp_path / "m", attn_implementation="sdpa")
    assert (default.config._attn_implementation, sdpa.config._attn_implementation) == ("sdpa", "sdpa")
    with torch.no_grad():
        assert torch.equal(sdpa(IDS).logits, default(IDS).logits)
    with pytest.raises(ValueError, match="does not support Flash Attention 2"):
        cls.from_pretrained(tmp_path / "m", attn_implementation="flash_attention_2")
