"""Fault (session 33): the startup memory check set the address-space limit (`ulimit -v`) against every local
rank's need together. saved_weights.host_memory_available took the least of the node's available memory
(MemAvailable, a cgroup's limit) and this process's RLIMIT_AS headroom, and memory_plan.check_state_fits compared
it with the need of all the node's ranks. But each process has its own address-space limit: two ranks of 0.53 GiB
each under a 0.8 GiB limit each fit, and were warned that "other processes hold the rest" of a node with 60 GiB
free. And a limit below even one rank's need, where every rank's allocations must fail, was only that warning.

Now the node's ranks together are set against MemAvailable and the cgroup, and one rank against its own limit:
below it is a refusal naming `ulimit -v`. This process plays rank 0 of 2 on one node (RANK, LOCAL_WORLD_SIZE set):
builder.prepare reads the launch environment and checks this node's memory without meeting rank 1.

The model: 2 blocks of width 1024, vocabulary 512, fp32 at ZeRO 0: 0.52 GiB of state + 0.02 GiB of activations
per rank (tests/test_input32_available_memory.py has the figures)."""

import resource

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import saved_weights
from ngpt_ds.train import builder
from ngpt_ds.train.builder import TrainOptions

from conftest import logged_warnings, tiny_train, write_ds_config, write_yaml

GIB = 1 << 30
MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 1024, "n_head": 8, "seq_len": 32}
VIRTUAL_SIZE = 3 * GIB
"""This process's VmSize as the fake /proc/self/status gives it."""


@pytest.fixture
def node_of_two_ranks(tmp_path, monkeypatch):
    """Rank 0 of 2, both on this node of 64 GiB with 60 GiB available (fake /proc files, the module's own
    paths); `limit(headroom)` sets RLIMIT_AS so that this process may map `headroom` more bytes."""
    launch = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    for name, value in {**launch, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NGPT_DS_NODE_MEMORY_BYTES", str(64 * GIB))
    meminfo, status, cgroup = tmp_path / "meminfo", tmp_path / "status", tmp_path / "cgroup"
    meminfo.write_text(f"MemTotal: {64 << 20} kB\nMemAvailable: {60 << 20} kB\n")
    status.write_text(f"Name:\tpython\nVmPeak:\t{VIRTUAL_SIZE >> 10} kB\nVmSize:\t{VIRTUAL_SIZE >> 10} kB\n")
    cgroup.write_text("0::/job\n")  # no such cgroup folder: no limit known
    monkeypatch.setattr(saved_weights, "_PROC_MEMINFO", str(meminfo))
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(cgroup))
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(tmp_path / "no_cgroups"))
    monkeypatch.setattr(saved_weights, "_CGROUP_V1_ROOT", str(tmp_path / "no_cgroups_v1"))
    if hasattr(saved_weights, "_PROC_SELF_STATUS"):
        monkeypatch.setattr(saved_weights, "_PROC_SELF_STATUS", str(status))
    real_getrlimit = resource.getrlimit

    def limit(headroom: int) -> None:
        cap = VIRTUAL_SIZE + headroom
        monkeypatch.setattr(
            resource, "getrlimit", lambda which: (cap, cap) if which == resource.RLIMIT_AS else real_getrlimit(which)
        )
        if not hasattr(saved_weights, "_PROC_SELF_STATUS"):  # the old code read /proc/self/status itself
            real = saved_weights._proc_number
            monkeypatch.setattr(
                saved_weights,
                "_proc_number",
                lambda path, key: real(str(status) if path == "/proc/self/status" else path, key),
            )

    return limit


def _prepare(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "wide.yaml", MODEL, tiny_train(1))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=2, accum=1)
    options = TrainOptions(
        config=str(config), deepspeed_config=str(ds), data=str(tiny_dataset), out=str(tmp_path / "out"), resume="none"
    )
    with logged_warnings("ngpt_ds.train.builder") as lines:
        prepared = builder.prepare(options, resume=False)
    assert (prepared.dist_env.world_size, prepared.dist_env.local_world_size) == (2, 2)
    return config, lines


def test_two_ranks_each_within_its_own_address_space_limit_are_not_warned(tmp_path, tiny_dataset, node_of_two_ranks):
    node_of_two_ranks(headroom=GIB * 8 // 10)  # 0.8 GiB each: one rank's 0.53 fits, the node's 1.07 need not
    _, lines = _prepare(tmp_path, tiny_dataset)
    # The old code: ['warning: ... need 1.07 GiB on this node's 2 rank(s), and 0.80 GiB of its 64.00 GiB is
    # available now (MemAvailable, or its cgroup's limit less its use): other processes hold the rest. ...']
    assert [line for line in lines if "GiB" in line] == []


def test_an_address_space_limit_below_one_ranks_need_is_refused_naming_ulimit(
    tmp_path, tiny_dataset, node_of_two_ranks
):
    node_of_two_ranks(headroom=GIB * 4 // 10)  # 0.4 GiB: not even one rank's 0.53
    with pytest.raises(NgptConfigError) as refused:  # the old code: the warning above, and the run started
        _prepare(tmp_path, tiny_dataset)
    assert str(refused.value) == (
        f"model config ({tmp_path / 'wide.yaml'}): training state 0.52 GiB + activations 0.02 GiB per rank (a lower "
        "bound), but this rank's process may map only 0.40 GiB more under its address-space limit (`ulimit -v`): its "
        "allocations would fail. Raise the limit (`ulimit -v unlimited`, or Slurm's --propagate / the job's limits) "
        "or use a smaller micro batch with more gradient accumulation, activation checkpointing "
        "(train.checkpoint_every), sequence parallelism (train.sequence_parallel_size), or ZeRO 3"
    )


def test_the_node_is_still_warned_when_its_available_memory_is_short(tmp_path, tiny_dataset, node_of_two_ranks):
    """The split keeps the node's own check: 60 GiB available against 1.06 needed says nothing; 1 GiB warns."""
    node_of_two_ranks(headroom=8 * GIB)
    (tmp_path / "meminfo").write_text(f"MemTotal: {64 << 20} kB\nMemAvailable: {1 << 20} kB\n")
    config, lines = _prepare(tmp_path, tiny_dataset)
    assert [line for line in lines if "available now" in line] == [
        f"warning: model config ({config}): training state 0.52 GiB + activations 0.02 GiB per rank (a lower bound) "
        "need 1.07 GiB on this node's 2 rank(s), and 1.00 GiB of its 64.00 GiB is available now (MemAvailable, or "
        "its cgroup's limit less its use): other processes hold the rest. Stop them or wait for the memory, or the "
        "run may be ended by the out-of-memory killer at its first steps"
    ]
