"""metrics.jsonl and summary.json are JSON: a NaN or infinite number is written as null. Fault: json.dumps
wrote bare NaN (throughput/mfu of a run on a GPU missing from the peak table, a mended summary's seconds),
which is no JSON: jq, JavaScript's JSON.parse and most languages' parsers refuse the whole line or file."""

import json
import math

from ngpt_ds.train.metrics import MetricsLogger
from ngpt_ds.train.summary import Summary, describe, mend_finished_summary


def strict(text):
    """json.loads as a strict parser reads it: NaN, Infinity and -Infinity are errors."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_metrics_jsonl_holds_null_for_non_finite_values(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log(1, {"train/loss": 2.5, "throughput/mfu": math.nan, "train/grad_norm": math.inf, "x": -math.inf})
    logger.log(2, {"train/loss": 2.25, "throughput/mfu": 0.5})
    logger.close()
    assert logger.problem is None
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict(line) for line in lines] == [
        {"step": 1, "train/loss": 2.5, "throughput/mfu": None, "train/grad_norm": None, "x": None},
        {"step": 2, "train/loss": 2.25, "throughput/mfu": 0.5},
    ]


def test_a_mended_summary_holds_null_for_the_seconds_and_the_losses_it_lacks(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # The records of step 4 hold a train loss, a null MFU (as now written) but no evaluation.
    (out / "metrics.jsonl").write_text(
        json.dumps({"step": 4, "train/loss": 3.5, "throughput/mfu": None, "train/tokens": 512.0}) + "\n"
    )
    mend_finished_summary(out, 4, 4)
    summary = strict((out / "summary.json").read_text())
    assert summary == {
        "status": "finished",
        "step": 4,
        "max_steps": 4,
        "tokens": 512,
        "train_loss": 3.5,
        "val_loss": None,
        "seconds": None,
        "checkpoint": str(out / "checkpoints" / "step_00000004"),
        "out_dir": str(out),
    }


def test_the_final_lines_read_records_with_null_values(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    records = [
        {"step": 1, "train/loss": 4.0, "throughput/mfu": None},
        {"step": 2, "train/loss": None, "eval/loss": None},  # a record whose values were non-finite
        {"step": 3, "train/loss": 3.0, "eval/loss": 3.25},
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = describe(Summary("finished", 3, 3, 96, 3.0, 3.25, 1.0, None, str(out))).splitlines()
    assert lines[1:3] == [
        "  train loss:      4.000 at step 1 -> 3.000 at step 3",
        f"  validation loss: 3.250 at step 3 (perplexity {math.exp(3.25):.1f})",
    ]
