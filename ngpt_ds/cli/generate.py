"""`ngpt-generate` (launch/generate.py): sample text from a trained nGPT (or GPT): an exported folder or a trainer checkpoint.

    ngpt-generate runs/ngpt_tiny --prompt "In the beginning"

Runs on CPU or GPU without starting DeepSpeed. Tokens stream to stdout as they are made;
messages go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ngpt_ds.cli import Parser, add_logging_arguments, add_model_loading_arguments, keep_freed_memory_on_cpu, run
from ngpt_ds.errors import NgptConfigError

EPILOG = """\
MODEL is an exported folder (launch/export.py), a checkpoint directory (.../checkpoints/step_N)
or a training run's --out directory (its newest complete checkpoint).

examples:
  ngpt-generate runs/ngpt_tiny --prompt "And God said"
  ngpt-generate exports/ngpt_tiny --prompt-file prompt.txt --max-new-tokens 500 --top-p 0.9 --seed 1
  ngpt-generate exports/ngpt_tiny --prompt "..." --greedy --device cuda --dtype bfloat16
(from a checkout, `python launch/generate.py` is ngpt-generate)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        description="Generate text with a trained nGPT or GPT (KV-cached sampling).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="exported folder, checkpoint directory or training run directory"
    )
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text to continue")
    prompt.add_argument("--prompt-file", metavar="FILE", help="read the prompt from this UTF-8 file ('-': stdin)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=200, metavar="N", help="tokens to generate at most (default: 200)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"softmax temperature; 0 means greedy (default: {DEFAULT_TEMPERATURE})",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sample only from the K most likely tokens (default: off)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="nucleus sampling: the smallest set of tokens with probability >= P (default: off)",
    )
    parser.add_argument(
        "--greedy", action="store_true", help="always take the most likely token (same as --temperature 0)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed: the same seed, model, prompt and options give the same text on the same "
        "device (default: random)",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=None,
        metavar="N",
        help="longest prompt accepted, in tokens (default: the model's training seq_len); raise it "
        "to try the model beyond its training length. Generation itself may run past seq_len "
        "(with a warning)",
    )
    add_model_loading_arguments(parser)
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence for every token instead of using the KV cache (slow; for checking)",
    )
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating after an end-of-text token")
    parser.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    contradiction = _contradiction(args)
    if contradiction:
        parser.error(contradiction)
    if args.temperature is None:
        args.temperature = DEFAULT_TEMPERATURE
    return args


DEFAULT_TEMPERATURE = 0.8


def _contradiction(args: argparse.Namespace) -> str | None:
    """Sampling options that contradict each other. Greedy decoding took the most likely token without a word
    where --temperature 0.7 or --top-p 0.9 asked to sample as well (--greedy won; --top-k and --top-p change
    no argmax), so a user comparing settings got the same text for each."""
    if args.greedy and args.temperature not in (None, 0):
        return f"--greedy and --temperature {args.temperature:g} both given: --greedy is --temperature 0; give one"
    greedy = "--greedy" if args.greedy else "--temperature 0" if args.temperature == 0 else None
    samplers = [
        f"{name} {value:g}"
        for name, value, off in (("--top-k", args.top_k, 0), ("--top-p", args.top_p, 1))
        if value is not None and value != off
    ]
    if greedy and samplers:
        return (
            f"{' and '.join(samplers)} with {greedy}: greedy decoding always takes the most likely token, so "
            f"{'they' if len(samplers) > 1 else 'it'} would change nothing; drop {greedy} to sample (a temperature "
            f"above 0), or drop {' and '.join(s.split()[0] for s in samplers)}"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ngpt_ds.limits import GENERATE, limit_named

    # A thread that a low `ulimit -v` or a large `ulimit -s` leaves no room for: one line, not a traceback
    return run(limit_named(GENERATE)(lambda: _generate(args)), args)


EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, as a shell reports a command that wrote into a closed pipe (`yes | head -1`)."""


def _stdout_closed() -> int:
    """The reader of stdout is gone (`ngpt-generate ... | head -1`): stop quietly, as `yes | head -1` does,
    where a BrokenPipeError traceback ended the command with status 1. stdout is pointed at
    /dev/null so that Python's flush at exit does not raise it again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (main() called with it replaced)
        pass
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _generate(args: argparse.Namespace) -> int:
    warnings.formatwarning = lambda message, *_, **__: f"\nwarning: {message}\n"
    from ngpt_ds.infer import Sampling, generate, load
    from ngpt_ds.infer.generate import check_max_context, check_prompt_length, check_seed

    if args.prompt is not None:
        # argv holds undecodable bytes as lone surrogates (PEP 383): the original bytes, checked below.
        raw, source = os.fsencode(args.prompt), "--prompt"
    else:
        raw, source = _read_prompt_file(args.prompt_file)
    prompt = _utf8(raw, source)
    if args.prompt is None:  # as a file read in text mode did: universal newlines
        prompt = prompt.replace("\r\n", "\n").replace("\r", "\n")
    if not prompt:  # refused after the model had loaded (minutes for a large checkpoint): `--prompt "$UNSET"`
        raise NgptConfigError(f"{source} is empty: give the text to continue (at least one token of it)")
    sampling = Sampling(
        temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k, top_p=args.top_p
    ).validate()
    if args.max_new_tokens < 0:  # before the prompt is echoed (generate checks it only after)
        raise NgptConfigError(f"--max-new-tokens {args.max_new_tokens}: must be >= 0")
    check_seed(args.seed, "--seed")  # before loading: torch refused 2^64 only when sampling began
    check_max_context(args.max_context, "--max-context")
    keep_freed_memory_on_cpu(args.device)
    loaded = load(args.model, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    print(f"loaded {loaded.describe()} on {loaded.device}", file=sys.stderr)
    seq_len = loaded.config.seq_len
    max_context = seq_len if args.max_context is None else args.max_context
    check_prompt_length(len(loaded.tokenizer.encode(prompt)), max_context, seq_len)
    try:
        if not args.no_echo:
            print(prompt, end="", flush=True)
        result = generate(
            loaded.model,
            loaded.tokenizer,
            prompt,
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            seed=args.seed,
            max_context=args.max_context,
            use_cache=not args.no_cache,
            stop_at_eos=not args.ignore_eos,
            on_text=lambda piece: print(piece, end="", flush=True),
        )
        print(flush=True)
    except BrokenPipeError:
        return _stdout_closed()
    print(
        f"[{len(result.new_ids)} tokens{', stopped at end of text' if result.stopped_at_eos else ''}]", file=sys.stderr
    )
    return 0


MAX_PROMPT_BYTES = 16 << 20
"""The largest prompt read from a file or stdin: millions of tokens, far past any model's context (a longer prompt
is refused with its token count once the model has loaded). /dev/zero, a named pipe kept open or a 10 GiB file
was read until memory ran out, or forever."""


def _read_prompt_file(name: str) -> tuple[bytes, str]:
    """--prompt-file's bytes, and how to name it: a regular file (or a link to one) or stdin ('-'), at most
    MAX_PROMPT_BYTES; anything else is refused unread (a named pipe or a device is never opened)."""
    from ngpt_ds.train.manifest import RefusedFile, read_capped

    source = "--prompt-file - (stdin)" if name == "-" else f"--prompt-file {name}"
    fix = f"a prompt is a regular file (or '-' for stdin) of at most {MAX_PROMPT_BYTES >> 20} MiB of text"
    try:
        raw = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1) if name == "-" else read_capped(Path(name), MAX_PROMPT_BYTES)
    except RefusedFile as err:
        raise NgptConfigError(f"{source} {err.what}: {fix}") from None
    except OSError as err:
        raise NgptConfigError(f"{source}: {err.strerror}") from None
    if len(raw) > MAX_PROMPT_BYTES:  # stdin, read no further than this
        raise NgptConfigError(f"{source} holds more than {MAX_PROMPT_BYTES} bytes: {fix}")
    return raw, source


def _utf8(raw: bytes, source: str) -> str:
    """The prompt's bytes as text; the tokenizer takes only valid UTF-8 (other bytes crashed it)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NgptConfigError(
            f"{source}: not UTF-8 text (byte {err.start} is 0x{raw[err.start]:02x}); convert it first, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from None


if __name__ == "__main__":  # python -m ngpt_ds.cli.generate
    import sys

    sys.exit(main())
