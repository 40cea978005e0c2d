"""Files planted in a checkpoints folder someone received (or left by an odd copy) where a save writes or removes
its temporary files.

Faults (checkpoint review s15): `latest.tmp` was written with Path.write_text, which follows a link: a link
planted at checkpoints/latest.tmp made the trainer truncate and overwrite the file it pointed to (any file, for
a trainer run as root) with the name of the newest step, and `latest` then became that link. COMPLETE.tmp was
written the same way. A link planted as step_N.tmp-save made every save fail ('cannot prepare ...: torch.save
failed (Cannot call rmtree on a symbolic link)', exit 74): shutil.rmtree refuses links, and any OSError without
an errno was described as a torch.save failure.
"""

import os
import shutil
import stat
import sys
from pathlib import Path

from ngpt_ds.train import checkpoint, fs_errors, manifest

from conftest import REPO, tiny_ngpt, tiny_train, torchrun, train_run, write_run_configs

WORKER = REPO / "tests" / "workers" / "checkpoint_fault_worker.py"
PRECIOUS = "precious\n"


def _complete_step(checkpoints: Path, step: int) -> Path:
    folder = checkpoints / checkpoint.tag_for(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"A" * 1000)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    return victim


def test_point_latest_replaces_a_planted_latest_tmp_link_and_leaves_its_target_alone(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 2)
    victim = _victim(tmp_path)
    (checkpoints / "latest.tmp").symlink_to(victim)
    checkpoint.point_latest(checkpoints)
    assert victim.read_text() == PRECIOUS  # the old code wrote 'step_00000002' into it
    latest = checkpoints / checkpoint.LATEST
    assert not latest.is_symlink() and latest.read_text() == "step_00000002"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]


def test_point_latest_replaces_a_dangling_latest_tmp_link_without_creating_its_target(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 2)
    (checkpoints / "latest.tmp").symlink_to(tmp_path / "created-through-the-link")
    checkpoint.point_latest(checkpoints)
    assert not (tmp_path / "created-through-the-link").exists()
    assert (checkpoints / checkpoint.LATEST).read_text() == "step_00000002"
    assert not (checkpoints / checkpoint.LATEST).is_symlink()


def test_write_manifest_replaces_a_planted_complete_tmp_link_and_leaves_its_target_alone(tmp_path):
    folder = tmp_path / "step_00000002.tmp-save"
    folder.mkdir()
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"A" * 1000)
    victim = _victim(tmp_path)
    (folder / "COMPLETE.tmp").symlink_to(victim)
    manifest.write_manifest(folder, manifest.build_manifest(folder, 2))
    assert victim.read_text() == PRECIOUS
    marker = folder / manifest.COMPLETE
    assert not marker.is_symlink() and manifest.read_manifest(folder)["step"] == 2
    assert manifest.verify(folder) is None
    assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "mp_rank_00_model_states.pt"]


def test_latest_is_synced_before_it_replaces_the_old_one_and_a_failed_sync_leaves_no_temporary_file(
    tmp_path, monkeypatch
):
    """The new `latest` reaches the disk before its rename (the old code did not fsync it: a crash could leave
    an empty `latest`); when that fails (a full disk), neither latest.tmp nor a new `latest` is left."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 2)
    (checkpoints / checkpoint.LATEST).write_text("step_00000000")

    def disk_full(fd):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "fsync", disk_full)
    try:
        checkpoint.point_latest(checkpoints)
    except OSError as err:
        assert err.errno == 28
    else:
        raise AssertionError("point_latest did not raise")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]
    assert (checkpoints / checkpoint.LATEST).read_text() == "step_00000000"


class _Engine:
    module = None  # _before_save sizes the save from the newest complete checkpoint: no engine needed


def test_leftover_links_named_like_interrupted_saves_are_removed_not_followed(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 2)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "file").write_text(PRECIOUS)
    victim = _victim(tmp_path)
    (checkpoints / "step_00000003.tmp-save").symlink_to(kept, target_is_directory=True)
    (checkpoints / "step_00000004.tmp-save").symlink_to(victim)
    (checkpoints / "step_00000005.tmp-save").symlink_to(tmp_path / "nothing")
    (checkpoints / "step_00000006.tmp-replaced").symlink_to(kept, target_is_directory=True)
    (checkpoints / "step_00000007.tmp-save").write_text("a file, not a folder")
    (checkpoints / "step_00000008.tmp-save").mkdir()
    (checkpoints / "step_00000008.tmp-save" / "part.pt").write_bytes(b"B" * 10)
    assert checkpoint._before_save(_Engine(), checkpoints, 9) is None  # type: ignore[arg-type]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002"]
    assert (kept / "file").read_text() == PRECIOUS and victim.read_text() == PRECIOUS


def test_an_os_error_without_an_errno_is_described_by_its_type_not_as_a_torch_save_failure(tmp_path):
    link_error = OSError("Cannot call rmtree on a symbolic link")
    assert fs_errors.describe(link_error, tmp_path) == "OSError: Cannot call rmtree on a symbolic link"
    copy_error = shutil.Error("Destination path 'x' already exists")
    assert fs_errors.describe(copy_error, tmp_path) == "Error: Destination path 'x' already exists"
    torch_error = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
    described = fs_errors.describe(torch_error, tmp_path)
    assert described.startswith("torch.save failed ([enforce fail at inline_container.cc:603] . unexpected pos 64")
    assert " free on the filesystem" in described
    no_space = OSError(28, "No space left on device", "/x/y")
    assert fs_errors.describe(no_space, tmp_path) == f"{os.strerror(28)} (/x/y)"


def test_a_save_goes_through_planted_links_without_writing_through_them(tmp_path):
    """The whole save (one rank, the stand-in engine): a link planted as latest.tmp, and one as the temporary
    folder of the very step saved next, into which DeepSpeed would write."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    saved = torchrun(WORKER, out, "save", 4, "A", nproc=1)
    assert saved.stdout.strip() == "rank 0 saved: step_00000004", saved.stdout + saved.stderr[-2000:]
    victim = _victim(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (checkpoints / "latest.tmp").symlink_to(victim)
    (checkpoints / "step_00000006.tmp-save").symlink_to(elsewhere, target_is_directory=True)
    saved = torchrun(WORKER, out, "save", 6, "B", nproc=1)
    assert saved.stdout.strip() == "rank 0 saved: step_00000006", saved.stdout + saved.stderr[-2000:]
    assert victim.read_text() == PRECIOUS and list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000004", "step_00000006"]
    latest = checkpoints / checkpoint.LATEST
    assert not latest.is_symlink() and latest.read_text() == "step_00000006"
    assert manifest.verify(checkpoints / "step_00000006") is None
    assert (checkpoints / "step_00000006" / "mp_rank_00_model_states.pt").read_bytes() == b"B" * 1000


def test_recovery_script_links_are_removed_before_a_save(tmp_path):
    """Fault (safety review, session 17): DeepSpeed copies zero_to_fp32.py and zero_to_torch.py into
    checkpoints/ at each save with shutil.copyfile, which writes through a link at the destination, then makes
    the file executable. A link planted in a run folder someone handed over (to ~/.bashrc) had that file
    replaced by DeepSpeed's script, mode +x; a hard link (a folder copied with `cp -al`) wrote into the other
    folder's file. Whatever holds those names is removed before the save; what it names is left alone."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 2)
    victim, other_run = _victim(tmp_path), tmp_path / "other_run_zero_to_torch.py"
    other_run.write_text(PRECIOUS)
    (checkpoints / "zero_to_fp32.py").symlink_to(victim)
    os.link(other_run, checkpoints / "zero_to_torch.py")
    assert checkpoint._before_save(_Engine(), checkpoints, 3) is None  # type: ignore[arg-type]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002"]
    assert victim.read_text() == PRECIOUS and other_run.read_text() == PRECIOUS


def test_a_real_save_leaves_the_target_of_a_planted_recovery_script_link_alone(tmp_path, tiny_dataset):
    """The same through a real DeepSpeed engine's save (launch/train.py, one rank): the link's target keeps
    its content and mode, and checkpoints/ gets DeepSpeed's script as a regular file of its own. The link is
    planted in a run folder (its effective config.yaml; a run killed before its first save): in a folder that
    is no run's, --out is refused before anything runs (tests/test_out_folder.py)."""
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("config_source: a.yaml\nmodel: {}\ntrain: {}\nout_dir: run\n")
    victim = _victim(tmp_path)
    victim.chmod(0o644)
    (checkpoints / "zero_to_fp32.py").symlink_to(victim)
    configs = write_run_configs(tmp_path, tiny_ngpt(), tiny_train(2))
    train_run(configs["yaml"], configs["ds"], tiny_dataset, tmp_path / "run", forked=True)
    assert victim.read_text() == PRECIOUS and stat.S_IMODE(victim.stat().st_mode) == 0o644
    script = checkpoints / "zero_to_fp32.py"
    assert not script.is_symlink() and script.read_text().startswith("#!/usr/bin/env python")
    assert manifest.verify(checkpoints / "step_00000002") is None


if __name__ == "__main__":
    sys.exit("run with pytest")
