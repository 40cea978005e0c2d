"""lm-eval's own `hf` model (HFLM) on a `--format hf` export, loaded as a user without ngpt_ds loads it
(trust_remote_code, the folder's own code), against ngpt_ds's lm-eval adapter (`ngpt-lm-eval --model ngpt_ds`) on the
same folder. Not a fault: guards what held when checked (tests/test_hf_lm_eval.py runs loglikelihood tasks at batch
size 2 only): HFLM reads the context length from config.json (max_position_embeddings, the trained seq_len), scores
right-padded loglikelihood batches and cuts requests longer than the context from the left as the adapter does, and
generates left-padded batches (a prompt longer than the context cut to its last max_length - max_gen_toks tokens)
with the adapter's tokens, batch or not.

One difference is lm-eval's, not the model's: HFLM decodes the generated tokens alone, so the sentencepiece space
before the first word is dropped ("T'..." where the adapter, which decodes them after the context, gives " T'...")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from launching import cpu_env

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[eval]")

LONG = "The quick brown fox jumps over the lazy dog. " * 8  # about 90 tokens: longer than the context of 32
LOGLIKELIHOOD = [
    ["Question: what is it?", " the answer"],
    ["a", "b c d e f g"],
    [LONG, " and then it slept"],
    ["Once upon a time", " there was a model"],
    ["", " the answer"],
]
ROLLING = [LONG * 2, "short text here.", LONG]
PROMPTS = ["The class statement", LONG, "def", "A list comprehension consists of brackets"]
GEN = {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}

HFLM_RUN = """\
import json, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "ngpt_ds" or name.startswith("ngpt_ds."):
            raise ModuleNotFoundError("No module named " + repr(name))
sys.meta_path.insert(0, NotInstalled())
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
folder, requests, out = sys.argv[1:4]
requests = json.loads(requests)
result = {}
for batch_size in (1, 3):
    lm = HFLM(pretrained=folder, trust_remote_code=True, device="cpu", batch_size=batch_size, dtype="float32")
    result[batch_size] = {
        "module": type(lm.model).__module__,
        "max_length": lm.max_length,
        "loglikelihood": lm.loglikelihood(
            [Instance("loglikelihood", {}, tuple(p), i) for i, p in enumerate(requests["loglikelihood"])]
        ),
        "rolling": lm.loglikelihood_rolling(
            [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(requests["rolling"])]
        ),
        "generate": lm.generate_until(
            [Instance("generate_until", {}, (p, requests["gen"]), i) for i, p in enumerate(requests["prompts"])]
        ),
    }
json.dump(result, open(out, "w"))
"""


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, tiny_dataset):
    from random_export import export_random_ngpt

    root = tmp_path_factory.mktemp("hf37_lm_eval")
    folder, _ = export_random_ngpt(root, tiny_dataset / "tokenizer.model", "hf")
    return folder


def test_lm_eval_hf_model_on_an_export_scores_and_generates_as_the_adapter(hf_folder, tmp_path):
    from lm_eval.api.instance import Instance

    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    requests = {"loglikelihood": LOGLIKELIHOOD, "rolling": ROLLING, "prompts": PROMPTS, "gen": GEN}
    env = cpu_env(HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, HF_MODULES_CACHE=tmp_path / "modules")
    env.pop("PYTHONPATH", None)
    out = tmp_path / "hflm.json"
    proc = subprocess.run(
        [sys.executable, "-c", HFLM_RUN, str(hf_folder), json.dumps(requests), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    hflm = json.loads(out.read_text())

    adapter = NgptLM(path=str(hf_folder), device="cpu", batch_size=3)
    assert adapter.max_length == 32
    assert len(adapter.tok_encode(LONG)) > 2 * adapter.max_length  # the long requests are cut
    want = adapter.loglikelihood([Instance("loglikelihood", {}, tuple(p), i) for i, p in enumerate(LOGLIKELIHOOD)])
    rolling = adapter.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(ROLLING)]
    )
    texts = adapter.generate_until([Instance("generate_until", {}, (p, GEN), i) for i, p in enumerate(PROMPTS)])
    assert all(score < -5.0 for score, _ in want) and len(set(texts)) == len(texts)
    for batch_size in ("1", "3"):
        got = hflm[batch_size]
        assert got["module"].startswith("transformers_modules.") and got["max_length"] == 32
        for (score, greedy), (want_score, want_greedy) in zip(got["loglikelihood"], want, strict=True):
            assert score == pytest.approx(want_score, abs=1e-4, rel=0) and greedy == want_greedy
        assert got["rolling"] == pytest.approx(rolling, abs=1e-3, rel=0)
        # lm-eval's decode of the new tokens alone drops the space before the first word (see the docstring).
        assert got["generate"] == [t[1:] if t.startswith(" ") else t for t in texts]
