"""Fault: TensorBoard's train/tokens was a float32 scalar (`simple_value`): past 2^24 tokens (minutes of a real
run) the logged count rounded. Before: 16777217 tokens read back as 16777216.0 and a week's 241920000003 as
241920000000.0. Now: train/tokens is written under the same tag as a float64 tensor scalar, exact to 2^53;
the other scalars stay float32 scalars (the dashboards' tags and kinds unchanged)."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from ngpt_ds.train.metrics import MetricsLogger

WEEK = 7 * 24 * 3600 * 400_000 + 3  # a week at 400k tokens/s, and 3 more


def test_train_tokens_are_exact_in_tensorboard_past_2_to_the_24(tmp_path):
    metrics = MetricsLogger(tmp_path, True)
    metrics.log(1, {"train/tokens": float(2**24 + 1), "train/loss": 3.25})
    metrics.log(2, {"train/tokens": float(WEEK), "train/loss": 3.0})
    metrics.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tokens = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in events.Tensors("train/tokens")]
    assert tokens == [(1, 16777217.0), (2, 241920000003.0)]  # old code: no tensor, 16777216.0 as a scalar
    assert events.Tags()["scalars"] == ["train/loss"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 3.25), (2, 3.0)]
