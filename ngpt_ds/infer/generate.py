"""Sampling text from a CausalLM: temperature, top-k, top-p, seeded, with a KV cache.

With the cache (default) the prompt is run once, then each new token is one position through
the model (`ngpt_ds.model.blocks.KVCache`). Without it every step reruns the whole sequence;
both give the same tokens (the test checks it greedily).

Context: the prompt may be at most `max_context` tokens (default: the trained seq_len).
Generation may run past seq_len; nGPT is claimed to extrapolate, GPT usually degrades. A
warning says when it happens.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ngpt_ds.data.tokenizer import Tokenizer
from ngpt_ds.errors import NgptConfigError, Problems
from ngpt_ds.model import CausalLM
from ngpt_ds.model.blocks import KVCache


class BeyondTrainingContext(UserWarning):
    """The sequence grows past the context length the model was trained at."""


@dataclass(kw_only=True)
class Sampling:
    """How the next token is chosen from the logits."""

    temperature: float = 1.0
    """Divide the logits by this; 0 picks the most likely token (greedy)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None or 0: all)."""
    top_p: float | None = None
    """Keep the smallest set of most likely tokens whose probability sum reaches p (None or 1: all)."""

    def validate(self) -> Sampling:
        p = Problems("sampling options")
        p.check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0 (0: greedy)")
        p.check(self.top_k is None or self.top_k >= 0, "top_k", self.top_k, "must be >= 0 (0: off)")
        p.check(self.top_p is None or 0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1] (1: off)")
        p.raise_if_any()
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)


def check_prompt_length(prompt_tokens: int, max_context: int, seq_len: int) -> None:
    """A prompt longer than the allowed context is an error that names the numbers."""
    if prompt_tokens == 0:
        raise NgptConfigError("the prompt is empty: give at least one token of text")
    if prompt_tokens > max_context:
        raise NgptConfigError(
            f"the prompt is {prompt_tokens} tokens, longer than the maximum context of {max_context} tokens "
            f"(--max-context; the model was trained at seq_len {seq_len}). Shorten the prompt, or raise "
            "--max-context to try the model beyond its training length"
        )


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B] (int64)."""
    logits = logits.float()
    # A temperature that is 0 in float32 (below ~1e-45) divides by zero: its limit, greedy.
    if sampling.greedy or torch.tensor(sampling.temperature, dtype=torch.float32).item() == 0:
        return logits.argmax(dim=-1)
    # Shifted so that the largest logit is 0: a tiny temperature then gives 0 and -inf, never inf
    # (whose softmax is NaN: 'probability tensor contains either inf, nan or element < 0').
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first one always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds torch.Generator.manual_seed accepts (an int64 or a uint64)."""


def check_seed(seed: int | None, name: str = "seed") -> None:
    """A seed torch can take, or None (random); NgptConfigError otherwise (torch's was an OverflowError-like
    ValueError traceback, 'Overflow when unpacking long long', after the model had loaded)."""
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise NgptConfigError(f"{name} {seed}: must be an integer from -2^63 to 2^64 - 1 (torch's seed range)")


def check_max_context(max_context: int | None, name: str = "max_context") -> None:
    """None (the model's seq_len) or a positive number of tokens: 0 silently meant seq_len."""
    if max_context is not None and max_context < 1:
        raise NgptConfigError(
            f"{name} {max_context}: must be >= 1 (the longest prompt accepted, in tokens); leave it out for the "
            "model's training seq_len"
        )


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.no_grad()
def generate_ids(
    model: CausalLM,
    prompt: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    *,
    seed: int | None = None,
    use_cache: bool = True,
    stop_ids: Sequence[int] = (),
) -> Iterator[torch.Tensor]:
    """Yield the next token ids, [B] per step, for a prompt [B, T] (or one list of ids).

    Stops after max_new_tokens, or when every sequence has produced a token in stop_ids (that
    token is yielded). Warns once when the sequence grows past the trained seq_len.
    """
    sampling.validate()
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[1] == 0:
        raise NgptConfigError("the prompt is empty: give at least one token")
    generator = None if sampling.greedy else make_generator(seed, device)
    cache = KVCache() if use_cache else None
    seq_len = model.config.seq_len
    stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    feed, total = ids, ids.shape[1]
    for step in range(max_new_tokens):
        if total > seq_len and (step == 0 or total == seq_len + 1):
            warnings.warn(
                f"the sequence is {total} tokens, past the {seq_len} tokens the model was trained at; "
                "nGPT is claimed to extrapolate, but quality may drop",
                BeyondTrainingContext,
                stacklevel=2,
            )
        h = model.hidden_states(feed, cache) if use_cache else model.hidden_states(ids)
        token = sample_next(model.logits(h[:, -1]), sampling, generator)
        yield token
        ids = torch.cat([ids, token[:, None]], dim=1)
        feed, total = token[:, None], total + 1
        if len(stop):
            finished |= torch.isin(token, stop)
            if bool(finished.all()):
                return


class TextStream:
    """Turns generated ids into text pieces as they come, for printing token by token.

    Text is decoded with a few tokens of left context (sentencepiece drops or adds the leading
    space of a piece depending on what precedes it), and held back while it ends in an
    incomplete UTF-8 character (byte-fallback pieces).
    """

    CONTEXT = 8

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self._context = list(prompt_ids)[-self.CONTEXT :]
        self._pending: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one token; returns the new text that is ready (maybe '')."""
        self._pending.append(int(token_id))
        before = self.tokenizer.decode(self._context)
        after = self.tokenizer.decode(self._context + self._pending)
        if after.endswith("\ufffd") and len(self._pending) < 4:
            return ""
        piece = after[len(before) :] if after.startswith(before) else self.tokenizer.decode(self._pending)
        self._context = (self._context + self._pending)[-self.CONTEXT :]
        self._pending = []
        self.text += piece
        return piece

    def flush(self) -> str:
        if not self._pending:
            return ""
        piece = self.tokenizer.decode(self._pending)
        self._pending = []
        self.text += piece
        return piece


@dataclass
class Generation:
    prompt_ids: list[int]
    new_ids: list[int]
    text: str
    stopped_at_eos: bool


def generate(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 100,
    sampling: Sampling = GREEDY,
    seed: int | None = None,
    max_context: int | None = None,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    on_text: Callable[[str], object] | None = None,
) -> Generation:
    """Sample a continuation of `prompt`. `on_text(piece)` receives the text as it is produced."""
    check_seed(seed)
    check_max_context(max_context)
    prompt_ids = tokenizer.encode(prompt)
    seq_len = model.config.seq_len
    check_prompt_length(len(prompt_ids), seq_len if max_context is None else max_context, seq_len)
    if max_new_tokens < 0:
        raise NgptConfigError(f"max_new_tokens = {max_new_tokens}: must be >= 0")
    eos = tokenizer.eos_id
    stop_ids = [eos] if stop_at_eos and eos >= 0 else []
    stream = TextStream(tokenizer, prompt_ids)
    new_ids: list[int] = []
    stopped = False
    for token in generate_ids(
        model, prompt_ids, max_new_tokens, sampling, seed=seed, use_cache=use_cache, stop_ids=stop_ids
    ):
        token_id = int(token[0])
        new_ids.append(token_id)
        if token_id in stop_ids:
            stopped = True
            break
        piece = stream.push(token_id)
        if piece and on_text is not None:
            on_text(piece)
    tail = stream.flush()
    if tail and on_text is not None:
        on_text(tail)
    return Generation(prompt_ids=prompt_ids, new_ids=new_ids, text=stream.text, stopped_at_eos=stopped)
