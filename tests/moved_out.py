"""The harness of the tests whose run's --out is moved, copied or removed while it runs: MOVE_OUT, the wrapper that
runs launch/train.py and moves --out at a chosen point, and moved_run / moved_ranks, which run it as one rank or two
and return the one `error:` line each stopped with (one_error_line)."""

import sys
from pathlib import Path

from launching import REPO, cpu_env, run, run_ranks

MOVE_OUT = r"""
import os, runpy, shutil, sys, time
from pathlib import Path
import torch
from ngpt_ds.train import checkpoint, lineage, metrics, run_end

out = Path(sys.argv[sys.argv.index("--out") + 1])
kind, at = os.environ["MOVE_AT"].split(":")
at, by, rank = int(at), os.environ.get("MOVE_BY", "rename"), os.environ.get("RANK", "0")
state = {"saving": None, "moved": False}
def move(when):
    if not when or rank != "0" or state["moved"]:
        return
    if by == "rename":
        os.rename(out, os.environ["MOVED"])
    elif by == "copy":
        shutil.move(str(out), os.environ["MOVED"])
    else:
        shutil.rmtree(out)
    state["moved"] = True
    if os.environ.get("OTHER"):  # another program's file at the old place, made again: never the run's to delete
        (out / "tensorboard").mkdir(parents=True)
        (out / "tensorboard" / "other.txt").write_text("not the run's")

def patch(owner, name, before=None, after=None):
    real = getattr(owner, name)
    def patched(*args, **kwargs):
        if before:
            before(*args)
        done = real(*args, **kwargs)
        if after:
            after(*args)
        return done
    setattr(owner, name, patched)

def saving(engine, out_dir, step, *_):
    state["saving"] = step
    move(kind == "save" and step == at)
def at_mark(*_):
    deadline = time.monotonic() + 120
    while rank == "0" and not Path(os.environ["MARK"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    move(True)
def mark(*_):
    if rank == "1":
        Path(os.environ["MARK"]).touch()  # its arguments are worked out by now

patch(checkpoint, "save", saving, lambda *a: move(kind == "after" and a[2] == at))
patch(torch, "save", lambda *_: move(kind == "before_write" and state["saving"] == at))
patch(torch, "save", after=lambda *_: move(kind == "writes" and state["saving"] == at))
patch(checkpoint, "_finish_save", lambda *_: move(kind == "finish" and state["saving"] == at))
patch(lineage, "start_lineage", lambda *_: move(kind == "setup"))
patch(metrics.MetricsLogger, "__init__", lambda *_: move(kind == "init"))
patch(metrics.MetricsLogger, "log", after=lambda self, step, *_: move(kind == "metrics" and step == at))
if kind == "close":
    patch(run_end, "stop_all_if_unwritten", mark)
    patch(metrics.MetricsLogger, "close", at_mark)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
"""launch/train.py (its path and argv after the script's), with --out moved once by rank 0's own process at MOVE_AT
"KIND:STEP", to MOVED: "metrics:N" after the metrics of step N are written; "save:N" as the save of step N starts,
"after:N" after it, "before_write:N" before DeepSpeed's first file of it (torch.save), "writes:N" after that file,
"finish:N" as its _finish_save starts; "init:0" as the metrics logger is made (before TensorBoard's writer); "setup:0"
as rank 0's setup writes start (lineage.start_lineage); "close:0" as the metrics logger closes at the run's end, once
rank 1 has touched the file MARK on reaching the end's agreement (run_end.stop_all_if_unwritten). MOVE_BY "rename"
(os.rename, `mv` on one filesystem; the default), "copy" (shutil.move to another filesystem: a copy, then the original
deleted) or "remove" (deleted, MOVED unused). OTHER set: another program's file is made at the old place right after."""


def one_error_line(code: int, returncode: int, output: str) -> str:
    """The one line a command stopped with: it exited `code`, with no traceback and one `error:` line in `output`."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert returncode == code and "Traceback" not in output and len(errors) == 1, output[-3000:]
    return errors[0]


def moved_run(flags: list, move_at: str, moved: Path, *, code: int = 74, **env) -> str:
    """launch/train.py FLAGS (train_flags), one rank, run through MOVE_OUT (--out moved at `move_at` to `moved`; `env`:
    MOVE_BY, OTHER): the one line it stopped with, exit `code`."""
    cmd = [sys.executable, "-c", MOVE_OUT, REPO / "launch/train.py", *flags]
    done = run(cmd, env=cpu_env(MOVED=moved, MOVE_AT=move_at, **env), check=False)
    return one_error_line(code, done.returncode, done.stderr)


def moved_ranks(flags: list, move_at: str, moved: Path, wrapper: Path, *, code: int = 74, **env) -> list[str]:
    """launch/train.py FLAGS as 2 plain ranks (run_ranks), each run through MOVE_OUT written to `wrapper`: each rank's
    one line, every rank exiting `code`."""
    wrapper.write_text(MOVE_OUT, encoding="utf-8")
    codes, outputs = run_ranks([wrapper, REPO / "launch/train.py", *flags], MOVED=moved, MOVE_AT=move_at, **env)
    assert codes == [code, code], outputs
    return [one_error_line(code, code, output) for output in outputs]
