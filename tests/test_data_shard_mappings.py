"""Every shard a split reads is held open for the whole run: a dataset with more of them than
the process may hold open stops at startup with one line naming the limit, not hours in with a traceback."""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ngpt_ds.data.shards import sha256_file

REPO = Path(__file__).parents[1]
SHARDS, OPEN_FILES = 400, 300

READ = """
import sys
from ngpt_ds.data.loader import TokenWindowLoader
from ngpt_ds.errors import NgptConfigError
try:
    loader = TokenWindowLoader(sys.argv[1], "train", 2, 4, 0, 1, seed=0)
    for _ in range(2000):
        loader.next_batch()
except NgptConfigError as e:
    print("error:", e)
    sys.exit(2)
print("read")
"""


def _many_shards(root: Path, n: int, length: int = 3) -> Path:
    """n shards of `length` tokens (3: one window each at seq_len 2), no block hashes (they are not what is
    tested)."""
    root.mkdir()
    (root / "tokenizer.model").write_bytes(b"not read here")
    tokens = (np.arange(length, dtype="<u2") % 10).tobytes()
    shards = []
    for k in range(n):
        (root / f"train_{k:06d}.bin").write_bytes(tokens)
        shards.append({"file": f"train_{k:06d}.bin", "tokens": length})
    meta = {
        "format": "ngpt_ds-token-shards",
        "format_version": 1,
        "vocab_size": 10,
        "dtype": "uint16",
        "eos_id": 2,
        "tokenizer": {"path": "tokenizer.model", "sha256": sha256_file(root / "tokenizer.model")},
        "splits": {"train": {"documents": n, "tokens": length * n, "shards": shards}},
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def _limit_open_files() -> None:
    """`ulimit -n 300`: the soft limit, which the process may raise itself up to the hard one."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _limit_open_files_hard() -> None:
    """`ulimit -Hn 300`: no process may hold more."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def _read(data: Path, limit) -> subprocess.CompletedProcess:
    """READ over `data` in a child process whose open-files limits `limit` sets."""
    return subprocess.run(
        [sys.executable, "-c", READ, str(data)], capture_output=True, text=True, cwd=REPO, preexec_fn=limit, timeout=300
    )


def test_more_shards_than_the_soft_limit_raise_it_toward_the_hard_limit(tmp_path):
    """Fault: 400 shards under a soft `ulimit -n 300` stopped at startup ('... needs more than 400 of `ulimit -n`'),
    though the hard limit let the process raise its own soft one, as a merged dataset of 10^8 documents (thousands
    of shards) needs under the usual soft limit of 1024."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard > SHARDS + 400, "the test needs a hard limit above its shards"
    data = _many_shards(tmp_path / "ds", SHARDS)
    proc = _read(data, _limit_open_files)
    assert (proc.returncode, proc.stdout.strip()) == (0, "read"), proc.stderr[-2000:] + proc.stdout[-2000:]


def test_more_shards_than_the_hard_limit_stop_at_startup_with_one_line(tmp_path):
    """Mapped on first read, shard ~290 of 400 under `ulimit -n 300` stopped the reader mid-run with
    'OSError: [Errno 24] Too many open files' (a traceback, after as many steps as it took to touch them)."""
    data = _many_shards(tmp_path / "ds", SHARDS)
    proc = _read(data, _limit_open_files_hard)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"error: dataset {data} split 'train': opening shard train_")
    assert line.endswith(
        f"failed (Too many open files) after {int(line.split(' after ')[1].split()[0])} of the {SHARDS} shards that "
        f"hold windows: every shard is held open while the run reads it, so this process needs more than {SHARDS} "
        "of `ulimit -n` (open files); raise that limit, or prepare the dataset with fewer, larger shards "
        "(--shard-tokens)"
    )
    assert 200 < int(line.split(" after ")[1].split()[0]) < OPEN_FILES


def test_as_many_shards_as_the_limit_allows_are_read(tmp_path):
    data = _many_shards(tmp_path / "ds", OPEN_FILES // 2)
    proc = _read(data, _limit_open_files)
    assert (proc.returncode, proc.stdout.strip()) == (0, "read"), proc.stderr[-2000:]


def test_tokens_left_in_shard_tails_are_announced(tmp_path):
    """Fault (data audit): a window never crosses a shard, so shards barely longer than the context left a large
    share of the data unread with no word (--shard-tokens 1500 at context 1024: a third). 10 shards of 5 tokens at
    context 3: one window (4 tokens) each, 10 of 50 tokens unread."""
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.data.windows import WindowIndex

    meta = load_dataset_meta(_many_shards(tmp_path / "ds", 10, length=5), verify_contents=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ngpt_ds.data.windows")
    logger.addHandler(handler)
    try:
        assert WindowIndex(meta, "train", 3).num_windows == 10
        assert WindowIndex(meta, "train", 2).num_windows == 20  # 2 windows of 3 tokens each: all 5 read
    finally:
        logger.removeHandler(handler)
    warned = [r.getMessage() for r in records]
    assert warned == [
        f"warning: dataset {meta.data_dir} split 'train': 20% of its 50 tokens are never read at context 3, since a "
        "window never crosses a shard and its 10 shards hold 5 tokens on average; prepare it again with "
        "--shard-tokens well above 3 (a dataset merged from parts: more documents per block, --shard-block-docs) to "
        "use them"
    ]


def test_unread_shard_tails_are_named_once_per_split_and_context(tmp_path):
    """Fault: the trainer indexes each split twice (its startup check, then the loader), so a training run printed
    each split's 'never read' warning twice (seen: train and validation, 4 lines for 2 warnings). Named once per
    dataset, split and context."""
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.data.windows import WindowIndex

    meta = load_dataset_meta(_many_shards(tmp_path / "ds", 10, length=5), verify_contents=False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ngpt_ds.data.windows")
    logger.addHandler(handler)
    try:
        for _ in range(2):
            assert WindowIndex(meta, "train", 3).num_windows == 10
        assert WindowIndex(meta, "train", 4).num_windows == 10  # 5 tokens: one window of 5, none unread
        assert WindowIndex(meta, "train", 3).num_windows == 10
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage().split(":")[1] for r in records] == [f" dataset {meta.data_dir} split 'train'"]


def test_the_mapping_error_counts_the_shards_mapped_not_the_short_ones_before(tmp_path, monkeypatch):
    """Fault: 'after {i} of the N shards that hold windows' counted every shard before the failing one, the short
    ones that are never mapped included: 2 short shards then 2 that hold windows, the second refused, read
    'after 3 of the 2 shards that hold windows'. It is 'after 1 of the 2' now."""
    import errno

    from ngpt_ds.data import windows
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.data.windows import WindowIndex
    from ngpt_ds.errors import NgptConfigError

    root = _many_shards(tmp_path / "ds", 4, length=3)
    meta = json.loads((root / "meta.json").read_text())
    for short in meta["splits"]["train"]["shards"][:2]:  # 1 token: no window at seq_len 2
        (root / short["file"]).write_bytes(np.zeros(1, dtype="<u2").tobytes())
        short["tokens"] = 1
    meta["splits"]["train"]["tokens"] = 8
    (root / "meta.json").write_text(json.dumps(meta))
    real = windows._open_read_only

    def refused_at_the_last(path):
        if str(path).endswith("train_000003.bin"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real(path)

    monkeypatch.setattr(windows, "_open_read_only", refused_at_the_last)
    with pytest.raises(
        NgptConfigError,
        match=r"opening shard train_000003\.bin failed \(Too many open files\) "
        r"after 1 of the 2 shards that hold windows",
    ):
        WindowIndex(load_dataset_meta(root, verify_contents=False), "train", 2)
