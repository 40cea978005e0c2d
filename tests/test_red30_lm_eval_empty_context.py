"""The ngpt_ds lm-eval model scores a request whose context encodes to no token, as lm-eval scores an empty context.

Fault: lm-eval moves a context's trailing spaces to the continuation (TemplateLM._encode_pair), so a whitespace-only
context (" ") reached NgptLM._score as no token at all; its scores were then read from a slice starting before the
row (position -1) and the request, and every request batched with it, ended in a RuntimeError ("Size does not match at
dimension 0 ..."). An empty context is now conditioned on EOS, lm-eval's prefix token (what it gives an empty
string), and every score, alone or right-padded in a batch, equals a plain forward of EOS + continuation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")


@pytest.fixture(scope="module")
def ngpt_lm(tmp_path_factory, tiny_dataset):
    from random_export import export_random_ngpt

    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    folder, _ = export_random_ngpt(
        tmp_path_factory.mktemp("red30_lm_eval"), tiny_dataset / "tokenizer.model", "ngpt_ds"
    )
    return NgptLM(path=str(folder), device="cpu", batch_size=4)


def _plain(lm, context, continuation):
    """sum log p(continuation | context) from one unpadded forward of context + continuation."""
    whole = context + continuation
    logits, _ = lm.model(torch.tensor([whole[:-1]]))
    logprobs = F.log_softmax(logits.float(), dim=-1)[0, len(context) - 1 :]
    return logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum().item()


def test_red30_whitespace_only_context_is_scored_after_eos_alone_and_in_a_padded_batch(ngpt_lm):
    from lm_eval.api.instance import Instance

    eos = ngpt_lm.eot_token_id
    answer = ngpt_lm.tok_encode(" the answer")
    question, answered = ngpt_lm._encode_pair("Question: what is it?", " the answer")  # lm-eval's split of the text
    requests = [
        Instance("loglikelihood", {}, (" ", "the answer"), 0),  # context " ": no token once its space moves on
        Instance("loglikelihood", {}, ("Question: what is it?", " the answer"), 1),  # a longer row: padding
        Instance("loglikelihood", {}, ("", " the answer"), 2),  # lm-eval's own empty context: EOS
    ]
    batched = [score for score, _ in ngpt_lm.loglikelihood(requests, disable_tqdm=True)]
    alone = [ngpt_lm.loglikelihood([r], disable_tqdm=True)[0][0] for r in requests]
    expected = [_plain(ngpt_lm, [eos], answer), _plain(ngpt_lm, question, answered), _plain(ngpt_lm, [eos], answer)]
    assert ngpt_lm._encode_pair(" ", "the answer")[0] == []  # the case: a context of no token
    assert batched == pytest.approx(expected, abs=1e-5, rel=0)
    assert alone == pytest.approx(expected, abs=1e-5, rel=0)
    assert batched[0] == pytest.approx(batched[2], abs=1e-6, rel=0)  # " " and "" both condition on EOS alone


def test_red30_empty_context_tokens_score_as_eos_not_an_error(ngpt_lm):
    eos = ngpt_lm.eot_token_id
    continuation = [17, 42, 99]
    got = ngpt_lm._loglikelihood_tokens([(None, [], continuation), (None, [5, 6, 7, 8, 9], continuation)])
    assert [score for score, _ in got] == pytest.approx(
        [_plain(ngpt_lm, [eos], continuation), _plain(ngpt_lm, [5, 6, 7, 8, 9], continuation)], abs=1e-5, rel=0
    )
