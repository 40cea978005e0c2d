"""The ranks verify an interrupted save together before rank 0 puts it in place (helper ckpt27, session 27).

Fault: at start-up rank 0 alone read every file of a sealed step_N.tmp-save (checkpoint_interrupted, to prove it
the run's finished save) while the other ranks waited in a broadcast: 2.7 s a GiB on this machine, minutes for a
checkpoint of a few billion parameters, before the resume read every file again. Now each file of it is read by
one rank (manifest.digest_share), as `resume.verify_on_all_ranks` does for the checkpoint resumed from.
Real 2-rank gloo jobs (tests/workers/verify_worker.py records each rank's reads)."""

import json
import os

from test_checkpoint_verify_ranks import SIZES, choose_on_two_ranks, fake_checkpoint, flip_a_byte

from ngpt_ds.train.manifest import digest_share


def interrupted_run(tmp_path):
    """A run whose save of step 4 was sealed and killed before its rename; step 2 complete before it."""
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    fake_checkpoint(checkpoints / "step_00000002", 2)
    sealed = fake_checkpoint(checkpoints / "step_00000004.tmp-save", 4, seed=7)
    older = (checkpoints / "step_00000002" / "COMPLETE").stat().st_mtime_ns
    os.utime(sealed / "COMPLETE", ns=(older + 10**9, older + 10**9))  # sealed after step 2, as a save does
    return run, sealed


def test_the_ranks_share_the_reads_of_a_sealed_save_and_it_is_put_in_place(tmp_path):
    """Old code: rank 0 hashed all 4 files of step_00000004.tmp-save, rank 1 none of them."""
    run, sealed = interrupted_run(tmp_path)
    ranks = choose_on_two_ranks(tmp_path, run, "auto")
    final = run / "checkpoints" / "step_00000004"
    assert [r["error"] for r in ranks] == [None, None]
    assert [r["chosen"] for r in ranks] == [str(final), str(final)]
    assert not sealed.exists()
    for rank in (0, 1):
        read = sorted(p.rsplit("/", 1)[1] for p in ranks[rank]["hashed"] if p.startswith(str(sealed) + "/"))
        assert read == digest_share(SIZES, rank, 2)
    assert ranks[0]["warnings"][0].startswith(
        "warning: put step_00000004 in place from step_00000004.tmp-save: its save was sealed complete"
    )


def test_a_damaged_sealed_save_found_by_rank_1_is_kept_not_put_in_place(tmp_path):
    """The file rank 1 reads is damaged: every rank learns it, the save is kept aside, step 2 is resumed."""
    run, sealed = interrupted_run(tmp_path)
    damaged = digest_share(SIZES, 1, 2)[0]
    flip_a_byte(sealed / damaged)
    ranks = choose_on_two_ranks(tmp_path, run, "auto")
    assert [r["chosen"] for r in ranks] == [str(run / "checkpoints" / "step_00000002")] * 2
    kept = [p.name for p in (run / "checkpoints").iterdir() if ".interrupted-save-" in p.name]
    assert len(kept) == 1 and kept[0].startswith("step_00000004.interrupted-save-")
    assert not (run / "checkpoints" / "step_00000004").exists()
    assert json.loads((run / "checkpoints" / kept[0] / "COMPLETE").read_text())["step"] == 4
    assert ranks[0]["warnings"][0] == (
        f"warning: step_00000004.tmp-save, a save sealed complete but interrupted before its rename, was not put in "
        f"place ({sealed / damaged} does not match its blake2b-128 digest in the COMPLETE manifest (corrupted)): kept "
        f"as {kept[0]}, not deleted. Move it elsewhere or remove it yourself"
    )
    assert not any(p.startswith(str(sealed) + "/") for p in ranks[0]["hashed"] if p.endswith(damaged))
