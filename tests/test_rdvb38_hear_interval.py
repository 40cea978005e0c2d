"""How often the ranks in the rendezvous ask rank 0's store whether a rank could not join (rendezvous_peers.hear).

The fault: since d3dc2f3 every rank asked once a second (HEAR_S), whatever the job's size: 4,000 questions a second at
4,000 ranks, to the store that torch's own rendezvous runs on and that serves its clients in turn. Now the wait grows
with the world size past HEARD_PER_S ranks (world_size / 500 s), at least HEAR_S, with up to a quarter more at random,
so a small job still ends within about a second of the line (tests/test_rdv38_thread_limit.py, 2 ranks) and all the
ranks together ask about 500 times a second at most."""

from __future__ import annotations

import threading
import time

import pytest

from ngpt_ds import rendezvous_peers
from ngpt_ds.rendezvous_peers import HEAR_S, hear, hear_interval_s


@pytest.mark.parametrize("world_size", [2, 8, 64, 500, 501, 1000, 4000, 32768])
def test_the_interval_grows_with_the_world_size_and_the_store_is_asked_500_times_a_second_at_most(world_size):
    """Old code: "AttributeError: module 'ngpt_ds.rendezvous_peers' has no attribute 'hear_interval_s'" (the wait
    was HEAR_S, 1 s, at any size: 4,000 questions a second at 4,000 ranks)."""
    least, most = hear_interval_s(world_size, lambda: 0.0), hear_interval_s(world_size, lambda: 0.999999)
    base = max(1.0, world_size / 500)
    assert least == pytest.approx(base, rel=1e-12)
    assert most == pytest.approx(1.25 * base, rel=1e-5)
    assert world_size / least <= 500 * (1 + 1e-12)  # all the ranks together: 500 questions a second at most


def test_the_interval_at_4000_ranks_and_at_2():
    assert hear_interval_s(4000, lambda: 0.0) == 8.0
    assert hear_interval_s(4000, lambda: 0.5) == 9.0
    assert hear_interval_s(2, lambda: 0.0) == HEAR_S == 1.0
    assert hear_interval_s(2, lambda: 0.5) == 1.125
    draws = {hear_interval_s(2) for _ in range(50)}  # random: ranks started together do not ask together
    assert len(draws) > 40 and all(1.0 <= d < 1.25 for d in draws), draws


def _asked(world_size: int, body_s: float, until: int | None = None) -> list[float]:
    """When `hear` asked, over a body of `body_s` seconds (or, with `until`, until it has asked that many times, 60 s
    at most: a hang guard), in a job of `world_size` ranks."""
    asked: list[float] = []
    start = time.monotonic()

    def told() -> None:
        asked.append(time.monotonic() - start)

    with hear(told, 1, world_size):
        while time.monotonic() - start < (body_s if until is None else 60) and (until is None or len(asked) < until):
            time.sleep(0.05)
    time.sleep(0.05)  # a question under way when the body ended
    return asked


def test_a_rank_of_a_large_job_asks_seldom_and_one_of_a_small_job_each_second(monkeypatch):
    """Old code: "TypeError: hear() takes 2 positional arguments but 3 were given" (hear had no world size: a rank
    asked every second at any size). A rank of 4,000 asks not once in 4 s (its first question comes after 8 to 10 s);
    a rank of 2 waits before each question the interval hear_interval_s gave it, 1 to 1.25 s. Lower bounds only: a
    loaded machine makes the thread late, never early (it had asserted 2 or 3 questions in 3.6 s, the first within
    1.75 s, which a load of 20 can miss); the intervals' upper bound is hear_interval_s's, asserted above."""
    assert _asked(4000, 4.0) == []
    waits: list[float] = []
    real = rendezvous_peers.hear_interval_s

    def recorded(world_size: int, *args) -> float:
        waits.append(real(world_size, *args))
        return waits[-1]

    monkeypatch.setattr(rendezvous_peers, "hear_interval_s", recorded)
    small = _asked(2, 0, until=3)
    # each question came after a wait hear_interval_s gave (recorded): without that, the gaps' check held vacuously
    assert len(small) >= 3 and len(waits) >= len(small), (small, waits)
    assert all(1.0 <= wait < 1.25 for wait in waits), (small, waits)
    gaps = [later - earlier for earlier, later in zip([0.0, *small], small)]
    assert all(gap >= wait - 0.005 for gap, wait in zip(gaps, waits)), (gaps, waits)  # Event.wait's rounding
    assert not any(t.name == "ngpt_ds-rendezvous-hear" for t in threading.enumerate())  # ended with the body
