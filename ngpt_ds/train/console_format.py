"""The console's wording of numbers: rates in their own scale (27 tok/s, 4.1k tok/s, 989 TFLOP/s), durations
(3m05s) and the line printed at each logged step.

Kept apart from ngpt_ds.train.metrics, which measures and records the scalars (TensorBoard, metrics.jsonl):
these functions only turn numbers into text for people reading a log, need neither torch nor the files, and
the measuring module had grown to its size limit."""

from __future__ import annotations


def format_rate(value: float, unit: str) -> str:
    """A rate in its own scale with 3 significant digits: 27 tok/s, 4.1k tok/s, 989 TFLOP/s. One fixed scale
    hid small values ("0.0k tok/s" for 27, "0.00 TFLOP/s" for a busy CPU's measured peak). The scale is chosen
    after rounding, and the largest prints whole numbers: '.3g' wrote 999,700 tok/s as "1e+03k tok/s" and a
    B200's train.peak_tflops 2250 as "2.25e+03 TFLOP/s"."""
    prefixes = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0))
    for prefix, scale in prefixes:
        scaled = value / scale
        if abs(float(f"{scaled:.3g}")) >= 1 or not prefix:
            number = f"{scaled:.0f}" if abs(scaled) >= 999.5 else f"{scaled:.3g}"
            if not prefix:
                return f"{number} {unit}"
            return (
                f"{number} {prefix}{unit}" if unit[0].isupper() else f"{number}{prefix} {unit}"
            )  # 23 GFLOP/s, 4.1k tok/s
    raise AssertionError("unreachable: the last scale takes every value")


def format_duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m: the time left at the current step rate, for logs read where no progress bar shows
    (a pipe, `| tee`, Slurm's output file)."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(step: int, max_steps: int, loss: float, scalars: dict[str, float]) -> str:
    """The console line of a logged step, from its `scalars` (Trainer._log): loss, LR, throughput, MFU, the
    largest deviation of a matrix from the sphere (nGPT only) and the time left at this step time."""
    step_time = scalars["throughput/step_time_s"]
    deviation = scalars.get("ngpt/max_norm_deviation")
    return (
        f"step {step:>6}/{max_steps} | loss {loss:.4f} | lr {scalars['train/lr']:.2e} | "
        f"{format_rate(scalars['throughput/tokens_per_s'], 'tok/s')} | {step_time * 1e3:.0f} ms/step | "
        f"MFU {scalars['throughput/mfu']:.1%}{'' if deviation is None else f' | norm dev {deviation:.1e}'} | "
        f"eta {format_duration(step_time * (max_steps - step))}"
    )
