"""The lm-eval adapter scores a request the same in any batch: right padding of shorter requests (and the
order it sorts them in) changes no request's log-likelihood beyond fp32 rounding, for requests shorter than the
context, of exactly the context, and longer than it (their oldest context tokens dropped), and rolling
log-likelihoods over several contexts are the same at any batch size."""

import pytest
import torch
import torch.nn.functional as F
from test_infer_export_load import small_export  # noqa: F401  (module fixture)

from ngpt_ds.infer import load
from ngpt_ds.infer.lm_eval_adapter import NgptLM


class _Request:
    def __init__(self, text: str):
        self.args = (text,)


def reference(model, context: list[int], continuation: list[int], max_length: int) -> float:
    """sum log p(continuation | context) from one unpadded forward pass in float64 softmax."""
    whole = (context + continuation)[-(max_length + 1) :]
    with torch.no_grad():
        logits, _ = model(torch.tensor([whole[:-1]]))
    logprobs = F.log_softmax(logits[0].double(), dim=-1)
    first = len(whole) - 1 - len(continuation)
    return sum(logprobs[first + j, c].item() for j, c in enumerate(continuation))


def test_a_batch_of_requests_of_different_lengths_scores_each_as_alone(small_export):  # noqa: F811
    loaded = load(small_export, device="cpu", dtype="float32")
    g = torch.Generator().manual_seed(5)
    pairs = []
    for context_len, continuation_len in [(1, 1), (3, 4), (10, 2), (31, 1), (32, 3), (45, 5), (5, 32), (2, 7)]:
        ids = torch.randint(0, 512, (context_len + continuation_len,), generator=g).tolist()
        pairs.append((ids[:context_len], ids[context_len:]))
    alone = [NgptLM(loaded=loaded, batch_size=1)._score([pair])[0] for pair in pairs]
    for batch_size in (3, 16):
        batched = NgptLM(loaded=loaded, batch_size=batch_size)._score(pairs)
        for (score, greedy), (score_alone, greedy_alone) in zip(batched, alone):
            assert score == pytest.approx(score_alone, rel=1e-6, abs=1e-5)
            assert greedy == greedy_alone
    for (context, continuation), (score, _) in zip(pairs, alone):
        assert score == pytest.approx(reference(loaded.model, context, continuation, 32), rel=1e-6, abs=1e-5)


def test_rolling_loglikelihood_beyond_the_context_is_the_same_at_any_batch_size(small_export):  # noqa: F811
    loaded = load(small_export, device="cpu", dtype="float32")
    texts = ["The model reads " * n for n in (1, 9, 30)]
    assert len(loaded.tokenizer.encode(texts[-1])) > 3 * loaded.config.seq_len
    one = NgptLM(loaded=loaded, batch_size=1).loglikelihood_rolling([_Request(t) for t in texts], disable_tqdm=True)
    many = NgptLM(loaded=loaded, batch_size=16).loglikelihood_rolling([_Request(t) for t in texts], disable_tqdm=True)
    assert many == pytest.approx(one, rel=1e-6, abs=1e-5)
    # Every token is predicted once: with each window as long as the text's first, the total is that of one pass.
    seq = [loaded.tokenizer.eos_id] + loaded.tokenizer.encode(texts[0])
    assert len(seq) <= 33
    assert one[0] == pytest.approx(reference(loaded.model, seq[:1], seq[1:], 32), rel=1e-6, abs=1e-5)
