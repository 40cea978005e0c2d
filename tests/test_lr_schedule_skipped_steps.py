"""The LR schedule follows the trainer's step count when fp16 skips steps.

Fault: DeepSpeed skips an fp16 step whose gradients overflow, and with it the LR scheduler's step,
while the trainer's step counter (its logs, checkpoints and max_steps) moves on. The LR then lagged by
one step per overflow for the rest of the run: with a loss scale of 2^40 every one of 6 steps was
skipped and the LR stayed at the warmup's 0 (train/lr 0 at steps 1-6); the cosine never reached min_lr,
and a resume, which recomputes the schedule at its step, did not reproduce the run it continued.

fp16 on this CPU: the trainer refuses fp16 on CPUs without AVX512-FP16/AMX, so the run declares
it supported (as tests/workers/precision_worker.py does) and DeepSpeed's fp16 path runs on CPU.
"""

import sys

import pytest

from ngpt_ds.train.optim import lr_factor

from conftest import read_metrics, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

STEPS, WARMUP, LR = 6, 2, 1e-2

FP16_ON_CPU = """
import sys
from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
CPU_Accelerator.is_fp16_supported = lambda self: True
from ngpt_ds.cli.train import main
sys.argv = ["train.py", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.fixture(scope="module")
def every_step_skipped(tmp_path_factory, tiny_dataset):
    """A 6-step fp16 run whose every step overflows: (its output, its metrics.jsonl records)."""
    tmp_path = tmp_path_factory.mktemp("fp16_skipped")
    # 2^40: every step's scaled gradients overflow fp16 (the scale halves per step, from far too high).
    fp16 = {"enabled": True, "initial_scale_power": 40, "loss_scale_window": 1000, "hysteresis": 1}
    ds = write_ds_config(tmp_path / "fp16.json", stage=2, bf16=False, micro=4, accum=1, fp16=fp16)
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(STEPS, lr=LR, warmup_steps=WARMUP))
    script = tmp_path / "train_fp16_on_cpu.py"
    script.write_text(FP16_ON_CPU)
    out = tmp_path / "out"
    proc = run([sys.executable, script, *train_cmd(config, ds, tiny_dataset, out)[1:]])
    return proc.stdout + proc.stderr, read_metrics(out)


def test_steps_skipped_for_fp16_overflow_still_advance_the_lr_schedule(every_step_skipped):
    _, records = every_step_skipped
    logged = [(r["step"], r["train/lr"]) for r in records]
    expected = [(s, LR * lr_factor(s - 1, max_steps=STEPS, warmup_steps=WARMUP, min_lr_ratio=0.0)) for s in range(1, 7)]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    assert [lr for _, lr in logged] == pytest.approx([lr for _, lr in expected], rel=1e-6, abs=1e-12)


def test_a_skipped_first_step_gets_no_warning_about_the_schedules_order(every_step_skipped):
    """Fault: the schedule's step for a skipped first step (the optimizer never stepped yet) made torch print
    'loop.py:258: UserWarning: Detected call of `lr_scheduler.step()` before `optimizer.step()`. ... you should
    call them in the opposite order ... PyTorch skipping the first value of the learning rate schedule' in every
    fp16 run whose first step overflows (DeepSpeed's loss scale starts high and halves until a step fits): advice
    that does not apply, the step is on purpose and the schedule follows the step count (the test above)."""
    output, _ = every_step_skipped
    assert "lr_scheduler.step()" not in output, output[-3000:]
