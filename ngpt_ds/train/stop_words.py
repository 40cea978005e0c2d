"""The words of a stop request, sent from the rank that asked to the others (`StopRequest.learn_who_asked`).

Every rank's stop line, and rank 0's summary.json, name the rank that asked to stop and why: its signal, its
launcher's exit, or its --max-time limit with the figures of that one rank (README "Stopping a run"). The request
travels as a fixed number of UTF-8 bytes, so that every rank's collective has the same size; a reason longer than
that (none is) is cut short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PAYLOAD_BYTES = 512
MAX_TIME_REACHED = "--max-time reached"
"""The reason of a rank whose limit passed during a step (its margin did not stop it in time)."""


@dataclass
class Told:
    words: str
    """What the stop line says: the rank, its reason, its figures."""
    early_s: float | None
    margin_parts: tuple[float, float, float] | None


def margin_reason(early_s: float) -> str:
    """A rank's own words for its --max-time margin's stop."""
    return f"--max-time: stopping {early_s:.1f} s early so that the last step and its save end before the limit"


def margin_reason_of(rank: int, early_s: float, limit_s: float, parts: tuple[float, float, float]) -> str:
    """The words for another rank's --max-time margin: that rank, how early, its limit and its margin's parts (one
    rank's figures: a maximum over the ranks had mixed two ranks' figures when both tripped in the same step)."""
    step, evaluation, save = parts
    kept = f"the longest recent step {step:.1f} s" + (f" + its evaluation {evaluation:.1f} s" if evaluation else "")
    return (
        f"--max-time on rank {rank}: stopping {early_s:.1f} s early so that the last step and its save end before its "
        f"limit, {limit_s:g} s after its start; one more step would not fit: {kept} + the save {save:.1f} s"
    )


def encode(
    rank: int,
    reason: str | None,
    limit_s: float | None,
    early_s: float | None,
    margin_parts: tuple[float, float, float] | None,
) -> list[int]:
    """This rank's request as PAYLOAD_BYTES byte values (zeros after the JSON text)."""
    record = {"rank": rank, "reason": reason or "", "limit": limit_s, "early": early_s, "parts": margin_parts}
    data = json.dumps(record).encode()
    while len(data) > PAYLOAD_BYTES:  # only a reason of hundreds of characters: cut it, keep the figures
        record["reason"] = str(record["reason"])[: -max(1, len(data) - PAYLOAD_BYTES)]
        data = json.dumps(record).encode()
    return list(data) + [0] * (PAYLOAD_BYTES - len(data))


def decode(values: list[int]) -> Told:
    """The stop line's words for the request `encode` sent."""
    text = bytes(v for v in values if v).decode("utf-8", errors="replace")
    record = json.loads(text)
    rank, reason, limit = int(record["rank"]), str(record["reason"]), record["limit"]
    early, parts = record["early"], record["parts"]
    if early is not None and parts is not None and reason != MAX_TIME_REACHED:
        step, evaluation, save = (float(p) for p in parts)
        figures = (step, evaluation, save)
        return Told(margin_reason_of(rank, float(early), float(limit or 0.0), figures), float(early), figures)
    if reason == MAX_TIME_REACHED:
        return Told(f"rank {rank}: {MAX_TIME_REACHED}, its limit {float(limit or 0.0):g} s after its start", None, None)
    return Told(f"rank {rank}: {reason}", None, None)
