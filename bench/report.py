"""Write a benchmark's results into its section of docs/benchmarks.md (between marker comments)."""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"


def machine() -> str:
    """One line naming the machine and software the numbers were measured with."""
    import deepspeed
    import torch

    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}"
    else:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "CPU",
        )
        device = f"{cpu}, {os.cpu_count()} cores, no GPU"
    return (
        f"{device}; torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
        f"Python {platform.python_version()}; measured {datetime.date.today().isoformat()}"
    )


def command_line() -> str:
    """The command that ran, with the script path relative to the repository."""
    import sys

    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script.name
    return " ".join(["python", str(shown), *sys.argv[1:]])


def update_section(name: str, body: str) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` (appended if absent).

    Markers that are not one pair, start before end, leave the file as it is (SystemExit naming them):
    the text between a stray pair would be duplicated or deleted. The file is written to a temporary file
    of its own beside it and renamed over the old one, so a full disk or a kill mid-write leaves the old
    file whole. The read, edit and rename hold an exclusive flock on the folder: two scripts writing their
    sections at once (two benchmarks run side by side) shared one temporary name (one renamed the other's
    file away: FileNotFoundError), and the later rename dropped the section the earlier one had written."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    folder = os.open(DOC.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
        block = f"{start}\n{body.strip()}\n{end}"
        counts = (text.count(start), text.count(end))
        if counts == (1, 1) and text.index(start) < text.index(end):
            text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
        elif counts == (0, 0):
            text = text.rstrip() + "\n\n" + block + "\n"
        else:
            raise SystemExit(
                f"error: {DOC} has {counts[0]} '{start}' and {counts[1]} '{end}' markers"
                f"{' (end before start)' if counts == (1, 1) else ''}; expected one of each, start first. "
                f"Fix them by hand; nothing was written. The section:\n{block}"
            )
        fd, tmp = tempfile.mkstemp(dir=DOC.parent, prefix=f".{DOC.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, DOC.stat().st_mode & 0o7777 if DOC.exists() else 0o666 & ~umask)  # mkstemp's is 0600
            os.replace(tmp, DOC)
        finally:
            Path(tmp).unlink(missing_ok=True)
    finally:
        os.close(folder)  # drops the flock


def count(minimum: int):
    """argparse type: an integer >= minimum. Rounds, steps and warm-ups of 0 or fewer otherwise passed,
    and the script failed in its summary (a median of nothing), after all its runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


def json_file(text: str) -> Path:
    """argparse type for --json: a file in an existing folder. A missing folder failed the write after the
    whole benchmark, with a traceback, and --docs (written after --json) was not written either."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {path.parent} does not exist (create it first)")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it")
    return path


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads and --clock, for scripts that time training steps."""
    parser.add_argument("--threads", type=count(1), help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (needs --threads 1; other processes do not stretch it)",
    )


def apply_timing_arguments(args: argparse.Namespace) -> bool:
    """Set the thread count of --threads; False, after an error line, when --clock cpu lacks --threads 1."""
    if args.clock == "cpu" and args.threads != 1:
        print("error: --clock cpu needs --threads 1 (CPU time sums all threads)", file=sys.stderr)
        return False
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # init_process_group keeps a set OMP_NUM_THREADS
    return True


def module_main(doc: str | None) -> int:
    """What `python bench/<module>.py [--help]` does for the modules the benchmark scripts import (report,
    engines, children): says so and names them. They have no command line; they used to exit 0 in silence."""
    text = f"{(doc or '').strip()}\n\nThis file is a module the benchmark scripts import, not a command: run those (bench/*.py --help)."
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        print(text)
        return 0
    print(f"{text}\nerror: no options here (got: {' '.join(sys.argv[1:])})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(module_main(__doc__))
