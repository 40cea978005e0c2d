"""The startup memory check warns when the memory free on the node now is below the run's need (input32).

The fault: ngpt_ds/train/memory_plan.check_state_fits compared the run's need with the node's total memory only
(psutil's total, or NGPT_DS_NODE_MEMORY_BYTES). A run started on a node where other jobs hold most of it, or in a
Slurm job or container whose cgroup limit is far below the node, passed the check in silence and was ended by the
out-of-memory killer at its first step. Now the free memory (saved_weights.host_memory_available: /proc/meminfo's
MemAvailable, or a cgroup's memory.max less memory.current where lower) is compared too: a warning with the
figures and what to do, not a refusal (the memory may be freed before the run's peak).

The model below: 2 blocks of width 1024 (mlp 4096), vocabulary 512 (embedding and head): 34,603,008 parameters at
least, 16 bytes each in fp32 at ZeRO 0 (0.52 GiB), activations 19,039,560 bytes at micro batch 2 (0.02 GiB): 0.53 GiB on one rank.
"""

import pytest

from ngpt_ds.model import saved_weights
from ngpt_ds.train import builder
from ngpt_ds.train.builder import TrainOptions

from conftest import logged_warnings, tiny_train, write_ds_config, write_yaml

GIB = 1 << 30
MODEL = {"arch": "ngpt", "n_layer": 2, "n_embd": 1024, "n_head": 8, "seq_len": 32}


@pytest.fixture
def fake_node(tmp_path, monkeypatch):
    """A fake /proc/meminfo and cgroup tree (the module's own paths, monkeypatched), 64 GiB of node memory."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NGPT_DS_NODE_MEMORY_BYTES", str(64 * GIB))
    meminfo, cgroup, root = tmp_path / "meminfo", tmp_path / "cgroup", tmp_path / "sys_fs_cgroup"
    monkeypatch.setattr(saved_weights, "_PROC_MEMINFO", str(meminfo))
    monkeypatch.setattr(saved_weights, "_PROC_CGROUP", str(cgroup))
    monkeypatch.setattr(saved_weights, "_CGROUP_ROOT", str(root))

    def node(available_kib: int, limit: int | None = None, current: int = 0) -> None:
        meminfo.write_text(f"MemTotal: {64 << 20} kB\nMemAvailable: {available_kib} kB\n")
        cgroup.write_text("0::/job\n")
        (root / "job").mkdir(parents=True, exist_ok=True)
        (root / "job" / "memory.max").write_text("max\n" if limit is None else f"{limit}\n")
        (root / "job" / "memory.current").write_text(f"{current}\n")

    return node


def _prepare(tmp_path, tiny_dataset) -> list[str]:
    config = write_yaml(tmp_path / "wide.yaml", MODEL, tiny_train(1))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=2, accum=1)
    options = TrainOptions(
        config=str(config), deepspeed_config=str(ds), data=str(tiny_dataset), out=str(tmp_path / "out"), resume="none"
    )
    with logged_warnings("ngpt_ds.train.builder") as lines:
        prepared = builder.prepare(options, resume=False)  # a warning: the run still starts
    assert prepared.run.model.n_embd == 1024
    return [line for line in lines if "available now" in line]


def _warning(available: str) -> str:
    return (
        f"warning: model config ({{}}): training state 0.52 GiB + activations 0.02 GiB per rank (a lower bound) need "
        f"0.53 GiB on this node's 1 rank(s), and {available} GiB of its 64.00 GiB is available now (MemAvailable, or "
        "its cgroup's limit less its use): other processes hold the rest. Stop them or wait for the memory, or the run "
        "may be ended by the out-of-memory killer at its first steps"
    )


def test_mem_available_below_the_need_is_warned(tmp_path, tiny_dataset, fake_node):
    fake_node(available_kib=256 << 10)  # 0.25 GiB free of the node's 64
    assert _prepare(tmp_path, tiny_dataset) == [_warning("0.25").format(tmp_path / "wide.yaml")]


def test_a_cgroup_limit_below_mem_available_is_warned(tmp_path, tiny_dataset, fake_node):
    """MemAvailable says 60 GiB, but the job's cgroup allows 2 GiB and holds 1.75 of them."""
    fake_node(available_kib=60 << 20, limit=2 * GIB, current=7 * GIB // 4)
    assert _prepare(tmp_path, tiny_dataset) == [_warning("0.25").format(tmp_path / "wide.yaml")]


def test_enough_free_memory_says_nothing(tmp_path, tiny_dataset, fake_node):
    fake_node(available_kib=60 << 20, limit=4 * GIB, current=GIB)  # 3 GiB free under the limit
    assert _prepare(tmp_path, tiny_dataset) == []
