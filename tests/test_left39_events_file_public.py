"""Fault: after --out was moved between the run's lock and the SummaryWriter (whose makedirs made <old
--out>/tensorboard again), metrics.MetricsLogger found the events file the writer had made there through TensorBoard's
private attribute EventFileWriter._file_name (tensorboard 2.21) to remove it: a release that renames it left the events
file and the folder at the old place, with no word. Now the file is found by listing the folder before and after the
writer starts (out_moved.names_in, out_moved.events_made), TensorBoard's public file naming; another program's file
there stays. The 2-rank runs of tests/test_outb38_moved_out_ranks.py keep the behaviour end to end.

In-process: the run's hold of --out (out_moved.hold, as run_lock.lock_run takes it), an os.rename of it, then the
metrics logger; EventFileWriter made to keep its file's name under another attribute, as a release may."""

from __future__ import annotations

import os

import pytest
from tensorboard.summary.writer import event_file_writer

from ngpt_ds.train import metrics, out_moved


@pytest.fixture
def private_name_renamed(monkeypatch):
    """EventFileWriter with its file's name under another private attribute (what a release may do)."""
    init = event_file_writer.EventFileWriter.__init__

    def renamed(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._path_of_file = self.__dict__.pop("_file_name")

    monkeypatch.setattr(event_file_writer.EventFileWriter, "__init__", renamed)


@pytest.mark.parametrize("other", [False, True])
def test_the_events_file_made_at_the_old_place_goes_without_tensorboards_private_name(
    tmp_path, private_name_renamed, other
):
    """Old code: 'assert ['tensorboard', 'tensorboard/events.out.tfevents...'] == []' (other: the events file beside
    other.txt)."""
    out, moved = tmp_path / "run", tmp_path / "moved"
    out.mkdir()
    out_moved.hold(out, anew=True)
    try:
        os.rename(out, moved)
        if other:  # another program's file at the old place, made before the writer starts: never the run's
            (out / "tensorboard").mkdir(parents=True)
            (out / "tensorboard" / "other.txt").write_text("not the run's")
        logger = metrics.MetricsLogger(out, enabled=True)
    finally:
        with_fd = out_moved._held.pop(str(out.absolute()), None)
        if with_fd is not None:
            os.close(with_fd)
    assert logger.writer is None and logger.problem is not None
    assert logger.problem.startswith(f"the metrics could not be written to {out / 'tensorboard'} (--out was moved")
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert left == (["tensorboard", "tensorboard/other.txt"] if other else []), left
    assert not (moved / "tensorboard").exists()


def test_events_made_names_only_the_new_events_files(tmp_path):
    """A guard of the listing: an events file there before, and a file of another name made after, are not the
    writer's."""
    (tmp_path / "events.out.tfevents.1.old.1.0").write_bytes(b"")
    before = out_moved.names_in(tmp_path)
    (tmp_path / "events.out.tfevents.2.host.7.0").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert out_moved.events_made(tmp_path, before) == [tmp_path / "events.out.tfevents.2.host.7.0"]
    assert out_moved.names_in(tmp_path / "missing") == set()
