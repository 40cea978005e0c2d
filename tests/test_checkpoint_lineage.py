"""One lineage per run folder (fault: resuming from an older step let retention delete the new lineage
and keep the abandoned one, which --resume auto and export then picked; metrics and TensorBoard held
the replayed steps twice).

The issue's scenario on one rank: checkpoints 2..10, then `--resume .../step_2` with keep 2.
"""

import json
import os

import pytest

from conftest import read_metrics, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()
TRAIN = tiny_train(10, checkpoint_interval=2, keep_checkpoints=5)


def step_names(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def tensorboard_steps(out, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_resume_from_an_older_step_moves_the_newer_lineage_aside_and_logs_each_step_once(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    torchrun(*train_cmd(write_yaml(tmp_path / "keep5.yaml", MODEL, TRAIN), ds, tiny_dataset, out), nproc=1)
    checkpoints = out / "checkpoints"
    assert step_names(checkpoints) == [f"step_{s:08d}" for s in (2, 4, 6, 8, 10)]
    assert (checkpoints / "latest").read_text() == "step_00000010"
    first = {m["step"]: m["train/loss"] for m in read_metrics(out)}
    assert sorted(first) == list(range(1, 11))

    # Resume from step 2 with keep 2, up to step 8 (fewer steps than the abandoned lineage reached).
    keep2 = write_yaml(tmp_path / "keep2.yaml", MODEL, {**TRAIN, "keep_checkpoints": 2})
    second = torchrun(
        *train_cmd(keep2, ds, tiny_dataset, out, "--resume", checkpoints / "step_00000002", "--max-steps", "8"),
        nproc=1,
    )
    (abandoned,) = [p for p in checkpoints.iterdir() if p.name.startswith("abandoned-")]
    assert [line for line in second.stdout.splitlines() if "abandoned-" in line] == [
        f"resuming from step 2: moved the 4 newer checkpoint folder(s) of the earlier lineage (step_00000004, "
        f"step_00000006, step_00000008, step_00000010) and its summary.json to {abandoned} (kept, not deleted), "
        "with a copy of its metrics.jsonl and tensorboard/"
    ]
    assert json.loads((abandoned / "summary.json").read_text())["step"] == 10
    assert step_names(abandoned) == [f"step_{s:08d}" for s in (4, 6, 8, 10)]
    # The abandoned lineage's logs stay readable beside its checkpoints: steps 3-10 of the first run, which
    # the run folder's metrics.jsonl and TensorBoard drop (before, they were gone from metrics.jsonl).
    assert {m["step"]: m["train/loss"] for m in read_metrics(abandoned)} == first
    assert [s for s, _ in tensorboard_steps(abandoned)] == list(range(1, 11))
    for name in step_names(abandoned):  # moved whole: still complete, verified, loadable
        assert json.loads((abandoned / name / "COMPLETE").read_text())["step"] == int(name[5:])
    # Retention kept the newest 2 of the new lineage and touched nothing abandoned. Step 2 was saved from another
    # config file (keep5.yaml) than this run's (keep2.yaml), so retention keeps it too (README, "Checkpoints").
    assert step_names(checkpoints) == ["step_00000002", "step_00000006", "step_00000008"]
    assert "holds a run trained from" in second.stdout + second.stderr
    assert (checkpoints / "latest").read_text() == "step_00000008"

    # Each step once in metrics.jsonl and TensorBoard, the same values in both. Step 3's loss is computed
    # from step 2's weights, so it equals the first run's (an exact resume).
    records = read_metrics(out)
    assert [m["step"] for m in records] == list(range(1, 9))
    losses = [m["train/loss"] for m in records]
    assert losses[:3] == [first[1], first[2], first[3]]
    assert [s for s, _ in tensorboard_steps(out)] == list(range(1, 9))
    assert [v for _, v in tensorboard_steps(out)] == pytest.approx(losses, rel=1e-6)

    # --resume auto and export's resolution pick the new lineage's newest.
    from ngpt_ds.infer import resolve_checkpoint
    from ngpt_ds.train.resume import resolve_resume

    assert resolve_checkpoint(out) == checkpoints / "step_00000008"
    assert resolve_resume(out, "auto") == checkpoints / "step_00000008"


def test_a_kill_while_the_run_files_are_rewritten_leaves_the_old_ones_whole(tmp_path, monkeypatch):
    """Fault: the trainer rewrote <out>/config.yaml and summary.json in place (Path.write_text). A kill
    in the middle of that write left the file cut short: a resumed run's config.yaml truncated, or a
    summary.json that launch/slurm/train.sbatch reads to decide whether to requeue. `replace_file`
    writes a sibling and renames it over the file, so the old one stays whole until the new one is."""
    from pathlib import Path

    from ngpt_ds.train.loop import replace_file

    real_write_text = Path.write_text

    def killed_halfway(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # stands in for the kill

    old, new = "status: the old run, all of it\n" * 4, "status: the new run\n" * 8
    in_place, replaced = tmp_path / "in_place.yaml", tmp_path / "config.yaml"
    in_place.write_text(old, encoding="utf-8")
    replaced.write_text(old, encoding="utf-8")

    def killed_before_the_rename(fd):  # replace_file writes its sibling through os.open, then syncs it
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    monkeypatch.setattr(os, "fsync", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        in_place.write_text(new, encoding="utf-8")  # the old way: the file is cut short
    with pytest.raises(KeyboardInterrupt):
        replace_file(replaced, new)
    monkeypatch.undo()
    assert in_place.read_text(encoding="utf-8") == new[: len(new) // 2]
    assert replaced.read_text(encoding="utf-8") == old
    replace_file(replaced, new)
    assert replaced.read_text(encoding="utf-8") == new
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "in_place.yaml",
    ]  # the cut-short sibling renamed over


def test_the_summary_of_the_abandoned_lineage_goes_with_it(tmp_path):
    """Fault: resuming from an older step left summary.json as the earlier lineage wrote it ('finished',
    step 10, checkpoint step_00000010): until the resumed run wrote its own, and for good when that run
    was killed first, the run folder said it had finished at a step whose checkpoint had been moved aside."""
    from ngpt_ds.train.lineage import start_lineage

    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    for step in (6, 8, 10):
        (checkpoints / f"step_{step:08d}").mkdir(parents=True)
        (checkpoints / f"step_{step:08d}" / "COMPLETE").write_text(f"step {step}\n")
    summary = json.dumps({"status": "finished", "step": 10, "checkpoint": str(checkpoints / "step_00000010")})
    (out / "summary.json").write_text(summary)
    line = start_lineage(out, checkpoints / "step_00000006")
    (abandoned,) = [p for p in checkpoints.iterdir() if p.name.startswith("abandoned-")]
    assert line == (
        f"resuming from step 6: moved the 2 newer checkpoint folder(s) of the earlier lineage (step_00000008, "
        f"step_00000010) and its summary.json to {abandoned} (kept, not deleted)"
    )
    assert not (out / "summary.json").exists()
    assert (abandoned / "summary.json").read_text() == summary
    assert step_names(abandoned) == ["step_00000008", "step_00000010"]
    assert step_names(checkpoints) == ["step_00000006"]
