"""--device of export, generate and evaluate (ngpt_ds.infer.loading.resolve_device), on a GPU machine imitated on
a CPU (torch.cuda's answers patched)."""

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.infer.loading import resolve_device


@pytest.fixture
def gpus(monkeypatch):
    def count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return count


def test_a_gpu_index_past_the_machines_gpus_is_named_before_anything_loads(gpus):
    """Fault: `--device cuda:5` on a machine of 2 GPUs was accepted, and the run stopped in the first tensor
    moved there, in CUDA's 'invalid device ordinal' traceback, after the checkpoint had been read."""
    gpus(2)
    with pytest.raises(NgptConfigError) as err:
        resolve_device("cuda:5")
    assert str(err.value) == "device cuda:5 requested but this machine has 2 CUDA GPU(s); use --device cuda:0 to cuda:1"
    gpus(1)
    with pytest.raises(
        NgptConfigError, match=r"^device cuda:1 requested but this machine has 1 CUDA GPU\(s\); use --device cuda:0$"
    ):
        resolve_device("cuda:1")


def test_devices_the_machine_has_are_taken_as_given(gpus):
    gpus(2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto") == torch.device("cuda")
    gpus(0)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(NgptConfigError, match="no CUDA GPU is available; use --device cpu"):
        resolve_device("cuda:0")
