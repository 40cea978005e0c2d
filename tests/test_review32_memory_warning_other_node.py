"""Fault (review32): the startup memory check's warning (memory_plan.check_state_fits: the free memory below the
run's need, or the need within 30 % of the node) was logged by global rank 0 alone, but each node checks its own
memory. A second node whose memory other jobs hold (or whose NGPT_DS_NODE_MEMORY_BYTES is lower) computed the warning
and dropped it: rank 0's node was fine, so the run started in silence and the out-of-memory killer ended it on that
node at its first steps. Now the first rank of every node (local rank 0) logs its node's warning.

Here one process plays rank 1 of 2, the only rank of the second node (RANK=1, LOCAL_RANK=0, LOCAL_WORLD_SIZE=1):
builder.prepare reads the launch environment and checks this node's memory without meeting rank 0."""

import pytest

from ngpt_ds.model import saved_weights
from ngpt_ds.train import builder
from ngpt_ds.train.builder import TrainOptions

from conftest import logged_warnings, tiny_train, write_ds_config, write_yaml

GIB = 1 << 30
MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 1024, "n_head": 8, "seq_len": 32}


@pytest.fixture
def second_node(tmp_path, monkeypatch):
    """This process as rank 1 of 2, alone on its node: 64 GiB of node memory, 0.25 GiB of it available now
    (a fake /proc/meminfo and cgroup tree: the module's own paths, monkeypatched)."""
    launch = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    for name, value in {**launch, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NGPT_DS_NODE_MEMORY_BYTES", str(64 * GIB))
    meminfo, cgroup, root = tmp_path / "meminfo", tmp_path / "cgroup", tmp_path / "sys_fs_cgroup"
    monkeypatch.setattr(saved_weights, "_PROC_MEMINFO", str(meminfo))
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(cgroup))
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(root))
    meminfo.write_text(f"MemTotal: {64 << 20} kB\nMemAvailable: {256 << 10} kB\n")
    cgroup.write_text("0::/job\n")
    (root / "job").mkdir(parents=True)
    (root / "job" / "memory.max").write_text("max\n")
    (root / "job" / "memory.current").write_text("0\n")


def test_a_second_nodes_memory_warning_is_logged_there(tmp_path, tiny_dataset, second_node):
    config = write_yaml(tmp_path / "wide.yaml", MODEL, tiny_train(1))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=2, accum=1)
    options = TrainOptions(
        config=str(config), deepspeed_config=str(ds), data=str(tiny_dataset), out=str(tmp_path / "out"), resume="none"
    )
    with logged_warnings("ngpt_ds.train.builder") as lines:
        prepared = builder.prepare(options, resume=False)
    assert (prepared.dist_env.rank, prepared.dist_env.local_rank, prepared.dist_env.world_size) == (1, 0, 2)
    # The old code: [] (rank 1's warning computed and dropped)
    assert [line for line in lines if "available now" in line] == [
        f"warning: model config ({config}): training state 0.52 GiB + activations 0.02 GiB per rank (a lower bound) "
        "need 0.53 GiB on this node's 1 rank(s), and 0.25 GiB of its 64.00 GiB is available now (MemAvailable, or "
        "its cgroup's limit less its use): other processes hold the rest. Stop them or wait for the memory, or the "
        "run may be ended by the out-of-memory killer at its first steps"
    ]


def test_the_node_warning_reaches_that_ranks_stderr(monkeypatch, capsys):
    """log.setup's rank filter dropped every warning of a rank other than 0; the node's warning passes, prefixed."""
    import logging

    from ngpt_ds import log

    monkeypatch.setenv("RANK", "1")
    logger = logging.getLogger(log.ROOT)
    saved = (list(logger.handlers), logger.propagate, logger.level)
    log.setup("INFO")
    try:
        log.get("ngpt_ds.train.builder").warning("warning: this node's memory", extra=log.NODE_WARNING)
        log.get("ngpt_ds.train.builder").warning("warning: said by rank 0 for all")
    finally:
        logger.handlers[:] = saved[0]
        logger.propagate, logger.level = saved[1], saved[2]
    assert capsys.readouterr().err == "[rank 1] warning: this node's memory\n"
