"""Write a benchmark's results into its section of docs/benchmarks.md (between marker comments)."""

from __future__ import annotations

import datetime
import os
import platform
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
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text, encoding="utf-8")
