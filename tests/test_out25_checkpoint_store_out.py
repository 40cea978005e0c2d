"""--out a checkpoints folder of another name (fault: a shared checkpoint store that runs' checkpoints/ link to, or
a run's checkpoints/ copied elsewhere and renamed, was accepted as a run folder: a fresh run there wrote its
config.yaml, train.lock, metrics and a checkpoints/ of its own beside the step_N folders, and a later --resume of
that folder as a run did not see them).
"""

import shutil
import sys

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import manifest, out_folder, run_lock

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

FIX = (
    "--out is the run folder: pass the run folder whose checkpoints/ this is as --out, --resume {out}/step_N to "
    "start from one of them, or a new folder"
)


def refusal(out, held):
    return (
        f"--out {out} holds {held} directly: it is a checkpoints folder, not a run folder (a run keeps its "
        "checkpoints in <out>/checkpoints/); a fresh run there would write its config, logs and a checkpoints/ of "
        f"its own beside them, and a later --resume of that folder would not see them. {FIX.format(out=out)}"
    )


def fake_step(folder):
    """A complete checkpoint as the trainer leaves it (DeepSpeed's model states, config.yaml, the COMPLETE manifest)."""
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"w" * 100)
    (folder / "config.yaml").write_text("model: {}\n")
    manifest.write_manifest(folder, manifest.build_manifest(folder, int(folder.name[len("step_") :])))
    return folder


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_an_out_that_is_a_shared_checkpoint_store_is_refused_before_anything_is_written(tmp_path):
    """Fault: --out the store a run's checkpoints/ links to (its step_N, `latest` and writer.lock directly in it)
    was accepted: check_out_folder returned None and acquire wrote train.lock there. The run folder itself stays
    accepted."""
    store = tmp_path / "store"
    run = tmp_path / "a"
    run.mkdir()
    (run / "checkpoints").symlink_to(store, target_is_directory=True)
    fake_step(store / "step_00000002")
    (store / "latest").write_text("step_00000002")
    (store / run_lock.STORE_LOCK).write_text("")
    before = listing(store)
    with pytest.raises(NgptConfigError) as refused:
        run_lock.acquire(store)
    assert str(refused.value) == refusal(store, "checkpoints step_00000002, latest, writer.lock")
    assert listing(store) == before
    run_lock.acquire(run).release()  # the run whose checkpoints/ links there: its own folder


def test_a_runs_checkpoints_copied_elsewhere_under_another_name_is_refused(tmp_path):
    """Fault: `cp -r runs/a/checkpoints saved` and then --out saved started a run from scratch beside a's
    checkpoints. Each marker alone (a complete step_N, `latest`, writer.lock) names the folder a checkpoints folder."""
    run = tmp_path / "a"
    run_lock.acquire(run).release()
    for step in (2, 4, 6, 8):
        fake_step(run / "checkpoints" / f"step_{step:08d}")
    (run / "checkpoints" / "latest").write_text("step_00000008")
    saved = tmp_path / "saved"
    shutil.copytree(run / "checkpoints", saved)
    with pytest.raises(NgptConfigError) as refused:
        out_folder.check_out_folder(saved)
    # four checkpoints: the oldest, a count and the newest
    assert str(refused.value) == refusal(saved, "checkpoints step_00000002, ... (2 more), step_00000008, latest")

    only_step, only_latest, only_lock = tmp_path / "s", tmp_path / "l", tmp_path / "w"
    fake_step(only_step / "step_00000004")
    only_latest.mkdir()
    (only_latest / "latest").write_text("step_00000004")
    only_lock.mkdir()
    (only_lock / run_lock.STORE_LOCK).write_text("")
    for out, held in ((only_step, "checkpoints step_00000004"), (only_latest, "latest"), (only_lock, "writer.lock")):
        with pytest.raises(NgptConfigError) as refused:
            out_folder.check_out_folder(out)
        assert str(refused.value) == refusal(out, held)


def test_run_folders_copies_and_new_folders_stay_accepted_next_to_checkpoint_stores(tmp_path):
    """Not refused: a run folder (its step_N under checkpoints/), a copy of one (checkpoints/ and metrics only), a new
    or empty folder, a folder of unfinished step_N saves only, and a run already started in a store (its requeues
    go on, as a run already in a dataset folder does)."""
    run = tmp_path / "run"
    run_lock.acquire(run).release()
    fake_step(run / "checkpoints" / "step_00000002")
    (run / "checkpoints" / "latest").write_text("step_00000002")
    copy = tmp_path / "copy"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    (copy / "metrics.jsonl").write_text('{"step": 2}\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    (unfinished / "step_00000002.tmp-save").mkdir(parents=True)
    (unfinished / "step_00000004").mkdir()  # no COMPLETE: a save cut short
    started = tmp_path / "started"
    fake_step(started / "step_00000002")
    (started / "config.yaml").write_text("config_source: a.yaml\nmodel: {}\ntrain: {}\n")
    for out in (run, copy, empty, tmp_path / "new", tmp_path / "new" / "deeper", unfinished, started):
        out_folder.check_out_folder(out)
        run_lock.acquire(out).release()


def test_the_dry_run_refuses_a_checkpoint_store_as_out(tmp_path, tiny_dataset):
    """Fault: `--dry-run --out <store>` said 'every startup check passed ... a new run in <store>'."""
    from ngpt_ds.train.builder import TrainOptions
    from ngpt_ds.train.dry_run import dry_run

    store = tmp_path / "store"
    fake_step(store / "step_00000002")
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    options = TrainOptions(
        deepspeed_config=str(ds), config=str(config), data=str(tiny_dataset), out=str(store), world_size=2
    )
    with pytest.raises(NgptConfigError) as refused:
        dry_run(options)
    assert str(refused.value) == refusal(store, "checkpoints step_00000002")
    assert sorted(p.name for p in store.iterdir()) == ["step_00000002"]


def test_the_trainer_exits_2_on_a_checkpoint_store_as_out_and_writes_nothing_there(tmp_path, tiny_dataset):
    """Fault: launch/train.py --out <store> trained there: train.lock, config.yaml, metrics.jsonl and a checkpoints/
    of its own beside the store's step_N folders."""
    store = tmp_path / "store"
    fake_step(store / "step_00000002")
    (store / "latest").write_text("step_00000002")
    before = listing(store)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    proc = run([sys.executable, *train_cmd(config, ds, tiny_dataset, store)], check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"error: {refusal(store, 'checkpoints step_00000002, latest')}" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    assert listing(store) == before
