"""Capture and restore of the RNG state a checkpoint carries (python, numpy, torch's CPU generator and the
accelerator's), so a resumed run draws the same numbers as an uninterrupted one. Kept apart from the training
loop (ngpt_ds.train.loop) because it is one job with its own storage format, tested on its own."""

from __future__ import annotations

import random
import types

import numpy as np
import torch


def capture(device: torch.device) -> dict:
    """Tensors and plain data only: checkpoints load with the restricted unpickler (ngpt_ds.safe_load),
    which would refuse numpy's arrays, so numpy's MT19937 key is stored as a list of ints. On an accelerator
    (cuda, xpu, ...), its generator for the rank's device too, under "device" with the device type: dropout
    and sampling on the device draw from it, so a resumed GPU run without it was not exact."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"])}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    device = torch.device(device)  # DeepSpeed's engine.device may be a string
    accelerator = _accelerator_module(device)
    if accelerator is not None:
        state["device"] = {"type": device.type, "state": accelerator.get_rng_state(device)}
    return state


def _accelerator_module(device: torch.device) -> types.ModuleType | None:
    """torch.cuda (torch.xpu, ...) for a device with its own generator; None on the CPU."""
    if device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    return module if hasattr(module, "get_rng_state") and hasattr(module, "set_rng_state") else None


def restore(state: dict, device: torch.device) -> None:
    """`state` as capture wrote it. A checkpoint from before the device state was saved, or one written on
    another device type (a GPU checkpoint resumed on the CPU), leaves the device generator as seeded."""
    torch.set_rng_state(state["torch"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
        "pos": int(numpy_state["state"]["pos"]),
    }
    np.random.set_state(numpy_state)
    random.setstate(state["python"])
    device = torch.device(device)
    saved, accelerator = state.get("device"), _accelerator_module(device)
    if accelerator is not None and isinstance(saved, dict) and saved.get("type") == device.type:
        accelerator.set_rng_state(saved["state"], device)
