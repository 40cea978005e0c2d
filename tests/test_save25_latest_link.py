"""A `latest` that is a link to another file never shows that file's content (helper save25).

Fault: resume._repair_latest (at the start of every resume) read `checkpoints/latest` through a symbolic link
and, when it did not name the newest checkpoint, printed its first 80 characters: a run folder handed over with
`latest` linked to /etc/shadow or a private key put the start of that file into the run's log (for a trainer run
as root, root's password hash). The link is now replaced by a file naming the newest checkpoint and its target's
content is not shown; the file it pointed to is left untouched.
"""

from pathlib import Path

from ngpt_ds.train import checkpoint, manifest, resume

SECRET = "root:$6$saltsalt$ThisIsTheHashThatMustNotBeLogged:19000:0:99999:7:::\n"


def _complete(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"W" * 100)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def test_a_latest_linked_to_another_file_is_replaced_without_showing_its_content(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete(checkpoints / "step_00000002", 2)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    (checkpoints / "latest").symlink_to(secret)
    said = resume._repair_latest(checkpoints)
    assert said == (
        "checkpoints/latest was a symbolic link to a file not naming step_00000002; it is a file naming "
        "step_00000002 now"
    )
    assert "Hash" not in said and "root" not in said
    assert not (checkpoints / "latest").is_symlink()
    assert (checkpoints / "latest").read_text() == "step_00000002"
    assert secret.read_text() == SECRET


def test_a_latest_linked_to_the_right_name_is_left_alone(tmp_path):
    """What the fix keeps: a run kept as links (`cp -rs`) whose `latest` names the newest step is not touched."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete(checkpoints / "step_00000002", 2)
    original = tmp_path / "original_latest"
    original.write_text("step_00000002")
    (checkpoints / "latest").symlink_to(original)
    assert resume._repair_latest(checkpoints) is None
    assert (checkpoints / "latest").is_symlink() and checkpoint.LATEST == "latest"
