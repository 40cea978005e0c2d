"""What a saved weight may be, checked by every loader of saved weights: ngpt_ds's own
(ngpt_ds.infer.loading) and transformers' from_pretrained (ngpt_ds.hf.modeling_ngpt, which every
`--format hf` export carries with this file, so the checks hold without ngpt_ds installed too); and where it
may be: every shard a folder's weights index names, and its single weights file, is a file of that folder
(check_shards); and whether the machine can hold them (check_host_memory), before a parameter is allocated."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ngpt_ds.errors import NgptConfigError

#: Largest allowed | ||row|| - 1 | of a sphere matrix by the dtype its weights were stored in: fp32 weights
#: are renormalized after every step (to ~1e-7); a bf16 copy of unit vectors is off by up to ~2^-9 per element.
NORM_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}

WEIGHT_DTYPES = tuple(NORM_TOLERANCE)
"""The dtypes a saved weight may have: float32, float64, bfloat16, float16 (read as float32)."""

HEADER_DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16}
"""safetensors' names of WEIGHT_DTYPES (a header's `dtype`)."""


def check_dtypes(dtypes: dict[str, Any], source: str) -> None:
    """Every weight must be float32, float64, bfloat16 or float16 (`dtypes`: name -> torch dtype, or the
    safetensors header's name of one): float8 ended in a traceback (isfinite is not implemented for it), and
    int8, bool or complex weights were cast to float32 and loaded without a word (complex dropping its
    imaginary part)."""
    bad = sorted(
        (name, dtype)
        for name, dtype in dtypes.items()
        if (HEADER_DTYPES.get(dtype) if isinstance(dtype, str) else dtype) not in WEIGHT_DTYPES
    )
    if bad:
        shown = ", ".join(f"{name} ({str(dtype).removeprefix('torch.')})" for name, dtype in bad[:8])
        raise NgptConfigError(
            f"{source}: {shown}{' …' if len(bad) > 8 else ''}: weights must be float32, float64, bfloat16 or "
            "float16; the files are damaged, altered or from another program"
        )


def check_weight_file(path: str | os.PathLike) -> None:
    """A weights file must be a regular file (or a link to one, as the Hugging Face cache keeps them): a named pipe
    named by a folder's model.safetensors.index.json (transformers opens the shards it lists without a look) made
    from_pretrained wait on its first read forever, without a word; a device would be read as weights."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the reader that opens it names it
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise NgptConfigError(
            f"{path} is {kind}, not a weights file; the files are damaged, altered or from another program"
        )


@contextlib.contextmanager
def unreadable_weights(path: str | os.PathLike) -> Iterator[None]:
    """Around the first read of a weights file's header (safetensors) or pickle (pytorch_model.bin, read on the meta
    device with weights_only): its refusal becomes one error naming the file. safetensors' errors (a header length
    past the file, offsets that overlap or leave it, a header that is no JSON mapping) came as a bare traceback naming
    no file, and a pickle needing a callable as torch's message advising weights_only=False, which runs it."""
    import pickle

    from safetensors import SafetensorError

    try:
        yield
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        needs = f"needs {found.group(1)}, which is not a tensor or plain data" if found else f"is refused ({err})"
        raise NgptConfigError(
            f"{path}: this pickled weights file {needs}; unpickling it could run code, so nothing of it was loaded "
            "(and nothing ran). Never load it with weights_only=False: use the export's model.safetensors, or export "
            "the checkpoint again"
        ) from None
    except (SafetensorError, EOFError, RuntimeError, ValueError) as err:
        raise NgptConfigError(
            f"{path} cannot be read as weights ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "the file is damaged, altered or from another program: copy the whole folder again, or export the "
            "checkpoint again"
        ) from None


@contextlib.contextmanager
def pinned_weights(path: Path) -> Iterator[tuple[str, int]]:
    """The regular file at `path`, opened once without waiting (O_NONBLOCK) and judged by the open file's fstat:
    yields a path that reads that very file (/proc/self/fd/N, where Linux has it; else `path`) and its size. A look at
    the path before (is_file) passed a file swapped for a named pipe just after it, and the reads by path that
    followed (the header, then every tensor) waited on the pipe forever, or read another file than the one checked."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise NgptConfigError(f"{path} cannot be opened ({err.strerror}); export the checkpoint again") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NgptConfigError(f"{path} is not a regular file; export the checkpoint again")
        pinned = f"/proc/self/fd/{fd}"
        yield (pinned if os.path.exists(pinned) else str(path)), info.st_size
    finally:
        os.close(fd)


MAX_INDEX_BYTES = 16 << 20
"""Largest model.safetensors.index.json read: a real one lists each weight once (about 100 bytes a name)."""


def _outside(path: Path, folder: Path) -> str | None:
    """Why the shard `path` (named by an index in `folder`) is outside `folder`, or None."""
    if not path.is_symlink():
        return None
    real, bounds = os.path.realpath(path), os.path.realpath(folder)
    repo = folder.parent.parent  # a Hugging Face cache snapshot, models--OWNER--NAME/snapshots/REV, links to its blobs
    if folder.parent.name == "snapshots" and repo.name.startswith("models--"):
        bounds = os.path.realpath(repo / "blobs")
    return None if os.path.commonpath([real, bounds]) == bounds else f"is a link to {real}, outside the folder"


def check_shards(name_or_path: str | os.PathLike | None, subfolder: str = "") -> None:
    """Every shard an index file of a local folder names (its weight_map's values) must be a file of that folder:
    transformers joins the names onto the folder unchecked, so an index naming "/abs/x.safetensors",
    "../other/x.safetensors" or a link pointing elsewhere made from_pretrained read weights outside the folder
    the user named. Checked before transformers reads the index; a hub repo id (not a folder) is left to it."""
    if name_or_path is None or not os.path.isdir(name_or_path) or not (Path(name_or_path) / subfolder).is_dir():
        return  # a state_dict given, a hub repo id (its files are fetched by name into the cache), or no folder
    folder = Path(name_or_path) / subfolder
    for index in sorted(folder.glob("*.index*.json")):  # model.safetensors.index.json, its variants, the .bin's
        check_weight_file(index)  # a named pipe would be read forever
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise NgptConfigError(f"{index} is over {MAX_INDEX_BYTES >> 20} MiB; a weights index is far smaller")
        try:
            weight_map = json.loads(index.read_bytes()).get("weight_map")
        except (ValueError, AttributeError):
            raise NgptConfigError(f"{index} is not a JSON object; the files are damaged or altered") from None
        for key, name in (weight_map or {}).items() if isinstance(weight_map, dict) else ():
            plain = isinstance(name, str) and name not in ("", ".", "..") and not os.path.isabs(name)
            if not plain or any(sep in name for sep in ("/", "\\", os.sep, "\0")):
                why: str | None = "is not the name of a file in the folder"
            else:
                why = _outside(folder / name, folder)
            if why:
                raise NgptConfigError(
                    f"{index}: weight_map[{key!r}] = {name!r} {why}; "
                    "a shard must be a file of the folder itself (the files are damaged, altered or from another program)"
                )
    # The single weights file transformers reads where there is no index (model.safetensors, pytorch_model.bin, or
    # their variants): a link out of the folder read weights elsewhere, and a named pipe hung the load.
    for single in sorted([*folder.glob("model*.safetensors"), *folder.glob("pytorch_model*.bin")]):
        check_weight_file(single)
        why = _outside(single, folder)
        if why:
            raise NgptConfigError(
                f"{single} {why}; a weights file must be a file of the folder itself (the files are damaged, "
                "altered or from another program)"
            )


GIB = 2**30


def _proc_number(path: str, key: str) -> int | None:
    """The `key:` line of a /proc status file (/proc/meminfo, /proc/self/status), in bytes (its value is in kB);
    None where absent or odd: a negative number, or another unit, as a container's stand-in /proc/meminfo may show,
    had counted as that many bytes available (a negative: every load refused)."""
    try:
        with open(path, "rb") as f:
            for line in f:  # bytes: a stray byte on another line spoils no figure
                if line.startswith(key.encode() + b":"):
                    fields = line.split()
                    value = int(fields[1])
                    return value * 1024 if value >= 0 and fields[2:] == [b"kB"] else None
    except (OSError, ValueError, IndexError):
        return None
    return None


_PROC_MEMINFO = "/proc/meminfo"
_PROC_CGROUP = "/proc/self/cgroup"
_PROC_SELF_STATUS = "/proc/self/status"
_CGROUP_ROOT = "/sys/fs/cgroup"
_CGROUP_V1_ROOT = "/sys/fs/cgroup/memory"
# A cgroup's files: its limit, its use, and the memory.stat fields of its page cache.
_V2 = ("memory.max", "memory.current", ("active_file", "inactive_file"))
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file"))
_V1_UNLIMITED = 1 << 62
"""cgroup v1 has no word for no limit: memory.limit_in_bytes reads 9223372036854771712 (2^63 rounded to pages)."""


def _cgroup_headroom() -> int | None:
    """The least of limit - use over this process's cgroup and the cgroups above it, each plus its page cache;
    None where none is limited or known: a Slurm job or a container is held to it, while /proc/meminfo counts the
    whole machine's memory. cgroup v2 (memory.max, memory.current) and v1's memory controller
    (memory.limit_in_bytes, memory.usage_in_bytes: a v1 machine had no check at all) both count. The use counts
    the files the cgroup read, which the kernel drops to make room under the limit: a job that had read its 15 GiB
    dataset was refused a 4 GiB load under a 16 GiB limit ('1.00 GiB is available') that fit. /proc/meminfo's
    MemAvailable counts them in too. The cgroups above count: Slurm limits the job's and step's cgroups and puts
    the process in a task cgroup below them whose memory.max is 'max'."""
    try:
        with open(_PROC_CGROUP, encoding="utf-8") as f:
            lines = f.read(1 << 16).splitlines()
    except (OSError, ValueError):
        return None
    known = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if line.startswith("0::"):
            root, files = _CGROUP_ROOT, _V2
        elif "memory" in controllers.split(","):
            root, files = _CGROUP_V1_ROOT, _V1
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        # Down to the root too: the real root has no limit, but a container's own cgroup is the root of its view
        # ("0::/" in a cgroup namespace), with the container's limit.
        for depth in range(len(parts), -1, -1):
            headroom = _cgroup_level_headroom(os.path.join(root, *parts[:depth]), files)
            if headroom is not None:
                known.append(headroom)
    return min(known) if known else None


def _cgroup_level_headroom(folder: str, files: tuple[str, str, tuple[str, str]]) -> int | None:
    """limit - use + page cache of the one cgroup `folder` (`files`: _V2 or _V1); None where unlimited or
    unreadable."""
    limit_file, use_file, cache_keys = files
    try:
        with open(os.path.join(folder, limit_file), encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max" or not 0 <= int(limit) < _V1_UNLIMITED:  # v1's -1 on writing is no limit too
            return None
        with open(os.path.join(folder, use_file), encoding="ascii") as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current + min(current, _page_cache(folder, cache_keys)))
    except (OSError, ValueError):
        return None


def _page_cache(folder: str, keys: tuple[str, str]) -> int:
    """The page cache charged to the cgroup `folder` (memory.stat's `keys`: its active and inactive files, which
    leave out tmpfs: that cannot be dropped); 0 where unknown."""
    cache = 0
    try:
        with open(os.path.join(folder, "memory.stat"), encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key in keys:
                    cache += int(value)
    except (OSError, ValueError):
        return 0
    return cache


def host_memory_available() -> int | None:
    """Bytes this process may still allocate on the host: the least of `node_memory_headroom` and
    `address_space_headroom`; None where neither is known (not Linux). Standard library only: an export carries
    this file."""
    known = [n for n in (node_memory_headroom(), address_space_headroom()) if n is not None]
    return min(known) if known else None


def node_memory_headroom() -> int | None:
    """Bytes the processes of this node (or of this job's cgroup) may still allocate together: the least of the
    machine's available memory (/proc/meminfo's MemAvailable) and its cgroup's memory.max less its use; None where
    neither is known."""
    known = [n for n in (_proc_number(_PROC_MEMINFO, "MemAvailable"), _cgroup_headroom()) if n is not None]
    return min(known) if known else None


def address_space_headroom() -> int | None:
    """Bytes this one process may still map under its address-space limit (`ulimit -v`, RLIMIT_AS) beyond its
    virtual size now: each process has its own limit, so it bounds one process, not a node's; None where
    unlimited or unknown."""
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    size = _proc_number(_PROC_SELF_STATUS, "VmSize")
    if limit == resource.RLIM_INFINITY or size is None:
        return None
    return max(0, limit - size)


def check_host_memory(need: int, source: str, what: str, fix: str) -> None:
    """Refuse, before anything is allocated, a load needing `need` bytes of host memory where less is available: a
    config describing a model far larger than the machine (edited, crafted, or a real one too large here), its
    weights file sparse or not, was read and built until the allocator failed with a traceback, or the kernel's OOM
    killer ended the process (and others on the machine) without a word."""
    have = host_memory_available()
    if have is None or need <= have:
        return
    raise NgptConfigError(
        f"{source}: loading {what} needs about {need / GIB:.2f} GiB of RAM, and {have / GIB:.2f} GiB is available "
        f"here; {fix}"
    )


MAX_HEADER_BYTES = 100_000_000
"""safetensors' own cap on a header's length."""


_ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]] | None:
    """The tensor shapes a safetensors file's header declares (its first 8 bytes and JSON only: no tensor is read and
    the file is not mapped), for the memory check before safetensors maps the file; None where the header is not a
    plain one whose tensors fill the file exactly (safetensors itself then names what is wrong)."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
            data = os.fstat(f.fileno()).st_size - 8 - length
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    shapes, total = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            return None
        shapes[name] = tuple(shape)
        total += numel(shapes[name]) * _ITEM_BYTES.get(dtype, 1)  # type: ignore[arg-type]
    return shapes if total == data else None


def numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def weights_mismatch(source: str, parts: list[str], ignored: bool) -> NgptConfigError:
    """The error for weights whose names or shapes are not the model's (`parts`: 'missing ...', 'mismatched ...')."""
    why = (
        " (ignore_mismatched_sizes=True cannot load it: this model leaves a tensor the file does not fill uninitialized)"
        if ignored
        else ""
    )
    return NgptConfigError(
        f"{source}: the weights do not match config.json ({'; '.join(parts)}); "
        f"the file is damaged or from another model{why}. Export the checkpoint again"
    )


def check_before_filling(
    expected: dict[str, tuple[int, ...]],
    saved: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
    source: str,
    ignore_mismatched: bool,
    on_host: bool,
) -> None:
    """Before transformers fills a model built on the meta device: every tensor config.json describes (`expected`,
    name -> shape) must be in the weights files (`saved`), of its shape, and the model in `dtype` must fit in the
    host's memory when it is loaded there (`on_host`). transformers allocated every tensor the files lack
    (_move_missing_keys_from_meta_to_device) before from_pretrained's check after the load named them: a config.json
    saying 64 blocks of width 8192 over a file holding none asked for 206 GB (an allocator traceback, or the OOM
    killer where memory is overcommitted)."""
    missing = sorted(set(expected) - set(saved))
    wrong = sorted(n for n in set(expected) & set(saved) if expected[n] != saved[n])
    parts = [f"missing {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}"] if missing else []
    if wrong:
        shown = [f"{n} ({list(saved[n])} in the file, {list(expected[n])} by config.json)" for n in wrong[:8]]
        parts.append(f"mismatched {', '.join(shown)}{' …' if len(wrong) > 8 else ''}")
    if parts:
        raise weights_mismatch(source, parts, ignored=bool(wrong) and ignore_mismatched)
    if on_host:
        need = sum(numel(shape) for shape in expected.values()) * torch.empty((), dtype=dtype).element_size()
        check_host_memory(
            need,
            source,
            f"the model config.json describes ({need >> 20} MiB in {str(dtype).removeprefix('torch.')})",
            "if config.json was edited, restore it; else load it with a device_map or on a machine with more memory",
        )


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
"""The files transformers' AutoTokenizer reads from a folder (an `--format hf` export writes the first two). The
chat templates too: AutoTokenizer reads chat_template.jinja whenever it is there, and a named pipe at that name
made it wait for good, a link to /dev/zero read until memory ran out."""
MAX_TOKENIZER_FILE_BYTES = 256 << 20
"""Largest tokenizer file read: a 256k-piece BPE's tokenizer.json is about 35 MB (an export's 32k one: about 2 MB)."""
TOKENIZER_JSON_SHA256 = "tokenizer_json_sha256"
"""The key under config.json's `ngpt_ds_export` recording the sha256 of the tokenizer.json an export wrote."""


def check_tokenizer_files(folder: str | os.PathLike, recorded_sha256: Any = None) -> dict[str, bytes]:
    """The tokenizer files of a model folder (TOKENIZER_FILES), before transformers' own code reads them, which it does
    unchecked: each present must be a regular file (a named pipe made AutoTokenizer wait forever, /dev/zero linked in
    read until memory ran out), of the folder itself (a link out of it, except a cache snapshot's into its own blobs,
    read a file elsewhere), of at most MAX_TOKENIZER_FILE_BYTES (a multi-GB tokenizer.json was parsed whole), and
    tokenizer.json the file the export recorded (`recorded_sha256`, config.json's ngpt_ds_export.tokenizer_json_sha256,
    when it records one). Called where the folder's config.json is read (the config class), which AutoTokenizer does
    first. Returns the JSON files' bytes as read (name -> bytes), for ngpt_ds.hf.token_ids."""
    fix = "copy the whole folder again, or export the checkpoint again"
    texts: dict[str, bytes] = {}  # the JSON files' bytes as read and checked
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if not os.path.lexists(path):
            continue
        why = _outside(path, Path(folder))
        if why:
            raise NgptConfigError(f"{path} {why}, not a tokenizer file of the folder; {fix}")
        texts[name] = _check_tokenizer_file(path, recorded_sha256 if name == "tokenizer.json" else None, fix)
    return texts


def _not_regular(mode: int) -> str | None:
    """Why a file of this st_mode is no tokenizer file, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return (
        "is a folder" if stat.S_ISDIR(mode) else "is a named pipe" if stat.S_ISFIFO(mode) else "is not a regular file"
    )


def _check_tokenizer_file(path: Path, recorded_sha256: Any, fix: str) -> bytes:
    """One tokenizer file of check_tokenizer_files. Its path is looked at first (a device is refused unopened), and
    then what is open is judged again by its fstat: the open does not wait (O_NONBLOCK), so a file swapped for a named
    pipe after the look is refused too; the open after os.stat had waited on it forever. Returns a JSON file's bytes
    (b"" for another file)."""
    import hashlib

    try:
        why = _not_regular(os.stat(path).st_mode)
        fd = None if why else os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise NgptConfigError(f"{path} is a link to nothing, not a tokenizer file of the folder; {fix}") from None
    except OSError as err:
        raise NgptConfigError(f"{path} cannot be read ({err.strerror}); {fix}") from None
    if fd is None:
        raise NgptConfigError(f"{path} {why}, not a tokenizer file of the folder; {fix}")
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        why = _not_regular(info.st_mode)
        if not why and info.st_size > MAX_TOKENIZER_FILE_BYTES:
            why = f"holds {info.st_size} bytes, over the {MAX_TOKENIZER_FILE_BYTES >> 20} MiB a tokenizer file may hold"
        if why:
            raise NgptConfigError(f"{path} {why}, not a tokenizer file of the folder; {fix}")
        # Capped as read, not only by the fstat: a file still growing (written into the shared folder meanwhile)
        # or a filesystem that reports st_size 0 (some FUSE mounts) is not read whole into memory.
        data = f.read(MAX_TOKENIZER_FILE_BYTES + 1) if path.suffix == ".json" else b""
        if len(data) > MAX_TOKENIZER_FILE_BYTES:
            raise NgptConfigError(
                f"{path} holds more than the {MAX_TOKENIZER_FILE_BYTES >> 20} MiB a tokenizer file may hold, not a "
                f"tokenizer file of the folder; {fix}"
            )
    if not (isinstance(recorded_sha256, str) and recorded_sha256):
        return data
    digest = hashlib.sha256(data)
    if digest.hexdigest() != recorded_sha256:
        raise NgptConfigError(
            f"{path} (sha256 {digest.hexdigest()[:12]}…) is not the tokenizer.json the export wrote (sha256 "
            f"{recorded_sha256[:12]}…, {TOKENIZER_JSON_SHA256} in config.json): it was replaced or altered, "
            f"and token ids would mean other text; {fix}"
        )
    return data
