"""bench/renorm_cost.py's arithmetic, on a stand-in engine with a stand-in clock: the hook's time per optimizer
step is the sum of its calls in that step, and the warm-up is skipped by steps."""

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

FORWARD = BACKWARD = 0.010
OPTIMIZER = 0.005
SLOW_HOOK, HOOK = 0.050, 0.001
GROUPS = 2  # the trainer's decay and no-decay groups: ZeRO 2 steps (and calls the post-step hook) once each


class Clock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class Handle:
    def __init__(self, hooks, fn):
        self.hooks, self.fn = hooks, fn

    def remove(self):
        self.hooks.remove(self.fn)


class FakeEngine:
    """engine(x, y), backward, step: each micro-batch costs FORWARD + BACKWARD on the clock; the step at a
    gradient-accumulation boundary calls the basic optimizer's post-step hooks once per group, then costs
    OPTIMIZER."""

    def __init__(self, clock: Clock, accum: int):
        self.clock, self.accum, self.micro = clock, accum, 0
        self.device = torch.device("cpu")
        hooks: list = []
        self.hooks = hooks
        self.basic_optimizer = SimpleNamespace(
            register_step_post_hook=lambda fn: hooks.append(fn) or Handle(hooks, fn), param_groups=[{}] * GROUPS
        )

    def __call__(self, x, y):
        self.clock.now += FORWARD
        return None, torch.zeros(())

    def backward(self, loss):
        self.clock.now += BACKWARD

    def step(self):
        self.micro += 1
        if self.micro % self.accum == 0:
            for _ in range(GROUPS):
                for fn in list(self.hooks):
                    fn(self.basic_optimizer, (), {})
            self.clock.now += OPTIMIZER

    def gradient_accumulation_steps(self) -> int:
        return self.accum

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro + 1) % self.accum == 0


class FakeHook:
    """The first 3 steps' calls (the warm-up: 3 x GROUPS) take SLOW_HOOK each, later ones HOOK."""

    def __init__(self, clock: Clock):
        self.clock, self.calls, self.all_reduces, self.units = clock, 0, 0, []
        self._handle = SimpleNamespace(remove=lambda: None)

    def _after_inner_step(self, optimizer, args, kwargs):
        self.clock.now += SLOW_HOOK if self.calls < 3 * GROUPS else HOOK
        self.calls += 1
        self.all_reduces += 1

    def max_deviation(self) -> float:
        return 0.0


def run_renorm_cost(monkeypatch, tmp_path, accum: int, steps: int = 5) -> dict:
    import engines
    import renorm_cost
    import torch.distributed as dist

    from ngpt_ds import distributed

    clock = Clock()
    engine, hook = FakeEngine(clock, accum), FakeHook(clock)
    bench = SimpleNamespace(
        engine=engine,
        model=SimpleNamespace(vocab_size=64, seq_len=8),
        plan=SimpleNamespace(micro_batch=2),
        hook=hook,
    )
    monkeypatch.setattr(engines, "preset_engine", lambda *a, **k: bench)
    monkeypatch.setattr(distributed, "discover", lambda: SimpleNamespace(world_size=1))
    for name, fn in {
        "get_rank": lambda: 0,
        "all_reduce": lambda t: None,
        "barrier": lambda: None,
        "destroy_process_group": lambda: None,
    }.items():
        monkeypatch.setattr(dist, name, fn)
    monkeypatch.setattr(renorm_cost, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / f"rc{accum}.json"
    monkeypatch.setattr(sys, "argv", ["renorm_cost.py", "--steps", str(steps), "--json", str(out)])
    assert renorm_cost.main() == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("accum", [1, 4])
def test_renorm_cost_sums_the_hook_over_its_calls_in_each_optimizer_step(monkeypatch, tmp_path, accum):
    """Fault: the hook, called once per parameter group (2 per engine.step), was averaged per call (half its
    cost per step), its warm-up skipped by calls ([3:]: 1.5 steps, so slow first calls stayed in), and with
    gradient accumulation 4 each micro-batch counted as a step (the share came out near 0)."""
    r = run_renorm_cost(monkeypatch, tmp_path, accum)
    step = accum * (FORWARD + BACKWARD) + GROUPS * HOOK + OPTIMIZER
    assert r["hook_ms"] == pytest.approx(1e3 * GROUPS * HOOK, rel=1e-9)
    assert r["step_ms"] == pytest.approx(1e3 * step, rel=1e-9)
    assert r["hook_share_of_step"] == pytest.approx(GROUPS * HOOK / step, rel=1e-9)
    assert r["all_reduces_per_step"] == GROUPS  # the stand-in counts one per call
    assert r["steps"] == 5 and r["hook_calls_per_step"] == GROUPS and r["micro_batches_per_step"] == accum
