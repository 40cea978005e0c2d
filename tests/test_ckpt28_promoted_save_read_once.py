"""A save put in place at start-up is read once, not twice (helper ckpt28, session 28).

Fault: the ranks verified a sealed step_N.tmp-save together before rank 0 renamed it to step_N
(ngpt_ds.train.checkpoint_interrupted), and the resume then verified step_N, the same files, again: every byte
of the checkpoint was hashed twice (a 1 GiB step on 2 ranks: 1.0 GiB read by each rank, 6.1 s; now 0.5 GiB, 2.5 s).
Now the resume trusts a verification this same process made of that very folder (the same folder and files by
device, inode, size, mtime and ctime, the same COMPLETE manifest), once; never one of another process.
Real 2-rank gloo jobs (tests/workers/verify_worker.py records each rank's reads)."""

import json
import os
import shutil

from test_checkpoint_verify_ranks import SIZES, choose_on_two_ranks, fake_checkpoint
from test_ckpt27_interrupted_save_ranks import interrupted_run

from ngpt_ds.train import manifest, verified_here
from ngpt_ds.train.manifest import digest_share, verify
from ngpt_ds.train.resume import resolve_resume


def reads(ranks, folder):
    """Rank -> the names of the files under `folder` it hashed, in order (a name twice: read twice)."""
    prefix = str(folder) + "/"
    return [sorted(p[len(prefix) :] for p in r["hashed"] if p.startswith(prefix)) for r in ranks]


def test_a_sealed_save_put_in_place_is_hashed_once_in_all_not_again_by_the_resume(tmp_path):
    """Old code: rank 0 read its share under step_00000004.tmp-save, then again under step_00000004 (the
    resume's verification): ['config.yaml', 'zero_pp_rank_0_mp_rank_00_optim_states.pt', ...] != []."""
    run, sealed = interrupted_run(tmp_path)
    final = run / "checkpoints" / "step_00000004"
    ranks = choose_on_two_ranks(tmp_path, run, "auto")
    assert [r["error"] for r in ranks] == [None, None]
    assert [r["chosen"] for r in ranks] == [str(final), str(final)]
    assert reads(ranks, sealed) == [digest_share(SIZES, 0, 2), digest_share(SIZES, 1, 2)]
    assert reads(ranks, final) == [[], []]
    assert sum(len(r["hashed"]) for r in ranks) == len(SIZES)  # 4 files, each read once in all
    assert verify(final) is None


def test_a_file_changed_after_the_ranks_verified_it_is_read_again_and_fails(tmp_path, monkeypatch):
    """The trust is in the files as they were: one rewritten in place between the two checks (same size, its mtime
    put back) is hashed again and fails."""
    folder = fake_checkpoint(tmp_path / "step_00000002", 2)
    verified_here.forget()
    assert verify(folder) is None
    verified_here.remember(verified_here.fingerprint(folder))
    name = "mp_rank_00_model_states.pt"
    before = os.stat(folder / name)
    data = bytearray((folder / name).read_bytes())
    data[0] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    os.utime(folder / name, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves: told apart
    assert os.stat(folder / name).st_mtime_ns == before.st_mtime_ns
    assert not verified_here.take(folder)


def test_a_remembered_verification_is_used_once_and_only_for_that_folder(tmp_path):
    """Taken once; a copy of the folder (other inodes, the same manifest) is not the folder verified."""
    folder = fake_checkpoint(tmp_path / "step_00000002", 2)
    copy = tmp_path / "copy" / "step_00000002"
    copy.parent.mkdir()
    shutil.copytree(folder, copy)
    verified_here.forget()
    verified_here.remember(verified_here.fingerprint(folder))
    assert json.loads((copy / "COMPLETE").read_text()) == json.loads((folder / "COMPLETE").read_text())
    assert not verified_here.take(copy)
    moved = tmp_path / "moved"
    os.rename(folder, moved)  # the same folder under another name, as the promotion renames it
    assert verified_here.take(moved)
    assert not verified_here.take(moved)


def test_the_dry_run_reads_a_sealed_save_once_to_show_it_would_be_put_in_place(tmp_path, monkeypatch):
    """Old code: the dry run's resolve_resume hashed every file of step_00000004.tmp-save twice (to prove it the
    run's finished save, then as the checkpoint resumed from): 8 reads of 4 files."""
    run, sealed = interrupted_run(tmp_path)
    hashed = []
    digest = manifest._digest

    def recording(path):
        hashed.append(str(path))
        return digest(path)

    monkeypatch.setattr(manifest, "_digest", recording)
    notes = []
    assert resolve_resume(run, "auto", warn=notes.append) == sealed  # read-only: named as it lies
    assert sorted(hashed) == sorted(str(sealed / name) for name in SIZES)
    assert notes == [
        "note: the run will first put step_00000004 in place from step_00000004.tmp-save (a sealed save, interrupted)"
    ]
