"""lm-evaluation-harness adapter: `--model ngpt_ds --model_args path=EXPORT_OR_CHECKPOINT`.

Importing this module registers the model class under the name "ngpt_ds". lm-eval 0.4.x
finds models only in its own registry (no plugin entry points), so run it through the
`ngpt-lm-eval` command (installed by setup.py) or `python -m ngpt_ds.infer.lm_eval_cli`; both
take exactly lm_eval's command-line options:

    ngpt-lm-eval --model ngpt_ds --model_args path=out/export --device cuda \\
        --tasks arc_easy,hellaswag,winogrande,wsc273,lambada_openai

From Python: `import ngpt_ds.infer.lm_eval_adapter` and then
`lm_eval.simple_evaluate(model="ngpt_ds", model_args="path=...", tasks=[...])`, or pass an
`NgptLM(...)` instance as `model`.

path may also be an `export.py --format hf` folder: its weights are read through ngpt_ds's own transformers
classes (none of the folder's .py files is imported) and its text through its tokenizer.json.

model_args: path (required), dtype (float32), max_length (the trained seq_len: longer inputs
keep their last max_length tokens), tokenizer (a .model to use instead of the model's own;
checked against it); any other is refused, naming it. The device and batch size come from
lm_eval's --device (its default cuda:0 falls back to the CPU when there is no GPU) and
--batch_size (default here, and for lm-eval's `auto` and `auto:N`: 16).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import lm_eval.models  # noqa: F401  lm-eval's own models first: get_model() skips them once the registry is not empty
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.generate import Sampling, generate_ids
from ngpt_ds.infer.loading import LoadedModel, load

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

MODEL_NAME = "ngpt_ds"


def _int_arg(value: object, name: str, default: int) -> int:
    # lm-eval's batch size may be "auto" or "auto:N" (its automatic size, recomputed N times): the default here.
    if value is None or value == "" or str(value).split(":")[0] == "auto":
        return default
    try:
        return int(str(value))
    except ValueError:
        raise NgptConfigError(f"model_args {name} = {value!r}: must be an integer") from None


MODEL_ARGS = ("path", "dtype", "max_length", "tokenizer")
"""What --model_args may set (lm-eval passes batch_size, max_batch_size and device from its own options)."""


def _unknown_args(names: list[str]) -> str:
    """The message for model_args the model does not take (`names`, sorted)."""
    hint = "; pretrained= is lm-eval's hf model's name for it, this model's is path=" if "pretrained" in names else ""
    verb = "is not an option" if len(names) == 1 else "are not options"
    return (
        f"model_args {', '.join(names)} {verb} of the {MODEL_NAME} model, which takes "
        f"{', '.join(MODEL_ARGS)} (the device and batch size come from --device and --batch_size){hint}"
    )


GEN_KWARGS = ("until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed")
"""The generation_kwargs generate_until follows (and num_beams: 1); a task's other ones are refused."""


def _unknown_gen_kwargs(names: list[str], given: dict) -> str:
    shown = ", ".join(f"{name} = {given[name]!r}" for name in names)
    return (
        f"generation_kwargs {shown}: the {MODEL_NAME} model decodes greedily or by sampling (one beam) and "
        f"follows only {', '.join(GEN_KWARGS)}; remove {'it' if len(names) == 1 else 'them'} from the task's "
        "generation_kwargs or --gen_kwargs"
    )


@register_model(MODEL_NAME)
class NgptLM(TemplateLM):
    """nGPT / GPT from ngpt_ds behind lm-eval's LM interface (loglikelihood, rolling loglikelihood,
    generate_until). Single process; batches of requests are right-padded."""

    def __init__(
        self,
        path: str | None = None,
        device: str | None = "auto",
        dtype: str = "float32",
        batch_size: int | str = 16,
        max_length: int | str | None = None,
        tokenizer: str | None = None,
        max_batch_size: int | str | None = None,
        loaded: LoadedModel | None = None,
        **unused,
    ):
        super().__init__()
        if unused:  # a misspelled option (max_lenght=64) was dropped without a word: the run used the default
            raise NgptConfigError(_unknown_args(sorted(unused)))
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's --device defaults to cuda:0, and its own hf model (HFLM) runs on the CPU then: a refusal
            # here (as generate and evaluate give) would fail every lm-eval run without --device on a CPU machine.
            warnings.warn(
                f"device {device} requested but no CUDA GPU is available: running on the CPU (pass --device cpu "
                "to ask for it)",
                stacklevel=2,
            )
            device = "cpu"
        if loaded is None:
            if not path:
                raise NgptConfigError("model_args needs path=EXPORT_FOLDER_OR_CHECKPOINT")
            from ngpt_ds.hf.as_loaded import is_hf_export, load_hf_export  # transformers: only for such a folder

            if is_hf_export(path):  # export.py --format hf: read through ngpt_ds's own classes, no folder code run
                loaded = load_hf_export(path, device=device, dtype=dtype, tokenizer=tokenizer)
            else:
                loaded = load(path, device=device, dtype=dtype, tokenizer=tokenizer)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self._batch_size = max(1, _int_arg(batch_size, "batch_size", 16))
        self._max_length = _int_arg(max_length, "max_length", loaded.config.seq_len)
        if self._max_length < 1:  # 0 was a bare AssertionError in lm-eval's rolling windows, and 1 token of context
            raise NgptConfigError(
                f"model_args max_length = {max_length!r}: must be >= 1, the most tokens the model reads at once "
                f"(leave it out for the trained seq_len, {loaded.config.seq_len})"
            )
        if self.tokenizer.eos_id < 0:
            raise NgptConfigError(
                f"tokenizer {self.tokenizer.path} has no EOS piece; lm-eval needs one to condition the first token"
            )

    # ---- what lm-eval asks of a model ---------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return 256

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def tokenizer_name(self) -> str:
        return f"sentencepiece-{self.loaded.tokenizer_sha256[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    # ---- scoring --------------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (sum log p(continuation | context), all greedy).
        Inputs longer than max_length + 1 lose their oldest context tokens; an empty context is EOS."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows, spans = [], []
            for i in chunk:
                context, continuation = pairs[i]
                # No context token (a whitespace-only context: lm-eval moves its spaces to the continuation and
                # encodes nothing): conditioned on EOS, as lm-eval conditions an empty context. It was a RuntimeError
                # from a slice before the batch's first position, and the whole batch with it.
                context = context or [self.prefix_token_id]
                if not continuation:
                    raise NgptConfigError("lm-eval asked for the loglikelihood of an empty continuation")
                if len(continuation) > self.max_length:
                    raise NgptConfigError(
                        f"a continuation of {len(continuation)} tokens does not fit the maximum "
                        f"length {self.max_length}; raise max_length in --model_args"
                    )
                whole = (context + continuation)[-(self.max_length + 1) :]
                rows.append(whole[:-1])
                spans.append((len(whole) - 1 - len(continuation), continuation))
            width = max(len(r) for r in rows)
            inputs = torch.zeros(len(rows), width, dtype=torch.long)
            for r, row in enumerate(rows):
                inputs[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            logits, _ = self.model(inputs.to(self.device))
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(chunk):
                first, continuation = spans[r]
                positions = logprobs[r, first : first + len(continuation)]
                target = torch.tensor(continuation, dtype=torch.long, device=positions.device)
                score = positions.gather(-1, target[:, None]).sum().item()
                greedy = bool((positions.argmax(dim=-1) == target).all())
                out[i] = (score, greedy)
        return out  # type: ignore[return-value]

    def _loglikelihood_tokens(
        self,
        requests: Sequence[tuple[tuple[str, str], Sequence[int], Sequence[int]]],
        disable_tqdm: bool = False,
        **kwargs,
    ) -> list[tuple[float, bool]]:
        results = self._score([(list(ctx), list(cont)) for _, ctx, cont in requests])
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each text, in disjoint windows of max_length tokens (each window's
        first token conditioned on EOS or on the text before it)."""
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(score for score, _ in self._score([(list(a), list(b)) for a, b in windows]))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample/temperature) continuation, cut at the first stop string."""
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            if "max_new_tokens" in kwargs:  # transformers' name, which some tasks use: it wins in lm-eval's hf model
                max_gen = int(kwargs.pop("max_new_tokens"))
            # Greedy unless the task asks for sampling (do_sample: true), as with Hugging Face models.
            temperature = float(kwargs.pop("temperature", 1.0))
            do_sample = bool(kwargs.pop("do_sample", False)) and temperature > 0
            sampling = Sampling(
                temperature=temperature if do_sample else 0.0,
                top_k=kwargs.pop("top_k", None),
                top_p=kwargs.pop("top_p", None),
            )
            seed = kwargs.pop("seed", 1234)
            if kwargs.get("num_beams", 1) == 1:
                kwargs.pop("num_beams", None)
            if kwargs:  # num_beams: 10 decoded greedily and a misspelled option was ignored, without a word
                raise NgptConfigError(_unknown_gen_kwargs(sorted(kwargs), kwargs))
            context_ids = self.tok_encode(context)[-max(1, self.max_length - max_gen) :] or [self.eot_token_id]
            new_ids: list[int] = []
            text = ""
            for token in generate_ids(
                self.model, context_ids, max_gen, sampling, seed=seed, stop_ids=[self.eot_token_id]
            ):
                token_id = int(token[0])
                if token_id == self.eot_token_id:
                    break
                new_ids.append(token_id)
                text = self._continuation_text(context_ids, new_ids)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0] if stop else text
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results

    def _continuation_text(self, context_ids: list[int], new_ids: list[int]) -> str:
        """Text of new_ids as it reads after the context (leading spaces kept)."""
        tail = context_ids[-8:]
        before = self.tok_decode(tail)
        after = self.tok_decode(tail + new_ids)
        return after[len(before) :] if after.startswith(before) else self.tok_decode(new_ids)
