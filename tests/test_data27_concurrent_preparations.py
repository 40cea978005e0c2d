"""Two preparations of one folder at once (two shells, a Slurm array given one --shard-index twice, a rerun
while the first still runs) are refused at the second's start, naming the first's process.

Fault: the second tokenized its whole corpus (hours at scale) and only then stopped at publishing ("--out
... appeared while preparing"); where the first was still writing, the second even published first, and the
first, the one started first, was then the one refused at its end.

The first preparation here is a process holding a staging folder of the output (`staging_dir`), as a
preparation does from its start to its publishing, so the overlap is certain; the second is the real
`launch/prepare_data.py`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ngpt_ds.data.staging import OWNER_FILE

from conftest import REPO, run

HOLD = (
    "import sys; from pathlib import Path; from ngpt_ds.data.staging import staging_dir; "
    "s = staging_dir(Path(sys.argv[1])); print(s, flush=True); sys.stdin.read()"
)


def _corpus(path: Path) -> Path:
    rows = (json.dumps({"text": f"document {i} " + "some words to tokenize here " * 20}) for i in range(60))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def writing():
    """Start a process writing `final` (its staging folder locked); yields (its staging folder, pid)."""
    holders = []

    def start(final: Path) -> tuple[Path, int]:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(final)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        holders.append(holder)
        return Path(holder.stdout.readline().strip()), holder.pid

    yield start
    for holder in holders:
        holder.communicate("")  # stdin closed: it ends, its staging folder abandoned


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def prepare(*args) -> subprocess.CompletedProcess:
    return run([sys.executable, REPO / "launch/prepare_data.py", "--workers", "1", "--no-progress", *args], check=False)


def _refusal(option_value: Path, staging: Path, pid: int) -> str:
    return (
        f"error: --out {option_value} is being written by another process now (pid {pid} on {socket.gethostname()}): "
        f"its staging folder {staging.name} is locked. Wait for it to finish (then pass --overwrite to replace what "
        "it wrote), or stop it and run this again; two at once would each do the whole work and the second be "
        "refused at the end"
    )


def test_a_second_preparation_of_a_folder_being_written_is_refused_at_its_start(tmp_path, writing):
    """Fault: the second ran to its end (here: published its dataset, rc 0, while the first still wrote)."""
    corpus, out = _corpus(tmp_path / "corpus.jsonl"), tmp_path / "ds"
    theirs, pid = writing(out)
    proc = prepare("--input", corpus, "--vocab-size", "300", "--out", out)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said[-3000:]
    assert (theirs / OWNER_FILE).read_text() == f"pid {pid} on {socket.gethostname()}"
    assert said.strip().splitlines()[-1] == _refusal(out, theirs, pid)
    assert "Traceback" not in said and "reading" not in said  # refused before the corpus was opened
    assert not out.exists() and _hidden(tmp_path) == [theirs.name]  # the first's folder only, untouched


def test_the_same_part_prepared_twice_at_once_is_refused_at_the_second_start(tmp_path, writing, tiny_dataset):
    """Fault: a Slurm array given one --shard-index twice tokenized the part twice, the second refused at its end."""
    corpus, out = _corpus(tmp_path / "corpus.jsonl"), tmp_path / "web"
    part = out / "part-00001-of-00002"
    theirs, pid = writing(part)
    args = ("--input", corpus, "--tokenizer", tiny_dataset / "tokenizer.model", "--num-shards", "2")
    proc = prepare(*args, "--shard-index", "1", "--out", out)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert said.strip().splitlines()[-1] == _refusal(part, theirs, pid)
    assert sorted(p.name for p in out.iterdir()) == [theirs.name]
    # Another part of the same folder is no conflict: part 0 goes on beside the part being written.
    done = prepare(*args, "--shard-index", "0", "--out", out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [theirs.name, "part-00000-of-00002"]


def test_a_merge_into_a_folder_another_merge_is_writing_is_refused(tmp_path, writing):
    out = tmp_path / "web"
    out.mkdir()
    theirs, pid = writing(out)
    proc = prepare("--merge", "--num-shards", "2", "--out", out)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert said.strip().splitlines()[-1] == _refusal(out, theirs, pid)


def test_once_the_first_is_gone_the_same_command_prepares_the_folder(tmp_path, writing):
    """Not a fault of the old code: the refusal lasts only while the other process lives (its lock); a killed
    one's folder is abandoned, removed by the next preparation, which then goes through."""
    corpus, out = _corpus(tmp_path / "corpus.jsonl"), tmp_path / "ds"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    theirs = Path(holder.stdout.readline().strip())
    holder.kill()
    holder.wait()
    assert theirs.is_dir()
    proc = prepare("--input", corpus, "--vocab-size", "300", "--out", out, "--log-level", "WARNING")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert f"removed {theirs}: left by an interrupted preparation of {out}" in proc.stderr + proc.stdout
    assert _hidden(tmp_path) == [] and json.loads((out / "meta.json").read_text())["splits"]["train"]["documents"] > 0
