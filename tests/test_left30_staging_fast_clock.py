"""Fault (left30): a host whose clock runs far ahead removed another host's live staging folder.

Where flock stays on one node (Lustre `localflock`, NFS `local_lock=flock`), node B sees the lock of node A's staging
folder free, and judged the folder by the age of its files on B's clock: a day unchanged, it was removed. With B's
clock two days ahead (NTP failed there, a clock set by hand), A's live folder looked two days old and B deleted it
under A. The writer now rewrites a beat file every few seconds (ngpt_ds.data.staging_beat), and B reads it twice,
WATCH_S apart, before it removes anything: a change is a live writer, whatever either clock says.

Node A is a real process (the writing side's code, its host named node-a-elsewhere, its flock released as node B
sees it under localflock); node B is this process, its clock moved 48 h ahead (staging._now). Old code: B's
remove_abandoned returned [A's folder] and deleted it while A still wrote.
"""

import subprocess
import sys
import time

import pytest

from ngpt_ds.data import staging, staging_beat

from conftest import REPO, logged_warnings

WRITER = """
import fcntl, socket, sys
from pathlib import Path
socket.gethostname = lambda: "node-a-elsewhere"  # the host its lock file names
from ngpt_ds.data import staging, staging_beat
staging_beat.BEAT_S = 0.05
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


def test_a_live_folder_of_another_host_survives_a_clock_two_days_ahead(tmp_path, writer, monkeypatch):
    final = tmp_path / "data"
    folder = tmp_path / writer.stdout.readline().strip()
    assert folder.parent == tmp_path
    monkeypatch.setattr(staging, "_now", lambda: time.time() + 48 * 3600)  # node B's clock, this process only
    monkeypatch.setattr(staging_beat, "WATCH_S", 3.0)  # the writer beats every 0.05 s
    with logged_warnings(staging.__name__) as lines:
        assert staging.remove_abandoned(final) == []  # old code: [folder], deleted under its writer
        assert (folder / "train_000000.bin").stat().st_size == 2000 and (folder / staging_beat.BEAT_FILE).is_file()
        assert len(lines) == 1, lines
        assert lines[0] == (
            f"left {folder}: its lock is free here and by this host's clock nothing in it changed for 48.0 h, but "
            f"its heartbeat (.owner.beat) changed within 3 s: the preparation on node-a-elsewhere (pid {writer.pid} "
            "on node-a-elsewhere) is still writing it, and this host's clock is likely ahead of node-a-elsewhere's "
            "(compare `date -u` on both)"
        ), lines[0]
        # The writer dies (its node lost): no beat comes any more, and the folder goes.
        writer.kill()
        writer.wait()
        assert staging.remove_abandoned(final) == [folder]
        assert not folder.exists()
        assert lines[1] == (
            f"removed {folder}: left by an interrupted preparation of {final} on node-a-elsewhere, unchanged for 48.0 h"
        ), lines[1]


def test_the_beat_file_never_reaches_the_dataset(tmp_path):
    """Not a fault: the beat file goes with the lock file when the folder is published, and its beat stops."""
    final = tmp_path / "data"
    folder = staging.staging_dir(final)
    assert sorted(p.name for p in folder.iterdir()) == [".owner", ".owner.beat"]
    (folder / "meta.json").write_text("{}")
    staging.swap_in(folder, final, overwrite=False)
    assert sorted(p.name for p in final.iterdir()) == ["meta.json"]
    assert staging._beats == {} and staging_beat._beating == {}
