"""lm-eval's batch-size spellings reach the ngpt_ds adapter's model_args unchanged; each is understood."""

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")


def test_auto_batch_size_with_a_schedule_is_understood():
    """Fault: `--batch_size auto:4` (lm-eval's automatic size, recomputed 4 times) was refused with
    "model_args batch_size = 'auto:4': must be an integer", though plain `auto` falls back to the default."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer.lm_eval_adapter import _int_arg

    assert [_int_arg(v, "batch_size", 16) for v in ("auto", "auto:4", "8", 8, None, "")] == [16, 16, 8, 8, 16, 16]
    with pytest.raises(NgptConfigError, match="model_args batch_size = 'eight': must be an integer"):
        _int_arg("eight", "batch_size", 16)
