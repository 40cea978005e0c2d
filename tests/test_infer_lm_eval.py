"""The lm-evaluation-harness adapter through lm-eval's own command line and evaluator, on small
tasks defined here (YAML + local jsonl files, no download): multiple choice (loglikelihood),
rolling loglikelihood and generate_until. Every value lm-eval records is recomputed from the
model directly."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, run_lm_eval

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")

MC_DOCS = [
    {"context": "The class statement", "choices": ["defines a class", "is a banana", "returns None"], "label": 0},
    {"context": "A function definition", "choices": ["is executed", "purple"], "label": 1},
    {"context": "The import statement", "choices": ["loads a module", "sings", "x y z"], "label": 2},
]
TEXTS = [
    "Built-in functions are always available.",
    "The for statement is used to iterate over the elements of a sequence. " * 6,
]  # > 32 tokens: 3+ windows
TASKS = {
    "ngpt_test_mc": """\
dataset_kwargs: {{data_files: {{test: {mc}}}}}
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list: [{{metric: acc}}]
""",
    "ngpt_test_rolling": """\
dataset_kwargs: {{data_files: {{test: {text}}}}}
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: word_perplexity}}]
""",
    "ngpt_test_gen": """\
dataset_kwargs: {{data_files: {{test: {mc}}}}}
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs: {{until: ["s"], max_gen_toks: 6, do_sample: false}}
metric_list: [{{metric: exact_match}}]
""",
}


@pytest.fixture(scope="session")
def lm_eval_samples(exported, tmp_path_factory):  # noqa: F811
    """Run `python -m ngpt_ds.infer.lm_eval_cli --model ngpt_ds ...` on the three local tasks; (task -> samples,
    results). Cached on disk for the session: test_hf_lm_eval imports this fixture, and pytest keeps one copy
    of a fixture per importing module, so the run (about 20 s) was made twice."""
    tmp = tmp_path_factory.getbasetemp() / "lm_eval_adapter"
    if (tmp / "DONE").is_file():
        return _read_lm_eval_output(tmp / "results")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tasks / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC_DOCS))
    (tasks / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    for name, body in TASKS.items():
        yaml = f"task: {name}\ndataset_path: json\ntest_split: test\n" + body.format(
            mc=tasks / "mc.jsonl", text=tasks / "text.jsonl"
        )
        (tasks / f"{name}.yaml").write_text(yaml)
    out = tmp / "results"
    extra = ["--batch_size", "2", "--log_samples", "--output_path", out]
    proc = run_lm_eval(exported, ",".join(TASKS), tasks, tmp / "hf_cache", *extra)
    assert "ngpt_test_mc" in proc.stdout and "acc" in proc.stdout  # lm-eval's results table
    (tmp / "DONE").write_text("ok")
    return _read_lm_eval_output(out)


def _read_lm_eval_output(out):
    samples = {}
    for name in TASKS:
        (path,) = out.glob(f"*/samples_{name}_*.jsonl")
        samples[name] = [json.loads(line) for line in path.read_text().splitlines()]
    (results,) = out.glob("*/results_*.json")
    return samples, json.loads(results.read_text())


def direct_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[i] | tokens[:i]) for i >= 1, straight from the model: [len - 1]."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens]))
    return F.log_softmax(logits[0, :-1].double(), dim=-1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]


def test_multiple_choice_loglikelihoods_match_the_model(exported, lm_eval_samples):  # noqa: F811
    from ngpt_ds.infer import load

    samples, results = lm_eval_samples
    loaded = load(exported)
    tok = loaded.tokenizer
    rows = sorted(samples["ngpt_test_mc"], key=lambda s: s["doc_id"])
    assert len(rows) == len(MC_DOCS)
    correct = 0
    for row, doc in zip(rows, MC_DOCS):
        assert len(row["resps"]) == len(doc["choices"])
        scores = []
        for (resp,), choice in zip(row["resps"], doc["choices"]):
            context, continuation = doc["context"], " " + choice  # lm-eval's default target delimiter
            whole, ctx = tok.encode(context + continuation), tok.encode(context)
            assert whole[: len(ctx)] == ctx
            logprobs = direct_logprobs(loaded.model, whole)[len(ctx) - 1 :]
            assert float(resp[0]) == pytest.approx(logprobs.sum().item(), abs=1e-4)
            with torch.no_grad():
                logits, _ = loaded.model(torch.tensor([whole]))
            greedy = bool((logits[0, len(ctx) - 1 : -1].argmax(-1) == torch.tensor(whole[len(ctx) :])).all())
            assert (resp[1] == "True") == greedy
            scores.append(logprobs.sum().item())
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    assert results["results"]["ngpt_test_mc"]["acc,none"] == pytest.approx(correct / len(MC_DOCS))


def test_rolling_loglikelihood_matches_the_model_window_by_window(exported, lm_eval_samples):  # noqa: F811
    from ngpt_ds.infer import load

    samples, _ = lm_eval_samples
    loaded = load(exported)
    eos, L = loaded.tokenizer.eos_id, loaded.config.seq_len
    rows = sorted(samples["ngpt_test_rolling"], key=lambda s: s["doc_id"])
    for row, text in zip(rows, TEXTS):
        # Disjoint chunks of L predicted tokens; each is scored in one input of at most L tokens that
        # ends right before its last token (so a short last chunk sees more of the text before it).
        seq = [eos] + loaded.tokenizer.encode(text)
        total = 0.0
        for start in range(0, len(seq) - 1, L):
            end = min(start + L, len(seq) - 1)  # predicts seq[start + 1 : end + 1]
            window = seq[max(0, end - L) : end + 1]
            total += direct_logprobs(loaded.model, window)[-(end - start) :].sum().item()
        assert float(row["resps"][0][0]) == pytest.approx(total, abs=1e-3)
    assert len(loaded.tokenizer.encode(TEXTS[1])) > 2 * L  # the long text really spans several windows


def test_generate_until_matches_naive_greedy_decoding(exported, lm_eval_samples):  # noqa: F811
    from ngpt_ds.infer import load

    samples, _ = lm_eval_samples
    loaded = load(exported)
    tok = loaded.tokenizer
    for row in sorted(samples["ngpt_test_gen"], key=lambda s: s["doc_id"]):
        ids = tok.encode(row["doc"]["context"])
        new = []
        for _ in range(6):  # no cache, argmax of the full recomputation
            with torch.no_grad():
                logits, _ = loaded.model(torch.tensor([ids + new]))
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == tok.eos_id:
                new.pop()
                break
        text = tok.decode(ids[-8:] + new)[len(tok.decode(ids[-8:])) :]
        assert row["resps"][0][0] == text.split("s")[0]


def test_registered_under_ngpt_ds_and_usable_in_process(exported):  # noqa: F811
    import lm_eval.api.registry as registry

    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    assert registry.get_model("ngpt_ds") is NgptLM
    assert "hf" in registry.model_registry  # lm-eval's own models are still registered
    lm = NgptLM.create_from_arg_string(f"path={exported},max_length=16", {"batch_size": 4, "device": "cpu"})
    assert lm.max_length == 16 and lm.batch_size == 4
    # Inputs longer than max_length keep their last max_length tokens.
    long_context = list(range(3, 40))
    score, _ = lm._score([(long_context, [5, 6])])[0]
    expected = direct_logprobs(lm.model, (long_context + [5, 6])[-17:])[-2:].sum().item()
    assert score == pytest.approx(expected, abs=1e-4)


def test_lm_eval_is_an_optional_extra():
    setup = (REPO / "setup.py").read_text()
    assert '"eval": ["lm-eval' in setup
    assert "ngpt-lm-eval = ngpt_ds.infer.lm_eval_cli:main" in setup
