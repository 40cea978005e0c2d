"""Journeys of the transformers model (ngpt_ds.hf) pinned by numbers, each for nGPT and the GPT baseline, from a folder
written by save_pretrained and read through AutoModelForCausalLM (the installed ngpt_ds registers both families):
seeded sampling against a hand-run sampler on the model's logits, padding inside a batch row (zeros in the middle of
attention_mask), torch.compile against eager, a bfloat16 save_pretrained and reload (dtype, logits, unit norms), and
lm-eval's HFLM rolling loglikelihood against the per-token log-probs summed by hand. Beam search with and without the
KV cache is pinned in test_hf_faults_usage. No fault was found in these; they keep it so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ngpt_ds  # noqa: F401  registers the families with the Auto classes

IDS = torch.tensor([[5, 77, 300, 12, 9, 401]])


def _load(folder, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_seeded_sampling_repeats_and_equals_a_hand_run_sampler(arch, hf_saved):
    model = _load(hf_saved[arch])
    sampling = dict(do_sample=True, max_new_tokens=8, eos_token_id=None, top_k=0, top_p=1.0, temperature=1.0)
    torch.manual_seed(3)
    first = model.generate(IDS, **sampling)
    torch.manual_seed(3)
    second = model.generate(IDS, **sampling)
    torch.manual_seed(3)
    by_hand = IDS
    with torch.no_grad():
        for _ in range(8):
            probs = torch.softmax(model(by_hand).logits[:, -1].float(), dim=-1)
            by_hand = torch.cat([by_hand, torch.multinomial(probs, 1)], dim=1)
    assert first.shape == (1, 14)
    assert torch.equal(first, second)
    assert torch.equal(first, by_hand)
    torch.manual_seed(4)
    assert not torch.equal(model.generate(IDS, **sampling), first)  # the seed matters: not a greedy decode


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_padding_inside_a_row_leaves_the_real_tokens_logits(arch, hf_saved):
    model = _load(hf_saved[arch])
    with torch.no_grad():
        alone = model(IDS).logits
        # Row 0: two pad tokens on the left and one in the middle; row 1: the tokens alone, padded on the right.
        batch = torch.tensor([[0, 0, 5, 77, 0, 300, 12, 9, 401], [5, 77, 300, 12, 9, 401, 0, 0, 0]])
        mask = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0, 0]])
        padded = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(padded[0, [2, 3, 5, 6, 7, 8]], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1, :6], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_torch_compile_gives_the_eager_logits(arch, hf_saved):
    model = _load(hf_saved[arch])
    with torch.no_grad():
        eager = model(IDS).logits
        compiled = torch.compile(model)(IDS).logits
    assert eager.abs().max().item() > 0.1
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_a_bfloat16_save_pretrained_reloads_in_bfloat16_on_the_sphere(arch, hf_saved, tmp_path):
    from ngpt_ds.model import max_norm_deviation

    fp32 = _load(hf_saved[arch])
    with torch.no_grad():
        reference = fp32(IDS).logits
    _load(hf_saved[arch], dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    reloaded = _load(tmp_path / "bf16")  # no dtype asked: the saved one
    dtypes = {name: p.dtype for name, p in reloaded.named_parameters()}
    assert dtypes["model.embed.weight"] == torch.bfloat16
    assert reloaded.dtype == torch.bfloat16
    with torch.no_grad():
        logits = reloaded(IDS).logits
    assert logits.dtype == torch.bfloat16
    deviation = (logits.float() - reference).abs().max().item()
    assert deviation < 0.02  # bf16's spacing is 2^-8 relative; the logits here are within +-1
    assert max_norm_deviation(reloaded.model) < 2**-7  # nGPT's matrices still unit rows (0.0 for the GPT's none)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_hflm_rolling_loglikelihood_is_the_sum_of_the_tokens_log_probs(arch, hf_saved, tiny_dataset):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ngpt_ds.hf.tokenizer import build_hf_tokenizer

    tokenizer = build_hf_tokenizer(tiny_dataset / "tokenizer.model")
    model = _load(hf_saved[arch])
    text = "The class statement defines a list comprehension"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert 3 < len(ids) < 31  # one window of the 32-token context
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu", max_length=32)
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    inputs = torch.tensor([[tokenizer.eos_token_id, *ids[:-1]]])  # lm-eval conditions the first token on EOS
    with torch.no_grad():
        logprobs = F.log_softmax(model(inputs).logits.float(), dim=-1)[0]
    by_hand = logprobs.gather(-1, torch.tensor(ids)[:, None]).sum().item()
    assert by_hand < -10.0
    assert got == pytest.approx(by_hand, abs=1e-4, rel=0)
