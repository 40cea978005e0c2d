"""The 'rm -r' a warning about another host's staging folder suggests is quoted for the shell.

The fault (red29, session 29): remove_abandoned's warning ended in `rm -r {folder}` unquoted. The folder is named
after the dataset (`.<name>.partial-<id>`): for --out 'my corpus' the line pasted removed '.my' and
'corpus.partial-<id>' instead, and a name holding '$(...)' or ';' ran it.
"""

import shlex

import pytest

from ngpt_ds.data import staging

from conftest import logged_warnings


@pytest.fixture
def warnings_of_staging():
    with logged_warnings(staging.__name__) as lines:
        yield lines


@pytest.mark.parametrize("name", ["my corpus", "data;touch x", "d$(touch x)", "it's"])
def test_the_suggested_rm_names_exactly_the_staging_folder(tmp_path, warnings_of_staging, name):
    final = tmp_path / name
    folder = final.parent / f".{final.name}.partial-0a1b2c3d"
    folder.mkdir()
    (folder / staging.OWNER_FILE).write_text("pid 4242 on node-a-elsewhere")
    assert staging.remove_abandoned(final) == [] and folder.is_dir()
    assert len(warnings_of_staging) == 1
    command = warnings_of_staging[0].rsplit("remove it now: ", 1)[1]
    assert shlex.split(command) == ["rm", "-r", str(folder)]
