"""evaluate.py refuses, before the model loads, a context whose forward cannot fit in the memory available.

Fault: `--contexts 200000` (the length-extrapolation test allows contexts beyond the trained seq_len on purpose)
built batch x context x vocab logits only after the model and data had loaded, and ran out of memory there, or
the OOM killer ended the process without a message. Now the longest context's forward is estimated from the
model's config (ngpt_ds.infer.eval_memory) and refused at startup with one line naming the context, the
estimate, what is available and the fix.

The available memory is imitated (psutil.virtual_memory in a wrapper process), never a real OOM.
"""

import re
import sys

from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, cpu_env, run

WRAPPER = """\
import os, runpy, sys, psutil
real = psutil.virtual_memory
class Imitated:
    def __init__(self, real):
        self._real = real
        self.available = int(os.environ["IMITATED_AVAILABLE"])
    def __getattr__(self, name):
        return getattr(self._real, name)
psutil.virtual_memory = lambda: Imitated(real())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

GIB = 2**30


def evaluate(tmp_path, exported, data, available, *argv):  # noqa: F811
    """launch/evaluate.py on the CPU; with `available`, under a wrapper that imitates that much available RAM."""
    wrapper = tmp_path / "imitated_memory.py"
    wrapper.write_text(WRAPPER)
    cmd = [REPO / "launch" / "evaluate.py", exported, "--data", data, "--device", "cpu", *argv]
    if available is None:
        return run([sys.executable, *cmd], check=False)
    return run([sys.executable, wrapper, *cmd], env={**cpu_env(), "IMITATED_AVAILABLE": str(available)}, check=False)


def test_a_context_too_long_for_the_memory_is_refused_before_the_model_loads(tmp_path, trained, exported):  # noqa: F811
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.infer.eval_memory import forward_memory, read_model_config

    config = read_model_config(exported)
    assert config is not None
    # The longest context of which the validation split holds up to 8 windows (evaluate runs no more windows than
    # the split holds, and the estimate counts no more); the available memory is imitated around its forward.
    tokens = load_dataset_meta(trained["data"], verify_contents=False).splits["validation"].tokens
    context = tokens // 8 - 1
    one = forward_memory(config, 1, context, 4)
    need = forward_memory(config, 8, context, 4).total
    available = one.total + 2**20  # one window fits, two do not
    assert one.total + one.activations > available
    proc = evaluate(tmp_path, exported, trained["data"], available, "--contexts", f"32,{context}", "--batch-size", "8")
    assert proc.returncode == 2, proc.stderr
    assert "evaluating" not in proc.stderr  # refused before the model loaded
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"error: context {context}: a forward of 8 window(s) needs about {need / GIB:.2f} GiB (logits 8 x {context} x "
        f"{config.vocab_size} and the model), {available / GIB:.2f} GiB RAM available; use --batch-size 1 or less, "
        "or fewer contexts"
    )
    # Where not even one window fits, shorter contexts are the fix.
    available = one.total - 2**20
    proc = evaluate(tmp_path, exported, trained["data"], available, "--contexts", str(context), "--batch-size", "1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: context {context}: a forward of 1 window(s) needs about {one.total / GIB:.2f} GiB (logits 1 x "
        f"{context} x {config.vocab_size} and the model), {available / GIB:.2f} GiB RAM available; use shorter "
        "contexts (--contexts / --multiples), or fewer contexts"
    ]


def test_a_run_that_fits_is_unchanged(tmp_path, trained, exported):  # noqa: F811
    argv = ("--contexts", "32,64", "--windows", "4", "--batch-size", "2")
    imitated = evaluate(tmp_path, exported, trained["data"], GIB, *argv)
    real = evaluate(tmp_path, exported, trained["data"], None, *argv)
    assert imitated.returncode == real.returncode == 0, imitated.stderr + real.stderr
    assert imitated.stdout == real.stdout
    rows = [re.split(r"\s+", line.strip()) for line in real.stdout.strip().splitlines()[1:]]
    assert [(r[0], r[2], r[3]) for r in rows] == [("32", "4", "128"), ("64", "4", "256")]
