"""Loading never runs code: the one place ngpt_ds unpickles a checkpoint file.

A `.pt` file is a pickle, and a pickle can name any Python callable to run while it loads. So
every checkpoint file the project reads, including the files DeepSpeed itself reads on resume and
in `zero_to_fp32`, goes through torch's restricted unpickler (`torch.load(weights_only=True)`),
which rebuilds only tensors, plain Python data (dict, list, tuple, set, str, bytes, numbers, bool,
None), OrderedDict, torch.Size / dtype / device, and the classes on the allow-list below. A file
that needs anything else is refused with one `UnsafeCheckpointError` naming the file and the type;
nothing from it runs. Nor may a file describe more data than it holds: every tensor loaded must
store each of its elements, and all the tensors together, each counted as often as the file names it, may
describe at most four times the data the file stores (`_check_tensors`), and its zip records must be laid out as
torch.save writes them, uncompressed and each in bytes of its own (`check_layout`, before torch reads any tensor
data), so a few bytes cannot make a reader allocate terabytes.

The files and what they need beyond torch's defaults (DeepSpeed 0.19.8, found by saving real
checkpoints at ZeRO 0/1/2/3 in fp32 and bf16, and tensor-parallel ZeRO 1/2, and listing each
file with `torch.serialization.get_unsafe_globals_in_checkpoint`; 0.19.3 saves the same types at
ZeRO 2 fp32 and ZeRO 3 bf16, and the resume test loads a ZeRO 2 fp32 checkpoint through this guard
on 0.19.6, the lowest supported release):

- `mp_rank_XX_model_states.pt` (ZeRO 0-2; one per tensor-parallel rank): module weights,
  DeepSpeed's bookkeeping (param_shapes, ds_config, ...) and, at ZeRO 0, the optimizer state;
  and the trainer's client_state (step, loader position, RNG states, run config), all plain
  data: nothing beyond the defaults. (The trainer stores numpy's RNG state as lists and ints,
  ngpt_ds.train.loop, so that no numpy reconstruction function has to be allowed.)
- `zero_pp_rank_R_mp_rank_XX_model_states.pt` (ZeRO 3: one shard per rank): the same, nothing more.
- `[bf16_]zero_pp_rank_R_mp_rank_XX_optim_states.pt` (ZeRO 1-3; the `bf16_` prefix in bf16 runs):
  - `deepspeed.runtime.fp16.loss_scaler.LossScaler`: the optimizer's loss-scaler object (a
    static scale of 1 in bf16 and fp32 runs);
  - `deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler`: the same in fp16 runs (GPU only, so
    it is taken from DeepSpeed's code, not from a saved file, and checked by a round trip in the
    tests);
  - `deepspeed.runtime.zero.config.ZeroStageEnum`: the saved `zero_stage` (an int enum);
  - `deepspeed.utils.tensor_fragment.fragment_address`: ZeRO 1/2's `param_slice_mappings`
    (a dataclass of two ints).

- `step_N-universal/` (DeepSpeed's universal conversion, made to resume at another data-parallel
  size, ngpt_ds.train.reshape_convert; its converter reads the files above under this guard): copies of
  the model-states files, `zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt` (tensors only) and
  `zero/optimizer_state.pt` (`LossScaler`, `ZeroStageEnum`): nothing beyond the list above
  (ZeRO 2 and 3, fp32).

These classes hold only numbers, booleans and dtypes. Unpickling creates the three plain classes
without running their `__init__` and sets their attributes, and looks the enum member up by value;
no other code runs.

`deepspeed_loads_are_safe()` routes DeepSpeed's own loads here. DeepSpeed 0.19.3-0.19.8 read every
checkpoint file through the name `torch.load` (its TorchCheckpointEngine and state_dict_factory
on resume, `zero_to_fp32` on consolidation), mostly with `weights_only=False`. For the duration
of the guard, `torch.load` and `torch.serialization.load` are replaced by `load` below, which
forces `weights_only=True` with this allow-list whatever the caller passes. A newer DeepSpeed
that loads some other way, or saves other types, needs this header and the list revisited.

On resume, ngpt_ds.train.checkpoint first runs `check` on every file of the checkpoint (each rank
a share, then one agreed verdict), so every rank refuses together before DeepSpeed reads anything.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ngpt_ds.errors import NgptConfigError

TESTED_DEEPSPEED = "0.19.8"

#: The original loader, captured before any guard replaces `torch.load`.
_TORCH_LOAD = torch.serialization.load


class UnsafeCheckpointError(NgptConfigError):
    """A checkpoint file needs a type outside the allow-list: refused, nothing from it ran."""


def allowed_types() -> list[type]:
    """The classes DeepSpeed's checkpoint files need beyond torch's defaults (see the module header)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _allowed_names() -> set[str]:
    return {f"{t.__module__}.{t.__qualname__}" for t in allowed_types()}


def _describe_file(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        path = Path(f)
        return str(path.resolve()) if path.is_symlink() else str(path)  # a link in a temporary view: the real file
    return str(getattr(f, "name", None) or f"<{type(f).__name__}>")


def _refused_type(f: Any, err: Exception) -> str:
    """The type the restricted unpickler refused, from torch's message or, failing that, a scan of
    the file's pickle for globals outside the allow-list."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found:
        return found.group(1)
    if isinstance(f, (str, os.PathLike)):
        with contextlib.suppress(Exception):
            unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(f) if g not in _allowed_names()]
            if unsafe:
                return ", ".join(unsafe)
    # No global: another construct torch refuses; keep torch's own reason, without its advice to allow it.
    reasons = [
        p.strip()
        for p in str(err).split("\n\n")
        if p.strip() and not p.strip().startswith(("Weights only load failed", "Check the documentation"))
    ]
    return reasons[0].split(" Please use ")[0].replace("\n", " ") if reasons else "an object torch refuses"


def refusal(f: Any, err: Exception) -> UnsafeCheckpointError:
    needed = _refused_type(f, err)
    why = "this file was not written by the ngpt_ds trainer, or it was altered. Do not use it"
    if needed.startswith("numpy."):  # the one type an older trainer saved itself: its RNG state
        why = (
            "the ngpt_ds trainer saved numpy's RNG state as an array before loading was restricted, so this "
            "may be such an older checkpoint; it cannot be loaded safely. Start a new run, or use it with the "
            "older ngpt_ds only if you trust where it came from"
        )
    return UnsafeCheckpointError(
        f"{_describe_file(f)} was refused: loading it needs {needed}, which is not a tensor, plain "
        f"data or one of the DeepSpeed {TESTED_DEEPSPEED} types ngpt_ds allows (ngpt_ds/safe_load.py). Checkpoints "
        f"are data and loading never runs code from them: {why}"
    )


def load(f: Any, map_location: Any = "cpu", *, mmap: bool | None = None, **pickle_load_args: Any) -> Any:
    """`torch.load` restricted to tensors, plain data and the allow-list; anything else is refused
    with UnsafeCheckpointError, as is a zip not laid out as torch.save writes one (`check_layout`: a zip cut
    short included, its directory unreadable). Other failures (a missing file, a damaged pickle) propagate as
    torch raises them."""
    pickle_load_args.pop("pickle_module", None)
    pickle_load_args.pop("weights_only", None)
    check_layout(f)
    # torch hints a list of callables, which a list[type] does not match (list is invariant); it only reads it.
    with torch.serialization.safe_globals(allowed_types()):  # type: ignore[arg-type]
        try:
            loaded = _TORCH_LOAD(f, map_location=map_location, weights_only=True, mmap=mmap, **pickle_load_args)
        except pickle.UnpicklingError as err:
            raise refusal(f, err) from None
    _check_tensors(f, loaded)
    return loaded


SHARED_SLACK_BYTES = 1 << 20
"""What the tensors of a file may describe beyond `SHARED_FACTOR` times its stored data (a few tiny tensors
that repeat a small storage: scalars, tied embeddings of a toy model)."""
SHARED_FACTOR = 4
"""How many times over a file's tensors may describe its stored data in all: views of a flat buffer describe
it once, a flat buffer saved beside its views or a weight tied between two names twice; 4 leaves room for
layouts a newer DeepSpeed may save, and bounds what a reader allocates to a few times the file."""


def _check_tensors(f: Any, loaded: Any) -> None:
    """Refuse a tensor with more elements than the file stores for it, and tensors that describe far more
    data in all than the file stores.

    The pickle gives each tensor its shape and strides; a stride of 0 repeats one stored element along
    that dim, so a few bytes can describe a tensor of 10^11 elements, which the first whole-tensor
    operation of a reader (DeepSpeed's zero_to_fp32 concatenating the optimizer shards, the finiteness
    check of ngpt_ds.infer) allocates: a file of a few hundred kB exhausts the memory before any error.
    torch.save of a model's or optimizer's tensors never writes such a view (each holds its elements in
    a storage of its own or of a flat buffer), nor a sparse or other non-strided tensor.

    The same holds for one tensor named many times: the pickle memoizes it, so a list of 10^5 references to
    one 128 kB partition costs a few bytes each, and zero_to_fp32 concatenates every element (26 GB from a
    600 kB optimizer-states file). Each reference from a container counts (a container is walked once)."""
    todo, seen = [loaded], set()
    stored: dict[tuple[int, int], int] = {}  # distinct storages: (address, size) -> size
    described = 0
    while todo:  # iterative: a crafted pickle may nest deeper than the recursion limit
        obj = todo.pop()
        if isinstance(obj, torch.Tensor):
            if obj.layout == torch.strided:
                described += obj.numel() * obj.element_size()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided:
                raise _crafted(f, f"a {obj.layout} tensor of shape {tuple(obj.shape)}")
            storage = obj.untyped_storage()
            stored[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            if obj.numel() * obj.element_size() > storage.nbytes():
                raise _crafted(
                    f,
                    f"a tensor of shape {tuple(obj.shape)} and strides {obj.stride()} ({obj.numel()} elements) "
                    f"whose data in the file is {storage.nbytes()} bytes",
                )
        elif isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):  # the allow-list's classes
            todo.extend(vars(obj).values())
    total = sum(stored.values())
    if described > SHARED_FACTOR * total + SHARED_SLACK_BYTES:
        raise _crafted(
            f,
            f"tensors describing {described} bytes in all (the same data named many times) over {total} bytes of data",
        )


def check_layout(f: Any) -> None:
    """Refuse a zip-format file that is not laid out as torch.save writes one: a compressed record, records whose
    data overlap, or records that declare more data in all than the file holds. Runs before torch reads a byte
    of tensor data, on every load (memory-mapped or not).

    torch.save stores every record uncompressed (so that a storage can be memory-mapped), but torch's reader
    also inflates a deflated one, into a buffer of the size the zip's directory claims: a 1 MB file whose
    data/0 inflates to 1 GiB loaded as a 1 GiB tensor (deflate packs zeros about 1000:1), read that way by
    DeepSpeed's zero_to_fp32 and ds_to_universal, which do not memory-map.

    torch.save also writes each record once, one after the other. A zip's central directory may instead
    point thousands of entries (data/0 ... data/N-1) at one stored record: a reader that does not memory-map
    reads each entry into its own buffer, so a 1.5 MB file became 2.4 GB in memory, and each storage looks
    genuine to `_check_tensors`. So the records' spans (local header, name, extra field, data) must be
    disjoint and lie before the central directory. A named file, or an open seekable one, is looked at."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as stream:
            if stream.read(4) == _ZIP_MAGIC:
                _check_zip_layout(f, stream)
    elif all(hasattr(f, a) for a in ("read", "seek", "tell")) and getattr(f, "seekable", lambda: True)():
        start = f.tell()
        try:
            if f.read(4) == _ZIP_MAGIC:
                _check_zip_layout(f, f)
        finally:
            f.seek(start)


_ZIP_MAGIC = b"PK\x03\x04"
"""How a zip's first record begins: what torch reads to decide that a file is a zip archive (else the legacy format)."""
_LOCAL_HEADER = struct.Struct("<4s22xHH")
"""A zip local file header (30 bytes): its signature, then the lengths of the name and the extra field."""


def _check_zip_layout(f: Any, stream: Any) -> None:
    try:
        with zipfile.ZipFile(stream) as archive:
            records = archive.infolist()
            central_directory = archive.start_dir
        # Where the end record says the directory is: torch's reader (miniz) reads it there, while Python's
        # zipfile looks right before the end record (it allows bytes prepended to an archive). Two places, two
        # directories: one would be checked and the other loaded.
        declared_directory = zipfile._EndRecData(stream)[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
    except (zipfile.BadZipFile, ValueError, EOFError) as err:  # torch's reader would find no archive either
        raise _crafted(f, f"a zip directory that cannot be read ({err}; cut short or damaged?)", costly=False) from None
    if central_directory != declared_directory:
        raise _crafted(
            f,
            f"a zip directory at byte {central_directory} where its end record says byte {declared_directory}",
            costly=False,
        )
    packed = [m for m in records if m.compress_type != zipfile.ZIP_STORED]
    if packed:
        largest = max(packed, key=lambda m: m.file_size)
        raise _crafted(
            f,
            f"a compressed record {largest.filename} ({largest.compress_size} bytes that inflate to {largest.file_size})",
        )
    size = stream.seek(0, os.SEEK_END)
    declared = sum(max(m.file_size, m.compress_size) for m in records)
    if declared > size:
        raise _crafted(
            f,
            f"{len(records)} zip records that declare {declared} bytes of data in all, more than the file's "
            f"{size} bytes (records that share their data)",
        )
    end, previous = 0, None
    for m in sorted(records, key=lambda m: m.header_offset):
        header = b""
        if m.header_offset >= 0:
            stream.seek(m.header_offset)
            header = stream.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(header)[0] != _ZIP_MAGIC:
            raise _crafted(
                f,
                f"a zip record {m.filename} whose directory entry points at no record (byte {m.header_offset})",
                costly=False,
            )
        _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        if m.header_offset < end:
            raise _crafted(
                f,
                f"zip records {previous} and {m.filename} that share bytes {m.header_offset}-{end} of the file "
                "(each is read into memory separately)",
            )
        end = m.header_offset + _LOCAL_HEADER.size + name_length + extra_length + max(m.file_size, m.compress_size)
        previous = m.filename
        if end > central_directory:
            raise _crafted(f, f"a zip record {m.filename} whose data (to byte {end}) runs into the zip's directory")


def _crafted(f: Any, what: str, *, costly: bool = True) -> UnsafeCheckpointError:
    cost = " and which would take far more memory than the file" if costly else ""
    return UnsafeCheckpointError(
        f"{_describe_file(f)} was refused: it holds {what}, which torch.save of a model's or optimizer's "
        f"tensors never writes{cost}. This file was not written by the ngpt_ds trainer, or it was altered. "
        "Do not use it"
    )


def check(path: str | os.PathLike) -> None:
    """Unpickle a file under the allow-list and discard it: refuses it exactly as a real load would.
    Tensor data is memory-mapped (zip-format files), not read, so this costs about the pickle's size."""
    load(path, map_location="cpu", mmap=zipfile.is_zipfile(path))


def _guarded_torch_load(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    **pickle_load_args: Any,
) -> Any:
    """What `torch.load` is while `deepspeed_loads_are_safe()` is active: the caller's
    `weights_only` and `pickle_module` are ignored."""
    return load(f, map_location=map_location, mmap=mmap, **pickle_load_args)


@contextlib.contextmanager
def deepspeed_loads_are_safe() -> Iterator[None]:
    """Within this block every `torch.load` (DeepSpeed's included) is the restricted `load`.

    The replacement is process-wide for the block's duration; ngpt_ds enters it around single
    calls (`engine.load_checkpoint`, `zero_to_fp32`) on the main thread.
    """
    saved = torch.load, torch.serialization.load
    torch.load = torch.serialization.load = _guarded_torch_load
    try:
        yield
    finally:
        torch.load, torch.serialization.load = saved
