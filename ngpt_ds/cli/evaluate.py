"""`ngpt-evaluate` (launch/evaluate.py): validation loss and perplexity of a trained model, at its
training context and beyond.

Prints a table with one row per context length (1x, 2x, 4x the training seq_len by default):
the paper's length-extrapolation test. At 1x with the default windows, the loss is the
trainer's eval loss on the same windows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ngpt_ds.cli import Parser, add_logging_arguments, add_model_loading_arguments, keep_freed_memory_on_cpu, run

EPILOG = """\
MODEL is an exported folder, a checkpoint directory or a training run directory.

examples:
  ngpt-evaluate runs/ngpt_tiny
  ngpt-evaluate exports/ngpt_tiny --data DATASET_DIR --multiples 1,2,4,8 --windows 256
  ngpt-evaluate exports/ngpt_tiny --data DATASET_DIR --contexts 256,1024 --json results.json
(from a checkout, `python launch/evaluate.py` is ngpt-evaluate)
"""


MAX_TOKENS = 2**63
"""A context length is a count of tokens, an int64 in the evaluation's indexing."""


def _numbers(kind: Callable[[str], Any], least: float) -> Callable[[str], list[Any]]:
    """A parser of comma-separated numbers, each finite and at least `least` (> 0 where least is 0)."""

    def parse(text: str) -> list[Any]:
        try:
            numbers = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not numbers:  # an empty list printed an empty table and exited 0
            raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
        # Before the model is loaded: inf and 1e308 (times seq_len) were an OverflowError traceback, nan a
        # ValueError one, after loading it. A context is a number of tokens, below 2^63 whatever seq_len is.
        bad = [x for x in numbers if not (math.isfinite(x) and x >= least and x > 0 and x < MAX_TOKENS)]
        if bad:
            need = f">= {least}" if least > 0 else "> 0"
            raise argparse.ArgumentTypeError(
                f"{bad[0]} in {text!r}: each must be a finite number {need} and below 2^63 (a context is a number "
                "of tokens)"
            )
        return numbers

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        description="Validation loss / perplexity at several context lengths.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="exported folder, checkpoint directory or training run directory"
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a dataset prepared by launch/prepare_data.py with the model's tokenizer (default: the "
        "training run's data_dir, as recorded with the model)",
    )
    parser.add_argument("--split", default="validation", help="dataset split to evaluate (default: validation)")
    lengths = parser.add_mutually_exclusive_group()
    lengths.add_argument(
        "--multiples",
        type=_numbers(float, 0),
        metavar="M1,M2,...",
        help="context lengths as multiples of the training seq_len (default: 1,2,4)",
    )
    lengths.add_argument(
        "--contexts",
        type=_numbers(int, 1),
        metavar="T1,T2,...",
        help="context lengths in tokens, instead of --multiples",
    )
    parser.add_argument(
        "--windows",
        type=int,
        metavar="N",
        help="windows per context length, spread evenly over the split (default: as many as the "
        "trainer's evaluation used, when recorded with the model; else 64). Fewer when the "
        "split has fewer",
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default: 8)")
    add_model_loading_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the results to this JSON file")
    add_logging_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ngpt_ds.limits import EVALUATE, limit_named

    # A thread that a low `ulimit -v` or a large `ulimit -s` leaves no room for: one line, not a traceback
    return run(limit_named(EVALUATE)(lambda: _evaluate(args)), args)


def _evaluate(args: argparse.Namespace) -> int:
    from ngpt_ds.data.staging import missing_hint
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import evaluate, format_table, load
    from ngpt_ds.infer.evaluate import check_recorded_dataset

    if args.json:  # before the evaluation, which may take long: a wrong folder would lose its results
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or os.path.isdir(args.json):
            raise NgptConfigError(
                f"--json {args.json}: {'is a folder' if os.path.isdir(args.json) else 'no folder ' + folder}"
            )
    # Before the model is loaded (minutes for a large checkpoint): these were refused only after it.
    if args.windows is not None and args.windows < 1:
        raise NgptConfigError(f"--windows {args.windows}: must be >= 1 (windows per context length)")
    if args.batch_size < 1:
        raise NgptConfigError(f"--batch-size {args.batch_size}: must be >= 1 (windows per forward pass)")
    if args.data:
        _check_dataset(args.data, args.split)
    _check_memory(args)
    keep_freed_memory_on_cpu(args.device)
    loaded = load(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    data = args.data or loaded.info.get("data_dir")
    if not data:
        raise NgptConfigError(f"{args.model} records no dataset; pass --data DIR")
    if not args.data and not os.path.lexists(data) and not missing_hint(Path(data)):
        # The training run's data_dir, as given to the trainer: from another folder or machine it is not there,
        # and the dataset's own message ('prepare it with launch/prepare_data.py') sent the user to tokenize anew.
        # (A copy a killed --overwrite set aside there is named by the dataset's loader, with its fix.)
        relative = "" if os.path.isabs(data) else ", a path relative to the folder training ran in"
        raise NgptConfigError(
            f"{args.model} records its training data as {data} (the run's data_dir{relative}), which is not a "
            "folder here; pass --data DIR, a dataset prepared with the model's tokenizer"
        )
    if not args.data:
        check_recorded_dataset(loaded, data)
    print(f"evaluating {loaded.describe()} on {data} ({args.split})", file=sys.stderr)
    results = evaluate(
        loaded,
        data,
        multiples=args.multiples,
        contexts=args.contexts,
        windows=args.windows,
        batch_size=args.batch_size,
        split=args.split,
        check_memory=False,  # _check_memory did, before the model loaded, naming this command's options
    )
    print(format_table(results))
    if args.json:
        record = {
            "model": str(loaded.source),
            "data": str(data),
            "split": args.split,
            "results": [r.to_dict() for r in results],
        }
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(json.dumps(record, indent=2) + "\n")
        except OSError as err:
            raise NgptConfigError(f"--json {args.json}: {err.strerror} (the table above holds the results)") from None
    return 0


def _check_memory(args: argparse.Namespace) -> None:
    """The longest context's forward fits in the memory available, estimated from the model's config alone: a huge
    --contexts ran out of memory (or was ended by the OOM killer without a word) after the model and data loaded."""
    from ngpt_ds.infer.eval_memory import check_forward_memory, read_model_config
    from ngpt_ds.infer.loading import resolve_device, resolve_dtype

    config = read_model_config(args.model)
    if config is None:  # loading it names what is wrong
        return
    if args.contexts is not None:
        contexts = args.contexts
    else:
        contexts = [max(1, round(m * config.seq_len)) for m in (args.multiples or [1, 2, 4])]
    batch = min(args.batch_size, args.windows or args.batch_size)
    split_tokens = _split_tokens(args.data, args.split) if args.data else None
    dtype, device = resolve_dtype(args.dtype), resolve_device(args.device)
    for context in sorted(set(contexts), reverse=True):
        # evaluate runs no more windows than the split holds: at a long context, often fewer than --batch-size (the
        # estimate had assumed --batch-size windows and refused forwards that fit). No window at all: evaluate says so.
        windows = batch if split_tokens is None else min(batch, split_tokens // (context + 1))
        if windows >= 1:
            check_forward_memory(config, [context], windows, dtype, device)


def _split_tokens(data: str, split: str) -> int:
    """The split's token count (meta.json only): an upper bound on the windows of a context, (context + 1) each."""
    from ngpt_ds.data.shards import load_dataset_meta

    return load_dataset_meta(data, verify_contents=False).splits[split].tokens


def _check_dataset(data: str, split: str) -> None:
    """--data is a prepared dataset with the split --split names (its meta.json only: no shard is read)."""
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.data.windows import WindowIndex

    meta = load_dataset_meta(data, verify_contents=False)
    if split not in meta.splits:
        WindowIndex(meta, split, 1)  # refuses it, naming the splits there and the fix


if __name__ == "__main__":  # python -m ngpt_ds.cli.evaluate
    import sys

    sys.exit(main())
