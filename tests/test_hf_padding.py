"""Padded batches and position_ids in the transformers model (ngpt_ds/hf/modeling_ngpt.py), for nGPT and the
GPT baseline: a padded sequence gets the logits and greedy tokens it gets alone, as in transformers' Llama.

Fault: `forward` refused any attention_mask holding a zero ("... has no padding mask: pass sequences of
equal length"), so `generate` on a left-padded batch (lm-eval's `hf` model on a generate_until task with
batch_size > 1, or `generate(**tokenizer([...], padding=True))`) failed, and it took position_ids into
**kwargs and ignored them: a caller's positions silently gave the logits of positions 0, 1, ..."""

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")

PAD = 2  # `</s>`, the exports' pad id: a real token, so only the mask says what is padding
PROMPTS = [[5, 77, 300, 12, 9, 401], [40, 41], [100, 200, 300, 7]]
NEW_TOKENS = 8


def _model(arch: str):
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    # init_std 0.2 for GPT: at 0.02 the untrained baseline repeats one token, a weak check of the cache steps.
    extra = {"init_std": 0.2} if arch == "gpt" else {}
    config = ModelConfig(arch=arch, vocab_size=512, n_layer=2, n_embd=32, n_head=2, seq_len=32, **extra)
    hf_config = CONFIGS[arch].from_model_config(config, eos_token_id=PAD, pad_token_id=PAD)
    return MODELS[arch](hf_config).eval()


def _padded(prompts: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    rows, masks = [], []
    for p in prompts:
        pad = width - len(p)
        rows.append([PAD] * pad + p if side == "left" else p + [PAD] * pad)
        masks.append([0] * pad + [1] * len(p) if side == "left" else [1] * len(p) + [0] * pad)
    return torch.tensor(rows), torch.tensor(masks)


def _greedy(model, ids: torch.Tensor, **kwargs):
    return model.generate(
        ids,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        output_scores=True,
        return_dict_in_generate=True,
        **kwargs,
    )


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_left_padded_generate_gives_each_prompt_its_tokens_alone(arch):
    model = _model(arch)
    ids, mask = _padded(PROMPTS, "left")
    width = ids.shape[1]
    fed = []  # positions ngpt_ds's model gets per forward: the prompts once, then one per step (the KV cache)
    hidden_states = model.model.hidden_states
    model.model.hidden_states = lambda token_ids, *a, **k: (
        fed.append(token_ids.shape[1]) or hidden_states(token_ids, *a, **k)
    )
    batch = _greedy(model, ids, attention_mask=mask).sequences[:, width:]
    assert fed == [width] + [1] * (NEW_TOKENS - 1)
    no_cache = _greedy(model, ids, attention_mask=mask, use_cache=False).sequences[:, width:]
    for row, prompt in enumerate(PROMPTS):
        alone = _greedy(model, torch.tensor([prompt]))
        # The tokens are decided by a margin far above rounding, so equal tokens are a real check.
        top2 = torch.cat(alone.scores).topk(2, dim=-1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4
        expected = alone.sequences[0, len(prompt) :].tolist()
        assert batch[row].tolist() == expected, row
        assert no_cache[row].tolist() == expected, row
    assert len({tuple(r) for r in batch.tolist()}) == len(PROMPTS) and len(set(batch[0].tolist())) > 1
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        for row, prompt in enumerate(PROMPTS):
            torch.testing.assert_close(
                logits[row, width - len(prompt) :], model(torch.tensor([prompt])).logits[0], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_right_padded_logits_at_real_positions_equal_the_unpadded_ones(arch):
    model = _model(arch)
    ids, mask = _padded(PROMPTS, "right")
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        assert bool(torch.isfinite(logits).all())
        for row, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(logits[row, : len(prompt)], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_position_ids_place_the_tokens_at_those_positions(arch):
    """Positions with gaps (a uniform shift would change nothing: RoPE sees only differences), one set per
    row, against the model run by hand on one sequence, its RoPE tables built one position at a time."""
    model = _model(arch)
    tokens = torch.tensor([[5, 77, 300, 12], [40, 41, 42, 43]])
    position_ids = torch.tensor([[3, 4, 9, 10], [0, 2, 4, 6]])
    with torch.no_grad():
        logits = model(tokens, position_ids=position_ids).logits
        for row in range(2):
            by_hand = _at_positions(model, tokens[row], position_ids[row].tolist())
            torch.testing.assert_close(logits[row], by_hand, atol=1e-5, rtol=0)
        assert float((logits - model(tokens).logits).abs().amax()) > 1e-3  # the positions matter
        # [1, T] applies to every row; with an all-ones attention_mask the ids are still used
        one_row = model(tokens, attention_mask=torch.ones_like(tokens), position_ids=position_ids[:1]).logits
        torch.testing.assert_close(one_row[1], _at_positions(model, tokens[1], [3, 4, 9, 10]), atol=1e-5, rtol=0)


def _at_positions(model, tokens: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Logits of one sequence whose tokens sit at `positions`, through the blocks' training path."""
    lm = model.model
    h = lm.embed_tokens(tokens[None])
    tables = [lm.rotary.tables(1, h.device, h.dtype, offset=p) for p in positions]
    cos, sin = (torch.cat([t[i] for t in tables]) for i in range(2))
    for block in lm.blocks:
        h = block(h, cos, sin)
    return lm.logits(h)[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention_mask": torch.ones(2, 3, dtype=torch.long)}, r"attention_mask has shape \(2, 3\); it must be 2D"),
        ({"attention_mask": torch.ones(2, 1, 4, 4, dtype=torch.long)}, r"attention_mask has shape \(2, 1, 4, 4\)"),
        ({"attention_mask": torch.tensor([[0.0, 0, 0, 0], [-torch.inf, 0, 0, 0]])}, "only 0 .padding. and 1"),
        ({"position_ids": torch.arange(5)[None]}, r"position_ids has shape \(1, 5\); it must be \[batch, new"),
        ({"position_ids": torch.arange(4)}, r"position_ids has shape \(4,\)"),
        ({"position_ids": torch.tensor([[0, 1, 2, 3], [-1, 0, 1, 2]])}, "position_ids must be integers >= 0"),
    ],
)
def test_a_wrong_attention_mask_or_position_ids_is_a_value_error_naming_it(kwargs, message):
    model = _model("ngpt")
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model(torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), **kwargs)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_left_padding_positions_and_an_all_padding_row_give_no_nan(arch):
    """A left padding position has no real key at or before it: SDPA would give NaN for its all-False row."""
    from transformers import DynamicCache

    model = _model(arch)
    ids = torch.tensor([[PAD, PAD, PAD, 5, 6], [PAD] * 5, [7, 8, 9, 10, 11]])
    mask = torch.tensor([[0, 0, 0, 1, 1], [0] * 5, [1] * 5])
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        first = model(ids, attention_mask=mask, cache=cache).logits
        step = model(torch.tensor([[3], [4], [5]]), attention_mask=torch.cat([mask, torch.ones(3, 1)], 1), cache=cache)
        assert bool(torch.isfinite(first).all()) and bool(torch.isfinite(step.logits).all())
        # the full rows, and the padded row's real tokens as alone (after the cache step too)
        torch.testing.assert_close(first[2], model(ids[2:]).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(first[0, 3:], model(ids[:1, 3:]).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            step.logits[0, -1], model(torch.tensor([[5, 6, 3]])).logits[0, -1], atol=1e-5, rtol=0
        )


def test_lm_eval_hf_generate_until_in_batches_equals_one_at_a_time(tiny_dataset):
    """The user's case: lm-eval's `hf` model left-pads the prompts of a batch and passes that attention_mask
    to generate (on the old code: the refusal at any batch_size > 1 with prompts of different lengths)."""
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ngpt_ds.hf.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer(tiny_dataset / "tokenizer.model")
    prompts = ["The class statement", "def", "A list comprehension consists of brackets"]
    assert len({len(tokenizer(p).input_ids) for p in prompts}) == 3
    for arch in ("ngpt", "gpt"):
        texts = {}
        for batch_size in (1, 3):
            lm = HFLM(pretrained=_model(arch), tokenizer=tokenizer, batch_size=batch_size, device="cpu")
            gen = {"until": ["\n\n\n"], "max_gen_toks": NEW_TOKENS, "do_sample": False}
            texts[batch_size] = lm.generate_until(
                [Instance("generate_until", {}, (p, gen), i) for i, p in enumerate(prompts)]
            )
        assert texts[3] == texts[1], arch
        assert len(set(texts[1])) == 3 and all(texts[1]), arch


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_ngpt_ds_model_takes_positions_and_key_mask_with_its_own_kv_cache(arch):
    """The same through ngpt_ds.model alone (no transformers): a left-padded prefill and one decoding step
    with ngpt_ds's KVCache, the key mask growing by a column, give each prompt's logits alone."""
    from ngpt_ds.model.blocks import KVCache

    lm = _model(arch).model
    ids, mask = _padded(PROMPTS, "left")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([[3], [4], [5]])
    with torch.no_grad():
        cache = KVCache()
        first = lm.logits(lm.hidden_states(ids, cache, positions=positions, key_mask=mask.bool()))
        grown = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1).bool()
        step = lm.logits(lm.hidden_states(nxt, cache, positions=positions[:, -1:] + 1, key_mask=grown))
        for row, prompt in enumerate(PROMPTS):
            alone = lm(torch.tensor([prompt + [int(nxt[row])]]))[0][0]
            torch.testing.assert_close(first[row, ids.shape[1] - len(prompt) :], alone[:-1], atol=1e-5, rtol=0)
            torch.testing.assert_close(step[row, 0], alone[-1], atol=1e-5, rtol=0)
