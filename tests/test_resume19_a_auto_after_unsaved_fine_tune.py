"""--resume auto in an --out whose lineage grew from another run's checkpoint but holds no save of its own yet."""

from __future__ import annotations

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import manifest
from ngpt_ds.train.lineage import start_lineage
from ngpt_ds.train.resume import resolve_resume

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def _refusal(origin, ft):
    return (
        f"--resume auto: {ft / 'checkpoints'} holds no checkpoint yet, but this run's lineage grew from {origin} "
        f"(step {int(origin.name[5:])}; {ft / 'lineage.json'}): the session that started it stopped before its "
        f"first save, and auto would start over from step 0 with new weights. Pass --resume {origin} to continue "
        "from it, or --resume none to start a new run from step 0 here"
    )


def test_auto_after_a_fine_tune_stopped_before_its_first_save_is_refused_not_started_from_scratch(
    tmp_path, tiny_dataset
):
    """Fault: `--resume other/checkpoints/step_N --out ft` records ft/lineage.json before training; when that session
    stopped before its first save (preempted, a crash, a batch too large), running it again with --resume auto (the
    default: the --resume PATH left out) found no checkpoint in ft and trained from step 0 with new weights,
    removing lineage.json: the fine-tune became a run from scratch that trained, saved and reported success.
    Before: the trainer trained steps 1 to 4 from new weights and exited 0. Now: exit 2 with the error naming lineage.json,
    the checkpoint to pass and --resume none; ft is left as it was. A plain --resume none still starts over."""
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    train_run(config, ds, tiny_dataset, tmp_path / "other", forked=True)
    origin = tmp_path / "other" / "checkpoints" / "step_00000002"
    ft = tmp_path / "ft"
    ft.mkdir()
    assert start_lineage(ft, origin) is None  # what the trainer of `--resume ORIGIN --out ft` did before its step 1
    record = (ft / "lineage.json").read_bytes()
    proc = train_run(config, ds, tiny_dataset, ft, "--resume", "auto", "--max-steps", "4", check=False, forked=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {_refusal(origin, ft)}"
    ]
    assert (ft / "lineage.json").read_bytes() == record
    assert not (ft / "checkpoints").exists()


def test_the_dry_path_refuses_the_same_and_none_or_a_checkpoint_still_resolve(tmp_path):
    """resolve_resume (the dry run's) gives the same refusal; --resume none and --resume ORIGIN are taken."""
    origin = tmp_path / "other" / "checkpoints" / "step_00000100"
    origin.mkdir(parents=True)
    (origin / "mp_rank_00_model_states.pt").write_bytes(b"w" * 100)
    manifest.write_manifest(origin, manifest.build_manifest(origin, 100))
    ft = tmp_path / "ft"
    ft.mkdir()
    assert resolve_resume(ft, "auto") is None  # no record: a fresh run, as before
    start_lineage(ft, origin)
    with pytest.raises(NgptConfigError) as err:
        resolve_resume(ft, "auto")
    assert str(err.value) == _refusal(origin, ft)
    assert resolve_resume(ft, "none") is None
    assert resolve_resume(ft, str(origin)) == origin
    # Once the lineage has a checkpoint in ft, auto takes it as before.
    saved = ft / "checkpoints" / "step_00000101"
    saved.mkdir(parents=True)
    (saved / "mp_rank_00_model_states.pt").write_bytes(b"v" * 100)
    manifest.write_manifest(saved, manifest.build_manifest(saved, 101))
    assert resolve_resume(ft, "auto") == saved
