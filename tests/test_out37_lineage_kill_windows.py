"""--resume of an older checkpoint killed (SIGKILL) in its rollback's narrow windows loses nothing of the earlier
lineage (helper out37, session 37).

Faults (ngpt_ds.train.lineage._start_lineage):
- the earlier lineage's checkpoints were moved into abandoned-<time>/ first, then lineage.json, then summary.json. A
  kill after the checkpoints left summary.json in --out with no newer checkpoint to move: the same command run again
  moved nothing, and the resumed run's summary.json replaced the earlier lineage's (its final step and loss lost).
- the copied logs (metrics.jsonl, tensorboard/) were renamed from their staging folder into abandoned-<time>/ without
  an fsync of the files or the folder: a crash of the machine after the rename could leave empty or short copies,
  while the run truncates its own metrics.jsonl to the resumed step.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import assert_complete, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

# rank 0's startup of the rollback, as the trainer runs it, killed (SIGKILL) as the move of summary.json starts
_KILLED_BEFORE_SUMMARY = r"""
import os, signal, sys
from pathlib import Path
from ngpt_ds.train import lineage

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
lineage._move_summary = die
out = Path(sys.argv[1])
lineage.start_lineage(out, out / "checkpoints" / "step_00000002", named=True)
"""

# the same startup, recording the fsyncs and renames: each copied file is synced before the staging folder's rename
_RECORDED = r"""
import json, os, sys
from pathlib import Path
from ngpt_ds.train import lineage

events = []
real_fsync, real_rename = os.fsync, os.rename
def fsync(fd):
    events.append(["fsync", os.readlink(f"/proc/self/fd/{fd}")])
    return real_fsync(fd)
def rename(src, dst):
    events.append(["rename", str(src), str(dst)])
    return real_rename(src, dst)
os.fsync, os.rename = fsync, rename
out = Path(sys.argv[1])
lineage.start_lineage(out, out / "checkpoints" / "step_00000002", named=True)
print(json.dumps(events))
"""


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    }


def _trained_run(tmp_path: Path, tiny_dataset: Path) -> tuple[Path, Path, Path, Path]:
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=3))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])  # steps 2 and 4, summary.json at step 4
    return out, config, ds, tiny_dataset


def test_a_rollback_killed_before_it_moves_summary_json_keeps_the_earlier_lineages_summary(tmp_path, tiny_dataset):
    out, config, ds, data = _trained_run(tmp_path, tiny_dataset)
    checkpoints = out / "checkpoints"
    earlier_summary = (out / "summary.json").read_bytes()
    assert json.loads(earlier_summary)["step"] == 4

    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_SUMMARY, str(out)], env=_env(), capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    rollback = train_cmd(config, ds, data, out, "--resume", checkpoints / "step_00000002")
    run([sys.executable, *rollback])  # the same command run again trains steps 3-4 of the new lineage
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    # old code: [] (the earlier lineage's summary.json replaced by the resumed run's in --out)
    kept = [p for p in checkpoints.glob("abandoned-*/summary.json") if p.read_bytes() == earlier_summary]
    assert len(kept) == 1, sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*.json"))
    (earlier_step_4,) = checkpoints.glob("abandoned-*/step_00000004")  # the earlier lineage's step 4, whole
    assert_complete(earlier_step_4)
    assert_complete(checkpoints / "step_00000004")  # the new lineage's


def test_a_rollbacks_copied_logs_are_synced_before_their_folder_takes_its_name(tmp_path, tiny_dataset):
    out, _, _, _ = _trained_run(tmp_path, tiny_dataset)
    checkpoints = out / "checkpoints"
    recorded = subprocess.run(
        [sys.executable, "-c", _RECORDED, str(out)], env=_env(), capture_output=True, text=True, check=True
    )
    events = json.loads(recorded.stdout.splitlines()[-1])
    (abandoned,) = checkpoints.glob("abandoned-*")
    staging = checkpoints / f".copying-{abandoned.name}"
    placed = events.index(["rename", str(staging), str(abandoned)])
    synced = {path for kind, path, *_ in events[:placed] if kind == "fsync"}
    moved = ("summary.json", "lineage.json")  # renamed from --out, not copied
    copies = [p for p in abandoned.rglob("*") if p.is_file() and "step_" not in str(p) and p.name not in moved]
    assert {p.name for p in copies} >= {"metrics.jsonl"} and any("tfevents" in p.name for p in copies), copies
    # old code: no fsync before the rename (set() here)
    assert {str(staging / p.relative_to(abandoned)) for p in copies} <= synced, (sorted(synced), copies)
    assert str(staging) in synced
    assert str(checkpoints) in {path for kind, path, *_ in events[placed:] if kind == "fsync"}
