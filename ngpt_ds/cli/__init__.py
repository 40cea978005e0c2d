"""The command lines of ngpt_ds: the only package code that parses argv.

Each entry point is a module here with a `main(argv=None) -> int`; `launch/*.py` are thin scripts
that call them (so `deepspeed launch/train.py` keeps working from a checkout), and setup.py
installs them as console scripts (`ngpt-train`, `ngpt-prepare`, `ngpt-generate`,
`ngpt-evaluate`, `ngpt-export`) for a pip-installed user.

`run` is the startup every entry point shares: DeepSpeed's accelerator defaults to the CPU
when there is no CUDA GPU (else DeepSpeed guesses and warns), logging is set up from the
common options (`add_logging_arguments`, ngpt_ds.log), and bad user input (NgptConfigError)
becomes one `error: ...` line and exit status 2, never a traceback; Ctrl-C one `interrupted` line
and exit status 130. `Parser` does the same for a
usage error (ngpt-train's), naming the closest option to a mistyped one.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line on stderr, exit 2, and a mistyped option answered with the
    closest real one. argparse printed its whole usage block (6 lines for ngpt-train) above a last line
    that named the unknown option and no more: `--deepspeed-config` (dashes, as every other option of
    ngpt-train is spelled) got no hint that DeepSpeed's own option is `--deepspeed_config`."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        repeated = self._repeated(argv)
        if repeated:
            self.error(repeated)
        return parsed

    def _repeated(self, argv: list[str]) -> str | None:
        """An option of one value given twice with different values, or a switch and its --no- form: argparse
        keeps the last without a word, so a script's `--out runs/a "$@"` with `--out runs/b` in "$@" worked
        as asked, and `"$@" --out runs/a` silently resumed and extended runs/a instead. The same value given
        twice is harmless and passes."""
        single = {
            flag: action
            for action in self._actions
            if action.help is not argparse.SUPPRESS
            and (
                isinstance(action, argparse.BooleanOptionalAction)
                or (isinstance(action, argparse._StoreAction) and action.nargs in (None, "?", "+", "*"))
            )
            for flag in action.option_strings
        }
        seen: dict[argparse.Action, tuple[str, object]] = {}
        for index, word in enumerate(argv):
            if word == "--":  # the rest are values
                break
            flag, has_value, inline = word.partition("=")
            action = single.get(flag)
            if action is None:
                continue
            value: object
            if isinstance(action, argparse.BooleanOptionalAction):
                value = not flag.startswith("--no-")
            elif action.nargs in ("+", "*"):  # a list: the second replaced the first (`--input a --input b`: b alone)
                values = [inline] if has_value else list(itertools.takewhile(_not_an_option, argv[index + 1 :]))
                value = " ".join(values)
            elif has_value:
                value = inline
            elif index + 1 < len(argv) and (action.nargs is None or not argv[index + 1].startswith("-")):
                value = argv[index + 1]
            else:
                value = action.const
            if action in seen and _meaning(action, seen[action][1]) != _meaning(action, value):
                first, before = seen[action]
                if isinstance(action, argparse.BooleanOptionalAction):
                    return f"{first} and {flag} both given; give one"
                if action.nargs in ("+", "*"):
                    return f"{flag} given twice ({before}, then {value}); give it once, with every value after it: {flag} {before} {value}"
                return f"{flag} given twice ({before}, then {value}); give it once"
            seen.setdefault(action, (flag, value))
        return None

    def _unrecognized(self, extras: list[str]) -> str:
        flags = [word.split("=", 1)[0] for word in extras if word.startswith("-")]
        if not flags:
            positionals = [str(a.metavar or a.dest) for a in self._actions if not a.option_strings]
            if positionals:  # generate's MODEL; `--prompt And God said` left 'God' and 'said' over
                return (
                    f"unexpected argument {extras[0]!r}: this command takes one {' '.join(positionals)} and options; "
                    "quote a value that holds spaces"
                )
            return f"unexpected argument {extras[0]!r}: this command takes options only (e.g. --config ngpt_tiny)"
        known = [o for a in self._actions if a.help is not argparse.SUPPRESS for o in a.option_strings]
        named = []
        for flag in flags:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            named.append(flag + (f" (did you mean {close[0]}?)" if close else ""))
        return f"unrecognized option{'s' if len(named) > 1 else ''} {', '.join(named)}"

    def error(self, message: str) -> typing.NoReturn:
        sys.stderr.write(f"error: {message}{self._example(message)}; --help lists the options\n")
        sys.exit(EXIT_BAD_INPUT)

    def _example(self, message: str) -> str:
        """For a missing argument, the command's first --help example, as the fix: `python launch/generate.py` alone
        had answered 'the following arguments are required: MODEL', which does not say what MODEL is. Spelled as the
        command was started: a checkout's launch/X.py for the console script ngpt-X of the example."""
        if not message.startswith(("the following arguments are required", "one of the arguments")):
            return ""
        lines = (self.epilog or "").splitlines()
        if "examples:" not in lines or lines.index("examples:") + 1 >= len(lines):
            return ""
        example = lines[lines.index("examples:") + 1].split("  #")[0].strip()
        first, _, rest = example.partition(" ")
        script = Path(sys.argv[0])
        if first.startswith("ngpt-") and script.parent.name == "launch":
            if script.name == {"ngpt-prepare": "prepare_data"}.get(first, first[len("ngpt-") :]) + ".py":
                example = f"python {sys.argv[0]} {rest}".rstrip()
        return f", e.g. {example}"


def _not_an_option(word: str) -> bool:
    """A value of a list option (`--input a.txt b.txt`): the words up to the next option."""
    return not word.startswith("-") or word == "-"


def _meaning(action: argparse.Action, value: object) -> object:
    """`value` as the option reads it (its type: `--log-level info` and `INFO` are one level, `--max-steps 10` and
    `010` one number), so only values that differ in meaning count as a repeated option; the text itself where
    the type refuses it (argparse then reports that)."""
    if isinstance(value, str) and callable(action.type):
        try:
            return action.type(value)
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            return value
    return value


def default_accelerator() -> None:
    """DS_ACCELERATOR=cpu unless a CUDA GPU is present or the user chose one. Call it before
    deepspeed is imported: DeepSpeed picks its accelerator once, at import."""
    if "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def keep_freed_memory_on_cpu(device: str) -> None:
    """A command that runs a model on the CPU keeps the host memory it frees, as CPU training ranks do
    (ngpt_ds/hostmem.py): each batch's logits (4 x 1024 tokens x 32k vocabulary in fp32 = 500 MiB)
    would otherwise be mapped and page-faulted anew. Measured on an evaluation forward at that shape:
    17-19% less CPU time (README "CPU processes")."""
    from ngpt_ds import hostmem, log
    from ngpt_ds.infer.loading import resolve_device

    if resolve_device(device).type == "cpu":
        log.get(__name__).debug("host allocator: %s", hostmem.keep_freed_memory())


def add_model_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --tokenizer: how a command that loads a trained model (ngpt_ds.infer.load) runs it."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU if there is one; default)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="precision of the forward pass (default: float32)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="sentencepiece .model to use when the model's own cannot be found (checked against "
        "the model's vocabulary and recorded hash)",
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-all-ranks (see ngpt_ds.log)."""
    from ngpt_ds import log

    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=log.LEVELS,
        help="messages at this level and above (default: INFO)",
    )
    group.add_argument(
        "--log-all-ranks",
        action="store_true",
        help="every rank logs, each line prefixed with [rank N] (default: rank 0 only; other ranks report errors)",
    )


def print_error(err: BaseException | str) -> None:
    """`error: ...` on stderr in one write. The launchers start ranks with `python -u`, where print's
    text and its newline are two writes to the pipe all ranks share: two ranks' lines then merged
    into one ("...Do not use iterror: ..."), in a log and in a test that counted them."""
    sys.stderr.write(f"error: {err}\n")
    sys.stderr.flush()


def run(
    body: Callable[[], int],
    args: argparse.Namespace | None = None,
    *,
    errors: dict[type[BaseException], int] | None = None,
    accelerator: bool = True,
    info_stream: str = "stderr",
) -> int:
    """Run an entry point's body with the shared startup; returns its exit status.

    args: the parsed options (their --log-level / --log-all-ranks, when the parser has them).
    errors: further exception types to report as `error: ...` with their exit status (checked in
    order, after NgptConfigError -> 2).
    accelerator: set DeepSpeed's accelerator default (entry points that never import torch skip it).
    info_stream: where INFO log lines go: stderr when stdout carries the command's result."""
    if accelerator:
        default_accelerator()
    from ngpt_ds import log
    from ngpt_ds.errors import NgptConfigError

    if args is not None and hasattr(args, "log_level"):
        log.setup(args.log_level, all_ranks=args.log_all_ranks, info_stream=info_stream)
    else:
        log.setup(info_stream=info_stream)
    codes: dict[type[BaseException], int] = {NgptConfigError: EXIT_BAD_INPUT, **(errors or {})}
    try:
        return body()
    except tuple(codes) as err:
        print_error(err)
        return next(code for kind, code in codes.items() if isinstance(err, kind))
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which stops with a checkpoint on its own)
        return interrupted()


EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a command that Ctrl-C ended."""


def interrupted() -> int:
    """Ctrl-C: one line on stderr instead of a traceback (20 frames from generate's streaming, up to 61 lines
    from a trainer's startup); the exit status a shell gives a command that SIGINT ended. What the body had
    written stays (generate's text so far on stdout; a trainer's startup writes only config.yaml and the lock,
    which a `finally` has released by now)."""
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone with the terminal
        pass
    return EXIT_INTERRUPTED
