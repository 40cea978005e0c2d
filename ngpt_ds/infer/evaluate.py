"""Validation loss and perplexity of a trained model, at its training context and beyond.

Windows come from `ngpt_ds.data.loader.validation_batches`, the same function the trainer's
evaluation uses: `n` windows of L+1 tokens spread evenly over the split. With n equal to the
trainer's eval_batches x micro-batch x data-parallel ranks and L = seq_len, the loss is the
trainer's eval loss on the same windows. At L = 2x, 4x seq_len the same text is cut into
longer windows: the paper's length-extrapolation claim (nGPT's loss should stay flat where
GPT's rises).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ngpt_ds.data.loader import validation_batches
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.data.windows import WindowIndex
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.eval_memory import check_forward_memory
from ngpt_ds.infer.loading import LoadedModel


@dataclass
class ContextResult:
    context: int
    """Tokens per window (inputs)."""
    multiple: float
    """context / trained seq_len."""
    windows: int
    tokens: int
    """Predicted tokens (windows x context)."""
    loss: float
    perplexity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainer_eval_windows(info: dict[str, Any], available: int) -> int | None:
    """How many windows the trainer's evaluation used (None when the provenance does not say):
    eval_batches x micro-batch x data-parallel ranks, as validation_batches caps it."""
    ev = info.get("eval") or {}
    try:
        batches, micro, dp = int(ev["batches"]), int(ev["micro_batch"]), int(ev["data_parallel"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if min(batches, micro, dp) < 1:  # not what a trainer records (an altered export's config.json)
        return None
    per_batch = micro * dp
    return min(batches, available // per_batch) * per_batch


def recorded_train_data(loaded: LoadedModel) -> tuple[str, str] | None:
    """(train_data_sha256, where it is recorded) of the run that trained `loaded`: a trainer checkpoint's
    config.yaml, or an export's config.json (its provenance). None where it is not recorded (an export or a
    checkpoint from a version that did not record it)."""
    digest = loaded.info.get("train_data_sha256")
    checkpoint = loaded.info.get("checkpoint")
    where = Path(checkpoint) / "config.yaml" if loaded.kind == "checkpoint" and isinstance(checkpoint, str) else None
    if isinstance(digest, str) and digest:
        return digest, f"train_data_sha256 in {where or loaded.source}"
    return None


def check_recorded_dataset(loaded: LoadedModel, data_dir: str | Path) -> None:
    """Use the dataset the model records (its run's data_dir, read without --data) only where it is the data the
    run trained on: the train split's fingerprint (shard files, token counts and block hashes, in meta.json: no
    shard is read) must match the model's record of it; a copy of the run's dataset elsewhere keeps it. data_dir
    is the path given to the trainer, often relative to the folder it ran in, and an export from someone else
    names a path of their machine: here it names whatever dataset stands there under that name, and one
    prepared with the same tokenizer (launch/prepare_data.py --tokenizer) passed the tokenizer check, so the
    table was another dataset's, exit 0. Where either side has no fingerprint (a model from a version that did
    not record it, an altered config, a dataset without block hashes) nothing shows the dataset is the run's:
    that was read without a word too, and is now refused the same way, asking for --data."""
    from ngpt_ds.train.preflight import train_data_fingerprint

    # The dataset's loader first: its messages name a folder that is not one, and a copy a killed --overwrite set
    # aside (with the `mv` that puts it back). meta.json only: no shard is read.
    meta = load_dataset_meta(data_dir, verify_contents=False)
    recorded = recorded_train_data(loaded)
    relative = "" if Path(data_dir).is_absolute() else ", a path relative to the folder training ran in"
    said = f"{loaded.source} records its training data as {data_dir} (the run's data_dir{relative})"
    fix = "Pass --data DIR, the run's dataset (a copy elsewhere is fine), or another dataset on purpose"
    if recorded is None:
        raise NgptConfigError(
            f"{said} but not its fingerprint (train_data_sha256), so nothing shows that the dataset {data_dir} "
            f"here is the one it was trained on. {fix}"
        )
    now = train_data_fingerprint(meta)
    if now == recorded[0]:
        return
    differ = "records no block hashes" if now is None else "holds other training data than the model was trained on"
    raise NgptConfigError(
        f"{said}, and the dataset {data_dir} here {differ} (its train split's shards, token counts or block "
        f"hashes differ from {recorded[1]}): its validation split is not the run's. {fix}"
    )


@torch.no_grad()
def window_loss(
    loaded: LoadedModel, data_dir: str | Path, context: int, windows: int, batch_size: int, split: str = "validation"
) -> ContextResult:
    """Mean next-token cross-entropy over `windows` evenly spread windows of `context` tokens."""
    model, device = loaded.model, loaded.device
    batches = validation_batches(data_dir, context, 1, 0, 1, max_batches=windows, split=split)
    total, count, n = 0.0, 0, 0
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def run(group: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
        inputs = torch.cat([g[0] for g in group]).to(device)
        targets = torch.cat([g[1] for g in group]).to(device)
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        return float(loss.double()), targets.numel()

    for batch in batches:
        pending.append(batch)
        n += 1
        if len(pending) == batch_size:
            s, c = run(pending)
            total, count, pending = total + s, count + c, []
    if pending:
        s, c = run(pending)
        total, count = total + s, count + c
    loss = total / count
    return ContextResult(
        context=context,
        multiple=context / loaded.config.seq_len,
        windows=n,
        tokens=count,
        loss=loss,
        perplexity=math.exp(min(loss, 700)),
    )


def evaluate(
    loaded: LoadedModel,
    data_dir: str | Path,
    *,
    multiples: list[float] | None = None,
    contexts: list[int] | None = None,
    windows: int | None = None,
    batch_size: int = 8,
    split: str = "validation",
    check_memory: bool = True,
) -> list[ContextResult]:
    """Loss and perplexity at each context length (explicit `contexts`, or `multiples` of seq_len,
    default 1x 2x 4x). `windows` per length (default: the trainer's eval windows when the model's
    provenance records them, else 64), fewer where the split has fewer.

    Before any forward, each context's is checked against the memory available (ngpt_ds.infer.eval_memory: the
    logits of batch x context x vocab and their log-softmax); `check_memory=False` leaves it to a caller that
    checked before loading the model (evaluate.py)."""
    meta = load_dataset_meta(data_dir)
    if meta.vocab_size != loaded.config.vocab_size or meta.tokenizer_sha256 != loaded.tokenizer_sha256:
        raise NgptConfigError(
            f"dataset {data_dir} was tokenized with {meta.tokenizer_file} (vocab {meta.vocab_size}, sha256 "
            f"{meta.tokenizer_sha256[:12]}…), not with this model's tokenizer (vocab {loaded.config.vocab_size}, "
            f"sha256 {loaded.tokenizer_sha256[:12]}…); prepare the data with --tokenizer set to the model's "
            "tokenizer.model"
        )
    if batch_size < 1:
        raise NgptConfigError(f"batch_size = {batch_size}: must be >= 1")
    if windows is not None and windows < 1:
        raise NgptConfigError(f"windows = {windows}: must be >= 1")
    seq_len = loaded.config.seq_len
    if contexts is None:
        multiples = multiples or [1, 2, 4]
        if not all(math.isfinite(m) and m > 0 for m in multiples):  # nan passed `<= 0`, and inf too
            raise NgptConfigError(f"context multiples {multiples}: must be finite numbers > 0")
        too_long = [m for m in multiples if not m * seq_len < 2**63]
        if too_long:  # 1e308 x seq_len was round(inf): an OverflowError traceback
            raise NgptConfigError(
                f"context multiple {too_long[0]:g} times seq_len {seq_len} is not below 2^63, no number of tokens; "
                "use multiples that the split's length allows (1, 2, 4 by default)"
            )
        contexts = [max(1, round(m * seq_len)) for m in multiples]
    if any(c < 1 for c in contexts):
        raise NgptConfigError(f"context lengths {contexts}: must be >= 1")
    plan = []
    for context in contexts:
        available = WindowIndex(meta, split, context).num_windows
        if available == 0:
            raise NgptConfigError(
                f"dataset {data_dir} split {split!r} has no window of {context + 1} tokens; "
                "use shorter contexts or more validation data"
            )
        wanted = windows
        if wanted is None:
            wanted = trainer_eval_windows(loaded.info, WindowIndex(meta, split, seq_len).num_windows) or 64
        plan.append((context, min(wanted, available)))
    if check_memory:
        # Every context before the first forward: a context of 200000 tokens (26 GB of fp32 logits a window at a
        # 32k vocabulary) ran out of memory, or was ended by the OOM killer without a word, when called from Python;
        # only evaluate.py checked.
        dtype = next(loaded.model.parameters()).dtype
        for context, count in sorted(plan, key=lambda c: -c[0] * min(batch_size, c[1])):
            check_forward_memory(
                loaded.config,
                [context],
                min(batch_size, count),
                dtype,
                loaded.device,
                loaded=True,
                options=("batch_size", "contexts= / multiples="),
            )
    return [window_loss(loaded, data_dir, context, count, batch_size, split) for context, count in plan]


def format_table(results: list[ContextResult]) -> str:
    lines = [f"{'context':>8} {'x train':>8} {'windows':>8} {'tokens':>10} {'loss':>9} {'perplexity':>11}"]
    for r in results:
        lines.append(
            f"{r.context:>8} {r.multiple:>7.2f}x {r.windows:>8} {r.tokens:>10} {r.loss:>9.4f} {r.perplexity:>11.2f}"
        )
    return "\n".join(lines)
