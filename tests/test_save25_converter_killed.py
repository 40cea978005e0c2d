"""A converter killed by a signal is not reported as a full disk (helper save25).

Fault: when DeepSpeed's ds_to_universal failed, the resume's message gave the disk-full figures ('The conversion
needs about X, Y were free ... Free space there') whenever the free space measured after the failure was below
what the conversion needs, whatever the failure. A converter killed for memory (SIGKILL from the kernel's
out-of-memory killer) after writing much of its output read as a disk-full failure, with the space its own files
took as the evidence, and said only 'exit -9'. A converter ended by a signal now reads 'killed by SIGKILL (the
kernel's out-of-memory killer sends it: see dmesg)', without space figures unless its log says a write failed
for space.

Run as a script (torchrun), this file is the 2-rank worker.
"""

import json
import sys
from pathlib import Path

from stand_in_converter import convert_with_stand_in

from ngpt_ds.train import checkpoint, manifest

from conftest import torchrun

HERE = Path(__file__).resolve()
WEIGHTS = "mp_rank_00_model_states.pt"

WRITES_THEN_IS_KILLED = (
    "import os, signal, sys; from pathlib import Path; out = Path(sys.argv[1]); out.mkdir(parents=True)\n"
    "(out / 'slice.pt').write_bytes(b'x' * (3 * 2**20 // 2))\n"
    "print('extracting', flush=True)\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)


def test_a_converter_killed_for_memory_is_not_reported_as_a_full_disk(tmp_path, mount_tmpfs):
    checkpoints = mount_tmpfs(4 * 2**20) / "run" / "checkpoints"
    source = checkpoints / "step_00000004"
    source.mkdir(parents=True)
    (source / WEIGHTS).write_bytes(b"W" * 2**20)
    manifest.write_manifest(source, manifest.build_manifest(source, 4))
    assert manifest.checkpoint_bytes(source) == 2**20  # the conversion needs about 2 MiB: 3 MiB were free
    target = checkpoints / checkpoint.universal_name(source.name)
    out_json = tmp_path / "ranks.json"
    torchrun(HERE, out_json, source, target, timeout=180)
    ranks = json.loads(out_json.read_text())
    error = ranks[0]["error"]
    assert [r["error"] for r in ranks] == [error, error], ranks
    assert error == (
        f"DeepSpeed's ds_to_universal could not convert {source} (killed by SIGKILL (the kernel's out-of-memory "
        "killer sends it: see dmesg)): extracting. Resume at 2 data-parallel ranks instead"
    ), error
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000004"]  # no work folder left


if __name__ == "__main__":
    convert_with_stand_in(*sys.argv[1:4], WRITES_THEN_IS_KILLED)
