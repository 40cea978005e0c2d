"""The check that every rank of a traced 2-rank run made the same collectives, in the same order, per process group
(what NCCL pairs by order alone), for the traced runs of tests/test_nccl37_resume_collectives.py and
tests/test_load38_read_fault_one_rank.py (traces: tests/workers/gpu28_trace_runs.py). A module of its own: a test file
imported it from the other test file."""

from __future__ import annotations

from collections import defaultdict

from workers.gpu28_trace_runs import signature


def on_groups(calls: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for call in calls:
        if call["op"] != "new_group":
            groups[tuple(call["group_ranks"])].append(call)
    return groups


AFTER_THE_READ = {"ngpt_ds/train/checkpoint_load.py:_after_the_read": "ngpt_ds/train/checkpoint_load.py:_load_here"}
"""A rank whose read raised makes the collectives DeepSpeed's load_checkpoint makes after its reads itself."""


def site(call: dict) -> str | None:
    return AFTER_THE_READ.get(call["frame"], call["frame"])


def same_calls(record: dict, name: str) -> None:
    """Each group's ranks made the same calls in the same order, asked by the same ngpt_ds site."""
    per_rank = [on_groups(calls) for calls in record["trace"]]
    for group in set(per_rank[0]) | set(per_rank[1]):
        a, b = (per_rank[rank].get(group, []) for rank in (0, 1)) if len(group) == 2 else ([], [])
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            assert signature(x) == signature(y), f"{name}, group {group}, call {i}: rank 0 {x} / rank 1 {y}"
            assert site(x) == site(y), f"{name}, call {i}: asked by {x['frame']} on rank 0, {y['frame']} on 1"
        assert len(a) == len(b), f"{name}, group {group}: rank 0 made {len(a)} calls, rank 1 {len(b)}: {(a or b)[-1:]}"
    created = [[c["group_ranks"] for c in calls if c["op"] == "new_group"] for calls in record["trace"]]
    assert created[0] == created[1], name
