"""The resume's universal conversion on every rank with a stand-in for DeepSpeed's ds_to_universal: the 2-rank
worker of the tests of how a failed conversion is reported (tests/test_save23_not_this_runs.py,
tests/test_save25_converter_killed.py), each run as a script under torchrun."""

import sys
from pathlib import Path


def convert_with_stand_in(out_json: str, source: str, target: str, converter_script: str) -> None:
    """Every rank runs reshape_convert.convert of `source` into `target`, rank 0's converter being
    `python -c converter_script <output folder>`; writes each rank's NgptConfigError text (or None) to out_json."""
    sys.path.insert(0, str(Path(__file__).parent / "workers"))
    import subprocess
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from common import every_rank, run_worker

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import reshape_convert

    def stand_in(source: Path, output: Path, log: Path) -> subprocess.Popen:
        with open(log, "w", encoding="utf-8") as f:
            return subprocess.Popen([sys.executable, "-c", converter_script, str(output)], stdout=f, stderr=f)

    def work() -> list:
        reshape_convert._start_converter = stand_in
        plan = SimpleNamespace(
            source=Path(source), target=Path(target), saved=SimpleNamespace(describe=lambda: "2 data-parallel ranks")
        )
        try:
            reshape_convert.convert(plan, torch.device("cpu"))  # type: ignore[arg-type]
        except NgptConfigError as err:
            return every_rank({"rank": dist.get_rank(), "error": str(err)})
        return every_rank({"rank": dist.get_rank(), "error": None})

    run_worker(out_json, work, timeout_s=120)
