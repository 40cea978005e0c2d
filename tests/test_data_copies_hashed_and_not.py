"""Fault: node-local copies of one dataset prepared before ngpt_ds recorded shard hashes, where one
node's copy got them (`ngpt-prepare --add-hashes`, as the warning of an unhashed dataset advises, or a
default-corpus cache that recorded them) and another's did not: same tokenizer, shards and tokens, yet
every rank stopped with 'ranks 0 and 1 read different datasets ... (they differ in shard contents ...)'
(exit 2). A copy without hashes gives nothing to compare; the ranks compare the contents only where both
record them, and the job trains as it did before the hashes.
"""

import json
import shutil

from ngpt_ds.data.shard_check import add_hashes

from conftest import tiny_ngpt, tiny_train, train_on_two_nodes, write_ds_config, write_yaml


def test_a_copy_with_shard_hashes_beside_one_without_trains(tiny_dataset, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_dataset, legacy)
    raw = json.loads((legacy / "meta.json").read_text())
    raw.pop("hash_block_bytes")
    for split in raw["splits"].values():
        for shard in split["shards"]:
            shard.pop("sha256_blocks")
    (legacy / "meta.json").write_text(json.dumps(raw))
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
