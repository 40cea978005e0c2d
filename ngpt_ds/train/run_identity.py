"""The run's identity: a random id in <out>/run_id.json, made by the run's first start there and kept for good,
recorded in the manifest of every checkpoint the run saves (`recorded`), so that --resume auto can say when the
checkpoint it takes was saved by another run (`saved_by_another_run`): one copied in from a colleague's --out.

The seal record (ngpt_ds.train.checkpoint_interrupted.seal_record) tells a copy only by the step folders it was
sealed beside; a keep-1 run seals its checkpoint beside nothing of its own, so its copy was resumed in silence. A
run folder copied whole (`cp -a`) keeps the id: its checkpoints are the same run's. Reads and writes only
run_id.json; knows nothing of the checkpoint format beyond the manifest entry it adds.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from ngpt_ds.files import replace_file
from ngpt_ds.train.manifest import RefusedFile, fsync_dir, read_capped

RUN_ID_FILE = "run_id.json"
"""In --out: {"run_id": 32 hex digits, "out": the folder it was made in, "created": UTC time}."""
MANIFEST_KEY = "saved_by_run"
"""The manifest entry of a save: {"run_id": ..., "out": ...} of the run that saved it."""
_ID = re.compile(r"[0-9a-f]{32}")
_MAX_BYTES = 4096


def read(out_dir: Path) -> dict[str, str] | None:
    """The run id record of `out_dir`, or None when it has none (a folder no run of this ngpt_ds started in) or
    it is not one (hand-edited, cut short, another file under that name)."""
    try:
        record = json.loads(read_capped(out_dir / RUN_ID_FILE, _MAX_BYTES).decode("utf-8"))
    except (OSError, RefusedFile, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return _well_formed(record)


def _well_formed(record: Any) -> dict[str, str] | None:
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str) or not _ID.fullmatch(record["run_id"]):
        return None
    out = record.get("out")
    return {"run_id": record["run_id"], "out": out if isinstance(out, str) else "?"}


def ensure(out_dir: Path) -> str | None:
    """Rank 0, under the run lock, before the first save: `out_dir`'s run id, made now when it has none. A
    run_id.json that is not one is left as it is (someone's file): the run saves no id, and a warning says so.
    Raises OSError when it cannot be written."""
    path = out_dir / RUN_ID_FILE
    found = read(out_dir)
    if found is not None:
        return found["run_id"]
    if os.path.lexists(path):
        return None
    record = {
        "run_id": uuid.uuid4().hex,
        "out": os.path.abspath(out_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    replace_file(path, json.dumps(record) + "\n")
    fsync_dir(out_dir)
    return record["run_id"]


def not_an_id_warning(out_dir: Path) -> str:
    return (
        f"warning: {out_dir / RUN_ID_FILE} is not a run id record (hand-edited, or another file under that name): "
        "left as it is, and this run's checkpoints record no run id, so a copy of them into another --out cannot "
        "be told. Move it away to have one made"
    )


def recorded(out_dir: Path) -> dict[str, Any]:
    """The manifest entry of a save in `out_dir`/checkpoints: the run's id, when it has one."""
    found = read(out_dir)
    return {MANIFEST_KEY: found} if found is not None else {}


def saved_by_another_run(manifest: dict[str, Any] | None, out_dir: Path) -> str | None:
    """The warning for a checkpoint whose manifest records a run id other than `out_dir`'s (None: the same run,
    or a checkpoint of an older ngpt_ds, which records none)."""
    saved_by = _well_formed((manifest or {}).get(MANIFEST_KEY))
    if saved_by is None:
        return None
    here = read(out_dir)
    if here is not None and here["run_id"] == saved_by["run_id"]:
        return None
    this = f"this --out's run {here['run_id']}" if here is not None else f"{out_dir}, which has no run id yet"
    return f"run {saved_by['run_id']} (in --out {saved_by['out']}), not by {this}"
