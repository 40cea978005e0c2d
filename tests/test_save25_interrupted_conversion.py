"""An interrupted universal conversion leaves nothing taken for a conversion, and its rerun says it starts over
(helper save25).

DeepSpeed's ds_to_universal cannot resume: a rank 0 killed while converting (a preemption) leaves the
conversion's work folder, step_N-universal.tmp-save, which the rerun removed without a word before converting
for hours again from the beginning. The rerun now warns that the earlier conversion did not finish and that it
starts over. Nothing of the interrupted one, not even a COMPLETE file planted in it, is listed, resumed or
reused as a conversion.

Run as a script (torchrun), this file is the worker: `killed` (rank 0 SIGKILLed by its stand-in converter mid
conversion) or `convert` (a stand-in converter that finishes).
"""

import json
import os
import sys
from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import checkpoint, manifest
from ngpt_ds.train.resume import named_checkpoint, resolve_resume

from conftest import torchrun

HERE = Path(__file__).resolve()
WEIGHTS = "mp_rank_00_model_states.pt"

KILLS_ITS_RANK = (
    "import os, signal, sys; from pathlib import Path\n"
    "out, source, parent = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])\n"
    "(out / 'zero' / 'w').mkdir(parents=True)\n"
    "(out / 'zero' / 'w' / 'fp32.pt').write_bytes(b'half')\n"
    "from ngpt_ds.train import manifest as m  # sealed, as a kill right before its rename into place leaves it\n"
    "sealed = m.build_manifest(out, 4)\n"
    "sealed['converted_from'] = {'name': source.name, 'complete_blake2b': m.marker_digest(source)}\n"
    "m.write_manifest(out, sealed)\n"
    "(out.parent / 'latest_universal').write_text('converted')\n"
    "os.kill(parent, signal.SIGKILL)\n"
)
FINISHES = (
    "import sys; from pathlib import Path\n"
    "out = Path(sys.argv[1]); (out / 'zero' / 'w').mkdir(parents=True)\n"
    "(out / 'zero' / 'w' / 'fp32.pt').write_bytes(b'whole')\n"
)


def _worker(mode: str, out_json: str, source: str, target: str) -> None:
    sys.path.insert(0, str(HERE.parent / "workers"))
    import subprocess
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from common import every_rank, run_worker

    from ngpt_ds.train import reshape_convert

    def stand_in(source: Path, output: Path, log: Path) -> subprocess.Popen:
        code = KILLS_ITS_RANK if mode == "killed" else FINISHES
        with open(log, "w", encoding="utf-8") as f:
            argv = [sys.executable, "-c", code, str(output), str(source), str(os.getpid())]
            return subprocess.Popen(argv, stdout=f, stderr=f)

    def work() -> list:
        reshape_convert._start_converter = stand_in
        plan = SimpleNamespace(
            source=Path(source), target=Path(target), saved=SimpleNamespace(describe=lambda: "2 data-parallel ranks")
        )
        try:
            reused = reshape_convert.convert(plan, torch.device("cpu"))  # type: ignore[arg-type]
        except NgptConfigError as err:
            return every_rank({"rank": dist.get_rank(), "error": str(err)})
        return every_rank({"rank": dist.get_rank(), "error": None, "reused": reused})

    run_worker(out_json, work, timeout_s=120)


def _complete(folder: Path, step: int, content: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(content)
    (folder / "config.yaml").write_text("model: {}\n")
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_interrupted_conversion_is_never_taken_for_one_and_its_rerun_says_it_starts_over(tmp_path):
    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    source = _complete(checkpoints / "step_00000004", 4, b"S" * 1000)
    target = checkpoints / checkpoint.universal_name(source.name)
    work = checkpoints / (target.name + checkpoint.TEMP_SUFFIX)

    killed = torchrun(HERE, "killed", tmp_path / "killed.json", source, target, nproc=1, check=False)
    assert killed.returncode != 0 and not (tmp_path / "killed.json").exists()
    assert _names(checkpoints) == ["step_00000004", work.name]
    assert manifest.verify(work / "converted") is None  # sealed, not renamed: still nothing takes it for one
    assert checkpoint.universal_dirs(checkpoints) == []
    assert checkpoint.complete_checkpoints(checkpoints) == [source]
    assert not checkpoint.is_converted_from(target, source)
    assert resolve_resume(out, "auto", lambda line: None) == source
    with pytest.raises(NgptConfigError, match="holds no complete checkpoint"):
        named_checkpoint(out, str(work))
    with pytest.raises(NgptConfigError) as refused:
        named_checkpoint(out, str(work / "converted"))
    assert str(refused.value) == (
        f"--resume {work / 'converted'}: {work / 'converted'} is a universal conversion of step_00000004 (its "
        "COMPLETE says so), not a checkpoint. Resume from step_00000004 itself: a resume at another data-parallel "
        "size converts it (or reuses its intact conversion)"
    )

    proc = torchrun(HERE, "convert", tmp_path / "convert.json", source, target)
    ranks = json.loads((tmp_path / "convert.json").read_text())
    assert ranks == [{"rank": 0, "error": None, "reused": False}, {"rank": 1, "error": None, "reused": False}]
    warned = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "did not finish" in line]
    assert warned == [
        f"warning: {work} holds an earlier conversion of step_00000004 that did not finish (the run was stopped or "
        "killed while converting); nothing resumes from it. It holds no sealed extraction of the ZeRO "
        "fragments (only a ZeRO 1/2 conversion whose extraction finished goes on): it is removed and the "
        "conversion starts again from the beginning"
    ]
    assert _names(checkpoints) == ["step_00000004", target.name]
    assert checkpoint.is_converted_from(target, source)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "COMPLETE",
        "config.yaml",
        "zero/w/fp32.pt",
    ]
    assert (target / "zero" / "w" / "fp32.pt").read_bytes() == b"whole"  # nothing of the interrupted one


def test_a_first_conversion_says_nothing_of_a_restart(tmp_path):
    """What the fix keeps: with no earlier work folder the conversion starts without that warning."""
    checkpoints = tmp_path / "run" / "checkpoints"
    source = _complete(checkpoints / "step_00000004", 4, b"S" * 1000)
    target = checkpoints / checkpoint.universal_name(source.name)
    proc = torchrun(HERE, "convert", tmp_path / "convert.json", source, target)
    assert "did not finish" not in proc.stdout + proc.stderr
    assert checkpoint.is_converted_from(target, source)


if __name__ == "__main__":
    _worker(*sys.argv[1:5])
