"""Checkpoint saves and retention (helper save22, session 22).

Faults:
- A folder sync (fsync of checkpoints/) that failed after the new checkpoint was renamed into place stopped the
  run with exit 74 ('checkpoint of step N not saved'), although the checkpoint was complete on disk.
- A disk that filled up during a save read 'No space left on device (<file>)': no figure of what the checkpoint
  needs nor of what was free, nor the folder.
- Retention deleted a step_N folder without a manifest of a step older than the one saved: a checkpoint a user
  was copying into checkpoints/ (its COMPLETE not copied yet).
- replace_file wrote the new file with the umask's permission bits, whatever those of the file it replaced.
- (attacker review) a complete step_N of a step above the one saved, copied in during the run, counted among the
  kept checkpoints: retention deleted the run's own, the one just saved included, and `latest` named it.
"""

import errno
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ngpt_ds.files import replace_file
from ngpt_ds.model import build_model
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.fs_errors import gib

from conftest import start_ranks, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

WEIGHTS = "mp_rank_00_model_states.pt"


def _step_files(folder: Path, size: int = 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(b"A" * size)
    (folder / "config.yaml").write_text("model: {}\n")
    return folder


def _complete_step(checkpoints: Path, step: int, size: int = 1000) -> Path:
    folder = _step_files(checkpoints / checkpoint.tag_for(step), size)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def _finish(checkpoints: Path, step: int, keep: int) -> Path:
    """Rank 0's end of a save: manifest, rename into place, `latest`, retention."""
    tag = checkpoint.tag_for(step)
    tmp = _step_files(checkpoints / (tag + checkpoint.TEMP_SUFFIX))
    checkpoint._finish_save(checkpoints, tmp, tag, manifest.build_manifest(tmp, step), keep)
    return checkpoints / tag


def test_a_folder_sync_failing_after_the_rename_warns_and_the_save_stands(tmp_path, monkeypatch, capsys):
    """Fault 1 (exit 74 although the checkpoint was complete): fsync of checkpoints/ after the rename raised
    out of _finish_save, which save() turned into CheckpointWriteError."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 2)
    real = checkpoint.fsync_dir

    def failing(path: Path) -> None:
        if Path(path) == checkpoints:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        real(path)

    monkeypatch.setattr(checkpoint, "fsync_dir", failing)
    capsys.readouterr()
    placed = _finish(checkpoints, 4, keep=1)
    assert manifest.verify(placed) is None
    assert (checkpoints / "latest").read_text() == "step_00000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000004"]  # retention ran too
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {placed} is complete and in place, but {checkpoints} could not be synced "
        f"({os.strerror(errno.EIO)} ({checkpoints})): a crash of the machine before the filesystem writes it may "
        "lose the new name. Training goes on"
    ]


def test_a_folder_sync_failing_after_a_conversion_is_placed_warns_and_the_conversion_stands(
    tmp_path, monkeypatch, capsys
):
    checkpoints = tmp_path / "run" / "checkpoints"
    source = _complete_step(checkpoints, 2)
    converted = _step_files(checkpoints / "step_00000002-universal.tmp-convert")
    target = checkpoints / checkpoint.universal_name(source.name)
    monkeypatch.setattr(
        checkpoint, "fsync_dir", lambda path: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error"))
    )
    capsys.readouterr()
    checkpoint.finish_universal(converted, target, source)
    assert checkpoint.is_converted_from(target, source)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {target} is complete and in place, but {checkpoints} could not be synced ")


class _Engine:
    """What checkpoint.save uses of a DeepSpeed engine; its write fails as a full disk fails it."""

    def __init__(self) -> None:
        self.module = torch.nn.Linear(4, 4)  # 20 parameters: a first save is estimated at 320 bytes
        self.mp_world_size = 1

    def save_checkpoint(self, save_dir: str, tag: str, **_: object) -> None:
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / WEIGHTS))


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("previous", [True, False], ids=["sized-by-the-last-checkpoint", "first-save-estimated"])
def test_a_disk_full_during_a_save_names_what_it_needs_and_what_was_free(tmp_path, monkeypatch, one_rank, previous):
    """Fault 2: the message named neither the checkpoint's size nor the free space nor the folder."""
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True)
    if previous:
        _complete_step(checkpoints, 2, size=3 * 2**20)
    need, basis = (3 * 2**20 + 10, "the size of step_00000002") if previous else (320, "16 bytes per parameter")
    free = 5 * 2**20 + 2**19  # enough by the check before the save; the disk fills up during it
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _path: shutil._ntuple_diskusage(2**30, 0, free))
    with pytest.raises(checkpoint.CheckpointWriteError) as raised:
        checkpoint.save(_Engine(), out, 4, {}, keep=3, config_yaml="model: {}\n")  # type: ignore[arg-type]
    tmp = checkpoints / "step_00000004.tmp-save"
    assert str(raised.value) == (
        f"checkpoint of step 4 not saved: writing {tmp}: {os.strerror(errno.ENOSPC)} ({tmp / WEIGHTS}); the "
        f"checkpoint needs about {gib(need)} ({basis}), 5.5 MiB were free on the filesystem of {checkpoints} "
        "when the write failed. Free space there (or raise the quota), or lower keep_checkpoints, then resume"
    )
    assert not tmp.exists()


def test_retention_leaves_alone_a_step_folder_being_copied_in(tmp_path, capsys):
    """Fault 3: a step_N folder without COMPLETE, of a step older than the one saved (a user copying a checkpoint
    in: COMPLETE not there yet), was deleted by retention. It is left alone, with one warning in the process."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 4)
    copying = _step_files(checkpoints / "step_00000002")  # the weights arrived, COMPLETE not yet
    capsys.readouterr()
    _finish(checkpoints, 6, keep=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002", "step_00000006"]
    assert sorted(p.name for p in copying.iterdir()) == ["config.yaml", WEIGHTS]
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {copying} has no COMPLETE manifest: it is not a checkpoint of this run (a copy in progress, or an "
        "interrupted save of an older ngpt_ds) and retention leaves it alone. Remove it yourself once you know it "
        "is neither"
    ]
    _finish(checkpoints, 8, keep=1)  # warned once per folder
    assert capsys.readouterr().err == ""
    # Once the copy is complete it is a checkpoint like any other: retention keeps the newest.
    manifest.write_manifest(copying, manifest.build_manifest(copying, 2))
    _finish(checkpoints, 10, keep=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000010"]


@pytest.mark.parametrize("bits", [0o640, 0o600, 0o664])
def test_replace_file_keeps_the_replaced_files_permission_bits(tmp_path, bits):
    """Fault 5: the file was created with the umask's bits (0644 under umask 022) whatever the replaced file's."""
    target = tmp_path / "summary.json"
    target.write_text("old")
    target.chmod(bits)
    previous = os.umask(0o022)
    try:
        replace_file(target, "new")
    finally:
        os.umask(previous)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == bits


def test_replace_file_drops_setuid_and_world_write_and_takes_the_umasks_bits_for_a_new_file_or_a_link(tmp_path):
    previous = os.umask(0o027)
    try:
        marked = tmp_path / "marked"
        marked.write_text("old")
        marked.chmod(0o4755)
        replace_file(marked, "new")
        assert stat.S_IMODE(marked.stat().st_mode) == 0o755
        open_to_all = tmp_path / "open"
        open_to_all.write_text("old")
        open_to_all.chmod(0o666)
        replace_file(open_to_all, "new")  # readable by all as it was; writable by all no longer
        assert stat.S_IMODE(open_to_all.stat().st_mode) == 0o664
        fresh = tmp_path / "fresh"
        replace_file(fresh, "new")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
        victim = tmp_path / "victim"
        victim.write_text("precious")
        victim.chmod(0o600)
        link = tmp_path / "link"
        link.symlink_to(victim)
        replace_file(link, "new")  # the link is replaced by a file; the bits of what it named are not taken
        assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o640
        assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_retention_never_deletes_the_step_just_saved_for_a_newer_checkpoint_copied_in(tmp_path, capsys):
    """Fault (attacker review): a complete step_N of a step above the one saved (another run's step_100 copied into
    checkpoints/ during the run) counted among the `keep` newest, and retention deleted the run's own checkpoints,
    the one just saved included (keep 1); `latest` named the copied one. It is neither counted nor deleted now, with
    one warning, and `latest` names the step saved."""
    checkpoints = tmp_path / "run" / "checkpoints"
    _complete_step(checkpoints, 4)
    foreign = _complete_step(checkpoints, 100)
    capsys.readouterr()
    saved = _finish(checkpoints, 6, keep=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000006", "step_00000100"]
    assert manifest.verify(saved) is None and manifest.verify(foreign) is None
    assert (checkpoints / "latest").read_text() == "step_00000006"  # the step saved, not the one copied in
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {foreign} is a checkpoint of a step above the one just saved (6): it is not of this run's lineage "
        "(put there during the run) and retention neither counts nor deletes it. Move it elsewhere, or remove it "
        "yourself"
    ]
    _finish(checkpoints, 8, keep=1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000008", "step_00000100"]
    assert (checkpoints / "latest").read_text() == "step_00000008"
    assert capsys.readouterr().err == ""  # warned once


def test_a_real_disk_full_save_on_two_ranks_names_the_figures_and_the_folder(tmp_path, tiny_dataset, mount_tmpfs):
    """Fault 2 end to end: two gloo ranks fill a small tmpfs while writing their first checkpoint. Every rank stops
    with exit 74 and the same line, which now gives the size the checkpoint needs (the first save's estimate,
    16 bytes per parameter), the free space when the write failed, and the folder."""
    model = tiny_ngpt()
    params = sum(p.numel() for p in build_model(ModelConfig(**model, vocab_size=512)).parameters())
    estimate = params * checkpoint.BYTES_PER_PARAMETER_ESTIMATE
    page = 4096
    out = mount_tmpfs((estimate // page + 13) * page) / "run"  # passes the check before the save, not the write
    config = write_yaml(
        tmp_path / "tiny.yaml", model, tiny_train(4, checkpoint_interval=2, keep_checkpoints=3, dist_timeout_s=60)
    )
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    ranks = start_ranks(train_cmd(config, ds, tiny_dataset, out))
    results = [proc.communicate(timeout=300) for proc in ranks]
    messages = []
    for rank, (proc, (_, stderr)) in enumerate(zip(ranks, results)):
        assert proc.returncode == 74, (rank, stderr[-3000:])
        (message,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        messages.append(message)
    assert messages[0] == messages[1]
    figures = re.search(
        r"; the checkpoint needs about (\S+ \S+) \(16 bytes per parameter\)(?:, (\d+\.\d) MiB were free)? on the "
        r"filesystem of (\S+) when the write failed\. Free space there \(or raise the quota\), or lower "
        r"keep_checkpoints, then resume$",
        messages[0],
    )
    assert figures is not None, messages[0]
    assert figures[1] == gib(estimate) and figures[3] == str(out / "checkpoints"), messages[0]
    if figures[2] is not None:  # an OSError (ENOSPC): what was left was less than a page
        assert float(figures[2]) * 2**20 < page, messages[0]
    else:  # torch's zip writer: its own part of the line gave the free space
        assert re.search(r"; (\d+\.\d) MiB free on the filesystem: no space left on device;", messages[0]), messages[0]
