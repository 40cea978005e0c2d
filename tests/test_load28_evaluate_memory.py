"""ngpt_ds.infer.evaluate() called from Python checks each context's forward against the memory available, as
evaluate.py does.

Fault: the estimate (ngpt_ds.infer.eval_memory) ran only in the command line (ngpt_ds.cli.evaluate._check_memory),
so `ngpt_ds.infer.evaluate(loaded, data, contexts=[200000])` from Python built batch x context x vocab logits
without a check and ran out of memory, or was ended by the OOM killer without a word. The library call now refuses
before its first forward, naming its own arguments in the fix; evaluate.py checks once, before the model loads.

The available RAM is imitated (psutil.virtual_memory), as tests/test_evalmem27_long_context_memory.py imitates it.
"""

from __future__ import annotations

import pytest
import torch
from random_export import export_random_ngpt

GIB = 2**30


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_dataset):
    from ngpt_ds.infer import load

    folder, _ = export_random_ngpt(tmp_path_factory.mktemp("load28_eval"), tiny_dataset / "tokenizer.model", "ngpt_ds")
    return load(folder, device="cpu")


def _imitate(monkeypatch, available: int) -> None:
    import psutil

    real = psutil.virtual_memory

    class Imitated:
        def __init__(self, values):
            self._values, self.available = values, available

        def __getattr__(self, name):
            return getattr(self._values, name)

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Imitated(real()))


def test_the_library_evaluate_refuses_a_forward_larger_than_the_memory(monkeypatch, loaded, tiny_dataset):
    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.data.windows import WindowIndex
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import evaluate
    from ngpt_ds.infer.eval_memory import forward_memory

    meta = load_dataset_meta(tiny_dataset, verify_contents=False)
    context = meta.splits["validation"].tokens // 4
    assert WindowIndex(meta, "validation", context).num_windows == 3  # windows of context + 1 tokens
    one = forward_memory(loaded.config, 1, context, 4).activations
    three = forward_memory(loaded.config, 3, context, 4).activations
    available = one + 2**20  # one window's forward fits beside the loaded model, three do not
    _imitate(monkeypatch, available)
    with pytest.raises(NgptConfigError) as caught:
        evaluate(loaded, tiny_dataset, contexts=[32, context], batch_size=8)
    assert str(caught.value) == (
        f"context {context}: a forward of 3 window(s) needs about {three / GIB:.2f} GiB (logits 3 x {context} x 512 "
        f"and the loaded model's forward), {available / GIB:.2f} GiB RAM available; use batch_size 1 or less, or "
        "fewer contexts"
    )
    # Not even one window: shorter contexts are the fix.
    _imitate(monkeypatch, one - 2**20)
    with pytest.raises(NgptConfigError) as caught:
        evaluate(loaded, tiny_dataset, contexts=[context], batch_size=1)
    assert str(caught.value) == (
        f"context {context}: a forward of 1 window(s) needs about {one / GIB:.2f} GiB (logits 1 x {context} x 512 "
        f"and the loaded model's forward), {(one - 2**20) / GIB:.2f} GiB RAM available; use shorter contexts "
        "(contexts= / multiples=), or fewer contexts"
    )
    # The command line checked before loading: it asks for no second check.
    results = evaluate(loaded, tiny_dataset, contexts=[32], windows=4, batch_size=2, check_memory=False)
    assert [(r.context, r.windows, r.tokens) for r in results] == [(32, 4, 128)]


def test_an_evaluation_that_fits_gives_the_same_numbers_with_the_check(loaded, tiny_dataset):
    from ngpt_ds.infer import evaluate

    checked = evaluate(loaded, tiny_dataset, contexts=[32, 64], windows=4, batch_size=2)
    unchecked = evaluate(loaded, tiny_dataset, contexts=[32, 64], windows=4, batch_size=2, check_memory=False)
    assert [r.to_dict() for r in checked] == [r.to_dict() for r in unchecked]
    assert [(r.context, r.windows, r.tokens) for r in checked] == [(32, 4, 128), (64, 4, 256)]
    assert all(torch.isfinite(torch.tensor(r.loss)) and 5.0 < r.loss < 7.5 for r in checked)  # ln 512 = 6.24
