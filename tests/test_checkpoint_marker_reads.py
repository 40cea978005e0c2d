"""How much of a checkpoint's COMPLETE file is read, and through what.

Faults (checkpoint review s15): read_manifest and marker_digest read COMPLETE whole, several times per
checkpoint on every rank: a valid manifest padded to 400 MB took 1 GB of memory and 14 s, and was accepted; a
COMPLETE that is a link was followed (to a huge file, to any file of the machine), and a valid manifest reached
through a link was accepted. COMPLETE is now read only as a regular file of at most MAX_COMPLETE_BYTES (16 MiB):
a manifest takes about 90 bytes per file listed plus its path (143 bytes a file in a ZeRO-2 save of 3 files, 117
in a universal checkpoint of 16), so the cap holds over 100,000 files of 150-byte paths.
"""

import os
import threading
from pathlib import Path

import pytest

from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.resume import newest_intact

from conftest import peak_python_bytes

LIMIT = 16 * 2**20
"""manifest.MAX_COMPLETE_BYTES"""
REFUSED = (
    f"; a COMPLETE marker is a regular file of at most {LIMIT // 2**20} MiB, so it was not read "
    "(the checkpoint was altered)"
)


def _checkpoint(folder: Path, step: int = 2) -> Path:
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"A" * 100)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def _padded_to(folder: Path, size: int) -> None:
    """Pad the manifest with spaces inside its JSON object: still a valid manifest, `size` bytes in all."""
    text = (folder / manifest.COMPLETE).read_text()
    cut = text.rindex("}")
    (folder / manifest.COMPLETE).write_text(text[:cut] + " " * (size - len(text)) + text[cut:])
    assert (folder / manifest.COMPLETE).stat().st_size == size


def test_a_manifest_of_the_cap_is_read_and_one_byte_more_is_refused_unread(tmp_path):
    folder = _checkpoint(tmp_path / "step_00000002")
    _padded_to(folder, LIMIT)
    assert manifest.verify(folder) is None
    assert manifest.checkpoint_bytes(folder) == 100 and manifest.marker_digest(folder) is not None
    _padded_to(folder, LIMIT + 1)
    marker = folder / manifest.COMPLETE
    expected = f"{marker} holds {LIMIT + 1} bytes{REFUSED}"
    assert manifest.verify(folder) == expected
    with pytest.raises(manifest.MalformedManifest) as refused:
        manifest.read_manifest(folder)
    assert str(refused.value) == expected
    assert manifest.marker_digest(folder) is None and manifest.checkpoint_bytes(folder) is None
    assert manifest.is_legacy(folder) is False and manifest.newer_format(folder) is None
    assert manifest.MAX_COMPLETE_BYTES == LIMIT


def test_a_huge_complete_is_refused_from_its_size_without_reading_it(tmp_path):
    """A 400 MB COMPLETE (sparse: nothing on the disk): the old code read it whole, three times per verify."""
    folder = _checkpoint(tmp_path / "step_00000002")
    marker = folder / manifest.COMPLETE
    os.truncate(marker, 400 * 2**20)
    answers = []
    peak = peak_python_bytes(lambda: answers.extend([manifest.verify(folder), manifest.marker_digest(folder)]))
    assert answers == [f"{marker} holds {400 * 2**20} bytes{REFUSED}", None]
    assert peak < 2**20


def test_a_complete_that_is_a_link_to_a_valid_manifest_is_read_as_every_file_of_a_checkpoint_copied_as_links(
    tmp_path,
):
    """Stores that keep files as links (git-annex, DVC, `cp -rs`) hold COMPLETE as a link too: it is followed,
    as the checkpoint's other files are."""
    real = _checkpoint(tmp_path / "real")
    folder = tmp_path / "step_00000002"
    folder.mkdir()
    (folder / "mp_rank_00_model_states.pt").symlink_to(real / "mp_rank_00_model_states.pt")
    (folder / manifest.COMPLETE).symlink_to(real / manifest.COMPLETE)
    assert manifest.verify(folder) is None
    assert manifest.read_manifest(folder) == manifest.read_manifest(real)
    assert manifest.marker_digest(folder) == manifest.marker_digest(real) is not None


def test_a_complete_that_is_a_link_to_a_huge_file_is_not_read(tmp_path):
    folder = _checkpoint(tmp_path / "step_00000002")
    huge = tmp_path / "huge"
    huge.write_bytes(b"")
    os.truncate(huge, 400 * 2**20)
    (folder / manifest.COMPLETE).unlink()
    (folder / manifest.COMPLETE).symlink_to(huge)
    answers = []
    peak = peak_python_bytes(lambda: answers.extend([manifest.marker_digest(folder), manifest.verify(folder)]))
    assert answers == [None, f"{folder / manifest.COMPLETE} holds {400 * 2**20} bytes{REFUSED}"]
    assert peak < 2**20


def test_a_complete_that_is_a_folder_is_refused_naming_it(tmp_path):
    folder = _checkpoint(tmp_path / "step_00000002")
    (folder / manifest.COMPLETE).unlink()
    (folder / manifest.COMPLETE).mkdir()
    with pytest.raises(manifest.MalformedManifest) as refused:
        manifest.read_manifest(folder)
    assert str(refused.value) == f"{folder / manifest.COMPLETE} is a folder{REFUSED}"
    assert manifest.marker_digest(folder) is None


def test_a_complete_that_is_a_named_pipe_is_refused_without_waiting(tmp_path):
    folder = _checkpoint(tmp_path / "step_00000002")
    marker = folder / manifest.COMPLETE
    marker.unlink()
    os.mkfifo(marker)
    answers: list[object] = []
    reader = threading.Thread(target=lambda: answers.append(manifest.marker_digest(folder)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # the old code waits in open() for a writer: give it one, so the thread ends
        fd = os.open(marker, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        reader.join(timeout=30)
    assert answers == [None]
    with pytest.raises(manifest.MalformedManifest) as refused:
        manifest.read_manifest(folder)
    assert str(refused.value) == f"{marker} is a named pipe{REFUSED}"


def test_a_checkpoint_with_a_refused_complete_is_skipped_by_resume_for_the_one_before(tmp_path):
    checkpoints = tmp_path / "run" / checkpoint.CHECKPOINTS
    _checkpoint(checkpoints / "step_00000002", 2)
    newest = _checkpoint(checkpoints / "step_00000004", 4)
    _padded_to(newest, LIMIT + 1)
    warnings: list[str] = []
    assert newest_intact(checkpoints, warn=warnings.append) == checkpoints / "step_00000002"
    expected = f"{newest / manifest.COMPLETE} holds {LIMIT + 1} bytes{REFUSED}"
    assert warnings == [f"warning: skipping checkpoint step_00000004: {expected}. Using the one before it"]
