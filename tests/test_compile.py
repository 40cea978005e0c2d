"""train.compile: true compiles the model in the trainer (DeepSpeed's engine.compile) without changing
what it computes: the losses follow the eager run's at ZeRO 0 and ZeRO 2 (fp32), the hypersphere hook
keeps every matrix on the sphere, the checkpoints hold the eager model's state-dict keys, and a run
resumed from a compiled run's checkpoint continues it bit for bit.

Three compiled runs of conftest's reference shape and schedule, compared with its eager reference runs
(shared with test_trainer): the first compiles (tens of seconds on a CPU), the others reuse Inductor's
on-disk cache.
"""

import re
import shutil
import sys

import pytest

from ngpt_ds import safe_load
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import preset_names
from ngpt_ds.train.config import TrainConfig, load_model_and_train

from conftest import (
    REFERENCE_STEPS,
    REFERENCE_TRAIN,
    REPO,
    cpu_env,
    read_metrics,
    run,
    tiny_ngpt,
    train_run,
    write_ds_config,
    write_yaml,
)

STEPS = REFERENCE_STEPS  # evaluations and checkpoints at STEPS / 2 and STEPS
MODEL = tiny_ngpt()
TRAIN = REFERENCE_TRAIN


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reference_runs):
    """name -> output dir: eager and compiled at ZeRO 0 (1 rank) and ZeRO 2 (2 ranks), and a resume."""
    tmp = tmp_path_factory.mktemp("compile")
    compiled = write_yaml(tmp / "compiled.yaml", MODEL, {**TRAIN, "compile": True})
    data, z0, z2 = reference_runs.data, reference_runs.ds["z0_ws1"], reference_runs.ds["z2_ws2"]
    outs = {"eager_z0": reference_runs["z0_ws1"], "eager_z2": reference_runs["z2_ws2"]}
    for name, ds, nproc in (("compiled_z0", z0, 1), ("compiled_z2", z2, 2)):
        train_run(compiled, ds, data, tmp / name, nproc=nproc)
        outs[name] = tmp / name
    # Stopped half-way: a copy of the compiled run's checkpoint there, resumed with compile on.
    resumed = tmp / "compiled_z0_resumed"
    half = outs["compiled_z0"] / "checkpoints" / f"step_{STEPS // 2:08d}"
    shutil.copytree(half, resumed / "checkpoints" / half.name)
    train_run(compiled, z0, data, resumed)
    outs["resumed_z0"] = resumed
    return outs


def values(out, key="train/loss"):
    return {m["step"]: m[key] for m in read_metrics(out, key)}


@pytest.mark.parametrize("stage", [0, 2])
def test_compiled_losses_follow_eager(runs, stage):
    eager, compiled = values(runs[f"eager_z{stage}"]), values(runs[f"compiled_z{stage}"])
    assert sorted(compiled) == list(range(1, STEPS + 1))
    assert [compiled[s] for s in range(1, STEPS + 1)] == pytest.approx([eager[s] for s in eager], abs=1e-5, rel=0)
    assert eager[STEPS] < eager[1] - 0.05  # it learns
    eager_eval, compiled_eval = (values(runs[f"{m}_z{stage}"], "eval/loss") for m in ("eager", "compiled"))
    evals = [STEPS // 2, STEPS]
    assert sorted(compiled_eval) == evals
    assert [compiled_eval[s] for s in evals] == pytest.approx([eager_eval[s] for s in evals], abs=1e-5, rel=0)
    # the hypersphere hook runs on the compiled model's parameters after every step
    assert max(values(runs[f"compiled_z{stage}"], "ngpt/max_norm_deviation").values()) < 1e-5


def test_compiled_run_resumes_bit_for_bit(runs):
    uninterrupted, resumed = values(runs["compiled_z0"]), values(runs["resumed_z0"])
    assert sorted(resumed) == list(range(STEPS // 2 + 1, STEPS + 1))
    assert [resumed[s] for s in resumed] == [uninterrupted[s] for s in resumed]  # exact, not approx
    assert values(runs["resumed_z0"], "eval/loss")[STEPS] == values(runs["compiled_z0"], "eval/loss")[STEPS]


def test_compiled_checkpoints_hold_the_eager_state_dict_keys(runs):
    def keys(out):
        path = out / "checkpoints" / f"step_{STEPS:08d}" / "mp_rank_00_model_states.pt"
        return sorted(safe_load.load(path)["module"])

    compiled = keys(runs["compiled_z0"])
    assert compiled == keys(runs["eager_z0"])
    assert "embed.weight" in compiled and not any("_orig_mod" in k for k in compiled)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_compiled_kernels_read_the_rope_tables_instead_of_computing_cos_and_sin(arch):
    """The fault: Inductor inlined RoPE's small cos/sin tables into every kernel that read them, so cos
    and sin ran once per element of q and k in every layer, forward and backward: about a tenth of a
    compiled ngpt_tiny step (docs/benchmarks.md, "MFU"). The tables are now one opaque operator, called
    once per forward; the generated code holds no cos or sin, and loss and gradients equal eager's."""
    import torch
    from compiled_model import eager_and_compiled

    (eager_loss, eager_grads), (compiled_loss, compiled_grads), code = eager_and_compiled(arch)
    source = "\n".join(code)
    assert len(code) == 2  # the forward and the backward graph
    # Inductor's vectorized C++ writes `tmp.cos()`, its scalar C++ `std::cos(tmp)`, Triton `tl_math.cos(tmp)`.
    transcendental = [line.strip() for line in source.splitlines() if re.search(r"(?<![A-Za-z0-9_])(cos|sin)\(", line)]
    assert transcendental == []
    calls = [line for line in source.splitlines() if "= torch.ops.ngpt_ds_model_layers.rope_tables.default(" in line]
    assert len(calls) == 1, calls  # in the forward; the backward reads the saved tables
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled_grads, eager_grads, rtol=0, atol=1e-6)


def test_compile_must_be_a_boolean():
    with pytest.raises(NgptConfigError, match="train.compile"):
        TrainConfig.from_dict({"compile": "yes"}, "run.yaml")
    assert TrainConfig.from_dict({"compile": True}).compile is True
    assert TrainConfig().compile is False


def test_the_long_run_presets_compile_and_the_tiny_ones_do_not():
    """Compiling costs minutes once and saves time at every step: it pays in the 100k-step presets, not in
    the few-minute default run (README "Compile")."""
    compiled = {name: load_model_and_train(name)[1].compile for name in preset_names()}
    assert compiled == {name: not name.endswith("_tiny") for name in compiled}
    assert {"ngpt_tiny", "gpt_tiny", "ngpt_0.5b", "ngpt_1b"} <= set(compiled)


MISSING_CXX = "ngpt-ds-no-such-c++"


def test_compile_without_a_cxx_compiler_stops_at_startup_with_the_fix(tmp_path, tiny_dataset):
    """The fault: train.compile on a CPU machine without a C++ compiler started the run, created --out and
    failed at the first step inside Inductor (InvalidCxxCompiler, a long traceback). Now the startup
    checks name the missing compiler and the two ways out, before any process group or output."""
    config = write_yaml(tmp_path / "compiled.yaml", MODEL, {**TRAIN, "compile": True})
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    out = tmp_path / "out"
    cmd = [sys.executable, REPO / "launch/train.py", "--config", config, "--deepspeed_config", ds]
    cmd += ["--data", tiny_dataset, "--out", out, "--no-progress"]
    proc = run(cmd, env=cpu_env(CXX=MISSING_CXX), check=False, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for fragment in ("train.compile: true", repr(MISSING_CXX), "--no-compile", "train.compile: false"):
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr[-3000:]}"
    assert not out.exists()


def test_no_compile_overrides_the_yaml(tmp_path, tiny_dataset, monkeypatch):
    """--no-compile (TrainOptions.compile_model=False) turns a compiling preset or YAML off, so a
    machine without the toolchain can still run it; --compile turns it on."""
    from ngpt_ds.train.builder import TrainOptions, prepare

    monkeypatch.setenv("CXX", MISSING_CXX)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    config = write_yaml(tmp_path / "compiled.yaml", MODEL, {**TRAIN, "compile": True})
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)

    def options(compile_model):
        return TrainOptions(
            deepspeed_config=str(ds),
            config=str(config),
            data=str(tiny_dataset),
            out=str(tmp_path / "out"),
            compile_model=compile_model,
        )

    assert prepare(options(False)).run.train.compile is False
    with pytest.raises(NgptConfigError, match="C\\+\\+ compiler"):
        prepare(options(None))
    # A dry run plans for the machines that will run it: this one's toolchain is not theirs.
    planned = options(None)
    planned.world_size = 2
    assert prepare(planned).run.train.compile is True
    with pytest.raises(NgptConfigError, match="C\\+\\+ compiler"):
        prepare(options(True))
    monkeypatch.setenv("CXX", sys.executable)  # the check asks only that the compiler exists
    assert prepare(options(None)).run.train.compile is True
