"""The first of a run's final lines (ngpt_ds.train.summary.describe) for a long session and a large token count."""

import pytest

from ngpt_ds.train.summary import Summary, describe


@pytest.mark.parametrize(
    ("seconds", "tokens", "expected"),
    [
        (359.97, 614_400, "0.61M tokens in all (this session: 6m00.0s)"),  # was 5m60.0s
        (3599.96, 2_500_000_000, "2.50B tokens in all (this session: 1h00m00.0s)"),  # was 2500.00M, 59m60.0s
        (7 * 86400 + 5.04, 1_200_000_000_000, "1.20T tokens in all (this session: 168h00m05.0s)"),
        (312.34, 4096, "4.1k tokens in all (this session: 5m12.3s)"),  # unchanged
    ],
)
def test_the_final_line_of_a_long_session_reads_in_hours_and_large_units(tmp_path, seconds, tokens, expected):
    """Fault: the session's time was split into minutes before it was rounded, and never into hours: 359.97 s
    printed 'this session: 5m60.0s', a week '10080m05.0s'; and tokens past a billion stayed in millions: a run
    of 1.2e12 tokens printed '1200000.00M tokens in all'."""
    line = describe(Summary("finished", 10, 10, tokens, 1.0, 1.0, seconds, None, str(tmp_path))).splitlines()[0]
    assert line == f"Done: the model to step 10/10, {expected}"
