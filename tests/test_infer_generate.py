"""Generation: the KV cache gives the same logits and tokens as full recomputation (nGPT and GPT),
seeded sampling is reproducible, top-k / top-p do what they say, the CLI streams text and
refuses prompts longer than the allowed context."""

import sys

import pytest
import torch
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, run


def tiny_model(arch: str, seed: int = 0):
    from ngpt_ds.model import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, vocab_size=97, n_layer=2, n_embd=32, n_head=2, seq_len=16))
    if arch == "ngpt":  # move the scalars off their init so every term matters
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.mul_(1 + 0.5 * torch.rand_like(p))
    return model.eval()


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_cached_logits_equal_full_forward_for_any_chunking(arch):
    from ngpt_ds.model.blocks import KVCache

    model = tiny_model(arch)
    tokens = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))  # past seq_len 16 too
    with torch.no_grad():
        full, _ = model(tokens)
        for cuts in ([0, 1, 2, 40], [0, 7, 8, 9, 21, 40], [0, 16, 17, 33, 40]):
            cache = KVCache()
            pieces = [model(tokens[:, a:b], cache=cache)[0] for a, b in zip(cuts, cuts[1:])]
            assert cache.length == 40
            torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-6, rtol=0)
    # The naive alternative (is_causal with fewer queries than keys) is wrong: the test can fail.
    attn = model.blocks[0].attn
    q = torch.randn(1, 2, 3, 16)
    k = torch.randn(1, 2, 8, 16)
    v = torch.randn(1, 2, 8, 16)
    right = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(3, 8, dtype=torch.bool).tril(diagonal=5), scale=attn.softmax_scale
    )
    top_left = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.softmax_scale)
    assert (right - top_left).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_greedy_generation_with_cache_matches_without(arch):
    from ngpt_ds.infer import GREEDY, generate_ids

    model = tiny_model(arch, seed=3)
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="past the 16 tokens"):
        cached = torch.stack(list(generate_ids(model, prompt, 20, GREEDY, use_cache=True)), dim=1)
        full = torch.stack(list(generate_ids(model, prompt, 20, GREEDY, use_cache=False)), dim=1)
    assert cached.shape == (2, 20)
    assert torch.equal(cached, full)
    assert len(set(cached[0].tolist())) > 1  # not a constant sequence


def test_trained_model_greedy_cache_and_seeded_sampling(exported):  # noqa: F811
    from ngpt_ds.infer import GREEDY, Sampling, generate, load

    loaded = load(exported)
    prompt = "The class statement"
    a = generate(loaded.model, loaded.tokenizer, prompt, max_new_tokens=24, sampling=GREEDY, stop_at_eos=False)
    b = generate(
        loaded.model, loaded.tokenizer, prompt, max_new_tokens=24, sampling=GREEDY, stop_at_eos=False, use_cache=False
    )
    assert a.new_ids == b.new_ids and len(a.new_ids) == 24
    assert a.text == loaded.tokenizer.decode(a.new_ids) or a.text.strip() == loaded.tokenizer.decode(a.new_ids).strip()

    sampling = Sampling(temperature=1.0, top_k=50, top_p=0.95)
    runs = [
        generate(
            loaded.model, loaded.tokenizer, prompt, max_new_tokens=24, sampling=sampling, seed=s, stop_at_eos=False
        ).new_ids
        for s in (11, 11, 12)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    # The cache changes nothing for sampling either.
    assert (
        runs[0]
        == generate(
            loaded.model,
            loaded.tokenizer,
            prompt,
            max_new_tokens=24,
            sampling=sampling,
            seed=11,
            stop_at_eos=False,
            use_cache=False,
        ).new_ids
    )


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    from ngpt_ds.infer.generate import Sampling, sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    counts = lambda s: torch.bincount(sample_next(logits, s, g), minlength=4).tolist()  # noqa: E731
    assert counts(Sampling(temperature=1.0, top_k=1)) == [4000, 0, 0, 0]
    c = counts(Sampling(temperature=1.0, top_k=2))
    assert c[2] == c[3] == 0 and abs(c[0] / 4000 - 0.625) < 0.03
    c = counts(Sampling(temperature=1.0, top_p=0.8))  # 0.5 + 0.3 reaches 0.8: the rest is cut
    assert c[2] == c[3] == 0 and abs(c[0] / 4000 - 0.625) < 0.03
    c = counts(Sampling(temperature=1.0, top_p=0.81))
    assert c[3] == 0 and c[2] > 0
    c = counts(Sampling(temperature=1.0))
    assert abs(c[3] / 4000 - 0.05) < 0.015
    assert counts(Sampling(temperature=0.0)) == [4000, 0, 0, 0]


def test_generate_cli_streams_and_is_reproducible(exported):  # noqa: F811
    cmd = [
        sys.executable,
        REPO / "launch/generate.py",
        exported,
        "--prompt",
        "The class statement",
        "--max-new-tokens",
        "30",
        "--seed",
        "5",
        "--top-k",
        "40",
        "--ignore-eos",
    ]
    first, second = run(cmd), run(cmd)
    assert first.stdout == second.stdout
    assert first.stdout.startswith("The class statement") and len(first.stdout) > len("The class statement") + 5
    assert "[30 tokens]" in first.stderr
    no_echo = run(cmd + ["--no-echo", "--no-cache"])
    assert "The class statement" + no_echo.stdout == first.stdout


def test_prompt_longer_than_the_context_is_a_clear_error(exported):  # noqa: F811
    long_prompt = "def f(x): return x + 1\n" * 30
    base = [sys.executable, REPO / "launch/generate.py", exported, "--prompt", long_prompt, "--max-new-tokens", "3"]
    proc = run(base, check=False)
    assert proc.returncode == 2
    assert "\nerror: the prompt is " in proc.stderr and proc.stdout == ""  # nothing echoed
    assert (
        "longer than the maximum context of 32 tokens (--max-context; the model was trained at seq_len 32)"
        in proc.stderr
    )
    # Raising --max-context allows it (nGPT extrapolation), with a warning.
    proc = run(base + ["--max-context", "1000", "--greedy"])
    assert "past the 32 tokens the model was trained at" in proc.stderr
