"""Data checks before the engine: a dry run that passes must not be followed by a run that stops on the
same data after its process group and engine have started, and ranks must agree on the data before the
engine is built."""

from __future__ import annotations

import sys
from pathlib import Path

from ngpt_ds.data.shards import load_dataset_meta

from conftest import (
    REPO,
    cpu_env,
    run,
    tiny_ngpt,
    tiny_train,
    train_on_two_nodes,
    train_two_nodes_on_their_own_data,
    write_ds_config,
    write_yaml,
)

MICRO = 4


def _train(tmp_path: Path, data: Path, model: dict, *extra: str) -> object:
    yaml = write_yaml(tmp_path / "run.yaml", model, tiny_train(3))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", data, "--out", tmp_path / "out", *extra]
    return run([sys.executable, REPO / "launch/train.py", *argv], env=cpu_env(), check=False, timeout=300)


def test_the_dry_run_checks_the_validation_split_as_the_run_does(tiny_dataset, tmp_path):
    """Fault: the dry run said 'every startup check passed' for data without a validation split
    (--val-fraction 0) and for a context whose validation split has fewer windows than one batch, while
    the run itself stopped on them only after the process group and engine had started and --out held
    config.yaml and train.lock."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    no_val = prepare_dataset(
        PrepareConfig(
            inputs=(str(tiny_dataset.parent / "corpus.jsonl"),),
            out=tmp_path / "no_val",
            vocab_size=512,
            val_fraction=0.0,
            workers=1,
            progress=False,
        )
    )
    proc = _train(tmp_path, no_val, tiny_ngpt(), "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: dataset {no_val} has no 'validation' split (it has train); re-prepare it with "
        "--val-fraction > 0 to get a validation split\n"
    )
    long_context = {**tiny_ngpt(), "seq_len": 2048}
    val_tokens = load_dataset_meta(tiny_dataset).splits["validation"].tokens
    proc = _train(tmp_path, tiny_dataset, long_context, "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"error: dataset {tiny_dataset} split 'validation' has {(val_tokens - 1) // 2048} windows of seq_len+1 = "
        "2049 tokens, fewer than one validation batch of data-parallel size x micro-batch = 1 x 4 = 4 windows; "
        "prepare the data again with a larger --val-fraction (it was 0.1), or use a smaller seq_len, micro-batch "
        "or data-parallel size\n"
    )
    assert not (tmp_path / "out").exists()
    # The run itself stops on it before its process group, engine and --out.
    proc = _train(tmp_path, no_val, tiny_ngpt(), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stderr.endswith(
        f"error: dataset {no_val} has no 'validation' split (it has train); re-prepare it "
        "with --val-fraction > 0 to get a validation split\n"
    )
    assert "training nGPT" not in proc.stdout and not (tmp_path / "out").exists()


def test_ranks_whose_data_differ_in_vocabulary_stop_before_the_engine(tiny_dataset, tmp_path):
    """Fault: node-local --data copies made with tokenizers of 512 and 400 pieces (model vocab_size taken
    from the data) gave the two ranks models of different shapes: DeepSpeed's first broadcast ended in
    gloo's 'Received data size doesn't match expected size' (rank 1 aborted, rank 0 a traceback). Now the
    ranks compare meta.json right after the process group starts and stop with one message."""
    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    other = prepare_dataset(
        PrepareConfig(
            inputs=(str(tiny_dataset.parent / "corpus.jsonl"),),
            out=tmp_path / "vocab400",
            vocab_size=400,
            val_fraction=0.1,
            workers=1,
            progress=False,
        )
    )
    for code, stdout, stderr in train_two_nodes_on_their_own_data(tmp_path, (tiny_dataset, other)):
        assert code == 2, stdout + stderr
        assert (
            "error: ranks 0 and 1 read different datasets at --data data (they differ in vocab_size, tokenizer "
            "sha256, shards, shard contents; rank 0: train "
        ) in stderr, stderr
        assert "Traceback" not in stderr and "training nGPT" not in stdout, stdout + stderr


def test_a_check_that_fails_on_one_rank_stops_every_rank(tiny_dataset, tmp_path):
    """Fault: a startup check that failed on one rank only (its node lacks the --data folder) ended that
    rank alone; the other waited for it in the rendezvous for train.dist_timeout_s (600 s by default;
    launch/slurm/train.sbatch runs srun --kill-on-bad-exit=0) and then failed with 'DistStoreError: Timed
    out after 11 seconds waiting for clients. 1/2 clients joined.' (here 10 s). Now the failing rank joins
    the process group and every rank stops with its message."""
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3, dist_timeout_s=10))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1)

    def setup(rank, node):  # node 1 has no "data"
        if rank == 0:
            (node / "data").symlink_to(tiny_dataset)

    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", "data", "--out", tmp_path / "out"]
    for code, stdout, stderr in train_on_two_nodes(tmp_path, setup, *argv):
        assert code == 2, stdout + stderr
        assert stderr.endswith(
            "error: rank 1: data dir data does not exist; prepare it with `python launch/prepare_data.py --input "
            "CORPUS --out DIR`\n"
        ), stderr
        assert "Traceback" not in stderr and not (tmp_path / "out").exists(), stdout + stderr


def test_ranks_whose_configs_differ_stop_before_the_engine(tiny_dataset, tmp_path):
    """Fault: a --config that differs between nodes (a node-local copy, another install's preset) gave the
    ranks models of different shapes: DeepSpeed's first broadcast aborted in gloo ('Received data size
    doesn't match expected size'), one rank killed by SIGABRT. Now the ranks compare their effective configs
    right after the process group starts and stop with one message naming the fields."""
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1)

    def setup(rank, node):  # each node's own "run.yaml"
        write_yaml(node / "run.yaml", {**tiny_ngpt(), "n_layer": (2, 3)[rank]}, tiny_train(3))

    argv = ["--config", "run.yaml", "--deepspeed_config", ds, "--data", tiny_dataset, "--out", tmp_path / "out"]
    for code, stdout, stderr in train_on_two_nodes(tmp_path, setup, *argv):
        assert code == 2, stdout + stderr
        assert stderr.endswith(
            "error: ranks 0 and 1 resolved different run configs: model.n_layer = 2 on rank 0, 3 on rank 1. Every "
            "rank must read the same --config and --deepspeed_config files with the same ngpt_ds\n"
        ), stderr
        assert "Traceback" not in stderr and "training nGPT" not in stdout, stdout + stderr


def test_node_local_copies_of_the_same_json_and_data_are_accepted(tiny_dataset, tmp_path):
    """Fault (in the first version of the two checks above): each node's own copy of the same DeepSpeed
    JSON (another --deepspeed_config path) and of the same dataset prepared from its own copy of the
    corpus (meta.json's free-text `source` names other input files) were refused as different configs and
    datasets. Only what decides the model, the schedule and the tokens in each window is compared."""
    import json
    import shutil

    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(2))

    def setup(rank, node):
        shutil.copytree(tiny_dataset, node / "data")
        meta_path = node / "data" / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta["source"] = f"corpus.jsonl as copied to node {rank}"
        meta_path.write_text(json.dumps(meta))
        write_ds_config(node / "ds.json", stage=0, bf16=False, micro=MICRO, accum=1)

    def node_json(node):  # each node's own copy, by its absolute path
        return node / "ds.json"

    argv = ["--config", yaml, "--deepspeed_config", node_json, "--data", "data", "--out", tmp_path / "out"]
    for code, stdout, stderr in train_on_two_nodes(tmp_path, setup, *argv):
        assert code == 0, stdout + stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "finished"
