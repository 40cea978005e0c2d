"""Resuming from another run's checkpoint into a folder that holds logs but no checkpoint."""

from __future__ import annotations

import json

from ngpt_ds.train import manifest
from ngpt_ds.train.lineage import start_lineage
from ngpt_ds.train.metrics import truncate_jsonl


def _checkpoint(folder, step):
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(bytes([step % 256]) * 100)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def _rows(*steps):
    return "".join(json.dumps({"step": s, "train/loss": 9.0}) + "\n" for s in steps)


def test_another_runs_logs_without_checkpoints_are_moved_aside_not_mixed_into_the_resumed_lineage(tmp_path):
    """Fault: --resume other/checkpoints/step_N --out run, where run holds no checkpoint but the logs of an
    earlier run (killed before its first save, or whose checkpoints/ was deleted to start over), kept those
    logs: metrics.jsonl went on with the earlier run's rows of steps <= N followed by the resumed lineage's
    (the resume drops only rows after N), tensorboard/ with its events, and summary.json said 'finished' at
    the earlier run's step. Before: start_lineage returned None and metrics.jsonl read steps 10, 20, 30.
    Now: they go whole to checkpoints/abandoned-<time>/, as when that run had left checkpoints there."""
    other = _checkpoint(tmp_path / "other" / "checkpoints" / "step_00000100", 100)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(_rows(10, 20, 30))
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"earlier run's events")
    (run / "summary.json").write_text('{"status": "finished", "step": 30}\n')
    line = start_lineage(run, other)
    (abandoned,) = (run / "checkpoints").iterdir()
    assert abandoned.name.startswith("abandoned-")
    assert line == (
        f"resuming from {other}, outside {run / 'checkpoints'}: moved the metrics.jsonl and tensorboard/ and "
        f"summary.json of another run, which left no checkpoint in {run}, to {abandoned} (kept, not deleted)"
    )
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "lineage.json"]
    assert sorted(p.name for p in abandoned.iterdir()) == ["metrics.jsonl", "summary.json", "tensorboard"]
    assert (abandoned / "metrics.jsonl").read_text() == _rows(10, 20, 30)
    assert (abandoned / "tensorboard" / "events.out.tfevents.1").read_bytes() == b"earlier run's events"
    assert (abandoned / "summary.json").read_text() == '{"status": "finished", "step": 30}\n'
    assert json.loads((run / "lineage.json").read_text())["resumed_from"] == str(other)


def test_the_same_lineage_stopped_before_its_first_save_keeps_its_logs(tmp_path):
    """The same command run again after a session stopped before its first checkpoint: lineage.json names the
    same origin, so metrics.jsonl is this lineage's and stays (the resume drops its rows after N, into
    metrics.replaced.jsonl); nothing moves."""
    other = _checkpoint(tmp_path / "other" / "checkpoints" / "step_00000100", 100)
    run = tmp_path / "run"
    run.mkdir()
    assert start_lineage(run, other) is None  # the first session: an empty folder
    (run / "metrics.jsonl").write_text(_rows(101, 102))
    assert start_lineage(run, other) is None
    assert sorted(p.name for p in run.iterdir()) == ["lineage.json", "metrics.jsonl"]
    assert truncate_jsonl(run / "metrics.jsonl", 100) == [101, 102]
    # A third run's checkpoint: those rows are another lineage's now.
    third = _checkpoint(tmp_path / "third" / "checkpoints" / "step_00000050", 50)
    (run / "metrics.jsonl").write_text(_rows(101, 102))
    line = start_lineage(run, third)
    (abandoned,) = (run / "checkpoints").iterdir()
    assert line == (
        f"resuming from {third}, outside {run / 'checkpoints'}: moved the metrics.jsonl and metrics.replaced.jsonl "
        f"of another run, which left no checkpoint in {run}, to {abandoned} (kept, not deleted)"
    )
    assert (abandoned / "metrics.jsonl").read_text() == _rows(101, 102)
    assert (abandoned / "metrics.replaced.jsonl").read_text() == _rows(101, 102)  # truncate_jsonl's, above
    assert json.loads((run / "lineage.json").read_text())["resumed_from"] == str(third)


def test_the_rows_an_earlier_lineage_dropped_go_with_its_logs(tmp_path):
    """Fault: metrics.replaced.jsonl (the rows a resume dropped) stayed in --out when a checkpoint from elsewhere
    moved the folder's other logs aside, so the new lineage appended the rows it dropped to another lineage's."""
    other = _checkpoint(tmp_path / "other" / "checkpoints" / "step_00000100", 100)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(_rows(10, 20))
    (run / "metrics.replaced.jsonl").write_text(_rows(30))
    line = start_lineage(run, other)
    (abandoned,) = (run / "checkpoints").iterdir()
    assert line == (
        f"resuming from {other}, outside {run / 'checkpoints'}: moved the metrics.jsonl and metrics.replaced.jsonl "
        f"of another run, which left no checkpoint in {run}, to {abandoned} (kept, not deleted)"
    )
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "lineage.json"]
    assert (abandoned / "metrics.replaced.jsonl").read_text() == _rows(30)
