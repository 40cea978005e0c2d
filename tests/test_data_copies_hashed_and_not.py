"""Node-local copies of one dataset where one node's copy records shard hashes and another's does not.

Faults: copies prepared before ngpt_ds recorded shard hashes, one of them given them later (`ngpt-prepare
--add-hashes`, as the warning of an unhashed dataset advises, or a default-corpus cache that recorded them):
same tokenizer, shards and tokens, yet every rank stopped with 'ranks 0 and 1 read different datasets ...
(they differ in shard contents ...)' (exit 2); the ranks now compare the contents only where both record
them. And a resume on other data than the checkpoint's, which only the rank whose copy records hashes can
tell, stopped that rank alone while the others waited for train.dist_timeout_s.
"""

import shutil

from ngpt_ds.data.shard_check import add_hashes

from conftest import tiny_ngpt, tiny_train, train_on_two_nodes, without_shard_hashes, write_ds_config, write_yaml


def test_a_copy_with_shard_hashes_beside_one_without_trains(tiny_dataset, tmp_path):
    legacy = without_shard_hashes(shutil.copytree(tiny_dataset, tmp_path / "legacy"))
    hashed = tmp_path / "hashed"
    shutil.copytree(legacy, hashed)
    add_hashes(hashed)
    data = (hashed, legacy)  # each node's own "data": the same tokens

    def setup(rank, node):
        (node / "data").symlink_to(data[rank])

    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", "data", "--out", tmp_path / "out"]
    for code, stdout, stderr in train_on_two_nodes(tmp_path, setup, *argv):
        assert code == 0, stdout + stderr
        assert "different datasets" not in stderr
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("step_*")) == ["step_00000002"]


def test_a_resume_on_other_data_that_only_rank_0_can_tell_stops_every_rank(tiny_dataset, tmp_path):
    """Fault: resuming on other training data than the checkpoint's is refused by comparing the data's block
    hashes with the checkpoint's record, which each rank does on its own copy. With node-local copies where
    only rank 0's records hashes, rank 0 stopped alone and rank 1 waited in the engine's first collective
    until train.dist_timeout_s, then died in a traceback. Every rank now stops with rank 0's message."""
    import numpy as np

    yaml2 = write_yaml(tmp_path / "two.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=30))
    yaml4 = write_yaml(tmp_path / "four.yaml", tiny_ngpt(), tiny_train(4, dist_timeout_s=30))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp_path / "out"
    (tmp_path / "first").mkdir()
    first = train_on_two_nodes(
        tmp_path / "first",
        lambda rank, node: None,
        "--config",
        yaml2,
        "--deepspeed_config",
        ds,
        "--data",
        tiny_dataset,
        "--out",
        out,
    )
    assert [code for code, _, _ in first] == [0, 0], first
    other = tmp_path / "other"  # other tokens, same sizes and tokenizer
    shutil.copytree(tiny_dataset, other)
    shard = np.memmap(other / "train_000000.bin", dtype=np.uint16, mode="r+")
    shard[100] = (int(shard[100]) + 1) % 512
    shard.flush()
    del shard
    without_shard_hashes(other)
    add_hashes(other)
    unhashed = without_shard_hashes(shutil.copytree(other, tmp_path / "unhashed"))
    data = (other, unhashed)  # each node's own "data": the same tokens, hashes recorded on node 0 only

    def setup(rank, node):
        (node / "data").symlink_to(data[rank])

    argv = ["--config", yaml4, "--deepspeed_config", ds, "--data", "data", "--out", out]
    for code, stdout, stderr in train_on_two_nodes(tmp_path, setup, *argv, timeout=120):
        assert code == 2, stdout + stderr
        assert "holds other training data than the checkpoint was trained on" in stderr, stderr
        assert "Traceback" not in stderr and "step " not in stdout, stdout + stderr
