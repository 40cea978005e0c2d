"""config.yaml, summary.json and the other run files written through summary.replace_file follow no link
at NAME.tmp (fault: the temporary file was opened with a plain open, so a symbolic link planted at
config.yaml.tmp or summary.json.tmp in a run folder someone handed over made the trainer overwrite the
file it pointed to).
"""

import os

import pytest


@pytest.mark.parametrize("name", ["config.yaml", "summary.json"])
def test_a_link_planted_at_the_temporary_name_is_replaced_not_followed(tmp_path, name):
    from ngpt_ds.train.summary import replace_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / f"{name}.tmp").symlink_to(victim)

    replace_file(run / name, "written: 1\n")

    assert victim.read_text() == "precious\n"
    assert (run / name).read_text() == "written: 1\n"
    assert not (run / name).is_symlink()
    assert sorted(os.listdir(run)) == [name]


def test_a_dangling_link_and_a_leftover_file_at_the_temporary_name(tmp_path):
    from ngpt_ds.train.summary import replace_file

    target = tmp_path / "not_yet"  # a link to nothing: a plain open created the file it names
    (tmp_path / "summary.json.tmp").symlink_to(target)
    replace_file(tmp_path / "summary.json", "{}\n")
    assert not target.exists()
    assert (tmp_path / "summary.json").read_text() == "{}\n"

    (tmp_path / "config.yaml.tmp").write_text("left by a killed write, longer than the new text\n")
    replace_file(tmp_path / "config.yaml", "a: 1\n")
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "summary.json"]
