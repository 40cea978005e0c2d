"""summary.json and the throughput scalars against metrics.jsonl and an independent count: one real run of
5 steps that logs every 3 (steps 3 and 5: the run ends between two log steps) and evaluates at its end."""

import json

import pytest

from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.factory import build_model

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

STEPS, MICRO, ACCUM = 5, 2, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_dataset):
    tmp = tmp_path_factory.mktemp("metrics_summary")
    config = write_yaml(tmp / "tiny.yaml", tiny_ngpt(), tiny_train(STEPS, log_interval=3, eval_interval=0))
    ds = write_ds_config(tmp / "z0.json", stage=0, bf16=False, micro=MICRO, accum=ACCUM)
    out = tmp / "run"
    train_run(config, ds, tiny_dataset, out, forked=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, records, json.loads((out / "summary.json").read_text())


def test_summary_json_holds_the_last_records_losses_and_tokens(run):
    """Fault: summary.json's train_loss was the last step's own loss, a number no record holds: metrics.jsonl
    (and the printed summary, which reads it) has the log interval's mean there (6.153 against 6.164)."""
    out, records, summary = run
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == [3, 5] and [r["step"] for r in evals] == [5]
    tokens = STEPS * MICRO * ACCUM * 1 * tiny_ngpt()["seq_len"]  # steps x micro x accum x ranks x context
    assert (summary["status"], summary["step"], summary["tokens"]) == ("finished", STEPS, tokens)
    assert train[-1]["train/tokens"] == tokens
    assert summary["train_loss"] == train[-1]["train/loss"]
    assert summary["val_loss"] == evals[-1]["eval/loss"]
    assert summary["checkpoint"] == str(out / "checkpoints" / "step_00000005")


def test_tokens_per_second_and_mfu_follow_an_independent_flops_count(run):
    """6 x the matmul weights (the token embedding is a lookup) + 12 x layers x width x context (PaLM,
    appendix B), per token; train.peak_tflops 1.0, one rank."""
    _, records, _ = run
    model = tiny_ngpt()
    net = build_model(ModelConfig.from_dict({**model, "vocab_size": 512}))
    matmul = sum(p.numel() for name, p in net.named_parameters() if p.dim() == 2 and not name.startswith("embed."))
    flops_per_token = 6 * matmul + 12 * model["n_layer"] * model["n_embd"] * model["seq_len"]
    tokens_per_step = MICRO * ACCUM * model["seq_len"]
    for record in (r for r in records if "train/loss" in r):
        assert record["throughput/tokens_per_s"] * record["throughput/step_time_s"] == pytest.approx(tokens_per_step)
        assert record["throughput/mfu"] == pytest.approx(flops_per_token * record["throughput/tokens_per_s"] / 1e12)
