"""The ZeRO-aware renormalization hook on 2 real ranks (gloo): ZeRO 0-3, fp32 and bf16."""

import json

import pytest

from conftest import REPO, torchrun

STEPS = 5
# stage:precision:mlp_hidden. mlp_hidden 37 makes the ZeRO 1/2 cut fall inside a row of a
# row-normalized matrix; 31 inside W_o, normalized along columns (see the worker).
CASES = [f"{stage}:{precision}:37" for stage in (0, 1, 2, 3) for precision in ("fp32", "bf16")]
CASES += [f"{stage}:{precision}:31" for stage in (1, 2) for precision in ("fp32", "bf16")]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("hypersphere") / "results.json"
    torchrun(REPO / "tests/workers/hypersphere_worker.py", out, ",".join(CASES), STEPS)
    records = json.loads(out.read_text())
    return {f"{r['stage']}:{r['precision']}:{r['mlp_hidden']}": r for r in records}


@pytest.mark.parametrize("case", CASES)
def test_master_unit_norm_and_working_copy_equal_after_init_and_every_step(results, case):
    record = results[case]
    checks = [record["after_init"]] + record["steps"]
    assert len(checks) == STEPS + 1
    for i, c in enumerate(checks):
        assert c["max_deviation"] < 1e-6, (i, c)  # gathered fp32 master, DeepSpeed's accessor
        assert c["hook_max_deviation"] < 1e-6, (i, c)
        assert c["working_equals_master"], (i, c)  # bit16/fp32 working copy == cast(master)
        assert c["ranks_agree"], (i, c)
    assert record["scalars_untouched_by_hook"]


@pytest.mark.parametrize("case", CASES)
def test_rows_straddle_partitions_and_one_collective_per_step(results, case):
    record = results[case]
    stage = record["stage"]
    if stage == 0:
        assert record["all_reduces_per_step"] == [0] * STEPS  # replicated: nothing to reduce
        return
    assert record["all_reduces_per_step"] == [1] * STEPS  # one batched all-reduce for all matrices
    if stage == 3:  # every parameter is cut in two: rows (odd vocab) and columns straddle
        assert record["straddling_rows"] > 0 and record["straddling_cols"] > 0
    elif record["mlp_hidden"] == 37:
        assert record["straddling_rows"] == 2  # the row cut in two, one piece per rank
    else:
        assert record["straddling_cols"] == 2


def test_all_stages_agree_on_the_losses(results):
    """The same data on every stage: fp32 losses agree tightly, bf16 within bf16 noise."""
    for precision, tol in (("fp32", 1e-5), ("bf16", 2e-2)):
        reference = results[f"0:{precision}:37"]["losses"]
        for stage in (1, 2, 3):
            losses = results[f"{stage}:{precision}:37"]["losses"]
            assert losses == pytest.approx(reference, abs=tol), (stage, precision)
    assert results["0:fp32:37"]["losses"][-1] < results["0:fp32:37"]["losses"][0]


@pytest.mark.parametrize("case", CASES)
def test_a_zero_vector_stays_zero_and_a_nan_master_is_reported(results, case):
    """rsqrt(0) = inf and 0 * inf = NaN: a zero row (a zero-padded vocabulary in a loaded checkpoint)
    must stay zero. And max_deviation must not read a NaN master as 0.0 (max(0.0, nan) == 0.0)."""
    record = results[case]
    guards = record["guards"]
    assert guards["finite"] and guards["zero_rows_stay_zero"], guards
    assert guards["others_unit"] < 1e-5
    assert guards["deviation_with_zero_rows"] == pytest.approx(1.0, abs=1e-6)  # norm 0: off by exactly 1
    assert guards["nan_deviation"] == "nan"
    if record["stage"] in (1, 2) and record["mlp_hidden"] == 37:
        assert guards["straddling_zeroed"] == 1  # the row the ZeRO cut splits between the two ranks
