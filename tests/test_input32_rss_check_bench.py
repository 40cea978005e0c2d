"""bench/rss_step.py as a command (input32): the startup memory check's figure beside the peak RSS measured.

The check (ngpt_ds/train/memory_plan.check_state_fits) is a lower bound by design; this table is how the README's
"leave 20-30 % headroom" can be checked on a machine. The `small` shape: 4 blocks of width 256 (mlp 1024) and a
vocabulary of 4096 make 4 * (4 * 256^2 + 3 * 256 * 1024) + 2 * 4096 * 256 = 6,291,456 parameters at least (the
embedding and the head); 16 bytes each in fp32 at ZeRO 0 is 96 MiB of training state.
"""

import re
import sys

from launching import REPO, run

from conftest import cpu_env


def test_the_small_row_counts_96_mib_of_state_below_the_measured_peak(tmp_path):
    done = run(
        [sys.executable, REPO / "bench/rss_step.py", "--shapes", "small", "--zero", "0", "--precisions", "fp32"],
        cwd=tmp_path,
        env=cpu_env(),
        timeout=300,
    )
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("small ")]
    assert len(rows) == 1, done.stdout
    shape, zero, precision, params, state, activations, counted, peak, ratio = rows[0]
    assert (shape, zero, precision, state) == ("small", "0", "fp32", "96")
    assert re.fullmatch(r"6\.\dM", params)  # the exact count: the bound leaves out norms, scales and biases
    assert abs(int(counted) - int(state) - int(activations)) <= 1  # each rounded to MiB
    assert int(peak) > int(counted)  # the check is a lower bound
    assert abs(float(ratio) - int(peak) / int(counted)) < 0.02
    assert list(tmp_path.iterdir()) == []  # nothing written unasked (--docs writes docs/benchmarks.md)
