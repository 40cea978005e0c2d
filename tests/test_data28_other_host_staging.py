"""Fault (data28): where flock stays on one node (Lustre `localflock`, NFS `local_lock=flock`), the lock of a staging
folder node A is writing looks free on node B, and a preparation of the same output on B (`staging_dir` ->
`remove_abandoned`) deleted A's live folder under it. A free lock is now trusted only for a folder whose lock file
names this host (or no host: a full disk left the line empty); another host's folder stays, with a warning naming
that host, until nothing in it has changed for OTHER_HOST_IDLE_S.

Node A is stood in for by a staging folder made by hand, its owner line naming another host, its lock free (as on
node B with a node-local flock). Old code: remove_abandoned returned [that folder] and deleted it.
"""

import os
import socket

import pytest

from ngpt_ds.data import staging

from conftest import logged_warnings


@pytest.fixture
def warnings_of_staging():
    """The warning lines ngpt_ds.data.staging logs (its logger may not propagate once ngpt_ds.log is set up)."""
    with logged_warnings(staging.__name__) as lines:
        yield lines


def staging_folder(final, owner_line: str, tag: str = "0a1b2c3d"):
    """A staging folder of `final` as `staging_dir` writes it (lock file with its owner line, a shard), unlocked."""
    folder = final.parent / f".{final.name}.partial-{tag}"
    folder.mkdir()
    (folder / staging.OWNER_FILE).write_text(owner_line)
    (folder / "train_000000.bin").write_bytes(b"\x01\x00" * 1000)
    return folder


def test_another_hosts_live_staging_folder_is_left_with_a_warning(tmp_path, warnings_of_staging):
    final = tmp_path / "data"
    folder = staging_folder(final, "pid 4242 on node-a-elsewhere")
    assert staging.remove_abandoned(final) == []  # old code: [folder], and the folder deleted
    assert (folder / "train_000000.bin").stat().st_size == 2000
    assert len(warnings_of_staging) == 1
    assert warnings_of_staging[0].startswith(
        f"left {folder}: its lock is free here, but it was made on node-a-elsewhere (pid 4242 on node-a-elsewhere), "
        "and where file locks stay on one node (Lustre localflock, NFS local_lock=flock) that preparation may "
        "still be writing it (last change 0.0 h ago). It is removed once unchanged for 24 h; if that process is "
        f"gone, remove it now: rm -r {folder}"
    ), warnings_of_staging[0]
    # A new staging folder of the same output (what a preparation on node B makes) leaves it too.
    mine = staging.staging_dir(final)
    try:
        assert folder.is_dir() and mine.is_dir() and mine != folder
    finally:
        staging.remove_staging(mine)
    # A run waiting for the dataset is told it may be under way on that host.
    assert staging.missing_hint(final) == (
        f"but {folder.name} beside it is a preparation of it started on node-a-elsewhere (pid 4242 on "
        "node-a-elsewhere): wait for it if it still runs there (the folder appears only when complete), or run it "
        "again"
    )


def test_another_hosts_folder_unchanged_for_a_day_is_removed(tmp_path, monkeypatch, warnings_of_staging):
    final = tmp_path / "data"
    folder = staging_folder(final, "pid 4242 on node-a-elsewhere")
    newest = max(max(os.lstat(p).st_mtime, os.lstat(p).st_ctime) for p in (folder, *folder.iterdir()))
    monkeypatch.setattr(staging, "_now", lambda: newest + staging.OTHER_HOST_IDLE_S - 60)  # a minute short
    assert staging.remove_abandoned(final) == [] and folder.is_dir()
    assert "(last change 24.0 h ago)" in warnings_of_staging[0]
    monkeypatch.setattr(staging, "_now", lambda: newest + staging.OTHER_HOST_IDLE_S + 60)
    assert staging.remove_abandoned(final) == [folder]
    assert not folder.exists()
    assert warnings_of_staging[1] == (
        f"removed {folder}: left by an interrupted preparation of {final} on node-a-elsewhere, unchanged for 24.0 h"
    )


@pytest.mark.parametrize("line", ["this host", ""])
def test_this_hosts_abandoned_folder_is_removed_at_once_as_before(tmp_path, line, warnings_of_staging):
    """Not a fault of the old code: guards it. Same host (its lock is trusted), or no owner line (a full disk)."""
    final = tmp_path / "data"
    folder = staging_folder(final, f"pid 4242 on {socket.gethostname()}" if line else "")
    assert staging.remove_abandoned(final) == [folder]
    assert not folder.exists()
    assert warnings_of_staging == [f"removed {folder}: left by an interrupted preparation of {final}"]
