"""An interrupted universal conversion goes on from the fragments it extracted (README "Resuming at another world
size"; the conversion is ngpt_ds.train.reshape_convert).

DeepSpeed's ds_to_universal (ZeRO 1/2) works in phases: 1. it extracts every rank's optimizer shard into one
fragment file per parameter, state and rank under OUTPUT/tmp; 2. it merges each parameter's fragments into
OUTPUT/zero/NAME/; 3. it writes the common optimizer state and copies the model states, then removes tmp. A
conversion killed after phase 1 (a preemption, the out-of-memory killer) started again from the beginning.

Phase 1 is now sealed: once DeepSpeed's extraction returns, the converter child flushes every fragment file to
disk and writes EXTRACTED (temporary name, flush, rename), which names the source checkpoint (its COMPLETE file's
digest), the DeepSpeed version, and the fragment files (count, bytes, a digest of their names and sizes). The
next conversion of the same checkpoint keeps OUTPUT/tmp when EXTRACTED matches in every point, and the child
skips phase 1, provided the fragments also fit the checkpoint's parameters (_misfit: the seal vouches for
names and sizes only, and can be rewritten by whoever wrote the fragments). Anything else (no EXTRACTED, another
checkpoint or DeepSpeed, a file missing, added, resized or a link, a fragment that does not fit) is removed and
converted from the beginning. Phases 2 and 3 always run again and rewrite every file they
make, so a half-written merged file is never kept. ZeRO 3 checkpoints (another extraction) always start over.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import manifest, universal_check

FRAGMENTS = "tmp"
"""ds_to_universal's folder of extracted fragments, under its output folder."""
EXTRACTED = "EXTRACTED"
"""The seal of a finished extraction, inside FRAGMENTS."""
MARKER_MAX_BYTES = 4096


def _deepspeed_version() -> str:
    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        return "unknown"


def _listing(folder: Path) -> dict | None:
    """Count, bytes and a digest of the names and sizes of every file under `folder` but the seal; None when
    anything there is no plain file or folder (a link: nothing is followed)."""
    digest, count, total = hashlib.blake2b(digest_size=16), 0, 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs):
            if stat.S_ISLNK(os.lstat(os.path.join(root, name)).st_mode):
                return None
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                return None
            relative = os.path.relpath(path, folder)
            if relative == EXTRACTED:
                continue
            digest.update(f"{relative}\0{st.st_size}\n".encode("utf-8", errors="surrogateescape"))
            count, total = count + 1, total + st.st_size
    return {"files": count, "bytes": total, "listing_blake2b": digest.hexdigest()}


def _identity(source: Path) -> dict:
    return {
        "source": source.name,
        "complete_blake2b": manifest.marker_digest(source),
        "deepspeed": _deepspeed_version(),
    }


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(folder: Path, source: Path) -> None:
    """The converter child, after DeepSpeed's extraction into `folder` returned: flush every fragment to disk
    (a seal must not outlive the files it vouches for after a node crash), then write EXTRACTED atomically."""
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)
    listing = _listing(folder)
    if listing is None or _identity(source)["complete_blake2b"] is None:
        return  # nothing to vouch for: the next conversion starts over
    temporary = folder / (EXTRACTED + ".tmp")
    temporary.write_text(json.dumps({**_identity(source), **listing}, sort_keys=True), encoding="utf-8")
    _fsync(str(temporary))
    os.replace(temporary, folder / EXTRACTED)
    _fsync(str(folder))


def _sealed(folder: Path, source: Path) -> bool:
    """Whether `folder` holds a sealed extraction of `source` by this DeepSpeed, with every file as sealed."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return False
        marker = folder / EXTRACTED
        st = os.lstat(marker)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MARKER_MAX_BYTES:
            return False
        sealed = json.loads(marker.read_text(encoding="utf-8"))
        identity = _identity(source)
        if identity["complete_blake2b"] is None or not isinstance(sealed, dict):
            return False
        return bool(sealed == {**identity, **(_listing(folder) or {"files": None})})
    except (OSError, ValueError):
        return False


def reusable(folder: Path, source: Path) -> bool:
    """Whether `folder` holds a sealed extraction of `source` whose fragments fit the checkpoint."""
    return _sealed(folder, source) and _misfit(folder, source) is None


STATES = ("fp32", "exp_avg", "exp_avg_sq")
"""The flat fragments the extraction writes of each parameter (and STEP, one number per rank)."""
STEP = "step"


def _parameter_sizes(source: Path) -> dict[tuple[str, int], int] | None:
    """(name, tensor-parallel rank) -> elements, from the model states' param_shapes; None when unreadable."""
    from ngpt_ds import safe_load  # imports DeepSpeed's types: not at the module's import

    sizes: dict[tuple[str, int], int] = {}
    for path in sorted(source.glob("mp_rank_*_model_states.pt")):
        states = safe_load.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))
        groups = states.get("param_shapes") if isinstance(states, dict) else None
        if not isinstance(groups, (list, tuple)) or not path.name[8:10].isdigit():
            return None
        for group in groups:
            for name, shape in group.items():
                sizes[(str(name), int(path.name[8:10]))] = math.prod(shape)
    return sizes or None


def _misfit(folder: Path, source: Path) -> str | None:
    """Why the sealed fragments are not what the extraction of `source` writes, or None when they are: for every
    parameter and tensor-parallel rank, the same data-parallel ranks hold each state, each a flat fp32 tensor of the
    same length per rank, the lengths adding up to the parameter's size; and each rank's `step` fragment holds the
    optimizer step the source's shards record. The seal vouches for names and sizes only, and whoever can write the
    work folder can write one: a fragment missing, cut, lengthened or of another dtype was merged as it was (a
    parameter without its Adam moments in the converted checkpoint, in silence) or stopped the merge with
    DeepSpeed's traceback at every rerun; so did one rank's step fragment of another count ("AssertionError: All
    shards must have the same step value"), and every rank's changed alike became the parameter's step.pt. A
    fragment that needs code to load is refused by the merge's guarded load. Anything that does not fit is
    extracted again. Fragments are memory-mapped: this reads pickles."""
    from ngpt_ds import safe_load

    try:
        sizes = _parameter_sizes(source)
        if sizes is None:
            return "the checkpoint's model states list no parameter shapes"
        found_names = {p.name for p in folder.iterdir() if p.is_dir()}
        if found_names != {name for name, _ in sizes}:
            return "the fragments' parameters are not the checkpoint's"
        recorded = step = universal_check.optimizer_step(source)
        for (name, tp), size in sizes.items():
            where = folder / name / str(tp)
            ranks: dict[str, int] | None = None
            for state in STATES:
                found = {}
                for path in where.glob(f"{state}.*"):
                    tensor = safe_load.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))
                    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32 or tensor.dim() != 1:
                        return f"{path} holds no flat float32 tensor"
                    found[path.suffix] = tensor.numel()
                if ranks is None:
                    ranks = found
                if found != ranks:
                    return f"{where} holds {state} fragments of other ranks or lengths than the others"
            if ranks is None or sum(ranks.values()) != size:
                return f"the fragments of {name} do not add up to its {size} elements"
            steps = sorted(where.glob(f"{STEP}.*"))
            if (steps or recorded is not None) and {p.suffix for p in steps} != set(ranks):
                return f"{where} holds step fragments of other ranks than its states"
            for path in steps:
                count = universal_check.step_count(safe_load.load(path, map_location="cpu"))
                if not universal_check.is_count(count):
                    return f"{path} holds no step count"
                step = count if step is None else step  # no count in the shards: the fragments agree
                if count != step:
                    return f"{path} holds optimizer step {count:g}, where the checkpoint's optimizer shards are at {step:g}"
    except Exception as err:  # noqa: BLE001 (a crafted or damaged file raises what the unpickler meets: extract again)
        return f"{type(err).__name__}: {err}"
    return None


def keep_for_rerun(work: Path, source: Path) -> int | None:
    """Rank 0, before converting: when the work folder an interrupted conversion of `source` left holds a
    reusable extraction, remove everything else in it (the log, the half-merged output) and return the bytes its
    fragments hold; else change nothing and return None (the caller removes the folder)."""
    output = work / "converted"
    try:
        if not stat.S_ISDIR(os.lstat(work).st_mode) or not stat.S_ISDIR(os.lstat(output).st_mode):
            return None
    except OSError:
        return None
    if not reusable(output / FRAGMENTS, source):
        return None
    kept = _listing(output / FRAGMENTS) or {"bytes": 0}
    for folder in (work, output):
        for entry in folder.iterdir():
            if entry == output or (folder == output and entry.name == FRAGMENTS):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return int(kept["bytes"])


def extract_once(extract: Callable, source: Path) -> Callable:
    """ds_to_universal's `_extract_zero_shard_files`, skipped when its folder holds a reusable extraction of
    `source`, and sealed when it returns."""

    def extract_or_reuse(args: object, ds_checkpoint: object, temp_dir: str) -> None:
        folder = Path(temp_dir)
        if _sealed(folder, source):
            misfit = _misfit(folder, source)
            if misfit is None:
                print(f"*** 1. Reusing the ZeRO fragments an interrupted conversion extracted into {folder} (sealed)")
                return
            print(f"*** 1. Extracting again: the sealed fragments in {folder} do not fit {source.name} ({misfit})")
        from ngpt_ds import safe_load

        try:  # shards of two step counts: DeepSpeed's merge stopped on an AssertionError traceback
            universal_check.optimizer_step(source)
        except NgptConfigError as err:
            raise safe_load.UnsafeCheckpointError(str(err)) from None  # the child's one-line refusal
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
        extract(args, ds_checkpoint, temp_dir)
        seal(folder, source)

    return extract_or_reuse
