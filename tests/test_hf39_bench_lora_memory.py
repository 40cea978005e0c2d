"""bench/lora_memory.py (sphere LoRA against plain LoRA, memory and step time) runs end to end at a tiny shape: its
three modes in one process, the table and the JSON, docs/benchmarks.md untouched without --docs."""

from __future__ import annotations

import json
import sys

import pytest
from launching import REPO, run

pytest.importorskip("peft", reason="PEFT is not installed: pip install peft (launch/setup.sh --test installs it)")


def test_lora_memory_bench_runs_its_three_modes(tmp_path):
    docs = (REPO / "docs/benchmarks.md").read_bytes()
    shape = ["--layers", "1", "--embd", "32", "--heads", "2", "--seq-len", "8", "--batch", "1", "--vocab", "64"]
    proc = run(
        [sys.executable, REPO / "bench/lora_memory.py", *shape, "--rank", "2", "--rounds", "1", "--json", "out.json"],
        cwd=tmp_path,
    )
    result = json.loads((tmp_path / "out.json").read_text())
    assert list(result["rows"]) == ["gpt plain", "ngpt low-rank", "ngpt whole"]
    assert all(row["step_s"] > 0 for row in result["rows"].values())
    assert result["setting"].startswith("1 layers, d 32, 2 heads, context 8, batch 1, vocab 64, LoRA r 2 on qkv")
    lines = proc.stdout.splitlines()
    assert lines[2] == "| mode | held MiB | peak MiB | step s | peak / gpt plain | step / gpt plain |"
    assert [line.split(" | ")[0] for line in lines[4:7]] == ["| gpt plain", "| ngpt low-rank", "| ngpt whole"]
    assert lines[-1].startswith("whole / low-rank: held ")
    assert (REPO / "docs/benchmarks.md").read_bytes() == docs
