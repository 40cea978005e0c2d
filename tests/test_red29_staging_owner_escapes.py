"""A staging folder's lock file is shown with its control characters escaped, never sent to the terminal as they are.

The fault (red29, session 29): the owner line of another host's staging folder ('pid N on HOST', read from its lock
file) went into the warnings and errors as it was. A crafted lock file in a shared dataset folder could send
terminal escapes ('\\x1b[2J' clears the screen, '\\x1b]0;...\\x07' sets the title; some terminals act on more) to
whoever ran prepare or a training run beside it.
"""

from ngpt_ds.data import staging

from conftest import logged_warnings


def test_the_owner_line_of_a_crafted_lock_file_is_escaped(tmp_path):
    final = tmp_path / "data"
    folder = final.parent / f".{final.name}.partial-0a1b2c3d"
    folder.mkdir()
    (folder / staging.OWNER_FILE).write_bytes(b"pid 4242 on evil\x1b[2J\x1b]0;owned\x07host")
    with logged_warnings(staging.__name__) as lines:
        assert staging.remove_abandoned(final) == [] and folder.is_dir()
    assert len(lines) == 1
    assert not any(ord(c) < 32 or ord(c) == 127 for c in lines[0]), repr(lines[0])
    assert "made on evil\\x1b[2J\\x1b]0;owned\\x07host (pid 4242 on evil\\x1b[2J\\x1b]0;owned\\x07host)" in lines[0]
    assert staging._owner_line(folder) == "pid 4242 on evil\\x1b[2J\\x1b]0;owned\\x07host"
