"""A torch zip whose directory points many records at one stored record is refused before torch reads any.

Fault: a 1.5 MB file whose central directory held thousands of entries data/0 ... data/N-1, all at one stored
1 MiB record, was read by every reader that does not memory-map (DeepSpeed's resume, zero_to_fp32,
ds_to_universal) as N separate buffers: 2.4 GB from 1.5 MB. `_check_tensors` ran after the load and saw N
genuine-looking storages; the resume pre-check (memory-mapped) passed it when each entry declared its own size.
safe_load.check_layout now refuses records that overlap, or that declare more data than the file holds, on every
load path before torch reads a byte of data: safe_load.load (mapped or not), the guard DeepSpeed's reads run
under, the resume pre-check of every file, the universal converter's child process, and ngpt_ds.infer's
reads of every file zero_to_fp32 will read (an extra zz_model_states.pt included).

Memory is measured in child processes (ru_maxrss, the growth across the refused load): the crafted file here
declares 512 MiB (512 entries over one 1 MiB record, each entry its own size, as the pre-check missed); the
old code grew by about that, the refusal by a few MiB.
"""

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from conftest import REPO, cpu_env, run_launch

ENTRIES = 512
RECORD = 1 << 20
STEP = 4  # entry k declares RECORD + STEP * k bytes (each its own size, with the matching CRC)
GROWTH_LIMIT = 64 << 20  # what a refusal may add to a process's peak resident memory; the old code added ~512 MiB
STEP_DIR = "step_00000020"  # conftest.REFERENCE_STEPS


def overlapping_zip(path: Path, *, entries: int = ENTRIES, record: int = RECORD, step: int = STEP, gap: int = 0) -> int:
    """Write a torch zip whose records data/0..data/{entries-1} all point at one stored record (the largest
    declared size, zeros), `gap` unrecorded bytes before its directory. Returns the bytes the records declare."""
    sizes = [record + step * k for k in range(entries)]
    template = path.with_name(path.name + ".template")
    with torch.serialization.skip_data():  # sparse: the tensors' data is not written
        torch.save({f"t{k}": torch.empty(sizes[k] // 4) for k in range(entries)}, template)
    with zipfile.ZipFile(template) as src:
        prefix = src.namelist()[0].split("/")[0]
        others = {n: src.read(n) for n in src.namelist() if "/data/" not in n}
    template.unlink()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in others.items():
            z.writestr(name, data)
        z.writestr(f"{prefix}/data/0", bytes(sizes[-1]))
    raw = path.read_bytes()
    eocd = raw.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", raw[eocd + 12 : eocd + 20])
    directory, records, p = raw[cd_offset : cd_offset + cd_size], [], 0
    while p < len(directory):
        name_length, extra_length, comment_length = struct.unpack("<HHH", directory[p + 28 : p + 34])
        records.append(directory[p : p + 46 + name_length + extra_length + comment_length])
        p += 46 + name_length + extra_length + comment_length
    data0 = next(r for r in records if r[46 : 46 + struct.unpack("<H", r[28:30])[0]].endswith(b"/data/0"))
    kept = [r for r in records if r is not data0]
    name_length = struct.unpack("<H", data0[28:30])[0]
    crc, done = 0, 0
    for k, size in enumerate(sizes):
        crc, done = zlib.crc32(bytes(size - done), crc), size
        name = f"{prefix}/data/{k}".encode()
        kept.append(
            data0[:16]
            + struct.pack("<IIIH", crc, size, size, len(name))
            + data0[30:46]
            + name
            + data0[46 + name_length :]
        )
    body = raw[:cd_offset] + bytes(gap)
    cd = b"".join(kept)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(kept), len(kept), len(cd), len(body), 0)
    path.write_bytes(body + cd + end)
    return sum(sizes) + sum(len(d) for d in others.values())


def crafted_message(path: Path, records: int, declared: int) -> str:
    return (
        f"{path} was refused: it holds {records} zip records that declare {declared} bytes of data in all, more "
        f"than the file's {path.stat().st_size} bytes (records that share their data), which torch.save of a "
        "model's or optimizer's tensors never writes and which would take far more memory than the file. This file "
        "was not written by the ngpt_ds trainer, or it was altered. Do not use it"
    )


def run_child(code: str) -> dict:
    """Run `code` in a fresh interpreter (CPU DeepSpeed, the repo importable); it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=cpu_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MEASURE = """
import json, resource, sys
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def attempt(work):
    before = peak()
    try:
        work()
        error = None
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    return {"error": error, "growth": peak() - before}
"""


def genuine_checkpoint(reference_runs, dest: Path) -> Path:
    """A copy of the 2-rank ZeRO-2 reference run's last checkpoint, as a run folder."""
    checkpoint = dest / "run" / "checkpoints" / STEP_DIR
    shutil.copytree(reference_runs["z2_ws2"] / "checkpoints" / STEP_DIR, checkpoint)
    shutil.copy(reference_runs["z2_ws2"] / "config.yaml", dest / "run" / "config.yaml")
    return checkpoint


def remark(checkpoint: Path) -> None:
    """Rebuild the COMPLETE manifest over the changed files, as whoever planted the file would."""
    from ngpt_ds.train.manifest import COMPLETE, build_manifest

    (checkpoint / COMPLETE).write_text(json.dumps(build_manifest(checkpoint, 20)), encoding="utf-8")


def test_records_sharing_one_stored_record_are_refused_by_every_load_before_any_is_read(tmp_path):
    """safe_load.load without and with memory-mapping, the resume pre-check (safe_load.check) and torch.load
    under the guard DeepSpeed's reads run in. The old code: the unmapped load grew by 512 MiB, the check passed."""
    path = tmp_path / "overlap.pt"
    declared = overlapping_zip(path)
    assert path.stat().st_size < 1_200_000 and declared > 512 * RECORD
    found = run_child(
        MEASURE
        + f"""
import torch
from ngpt_ds import safe_load
path = {str(path)!r}
def guarded():
    with safe_load.deepspeed_loads_are_safe():
        torch.load(path, map_location="cpu", weights_only=False)
print(json.dumps({{
    "load": attempt(lambda: safe_load.load(path, mmap=False)),
    "mmap": attempt(lambda: safe_load.load(path, mmap=True)),
    "check": attempt(lambda: safe_load.check(path)),
    "guard": attempt(guarded),
}}))
"""
    )
    expected = "UnsafeCheckpointError: " + crafted_message(path, len(zipfile.ZipFile(path).namelist()), declared)
    for way, outcome in found.items():
        assert outcome["error"] == expected, (way, outcome)
        assert outcome["growth"] < GROWTH_LIMIT, (way, outcome)


def test_overlapping_records_are_refused_even_when_their_sizes_fit_in_the_file(tmp_path):
    """Three entries over one 64 KiB record, and 192 KiB of unrecorded bytes, so that the sizes add up to less
    than the file: the records' spans overlap. The old code loaded three copies."""
    from ngpt_ds import safe_load

    path = tmp_path / "overlap.pt"
    declared = overlapping_zip(path, entries=3, record=1 << 16, step=0, gap=3 << 16)
    assert declared < path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        prefix = archive.namelist()[0].split("/")[0]
        data0 = archive.getinfo(f"{prefix}/data/0")
        start = data0.header_offset
        end = start + 30 + len(data0.filename) + (1 << 16)  # Python's zipfile writes no extra field
    with pytest.raises(safe_load.UnsafeCheckpointError) as err:
        safe_load.load(path, mmap=False)
    assert str(err.value) == (
        f"{path} was refused: it holds zip records {prefix}/data/0 and {prefix}/data/1 that share bytes "
        f"{start}-{end} of the file (each is read into memory separately), which torch.save of a model's or "
        "optimizer's tensors never writes and which would take far more memory than the file. This file was not "
        "written by the ngpt_ds trainer, or it was altered. Do not use it"
    )


def test_a_zip64_archive_torch_writes_passes_the_layout_check(tmp_path):
    """A 5 GiB tensor (its data skipped: sparse on disk, zeros): torch writes zip64 records and offsets past 4 GiB."""
    from ngpt_ds import safe_load

    path = tmp_path / "big.pt"
    with torch.serialization.skip_data():
        torch.save({"big": torch.empty(5 << 30, dtype=torch.uint8), "small": torch.arange(10.0)}, path)
    with zipfile.ZipFile(path) as archive:
        assert max(m.header_offset for m in archive.infolist()) > 1 << 32
    safe_load.check_layout(path)
    loaded = safe_load.load(path, mmap=True)
    assert loaded["big"].numel() == 5 << 30 and loaded["small"].shape == (10,)


def test_the_resume_check_refuses_an_overlapping_optimizer_shard_and_passes_a_genuine_checkpoint(
    reference_runs, tmp_path
):
    """ngpt_ds.train.checkpoint.check_files_on_all_ranks (every file, before DeepSpeed reads any). The old
    code passed the crafted shard (memory-mapped), and DeepSpeed's resume then read 512 copies."""
    genuine = genuine_checkpoint(reference_runs, tmp_path / "genuine")
    crafted = genuine_checkpoint(reference_runs, tmp_path / "crafted")
    target = crafted / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    declared = overlapping_zip(target)
    found = run_child(
        MEASURE
        + f"""
import os
from pathlib import Path
import torch.distributed as dist
sys.path.insert(0, {str(REPO / "tests")!r})
from conftest import free_port
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
dist.init_process_group("gloo", rank=0, world_size=1)
from ngpt_ds.train import checkpoint
print(json.dumps({{
    "genuine": attempt(lambda: checkpoint.check_files_on_all_ranks(Path({str(genuine)!r}), "cpu")),
    "crafted": attempt(lambda: checkpoint.check_files_on_all_ranks(Path({str(crafted)!r}), "cpu")),
}}))
"""
    )
    assert found["genuine"]["error"] is None, found
    records = len(zipfile.ZipFile(target).namelist())
    assert found["crafted"]["error"] == "UnsafeCheckpointError: " + crafted_message(target, records, declared), found
    assert found["crafted"]["growth"] < GROWTH_LIMIT, found


def test_the_universal_converter_refuses_an_overlapping_optimizer_shard_before_reading_it(reference_runs, tmp_path):
    """The converter child (`python -m ngpt_ds.train.reshape SOURCE OUTPUT`, what a resume at another
    data-parallel size starts) against a child that only imports what it imports: the old code grew by the
    512 MiB the records declare."""
    source = genuine_checkpoint(reference_runs, tmp_path)
    target = source / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    declared = overlapping_zip(target)
    found = run_child(
        f"""
import json, resource, subprocess, sys
def child(*argv):
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    return proc.returncode, proc.stderr
baseline = child("-c", "import ngpt_ds.train.reshape, deepspeed.checkpoint.ds_to_universal")
floor = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
code, stderr = child("-m", "ngpt_ds.train.reshape", {str(source)!r}, {str(tmp_path / "converted")!r})
print(json.dumps({{"baseline": baseline[0], "floor": floor, "code": code, "stderr": stderr,
                  "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}}))
"""
    )
    assert found["baseline"] == 0 and found["code"] == 1, found
    records = len(zipfile.ZipFile(target).namelist())
    assert found["stderr"].endswith("error: " + crafted_message(target, records, declared) + "\n"), found["stderr"]
    assert "Traceback" not in found["stderr"], found["stderr"]  # the rank's message quotes the child's last lines
    assert found["peak"] - found["floor"] < GROWTH_LIMIT, found


def test_inference_refuses_an_extra_overlapping_model_states_file_and_loads_a_genuine_checkpoint(
    reference_runs, tmp_path
):
    """zero_to_fp32 reads every *_model_states.pt; only rank 0's was checked before it ran: a planted
    zz_model_states.pt (manifest rebuilt) grew the old code by 512 MiB. generate.py refuses it naming the file,
    exit 2 and no traceback; ngpt_ds.infer.load refuses it without growing, and still loads the genuine copy."""
    genuine = genuine_checkpoint(reference_runs, tmp_path / "genuine")
    crafted = genuine_checkpoint(reference_runs, tmp_path / "crafted")
    target = crafted / "zz_model_states.pt"
    declared = overlapping_zip(target)
    remark(crafted)
    message = crafted_message(target, len(zipfile.ZipFile(target).namelist()), declared)
    found = run_child(
        MEASURE
        + f"""
from ngpt_ds.infer import load
loaded = {{}}
genuine = attempt(lambda: loaded.update(model=load({str(genuine)!r}, device="cpu")))
print(json.dumps({{
    "genuine": genuine,
    "parameters": sum(p.numel() for p in loaded["model"].model.parameters()) if loaded else 0,
    "crafted": attempt(lambda: load({str(crafted)!r}, device="cpu")),
}}))
"""
    )
    assert found["genuine"]["error"] is None and found["parameters"] > 0, found
    assert found["crafted"]["error"] == "UnsafeCheckpointError: " + message, found
    assert found["crafted"]["growth"] < GROWTH_LIMIT, found

    proc = run_launch("generate.py", crafted, "--prompt", "The", "--max-new-tokens", "2", "--greedy", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {message}"], proc.stderr[-4000:]
