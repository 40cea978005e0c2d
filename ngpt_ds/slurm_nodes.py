"""Slurm's node list: its compressed host names expanded, and the first node, where rank 0 of a Slurm job listens
(ngpt_ds.distributed.discover asks for it when MASTER_ADDR is unset)."""

from __future__ import annotations

import itertools
import re
import socket
import subprocess

from ngpt_ds.errors import NgptConfigError


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list, as `scontrol show hostnames` expands it: 'gpu[01-03,7],login1' ->
    ['gpu01', 'gpu02', 'gpu03', 'gpu7', 'login1']; a name with several bracket groups takes every
    combination, the first group outermost ('rack[0-1]_blade[0-1]' -> rack0_blade0, rack0_blade1,
    rack1_blade0, rack1_blade1), each range keeping its first bound's zero padding. The fallback where
    scontrol cannot run: the old one read each bracket group as a host name of its own, and so a wrong
    first host (the master) on such clusters. A list it cannot read is refused, asking for MASTER_ADDR."""
    hosts: list[str] = []
    for name in _top_level_names(nodelist):
        pieces = re.split(r"\[([^\[\]]*)\]", name)  # even indices: literal text; odd: a bracket's ranges
        if any("[" in text or "]" in text for text in pieces[::2]):
            raise _unreadable_nodelist(nodelist)
        choices = [[text] if i % 2 == 0 else _expand_ranges(text, nodelist) for i, text in enumerate(pieces)]
        hosts.extend("".join(combination) for combination in itertools.product(*choices))
    return hosts


def _top_level_names(nodelist: str) -> list[str]:
    """The comma-separated names of a host list, commas inside brackets kept: 'a[1,3],b' -> ['a[1,3]', 'b']."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(nodelist[start:i])
            start = i + 1
    names.append(nodelist[start:])
    return [name.strip() for name in names if name.strip()]


def _expand_ranges(ranges: str, nodelist: str) -> list[str]:
    """One bracket's contents, '01-03,7' -> ['01', '02', '03', '7']."""
    values = []
    for part in ranges.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not (lo.isascii() and lo.isdigit()) or (dash and not (hi.isascii() and hi.isdigit() and int(hi) >= int(lo))):
            raise _unreadable_nodelist(nodelist)
        values.extend([lo] if not dash else [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)])
    return values


def _unreadable_nodelist(nodelist: str) -> NgptConfigError:
    return NgptConfigError(
        f"cannot read the Slurm node list {nodelist!r} (and `scontrol show hostnames` could not expand it): "
        "set MASTER_ADDR to the first node's address"
    )


def _scontrol(*args: str) -> str:
    """scontrol's output, '' when it cannot be run or fails."""
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _first_slurm_host(env: dict[str, str]) -> str:
    """The first node's name, or its NodeAddr, where Slurm itself reaches it, when the name does not resolve
    (slurm.conf NodeAddr=): every rank retried such a name until train.dist_timeout_s. Asked of slurmctld
    only then, not by every rank of every job."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    hosts = _scontrol("show", "hostnames", nodelist).split() or expand_nodelist(nodelist)
    if not hosts:
        raise NgptConfigError(
            "Slurm job without SLURM_JOB_NODELIST: cannot tell the master host. "
            "Start the job with sbatch/srun, or set MASTER_ADDR"
        )
    try:
        socket.getaddrinfo(hosts[0], None)
        return hosts[0]
    except (OSError, UnicodeError):
        node_addr = re.search(r"(?:^|\s)NodeAddr=(\S+)", _scontrol("-o", "show", "node", hosts[0]))
        return node_addr[1] if node_addr else hosts[0]
