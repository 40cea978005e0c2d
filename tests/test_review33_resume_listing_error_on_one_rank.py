"""Fault (f732475, ngpt_ds/train/job.py): job.train hands any error of choose_resume to the agreement
(agreement.stop_all_if_any_failed, an all_gather_object), but choose_resume's first part is itself collective
(resume.resolve_resume_on_all_ranks). An error on one rank there (here RuntimeError in its listing of the
checkpoints, which caught only NgptConfigError and OSError) sent that rank to the agreement while the others were
in the listing's all_gather_object: the two collectives paired up, the failing rank stopped with a message about
rank 0 that was not the cause, and rank 0 took the error for a different listing and went on. Now the listing's
error is that rank's answer, and every rank stops naming rank 1's error, after the same collectives.

The same fault (session 33) in the verification of each candidate (resume.verify_on_all_ranks: each rank hashes
its share of the files, then one all_gather_object): an error in rank 1's share (checkpoint.verify) sent rank 1 to
the agreement while rank 0 waited in the verdicts' gather (old code: exit codes [1, 2], rank 0 a traceback). Each
gather of the collective resume now goes through ngpt_ds.train.collectives.all_answers."""

import pytest
from test_nccl31_rank_divergent_inputs import _same_calls
from test_nccl31_rank_divergent_inputs import _traced as traced_run

from conftest import REPO, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

WORKER = REPO / "tests/workers/review33_raise_in_listing.py"


def _traced(work, name, args, per_rank_env):
    return traced_run(work, name, args, per_rank_env, worker=WORKER)


@pytest.mark.parametrize(
    "injected", ["NGPT_DS_TEST_RAISE_IN_LISTING", "NGPT_DS_TEST_RAISE_IN_VERIFY"], ids=["listing", "verify"]
)
def test_an_error_in_a_collective_of_the_resume_on_one_rank_stops_every_rank_with_its_message(
    tmp_path, tiny_dataset, injected
):
    yaml = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(2, dist_timeout_s=30))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    first = _traced(tmp_path, "first", train_flags(yaml, ds, tiny_dataset, out), [{}, {}])
    assert first["codes"] == [0, 0], first["logs"]

    flags = train_flags(yaml, ds, tiny_dataset, out, "--max-steps", "3")
    run = _traced(tmp_path, "err", flags, [{}, {injected: "rank 1 failed here"}])
    assert run["codes"] == [2, 2], (run["codes"], run["logs"][0][-2000:], run["logs"][1][-2000:])
    for log in run["logs"]:
        assert "rank 1: RuntimeError: rank 1 failed here" in log, log[-2000:]
    _same_calls(run)
    assert not (out / "checkpoints" / "step_00000003").exists()
