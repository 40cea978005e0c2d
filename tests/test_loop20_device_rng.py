"""Fault: the accelerator's RNG state was not saved in checkpoints: loop.py's RNG capture held torch's CPU
generator, numpy's and python's only. Before: a resumed GPU run drew its dropout and any sampling on the device
from the freshly seeded CUDA generator, not the one the uninterrupted run had reached, so it was not exact.
Now: the generator of the rank's device is saved under "device" and set again on resume (a checkpoint without
it, or one from another device type, loads as before). On the CPU, the accelerator calls are imitated."""

import torch

from ngpt_ds import safe_load
from ngpt_ds.train import rng_state


class FakeCuda:
    """torch.cuda's get_rng_state / set_rng_state for a machine without a GPU."""

    def __init__(self):
        self.states = {1: torch.arange(16, dtype=torch.uint8)}
        self.calls = []

    def get_rng_state(self, device):
        self.calls.append(("get", device))
        return self.states[device.index].clone()

    def set_rng_state(self, state, device):
        self.calls.append(("set", device))
        self.states[device.index] = state.clone()


def test_the_devices_generator_is_saved_and_restored_through_a_checkpoint(tmp_path, monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    device = torch.device("cuda", 1)

    state = rng_state.capture(device)  # old code: TypeError, and no "device" entry at all
    assert state["device"]["type"] == "cuda"
    assert torch.equal(state["device"]["state"], torch.arange(16, dtype=torch.uint8))
    torch.save({"rng": state}, tmp_path / "client.pt")
    back = safe_load.load(tmp_path / "client.pt")["rng"]  # the restricted unpickler checkpoints load with

    fake.states[1] = torch.zeros(16, dtype=torch.uint8)  # the generator as a fresh session seeds it
    rng_state.restore(back, "cuda:1")  # engine.device may be a string
    assert fake.calls == [("get", device), ("set", device)]
    assert torch.equal(fake.states[1], torch.arange(16, dtype=torch.uint8))


def test_a_checkpoint_without_the_device_state_or_from_the_cpu_still_loads(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    cpu_state = rng_state.capture(torch.device("cpu"))
    assert sorted(cpu_state) == ["numpy", "python", "torch"]  # nothing for the CPU's device
    expected = torch.rand(3)
    rng_state.restore(cpu_state, torch.device("cuda", 1))  # an older or CPU checkpoint resumed on a GPU
    assert torch.equal(torch.rand(3), expected)  # the CPU generators restored as before
    assert fake.calls == []  # the device generator left as seeded
    gpu_state = {**cpu_state, "device": {"type": "xpu", "state": torch.ones(16, dtype=torch.uint8)}}
    rng_state.restore(gpu_state, torch.device("cpu"))  # another device type's: left alone
    assert fake.calls == []
