"""Fault (left32): a live staging folder of another machine bearing this host's name was removed at once.

A staging folder's lock file names its writer as 'pid N on HOST', and a free lock was trusted whenever HOST was this
host's name: on the same machine flock is exact. But a host name is no machine's identity: containers started with
one `--hostname` on several nodes, images that all call themselves `localhost`, bear one name on many machines, and
where flock stays on one node (Lustre `localflock`, NFS `local_lock=flock`) the lock of a folder node A is writing
looks free on node B. B's preparation of the same output removed A's live folder at once, with no watch and no age.
The writer's beat file now names its boot id (the kernel's, shared by every container on one node): a folder of
this host's name whose beat names another boot is watched WATCH_S for a change, like another host's.

Node A is a real process (the writing side's code, this host's real name, its boot id set to another machine's, its
flock released as node B sees it under localflock); node B is this process. Old code: B's remove_abandoned returned
[A's folder] and deleted it while A still wrote.
"""

import socket
import subprocess
import sys
import time

import pytest

from ngpt_ds.data import staging, staging_beat

from conftest import REPO, logged_warnings

OTHER_BOOT = "00000000-1111-2222-3333-444444444444"
WRITER = f"""
import fcntl, sys
from pathlib import Path
from ngpt_ds.data import staging, staging_beat
staging_beat.BEAT_S = 0.05
staging_beat.BOOT_ID = "{OTHER_BOOT}"  # another machine of the same host name
folder = staging.staging_dir(Path(sys.argv[1]))
(folder / "train_000000.bin").write_bytes(b"\\x01\\x00" * 1000)
fcntl.flock(staging._held[folder], fcntl.LOCK_UN)  # free, as node B sees node A's lock under localflock
print(folder, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def writer(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_folder_of_another_machine_of_this_host_name_is_left(tmp_path, writer, monkeypatch):
    assert staging_beat.BOOT_ID and staging_beat.BOOT_ID != OTHER_BOOT  # Linux: this machine has a boot id
    final = tmp_path / "data"
    folder = tmp_path / writer.stdout.readline().strip()
    assert folder.parent == tmp_path
    host = socket.gethostname()
    assert staging._owner_line(folder) == f"pid {writer.pid} on {host}"  # this host's name, as the old code trusted
    monkeypatch.setattr(staging_beat, "WATCH_S", 3.0)  # the writer beats every 0.05 s
    with logged_warnings(staging.__name__) as lines:
        assert staging.remove_abandoned(final) == []  # old code: [folder], deleted under its writer
        assert (folder / "train_000000.bin").stat().st_size == 2000
        assert lines == [
            f"left {folder}: its lock is free here and it names this host's name (pid {writer.pid} on {host}), but "
            f"its heartbeat (.owner.beat) names another boot ({OTHER_BOOT}, this one is {staging_beat.BOOT_ID}) and "
            "changed within 3 s: another machine of the same host name is still writing it. Give the nodes distinct "
            "host names (a container's --hostname), or wait for it to finish"
        ], lines
        # The writer dies (or its node rebooted): the beat stops, and the folder goes after one watch.
        writer.kill()
        writer.wait()
        started = time.monotonic()
        assert staging.remove_abandoned(final) == [folder]
        assert 3.0 <= time.monotonic() - started < 15.0  # one watch of WATCH_S, never a day of age
        assert not folder.exists()
        assert lines[1] == f"removed {folder}: left by an interrupted preparation of {final}", lines[1]


def test_this_machines_own_dead_folder_goes_at_once(tmp_path):
    """Not a fault: a folder of this boot (its beat names this machine's boot id) or of an older ngpt_ds (no beat
    file, or a beat naming no boot) whose lock is free goes at once, without a watch: flock on one kernel is exact."""
    final = tmp_path / "data"
    beats = {
        "0a0a0a0a": f"beat 000000000007 boot {staging_beat.BOOT_ID}\n",
        "0b0b0b0b": None,
        "0c0c0c0c": "beat 000000000007\n",
        "0d0d0d0d": "beat 000000000007 boot \x1b[2J\n",  # no boot id: never shown, never compared
    }
    for tag, beat in beats.items():
        folder = tmp_path / f".data.partial-{tag}"
        folder.mkdir()
        (folder / staging.OWNER_FILE).write_text(f"pid 999999 on {socket.gethostname()}")
        if beat is not None:
            (folder / staging_beat.BEAT_FILE).write_text(beat)
    started = time.monotonic()
    assert staging.remove_abandoned(final) == sorted(tmp_path / f".data.partial-{tag}" for tag in beats)
    assert time.monotonic() - started < staging_beat.WATCH_S / 10
    assert list(tmp_path.iterdir()) == []


def test_the_beat_names_this_boot(tmp_path):
    """The writer's beat file names this machine's boot id from its first beat."""
    folder = staging.staging_dir(tmp_path / "data")
    try:
        seen = staging_beat.read(folder)
        assert seen is not None and seen[0] == f"beat 000000000000 boot {staging_beat.BOOT_ID}\n".encode()
        assert staging_beat.boot_of(seen) == staging_beat.BOOT_ID and staging_beat.other_boot(folder) == ""
    finally:
        staging.remove_staging(folder)
