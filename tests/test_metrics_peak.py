"""Training metrics: the peak MFU divides by, on a GPU imitated on a CPU (torch.cuda's answers patched), and
one that is too low."""

import re
import sys

import pytest
import torch

from ngpt_ds.train import console_format, metrics

from conftest import REPO, cpu_env, run, tiny_ngpt, tiny_train, write_ds_config, write_yaml


class _Accelerator:
    def __init__(self, name: str) -> None:
        self.name = name

    def device_name(self, device_index=None) -> str:
        return self.name


@pytest.fixture
def gpu(monkeypatch):
    """torch.cuda reports one GPU of the given name, and DeepSpeed's accelerator is `accelerator` ("cuda": the
    run trains on it; "cpu": DS_ACCELERATOR=cpu on that machine). Nothing else of CUDA is used by the code
    tested."""
    import deepspeed.accelerator

    def named(name: str, accelerator: str = "cuda") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 0)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
        monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _Accelerator(accelerator))

    return named


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", torch.float32, 19.5),
        ("NVIDIA H100 80GB HBM3", torch.float32, 67.0),
        ("NVIDIA H200", torch.float32, 67.0),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA H100 80GB HBM3", torch.float16, 989.0),
        # Fault: every name holding "H100" got the SXM part's 989, so a PCIe card's MFU read 0.76x its value.
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
        ("NVIDIA H100 PCIe", torch.float32, 51.0),
        ("NVIDIA H100 NVL", torch.bfloat16, 835.0),
        ("NVIDIA H200 NVL", torch.bfloat16, 835.0),
        ("NVIDIA H200 NVL", torch.float32, 60.0),
    ],
)
def test_the_gpu_peak_for_mfu_is_the_one_of_the_run_precision(gpu, name, dtype, tflops):
    """Fault: on a GPU the MFU peak came from a table of bf16 tensor-core peaks whatever the run's
    precision, so an fp32 run (torch's default runs fp32 matmuls without TF32) had its MFU divided by
    16 on an A100 (312 instead of 19.5 TFLOP/s) and by 15 on an H100; a CPU run measures its own dtype."""
    gpu(name)
    flops, source = metrics.peak_flops_per_device(None, dtype)
    assert flops == tflops * 1e12
    assert source == f"data sheet, {'fp32' if dtype == torch.float32 else 'bf16/fp16'} ({name})"


def test_an_unknown_gpu_asks_for_the_peak(gpu):
    gpu("NVIDIA Imaginary X1")
    flops, source = metrics.peak_flops_per_device(None, torch.float32)
    assert flops != flops  # nan
    assert source == "unknown GPU NVIDIA Imaginary X1: set train.peak_tflops"
    assert metrics.peak_flops_per_device(123.0, torch.float32) == (123e12, "train.peak_tflops")


def test_cpu_training_on_a_gpu_machine_measures_the_cpu(gpu):
    """Fault: with DS_ACCELERATOR=cpu on a machine with a GPU (the ranks train on the CPU), MFU was divided by
    the GPU's data-sheet peak (989 TFLOP/s for bf16 on an H100) and the memory metrics were the idle GPU's."""
    gpu("NVIDIA H100 80GB HBM3", accelerator="cpu")
    flops, source = metrics.peak_flops_per_device(None, torch.bfloat16)
    assert source == "measured dense matmul on this CPU"
    assert 0 < flops < 50e12  # this CPU's bf16 matmul, far below any data-sheet GPU peak
    assert set(metrics.memory_metrics()) == {"memory/rss_gib"}
    gpu("NVIDIA H100 80GB HBM3", accelerator="cuda")
    assert metrics.peak_flops_per_device(None, torch.bfloat16)[0] == 989e12
    assert set(metrics.memory_metrics()) == {"memory/max_allocated_gib", "memory/reserved_gib"}


def test_an_mfu_above_100_percent_is_called_out_once_with_the_fix(tmp_path, tiny_dataset):
    """Fault: a CPU's matmul peak measured at startup while other jobs loaded the machine was a fraction of
    the idle one, and the progress lines and TensorBoard showed MFU 120-150% with no word of why (the main
    command on the loaded 2-core test machine). A peak that is too low is now named once, with the fix."""
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3, peak_tflops=1e-9))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=4, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", tmp_path / "out"]
    proc = run([sys.executable, REPO / "launch/train.py", *argv, "--no-progress"], env=cpu_env(), timeout=300)
    lines = (proc.stdout + proc.stderr).splitlines()
    warned = [line for line in lines if "MFU above 100%" in line]
    assert warned == [
        "warning: MFU above 100%: the peak it divides by (1 kFLOP/s per device, train.peak_tflops) is too low, so "
        "this run's MFU figures are not meaningful. Set train.peak_tflops to the device's dense peak (on a CPU, "
        "measure it on an idle machine)"
    ]
    assert sum(line.startswith("step ") and "MFU" in line for line in lines) == 3
    # Fault: a fixed TFLOP/s scale printed this peak as "0.00 TFLOP/s", and the step lines had no time left.
    steps = [line for line in lines if line.startswith("step ") and "MFU" in line]
    assert re.search(r"\| eta \d+s$", steps[0]) and steps[-1].endswith("| eta 0s"), steps


def test_rates_and_durations_keep_their_digits_at_every_scale():
    """Fault: "0.0k tok/s" for 27 tokens/s (a loaded CPU) and "0.00 TFLOP/s" for a measured peak of 23 GFLOP/s."""
    assert [console_format.format_rate(v, "tok/s") for v in (27, 4123, 5.2e6)] == [
        "27 tok/s",
        "4.12k tok/s",
        "5.2M tok/s",
    ]
    assert [console_format.format_rate(v, "FLOP/s") for v in (2.3e10, 989e12)] == ["23 GFLOP/s", "989 TFLOP/s"]
    assert [console_format.format_duration(s) for s in (0, 4.4, 185, 7650)] == ["0s", "4s", "3m05s", "2h07m"]


def test_a_rate_that_rounds_up_to_the_next_scale_or_passes_the_largest_is_not_in_exponent_notation():
    """Fault: the scale was chosen before '.3g' rounded, and the largest scale had no bound: 999,700 tok/s
    printed "1e+03k tok/s" and a B200's train.peak_tflops 2250 "2.25e+03 TFLOP/s" in the startup line."""
    assert [console_format.format_rate(v, "tok/s") for v in (999.7, 999_700, 999_400)] == [
        "1k tok/s",
        "1M tok/s",
        "999k tok/s",
    ]
    assert [console_format.format_rate(v, "FLOP/s") for v in (2250e12, 999.7e9, 1e18)] == [
        "2250 TFLOP/s",
        "1 TFLOP/s",
        "1000000 TFLOP/s",
    ]


def test_the_console_line_of_a_logged_step():
    """The line a newcomer reads at every logged step (Trainer._log): nGPT adds the sphere's deviation."""
    scalars = {
        "train/lr": 1.17e-2,
        "throughput/tokens_per_s": 1830.0,
        "throughput/step_time_s": 1.121,
        "throughput/mfu": 0.764,
    }
    assert console_format.progress_line(270, 300, 3.99851, scalars) == (
        "step    270/300 | loss 3.9985 | lr 1.17e-02 | 1.83k tok/s | 1121 ms/step | MFU 76.4% | eta 34s"
    )
    ngpt = {**scalars, "ngpt/max_norm_deviation": 2.4e-7}
    assert console_format.progress_line(30, 300, 5.46343, ngpt) == (
        "step     30/300 | loss 5.4634 | lr 1.17e-02 | 1.83k tok/s | 1121 ms/step | MFU 76.4% | norm dev 2.4e-07 | "
        "eta 5m03s"
    )
