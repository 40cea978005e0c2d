"""lm-eval's own `hf` model on the `--format hf` export, run as `lm_eval --model hf --model_args
pretrained=OUT,trust_remote_code=True` in a subprocess, on the local tasks of test_infer_lm_eval:
the same scores, request for request, as ngpt_ds's adapter (`ngpt-lm-eval --model ngpt_ds`)."""

import json
import shutil

import pytest
from test_hf_export import hf_exported  # noqa: F401  (session fixture)
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)
from test_infer_lm_eval import MC_DOCS, TASKS, TEXTS, lm_eval_samples  # noqa: F401  (the adapter's run)

from conftest import cpu_env, run

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")

HF_TASKS = ("ngpt_test_mc", "ngpt_test_rolling")  # loglikelihood, in batches of 2 (right-padded, no mask)


@pytest.fixture(scope="module")
def hf_lm_eval(hf_exported, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("hf_lm_eval")
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (tasks / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    for name in HF_TASKS:
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ntest_split: test\n"
            + TASKS[name].format(mc=tasks / "mc.jsonl", text=tasks / "text.jsonl")
        )
    out = tmp / "results"
    env = cpu_env(
        HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1, HF_DATASETS_CACHE=tmp / "hf_cache", HF_MODULES_CACHE=tmp / "modules"
    )
    lm_eval = shutil.which("lm_eval") or pytest.fail("lm-eval's `lm_eval` command is not on PATH")
    proc = run(
        [
            lm_eval,
            "--model",
            "hf",
            "--model_args",
            f"pretrained={hf_exported},trust_remote_code=True,dtype=float32",
            "--tasks",
            ",".join(HF_TASKS),
            "--include_path",
            tasks,
            "--device",
            "cpu",
            "--batch_size",
            "2",
            "--log_samples",
            "--output_path",
            out,
        ],
        env=env,
        cwd=tmp,
    )
    assert "ngpt_test_mc" in proc.stdout and "acc" in proc.stdout
    samples = {}
    for name in HF_TASKS:
        (path,) = out.glob(f"*/samples_{name}_*.jsonl")
        samples[name] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
    (results,) = out.glob("*/results_*.json")
    return samples, json.loads(results.read_text())


def test_lm_eval_hf_model_scores_like_the_ngpt_ds_adapter(hf_lm_eval, lm_eval_samples):  # noqa: F811
    hf_samples, hf_results = hf_lm_eval
    adapter_samples, adapter_results = lm_eval_samples
    assert hf_results["config"]["model"] == "hf"
    for name in HF_TASKS:
        adapter_rows = sorted(adapter_samples[name], key=lambda s: s["doc_id"])
        assert len(hf_samples[name]) == len(adapter_rows) > 0
        for hf_row, adapter_row in zip(hf_samples[name], adapter_rows):
            assert len(hf_row["resps"]) == len(adapter_row["resps"])
            for (hf_resp,), (adapter_resp,) in zip(hf_row["resps"], adapter_row["resps"]):
                hf_resp = hf_resp if isinstance(hf_resp, list) else [hf_resp]
                adapter_resp = adapter_resp if isinstance(adapter_resp, list) else [adapter_resp]
                assert float(hf_resp[0]) == pytest.approx(float(adapter_resp[0]), abs=1e-4)  # log-likelihood
                assert hf_resp[1:] == adapter_resp[1:]  # is-greedy, for multiple choice
    mc, rolling = "ngpt_test_mc", "ngpt_test_rolling"
    assert hf_results["results"][mc]["acc,none"] == adapter_results["results"][mc]["acc,none"]
    assert hf_results["results"][rolling]["word_perplexity,none"] == pytest.approx(
        adapter_results["results"][rolling]["word_perplexity,none"], rel=1e-4
    )
