"""A verification this process remembered is not used once a link to a folder was put into the checkpoint.

The fault (red29, session 29): verified_here.fingerprint listed the checkpoint's files (os.walk's file names) and
not its folders: a link to a folder put in after the verification (`verify` refuses one: 'a checkpoint holds only
folders and regular files') is listed by os.walk among the folders, not entered, and left the fingerprint as it
was, so the resume passed a folder that a verification now refuses. Folders count in the fingerprint now.
"""

from test_checkpoint_verify_ranks import fake_checkpoint

from ngpt_ds.train import verified_here
from ngpt_ds.train.manifest import verify


def test_a_link_to_a_folder_added_after_the_verification_is_seen(tmp_path):
    folder = fake_checkpoint(tmp_path / "step_00000002", 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mp_rank_00_model_states.pt").write_bytes(b"\x00" * 6000)
    verified_here.forget()
    assert verify(folder) is None
    verified_here.remember(verified_here.fingerprint(folder))
    (folder / "global_step2").symlink_to(elsewhere)
    assert (
        verify(folder)
        == f"{folder / 'global_step2'} is a link to a folder; a checkpoint holds only folders and regular files"
    )
    assert not verified_here.take(folder)  # old code: True, the link unseen


def test_a_folder_added_or_replaced_by_a_link_is_seen_and_an_untouched_one_is_trusted(tmp_path):
    folder = fake_checkpoint(tmp_path / "step_00000002", 2)
    (folder / "sub").mkdir()
    verified_here.forget()
    verified_here.remember(verified_here.fingerprint(folder))
    assert verified_here.take(folder)  # unchanged: trusted once
    verified_here.remember(verified_here.fingerprint(folder))
    (folder / "sub").rmdir()
    (folder / "sub").symlink_to(tmp_path)
    assert not verified_here.take(folder)
