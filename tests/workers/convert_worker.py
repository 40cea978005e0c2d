"""Two ranks make a universal conversion of a small fake checkpoint (ngpt_ds.train.reshape_convert.convert),
with DeepSpeed's converter replaced by a stand-in child process. Every rank's answer goes into the JSON
written by rank 0.

    torchrun --nproc_per_node 2 convert_worker.py OUT_JSON SOURCE TARGET {converts,exits-3}

converts: the stand-in writes three parameters' fp32.pt and the converter's `latest_universal`
pointer, as ds_to_universal does; exits-3: it prints a line and exits with status 3.
"""

import sys

import torch
import torch.distributed as dist
from common import every_rank, run_worker

STAND_INS = {
    "converts": (
        "import sys; from pathlib import Path; out = Path(sys.argv[1])\n"
        "for name in ('x', 'y', 'z'):\n"
        "    (out / 'zero' / name).mkdir(parents=True)\n"
        "    (out / 'zero' / name / 'fp32.pt').write_bytes(name.encode() * 300)\n"
        "(out.parent / 'latest_universal').write_text('converted')\n"
    ),
    "exits-3": "print('stand-in converter: no such layout'); raise SystemExit(3)",
}


def convert(source: str, target: str, stand_in: str) -> list[dict]:
    import subprocess
    from pathlib import Path
    from types import SimpleNamespace

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import reshape_convert as reshape

    def start_stand_in(source: Path, output: Path, log: Path) -> subprocess.Popen:
        with open(log, "w", encoding="utf-8") as f:
            return subprocess.Popen([sys.executable, "-c", STAND_INS[stand_in], str(output)], stdout=f, stderr=f)

    reshape._start_converter = start_stand_in
    plan = SimpleNamespace(
        source=Path(source), target=Path(target), saved=SimpleNamespace(describe=lambda: "2 data-parallel ranks")
    )
    mine = {"rank": dist.get_rank(), "reused": None, "error": None}
    try:
        mine["reused"] = reshape.convert(plan, torch.device("cpu"))
    except NgptConfigError as err:
        mine["error"] = str(err)
    return every_rank(mine)


if __name__ == "__main__":
    out_json, source, target, stand_in = sys.argv[1:5]
    run_worker(out_json, lambda: convert(source, target, stand_in), timeout_s=60)
