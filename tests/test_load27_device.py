"""--device cuda on a machine without a GPU: generate and evaluate refuse it in one line before the model is read
(a large checkpoint takes minutes to consolidate). Guard: held before this session; no CLI-level test had it."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_infer_export_load import small_export  # noqa: F401  (module fixture)


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_device_cuda_without_a_gpu_is_refused_before_the_model_is_read(
    small_export,  # noqa: F811
    tiny_dataset,
    tmp_path,
    monkeypatch,
    capsys,
    command,
):
    from ngpt_ds.cli.evaluate import main as evaluate
    from ngpt_ds.cli.generate import main as generate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also on a GPU runner
    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    (folder / "model.safetensors").unlink()  # read first, this would be the error
    if command == "evaluate":
        rc = evaluate([str(folder), "--data", str(tiny_dataset), "--device", "cuda", "--windows", "1"])
    else:
        rc = generate([str(folder), "--prompt", "x", "--device", "cuda", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == "error: device cuda requested but no CUDA GPU is available; use --device cpu"
