"""Fault: under DeepSpeed's launcher (`deepspeed --hostfile ...`, the README's main command on several
nodes), which sets LOCAL_RANK and LOCAL_SIZE but not LOCAL_WORLD_SIZE, rank discovery took the node's
rank count for the whole job's. The startup check of shard contents splits its sample between the ranks
of a node by it: on 2 nodes of 8 ranks, local ranks 0-7 took shares 0-7 of 16, so half of every node's
sample (shares 8-15) was read by no rank, and a damaged block there trained silently (on n nodes,
(n-1)/n of the sample). CPU ranks also took cores / 16 threads instead of cores / 8.
"""

from ngpt_ds import distributed
from ngpt_ds.data import shard_check, shards


def launcher_env(rank: int) -> dict[str, str]:
    """What deepspeed.launcher.launch sets for global rank `rank` of 2 nodes x 8 ranks."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": "16",
        "LOCAL_RANK": str(rank % 8),
        "LOCAL_SIZE": "8",
        "CROSS_RANK": str(rank // 8),
        "CROSS_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
    }


def test_the_deepspeed_launchers_local_size_is_the_nodes_rank_count():
    found = distributed.discover(launcher_env(9))
    assert (found.rank, found.world_size, found.local_rank, found.local_world_size) == (9, 16, 1, 8)


def test_under_the_deepspeed_launcher_a_nodes_ranks_split_the_whole_sample(tiny_dataset, monkeypatch):
    meta = shards.load_dataset_meta(tiny_dataset)
    monkeypatch.setattr(shard_check.shard_hashes, "SAMPLE_ALL_BELOW", 0)  # the sampled check, as above 1 GiB
    shares = []
    monkeypatch.setattr(
        shard_check, "verify_shards", lambda d, m, rank, ranks, mode: shares.append((rank, ranks)) or []
    )
    for rank in range(8, 16):  # the second node
        monkeypatch.setattr(shard_check, "_checked", set())
        for key, value in launcher_env(rank).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        shard_check.check_shard_contents(meta)
    assert shares == [(r, 8) for r in range(8)]
