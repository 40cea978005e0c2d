"""Shard contents are hashed (ngpt_ds/data/shard_hashes.py): meta.json records the sha256 of every block of
every shard, opening a dataset checks a sample, `ngpt-prepare --verify` checks every block.

meta.json's token counts caught a shard of the wrong size only: a zero-filled shard of the right size (a
copy truncated and re-extended, holes) or flipped bytes trained silently on garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from ngpt_ds.data import shard_hashes
from ngpt_ds.data.shard_check import add_hashes, verify_shards
from ngpt_ds.data.shards import load_dataset_meta
from ngpt_ds.errors import NgptConfigError

from conftest import REPO, run, tiny_ngpt, tiny_train, without_shard_hashes, write_ds_config, write_yaml

BLOCK = 65536  # small blocks, so that the tiny dataset's train shard (511408 bytes) has 8


def copy_of(tiny_dataset: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    return data


def small_blocks(data: Path) -> Path:
    """Re-record the hashes in BLOCK-byte blocks."""
    add_hashes(without_shard_hashes(data), BLOCK)
    return data


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def dry_run(tmp_path: Path, data: Path):
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(1))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", data, "--out", tmp_path / "o", "--no-progress"]
    return run([sys.executable, REPO / "launch/train.py", *argv, "--dry-run"], check=False, timeout=300)


def test_a_zero_filled_shard_is_refused_by_the_dry_run_naming_it(tiny_dataset, tmp_path):
    """Fault: a train shard zero-filled at its right size (a copy truncated and re-extended, a filesystem
    that returned holes) passed `launch/train.py --dry-run`, and a real run trained on it."""
    data = copy_of(tiny_dataset, tmp_path)
    shard = data / "train_000000.bin"
    size = shard.stat().st_size
    shard.write_bytes(bytes(size))
    proc = dry_run(tmp_path, data)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: dataset {data}: 1 block(s) of its shards differ from the sha256 that meta.json records (sampled "
        "check): the files are damaged (zero-filled, truncated and re-extended, an interrupted copy, or changed)\n"
        f"  - train_000000.bin bytes [0, {size}) (block 0 of 1): sha256 differs from meta.json\n"
        "copy the dataset again from a good copy (`ngpt-prepare --verify DIR` checks every block), or delete "
        f"{data} and prepare it again\n"
    )


def test_one_flipped_byte_in_a_later_block_is_refused_by_the_rank_that_checks_it(tiny_dataset, tmp_path):
    """Fault: one flipped byte in a shard of the right size was never noticed. Here it is in block 5 of 8; of
    two ranks splitting the blocks (0, 2, 4, 6 and 1, 3, 5, 7) the second reports it."""
    data = small_blocks(copy_of(tiny_dataset, tmp_path))
    flip(data / "train_000000.bin", 5 * BLOCK + 123)
    meta = load_dataset_meta(data, verify_contents=False)
    assert meta.hash_block_bytes == BLOCK
    assert len(meta.splits["train"].shards[0].sha256_blocks or ()) == 8
    bad = "train_000000.bin bytes [327680, 393216) (block 5 of 8): sha256 differs from meta.json"
    assert verify_shards(data, meta, 0, 2, "sample") == []
    assert verify_shards(data, meta, 1, 2, "sample") == [bad]
    with pytest.raises(NgptConfigError) as err:  # one process: all blocks of a dataset under 1 GiB
        load_dataset_meta(data)
    assert f"\n  - {bad}\n" in str(err.value)


def test_the_sampled_check_of_a_large_dataset_reads_two_blocks_per_shard_split_between_ranks():
    """Above 1 GiB of shards the startup check reads each shard's last block and one picked by its name,
    not every block (startup stays seconds on hundreds of GB); the ranks share them without overlap."""
    mib = 1 << 20
    shards = [(f"train_{i:06d}.bin", 200 * mib, tuple(f"{i:064x}" for _ in range(50))) for i in range(6)]
    both = [shard_hashes.blocks_to_check(shards, 4 * mib, "sample", r, 2) for r in range(2)]
    chosen = sorted((b.file, b.index) for rank in both for b in rank)
    assert [len(b) for b in both] == [6, 6]
    assert len(set(chosen)) == 12
    picked = int(hashlib.sha256(b"train_000000.bin").hexdigest(), 16) % 49
    assert chosen[:2] == [("train_000000.bin", picked), ("train_000000.bin", 49)]
    assert all(i == 49 for f, i in chosen[1::2])  # every shard's last block
    assert len(shard_hashes.blocks_to_check(shards, 4 * mib, "full", 0, 1)) == 300


def test_a_dataset_without_hashes_still_trains_and_says_it_is_unverified(tiny_dataset, tmp_path):
    """Datasets prepared before the hashes load and train, with one warning naming --add-hashes."""
    data = without_shard_hashes(copy_of(tiny_dataset, tmp_path))
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(1))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", data, "--out", tmp_path / "o", "--no-progress"]
    proc = run([sys.executable, REPO / "launch/train.py", *argv], timeout=300)
    line = (
        f"dataset {data}: its meta.json records no shard hashes (prepared by an older ngpt_ds), so damaged shard "
        f"contents go unnoticed; add them with `ngpt-prepare --add-hashes {data}` (on a copy you trust), or "
        "prepare it again"
    )
    assert (proc.stdout + proc.stderr).count(line) == 1, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["step"] == 1


def _edit(data: Path, edit) -> None:
    raw = json.loads((data / "meta.json").read_text())
    edit(raw)
    (data / "meta.json").write_text(json.dumps(raw))


def _train_shard(raw):
    return raw["splits"]["train"]["shards"][0]


FIX = "meta.json is damaged or was edited: copy the dataset again, or delete {data} and prepare it again"


@pytest.mark.parametrize(
    "edit, problem",
    [
        (
            lambda raw: _train_shard(raw)["sha256_blocks"].__setitem__(0, "Z" * 64),
            "meta.json splits.train shard 'train_000000.bin' sha256_blocks[0] = 'ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"
            "ZZZZZZZZZZZZZZZZZZZZZZZZ': must be a sha256 as 64 lowercase hex digits; " + FIX,
        ),
        (
            lambda raw: _train_shard(raw)["sha256_blocks"].__setitem__(0, 7),
            "meta.json splits.train shard 'train_000000.bin' sha256_blocks[0] = 7: must be a sha256 as 64 lowercase "
            "hex digits; " + FIX,
        ),
        (
            lambda raw: _train_shard(raw)["sha256_blocks"].append("0" * 64),
            "meta.json splits.train shard 'train_000000.bin' sha256_blocks: 2 hashes, but 255704 tokens in blocks of "
            "4194304 bytes make 1; " + FIX,
        ),
        (
            lambda raw: raw.__setitem__("hash_block_bytes", "4MiB"),
            "hash_block_bytes = '4MiB': must be a positive integer (bytes per hashed block); " + FIX,
        ),
        (
            lambda raw: raw.__setitem__("hash_block_bytes", 0),
            "hash_block_bytes = 0: must be a positive integer (bytes per hashed block); " + FIX,
        ),
        (
            lambda raw: _train_shard(raw).pop("sha256_blocks"),
            "meta.json splits.train shard 'train_000000.bin' has no sha256_blocks while other shards have them; " + FIX,
        ),
    ],
    ids=["not-hex", "not-a-string", "count", "block-text", "block-zero", "one-shard-without"],
)
def test_a_crafted_hash_field_in_meta_json_is_named(tiny_dataset, tmp_path, edit, problem):
    """Fault: hash fields of meta.json are read from a file the user may have been given: each malformed one
    is one clear error, never a traceback, and a shard cannot opt out of the check."""
    data = copy_of(tiny_dataset, tmp_path)
    _edit(data, edit)
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert str(err.value) == f"dataset {data}: 1 problem\n  - {problem.format(data=data)}"


def test_a_hash_list_that_is_not_a_list_is_named(tiny_dataset, tmp_path):
    """Fault: sha256_blocks as a string (crafted) must not be read as a list of characters."""
    data = copy_of(tiny_dataset, tmp_path)
    _edit(data, lambda raw: _train_shard(raw).__setitem__("sha256_blocks", "0" * 64))
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert str(err.value).startswith(
        f"{data / 'meta.json'}: missing or malformed field (TypeError: sha256_blocks of shard 'train_000000.bin' "
        "must be a list, not str)"
    )


def prepare_cli(*args):
    return run([sys.executable, REPO / "launch/prepare_data.py", *args], check=False, timeout=300)


def test_verify_reports_every_bad_block_and_exits_2(tiny_dataset, tmp_path):
    """Fault: nothing could check a prepared dataset's contents. `ngpt-prepare --verify DIR` reads every
    block, lists each bad one with its byte range, and exits 2; a good copy passes with status 0."""
    data = small_blocks(copy_of(tiny_dataset, tmp_path))
    ok = prepare_cli("--verify", data, "--no-progress")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{data}\n", "")
    flip(data / "train_000000.bin", 2 * BLOCK)
    flip(data / "train_000000.bin", 7 * BLOCK + 5)
    proc = prepare_cli("--verify", data, "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[1:3] == [
        "  - train_000000.bin bytes [131072, 196608) (block 2 of 8): sha256 differs from meta.json",
        "  - train_000000.bin bytes [458752, 511408) (block 7 of 8): sha256 differs from meta.json",
    ]
    assert proc.stderr.startswith(f"error: dataset {data}: 2 block(s) of its shards differ")


def test_add_hashes_records_them_for_a_legacy_dataset(tiny_dataset, tmp_path):
    """`ngpt-prepare --add-hashes DIR` makes an older dataset checkable; a second call refuses to replace them."""
    data = without_shard_hashes(copy_of(tiny_dataset, tmp_path))
    assert prepare_cli("--add-hashes", data, "--no-progress").returncode == 0
    meta = load_dataset_meta(data)
    assert meta.hash_block_bytes == shard_hashes.BLOCK_BYTES
    assert meta.splits == load_dataset_meta(tiny_dataset).splits  # the hashes prepare recorded
    again = prepare_cli("--add-hashes", data, "--no-progress")
    assert again.returncode == 2
    assert "already records shard hashes" in again.stderr


def test_a_merged_dataset_carries_the_parts_hashes(tiny_dataset, tmp_path):
    """Datasets merged from parts (--num-shards/--merge) are checked like single-process ones."""
    from test_data_parts import config, write_corpus

    from ngpt_ds.data.parts import merge_parts, prepare_part

    corpus, out = write_corpus(tmp_path / "c"), tmp_path / "parts"
    for k in range(2):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), 2, k, 40)
    merge_parts(out, 2, progress=False)
    meta = load_dataset_meta(out)
    assert meta.hash_block_bytes == shard_hashes.BLOCK_BYTES
    shard = meta.splits["train"].shards[3]
    assert shard.sha256_blocks == shard_hashes.block_hashes(meta.shard_path(shard))
    flip(meta.shard_path(shard), 0)
    with pytest.raises(NgptConfigError, match=r"train_000003.bin bytes \[0, 6000\) \(block 0 of 1\)"):
        load_dataset_meta(out)


@pytest.mark.parametrize("how", ["absolute", "parent", "link"])
def test_a_crafted_part_json_cannot_put_a_file_from_outside_into_the_dataset(tiny_dataset, tmp_path, how):
    """Fault: merge_parts linked or copied whatever file part.json named: an absolute path or ../ name (or a
    link in the part folder) put a file from outside the parts folder into the merged dataset as a shard."""
    from test_data_parts import config, write_corpus

    from ngpt_ds.data.parts import merge_parts, prepare_part

    corpus, out = write_corpus(tmp_path / "c"), tmp_path / "parts"
    for k in range(2):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), 2, k, 40)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET!!" * 4)
    part = out / "part-00000-of-00002"
    info = json.loads((part / "part.json").read_text())
    entry = info["blocks"][0]["splits"]["train"]["shards"][0]
    name = {"absolute": str(secret), "parent": "../../secret.bin", "link": entry["file"]}[how]
    if how == "link":
        os.unlink(part / name)
        os.symlink(secret, part / name)
    entry.update(file=name, tokens=16)
    entry.pop("sha256_blocks", None)
    info.pop("hash_block_bytes", None)
    (part / "part.json").write_text(json.dumps(info))
    with pytest.raises(NgptConfigError) as err:
        merge_parts(out, 2, progress=False)
    assert str(err.value) == (
        f"{part / 'part.json'} block 0 train: shard {name!r} must be a file name inside {part}, not a path or a "
        "link; the part.json is damaged or was edited: prepare part 0 again with --overwrite"
    )
    assert not (out / "meta.json").exists()


def test_a_zero_filled_shard_on_one_node_stops_both_ranks_before_training(tiny_dataset, tmp_path):
    """Fault: the node-local copy of one node zero-filled at the right size (an interrupted copy re-extended):
    both ranks trained, rank 1 on zeros. Now rank 1 names the shard and every rank stops before step 1."""
    from conftest import train_on_two_nodes

    def setup(rank, node):
        data = copy_of(tiny_dataset, node)
        if rank == 1:
            shard = data / "train_000000.bin"
            shard.write_bytes(bytes(shard.stat().st_size))

    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(1))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    results = train_on_two_nodes(tmp_path, setup, "--config", yaml, "--deepspeed_config", ds, "--data", "data")
    bad = "  - train_000000.bin bytes [0, 511408) (block 0 of 1): sha256 differs from meta.json"
    for code, out, err in results:
        assert code == 2, out + err
        assert "step      1/" not in out
        assert err.startswith("error: rank 1: dataset data: 1 block(s) of its shards differ"), err
        assert bad in err.splitlines()


def test_above_the_full_check_size_the_ranks_of_a_node_split_the_sample(tiny_dataset, tmp_path, monkeypatch):
    """Opening a dataset above SAMPLE_ALL_BELOW reads the sample (each shard's last block and one picked by
    its name) split between the node's ranks (LOCAL_RANK of LOCAL_WORLD_SIZE): here train blocks (picked, 7)
    and validation block 0 go to local ranks 0, 1, 0, so a flipped byte in train block 7 stops local rank 1."""
    from ngpt_ds.data import shard_check

    data = small_blocks(copy_of(tiny_dataset, tmp_path))
    flip(data / "train_000000.bin", 7 * BLOCK + 9)
    monkeypatch.setattr(shard_hashes, "SAMPLE_ALL_BELOW", 0)
    monkeypatch.setattr(shard_check, "_checked", set())
    env = {"RANK": 0, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("LOCAL_RANK", "0")
    load_dataset_meta(data)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(NgptConfigError) as err:
        load_dataset_meta(data)
    assert "\n  - train_000000.bin bytes [458752, 511408) (block 7 of 8): sha256 differs from meta.json\n" in str(
        err.value
    )
    assert "(sampled check)" in str(err.value)


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("blocks", 5, "blocks = 5: must be a list of {block: number, splits: ...}"),
        ("documents", "many", "documents = 'many': must be an integer >= 0"),
        ("block_docs", 0, "block_docs = 0: must be a positive integer"),
        ("hash_block_bytes", [1], "hash_block_bytes = [1]: must be a positive integer"),
    ],
)
def test_a_crafted_part_json_field_is_named_not_a_traceback(tiny_dataset, tmp_path, field, value, problem):
    """Fault: merge_parts computed with part.json's numbers as found: `blocks: 5`, `documents: "many"` and
    `block_docs: 0` stopped `--merge` with a TypeError or ZeroDivisionError traceback (exit 1)."""
    from test_data_parts import config, write_corpus

    from ngpt_ds.data.parts import prepare_part

    corpus, out = write_corpus(tmp_path / "c"), tmp_path / "parts"
    for k in range(2):
        prepare_part(config(corpus, out, tiny_dataset / "tokenizer.model"), 2, k, 40)
    for k in range(2):  # in every part: parts that disagree are refused by comparison
        info = json.loads((out / f"part-0000{k}-of-00002" / "part.json").read_text())
        info[field] = value
        (out / f"part-0000{k}-of-00002" / "part.json").write_text(json.dumps(info))
    path = out / "part-00000-of-00002" / "part.json"
    proc = prepare_cli("--merge", "--num-shards", "2", "--out", out, "--no-progress")
    assert (proc.returncode, proc.stderr) == (
        2,
        f"error: {path}: {problem}; prepare that part again with --overwrite\n",
    )
