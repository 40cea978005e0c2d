"""The warning about another host's staging folder whose files are dated ahead of this host's clock says so.

The fault (red29, session 29): remove_abandoned counts a folder's age from its newest mtime or ctime; where those
are ahead of this host's clock (another node's clock ahead, a `touch -d` into the future) the age is negative and
the warning read 'last change 0.0 h ago' and 'removed once unchanged for 24 h', though it stays until this clock
passes that date plus 24 h: the operator waited a day for nothing. It now names how far ahead the date is.
"""

import os

from ngpt_ds.data import staging

from conftest import logged_warnings


def test_a_folder_dated_ahead_of_this_clock_is_left_and_the_warning_says_how_far(tmp_path, monkeypatch):
    final = tmp_path / "data"
    folder = final.parent / f".{final.name}.partial-0a1b2c3d"
    folder.mkdir()
    (folder / staging.OWNER_FILE).write_text("pid 4242 on node-a-elsewhere")
    newest = max(max(os.lstat(p).st_mtime, os.lstat(p).st_ctime) for p in (folder, *folder.iterdir()))
    monkeypatch.setattr(staging, "_now", lambda: newest - 50 * 3600)  # this clock 50 h behind the folder's dates
    with logged_warnings(staging.__name__) as lines:
        assert staging.remove_abandoned(final) == [] and folder.is_dir()
    assert len(lines) == 1
    assert (
        "may still be writing it (its last change is dated 50.0 h ahead of this host's clock: the clocks differ, "
        "and its age is counted from then). It is removed once unchanged for 24 h" in lines[0]
    ), lines[0]
