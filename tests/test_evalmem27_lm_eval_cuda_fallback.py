"""lm-eval's --device cuda on a machine without a GPU: the ngpt_ds adapter warns and runs on the CPU, as lm-eval's
own hf model does with its default device.

lm-eval 0.4's --device defaults to cuda:0 (lm_eval.config.evaluate_config), and lm_eval.models.huggingface.HFLM
given cuda:0 on a CPU-only machine runs on the CPU (the device is not in its list of devices, so it takes cuda
when available, else cpu). generate and evaluate refuse a cuda device without a GPU, but a refusal here would make
every `ngpt-lm-eval` run without --device fail on a CPU machine. This pins the fallback: the warning, the device,
and scores equal to those of device=cpu.
"""

import warnings

import pytest
import torch
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda:0", "cuda"])
def test_cuda_without_a_gpu_warns_and_scores_on_the_cpu_like_device_cpu(device, exported):  # noqa: F811
    from ngpt_ds.infer.lm_eval_adapter import NgptLM

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = NgptLM.create_from_arg_string(f"path={exported}", {"batch_size": 2, "device": device})
    said = [str(w.message) for w in caught if "CUDA" in str(w.message)]
    assert said == [
        f"device {device} requested but no CUDA GPU is available: running on the CPU (pass --device cpu to ask for it)"
    ]
    assert lm.device == torch.device("cpu")
    cpu = NgptLM.create_from_arg_string(f"path={exported}", {"batch_size": 2, "device": "cpu"})
    pairs = [([5, 9, 11, 3], [7, 8]), ([4, 4, 6], [10])]
    got, expected = lm._score(pairs), cpu._score(pairs)
    assert [g[1] for g in got] == [e[1] for e in expected]
    for (g, _), (e, _) in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-6)
